"""Reloading a finished (or interrupted) training run for evaluation and generation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from architectures.contract import LanguageModel
from architectures.megalodon.checkpoint import is_official, load_official
from experiments.data.corpus import ByteCorpus, corpus_options
from experiments.training.checkpointing import last_checkpoint, read_checkpoint
from experiments.training.checks import read_json_quietly
from experiments.training.module import CausalLMModule


def check_last_is_final(run_dir: Path, ckpt_file: Path, step: int | None) -> None:
    """A finished run's last checkpoint is its final state (training saves it last, at the step metrics.json
    records). One at another step is from a later run into the folder (an interrupted retrain or continuation):
    evaluating it would report those weights under the finished run's record, so stop."""
    metrics = read_json_quietly(run_dir / "metrics.json")  # none: no finished run recorded, the checkpoint is the run
    done = metrics.get("steps") if isinstance(metrics, dict) and metrics.get("status") == "finished" else None
    if isinstance(done, int) and step is not None and int(step) != done:
        raise ValueError(
            f"{ckpt_file} is at step {int(step)}, but {run_dir / 'metrics.json'} records a finished run of {done} "
            "steps: the checkpoint is from a later, unfinished run into this folder; resume that run "
            "(ckpt_path=auto) to finish it, or pass ckpt_path=<file> to evaluate a checkpoint on purpose")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but no CUDA device is available; use device=cpu")
    return torch.device(name)


def load_run(
    run_dir: str | Path, ckpt_path: str | None = None, net_overrides: dict | None = None,
    device: str | torch.device = "cpu",
) -> tuple[DictConfig, CausalLMModule]:
    """The run's training config and its module with the checkpoint's weights, in eval mode.

    ``net_overrides`` changes model.net fields that do not alter the parameters (e.g. ``kv_window``).
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists() and is_official(run_dir):
        return load_official_run(run_dir, net_overrides, device)
    if not cfg_path.exists():
        raise FileNotFoundError(
            f"run_dir={str(run_dir)!r} has no config.yaml; pass the folder that experiments.train "
            "wrote (it holds config.yaml, checkpoints/ and metrics.json)"
        )
    try:
        cfg = OmegaConf.load(cfg_path)
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise ValueError(f"{cfg_path} cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:200]}); it is "
                         "damaged: restore it (experiments.train wrote it) or retrain into a new run_dir") from None
    ckpt_file = Path(ckpt_path) if ckpt_path else last_checkpoint(run_dir) or run_dir / "checkpoints" / "last.ckpt"
    if not ckpt_file.exists():
        raise FileNotFoundError(
            f"no checkpoint at {str(ckpt_file)!r}; train the run first or pass ckpt_path=<file.ckpt>"
        )
    ckpt = read_checkpoint(ckpt_file)
    if not ckpt_path:
        check_last_is_final(run_dir, ckpt_file, ckpt.get("global_step"))
    hp = ckpt["hyper_parameters"]
    net_cfg = dict(hp["net"])
    for k, v in (net_overrides or {}).items():
        if k not in net_cfg and k != "_target_":
            raise ValueError(f"eval.net_overrides has {k!r}, which is not a field of model.net ({sorted(net_cfg)})")
        net_cfg[k] = v
    module = CausalLMModule(net=net_cfg, optim=hp.get("optim"), carry_state=hp.get("carry_state", False),
                            crossbatch=hp.get("crossbatch"))
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise RuntimeError(
            f"checkpoint {str(ckpt_file)!r} does not match the model its hyper-parameters describe "
            f"({str(e)[:300]}); it is not from this run or it is damaged"
        ) from None
    module.to(torch.device(device) if isinstance(device, str) else device).eval()
    return cfg, module


def load_official_run(folder: Path, net_overrides: dict | None = None,
                      device: str | torch.device = "cpu") -> tuple[DictConfig, CausalLMModule]:
    """An official Megalodon checkpoint folder as a run: its model (vocabulary from its weights when the config
    leaves it to the tokenizer), its ``tokenizer.json`` when present, no training corpus (an evaluation names
    one with ``data.path=``), streaming windows of one chunk."""
    net = load_official(folder)
    fields = {f.name: (list(v) if isinstance(v := getattr(net.config, f.name), tuple) else v)
              for f in dataclasses.fields(net.config)}
    net_cfg = {"_target_": "architectures.megalodon.Megalodon", **fields, **(net_overrides or {})}
    tokenizer = folder / "tokenizer.json"
    cfg = OmegaConf.create({"model": {"name": f"official:{folder.name}", "net": net_cfg},
                            "data": {"seq_len": int(net.config.chunk_size), "vocab_size": int(net.config.vocab_size),
                                     "tokenizer": str(folder) if tokenizer.exists() else "bytes", "path": None},
                            "official": str(folder)})
    module = CausalLMModule(net=net_cfg)
    module.net.load_state_dict(net.state_dict(), strict=True)
    module.to(torch.device(device) if isinstance(device, str) else device).eval()
    return cfg, module


def corpus_of(cfg: DictConfig) -> ByteCorpus:
    """The same corpus the run trained on (built once, then reused)."""
    if cfg.get("official"):
        raise ValueError(f"{cfg.official} is an official checkpoint: it comes with no training corpus; name one to "
                         "evaluate on with data.path=<dir> (or data=<preset>)")
    return ByteCorpus.build_or_load(**corpus_options(cfg.data))


def rebuild(net: LanguageModel, **changes) -> LanguageModel:
    """The same weights under a config with ``changes`` to fields that do not alter the parameters
    (inference-time settings such as FoT's memory backend, k and capacity). Configs are frozen: a new
    module is built, never the old config written into."""
    config = dataclasses.replace(net.config, **changes)
    new = type(net)(config)
    p = next(net.parameters(), None)
    if p is not None:
        new = new.to(p.device, p.dtype)
    new.load_state_dict(net.state_dict(), strict=True)
    return new.train(net.training)
