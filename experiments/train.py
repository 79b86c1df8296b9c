"""Train any architecture: ``python -m experiments.train model=<arch> data=<corpus> run_dir=<dir>``.

``train(cfg)`` is a plain function (tests compose a config and call it); ``main`` is the Hydra
wrapper. A run dir holds ``config.yaml`` (the composed, resolved config), ``checkpoints/``,
``logs/metrics.csv`` and, at the end, ``metrics.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.checkpointing import AtomicCheckpointIO, check_compatible, read_checkpoint, resolve_ckpt_path
from experiments.lm_module import CausalLMModule, peak_memory_mb
from experiments.loggers import trim_metrics_csv


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def count_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in net.parameters()}.values())


def build_module(cfg: DictConfig) -> CausalLMModule:
    return CausalLMModule(net=cfg.model.net, optim=cfg.optim, carry_state=cfg.task.carry_state)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, validate once more at the end, and write ``<run_dir>/metrics.json``. Returns the metrics."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.task.carry_state and cfg.data.sampler != "stream":
        raise ValueError(
            f"task.carry_state=true needs consecutive windows of the same documents, but data.sampler="
            f"{cfg.data.sampler!r}; set data.sampler=stream"
        )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)

    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    if ckpt_path is not None:
        ckpt = read_checkpoint(ckpt_path)
        check_compatible(ckpt, ckpt_path, module.hparams["net"])
        trim_metrics_csv(run_dir / "logs" / "metrics.csv", int(ckpt.get("global_step", 0)))
        del ckpt

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )
    if trainer.is_global_zero:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    train_wall = time.perf_counter() - t0
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last)  # the final state, whatever the checkpoint interval
    val = trainer.validate(module, datamodule=datamodule, verbose=False, weights_only=True)[0]

    metrics = {
        "val/bpb": float(val["val/bpb"]),
        "val/loss": float(val["val/loss"]),
        "val/ppl": float(val["val/ppl"]),
        "train/tokens_per_s": float(module.tokens_per_s),  # all ranks together
        "train/peak_mem_mb": peak_memory_mb(module.device),
        "params": count_parameters(module.net),
        "tokens_seen": int(module.tokens_seen),
        "steps": int(trainer.global_step),
        "wall_time_s": train_wall,
        "model": cfg.model.get("name"),
        "seq_len": int(cfg.data.seq_len),
        "batch_size": int(cfg.data.batch_size),
        "world_size": int(trainer.world_size),
        "seed": int(cfg.seed),
    }
    if hasattr(module.net, "flops_per_token"):
        metrics["flops_per_token"] = float(module.net.flops_per_token(int(cfg.data.seq_len)))
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        print(
            f"[longlab] {metrics['model']}: {metrics['steps']} steps, {metrics['tokens_seen']:,} tokens, "
            f"val bits/byte {metrics['val/bpb']:.4f}, {metrics['train/tokens_per_s']:,.0f} tokens/s "
            f"-> {run_dir / 'metrics.json'}"
        )
    return metrics


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    with open_dict(cfg):
        cfg.run_dir = HydraConfig.get().runtime.output_dir
    train(cfg)


if __name__ == "__main__":
    main()
