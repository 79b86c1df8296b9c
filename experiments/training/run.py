"""Training any architecture: ``train(cfg)`` is a plain function (tests compose a config and call it;
``experiments.train`` is its command line).

A run dir holds ``config.yaml`` (the composed, resolved config), ``checkpoints/``,
``logs/metrics.csv`` and, at the end, ``metrics.json``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from architectures.contract import Architecture
from architectures.megalodon.checkpoint import is_official, official_state_dict
from experiments.config import build, bytes_per_update, write_json
from experiments.data.samplers import STREAMS
from experiments.training.bookkeeping import DivergenceGuard, Throughput, peak_memory_mb, reset_peak_memory
from experiments.training.checkpointing import (
    AtomicCheckpointIO,
    check_compatible,
    last_checkpoint,
    read_checkpoint,
    resolve_ckpt_path,
)
from experiments.training.checks import check_corpus, check_run_config, refuse_to_overwrite, sequence_parallel
from experiments.training.faults import Preemption, RunLock, clean_stale_temp_files
from experiments.training.loggers import ResumableCSVLogger, plot_loss_curve, trim_metrics_csv
from experiments.training.module import CausalLMModule
from experiments.training.optim import changes as optim_changes
from experiments.training.parallel import sequence_group
from experiments.training.progress import LineProgress, wants_line_progress
from kernels.bf16_matmul import use_fp32_gemm_for_bf16


def count_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in net.parameters()}.values())


def init_from_checkpoint(module: CausalLMModule, source: str) -> list[str]:
    """Load the weights of another run (a run dir or a .ckpt) into ``module.net`` before training:
    fine-tuning, e.g. a baseline Transformer into FoT. Returns the parameters left at their init."""
    path = Path(source)
    if path.is_dir() and is_official(path):  # an official Megalodon checkpoint folder
        sd = official_state_dict(path)
        return load_net_weights(module, sd, source)
    if path.is_dir():
        path = last_checkpoint(path) or path / "checkpoints" / "last.ckpt"
    if not path.exists():
        raise FileNotFoundError(f"init_from={source!r}: no checkpoint at {path}; pass a run dir or a .ckpt file")
    ckpt = read_checkpoint(path)
    sd = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    return load_net_weights(module, sd, source)


def load_net_weights(module: CausalLMModule, sd: dict, source: str) -> list[str]:
    """``sd`` into ``module.net``, refusing anything but the parameters the architecture may add."""
    fix = "the architectures must share parameter names and shapes (e.g. model=fot with the baseline's sizes)"
    try:
        missing, unexpected = module.net.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"init_from={source!r} does not fit this model ({str(e)[:300]}); {fix}") from None
    bad = [m for m in missing if not any(n in m for n in module.net.added_parameters)]
    if unexpected or bad:
        raise ValueError(f"init_from={source!r} does not fit this model: missing {bad[:8]}, "
                         f"unexpected {unexpected[:8]}; {fix}")
    return missing


def build_module(cfg: DictConfig) -> CausalLMModule:
    try:
        return CausalLMModule(net=cfg.model.net, optim=cfg.optim, carry_state=cfg.task.carry_state,
                              crossbatch=cfg.task.get("crossbatch"), sequence_parallel=sequence_parallel(cfg))
    except (RuntimeError, MemoryError) as e:
        cause = e.__cause__ or e
        if "allocate" not in str(cause) and not isinstance(cause, MemoryError):
            raise
        sizes = {k: v for k, v in cfg.model.net.items() if isinstance(v, int) and not isinstance(v, bool) and v > 1}
        why = " ".join(str(cause).split())[:120]
        raise ValueError(f"model {cfg.model.get('name')!r} does not fit in memory ({why}); its sizes are {sizes}: "
                         "lower the one that is too large") from None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, validate once more at the end, and write ``<run_dir>/metrics.json``. Returns the metrics.

    The run dir is locked for the whole run (a second writer fails at once, naming the holder) and
    leftovers of interrupted writes are removed first. SIGTERM or SIGUSR1 stops after the current step
    with a resumable checkpoint and partial metrics, and exits with 128 + the signal number."""
    if not str(cfg.get("run_dir") or "").strip():
        raise ValueError(f"run_dir={cfg.get('run_dir')!r} is empty; name a folder for the run (or leave run_dir "
                         "unset for runs/<model>/<time>)")
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run_dir={str(run_dir)!r} is a file, not a folder; choose another run_dir")
    if launched_rank() > 0:  # a DDP worker: rank 0 holds the lock for the run
        return _train(cfg, run_dir)
    with RunLock(run_dir):
        clean_stale_temp_files(run_dir)
        return _train(cfg, run_dir)


def launched_rank() -> int:
    """This process's rank as set by a launcher (Lightning's DDP children, torchrun), 0 otherwise."""
    return max(int(os.environ.get(k, 0) or 0) for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    if cfg.task.carry_state and cfg.data.get("sampler") not in STREAMS:
        raise ValueError(
            f"task.carry_state=true needs consecutive windows of the same documents, but data.sampler="
            f"{cfg.data.sampler!r}; set data.sampler=stream (or segments)"
        )
    check_run_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build(cfg.data)
    datamodule.sequence_parallel = sequence_parallel(cfg)  # the ranks of a sequence group share rows
    datamodule.setup("fit")  # build (or load) the corpus and check its windows before any Trainer exists
    module = build_module(cfg)
    if cfg.get("compile"):
        if not getattr(module.net, "compiles", True):
            raise ValueError(f"compile=true: {type(module.net).__name__} does not compile to the same numbers with "
                             f"torch {torch.__version__} (benchmarks/compile.py); train it with compile=false")
        module.net.compile()  # in place: the state dict keeps its names, checkpoints stay compatible
    tokenizer = getattr(datamodule, "corpus", None) and datamodule.corpus.split("train").tokenizer
    if tokenizer and module.net.patch_size is not None:
        raise ValueError(f"data.tokenizer={cfg.data.get('tokenizer')!r}: {type(module.net).__name__} reads bytes (its "
                         "patches are groups of bytes); train it with data.tokenizer=bytes")
    if cfg.task.carry_state and module.net.max_len is not None:
        raise ValueError(
            f"task.carry_state=true streams past any length, but {type(module.net).__name__} represents at most "
            f"max_len={module.net.max_len} positions (learned positions); train it on independent windows "
            "(task.carry_state=false) or raise model.net.max_len"
        )
    if cfg.task.carry_state and type(module.net).reset_state is Architecture.reset_state:
        raise ValueError(
            f"task.carry_state=true resets each row's state where a new document starts, but "
            f"{type(module.net).__name__} does not implement reset_state; train it on independent windows "
            "(task.carry_state=false)"
        )

    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    if ckpt_path is None:
        refuse_to_overwrite(run_dir, bool(cfg.get("overwrite")))
    if launched_rank() == 0:
        check_corpus(run_dir, getattr(datamodule, "corpus", None), ckpt_path is None and bool(cfg.get("overwrite")))
    if ckpt_path is None:  # a fresh start: no curve of an earlier, unresumed run in this folder
        trim_metrics_csv(run_dir / "logs" / "metrics.csv", 0)
    if cfg.get("init_from") and ckpt_path is None:
        fresh = init_from_checkpoint(module, cfg.init_from)
        print(f"[longlab] initialised from {cfg.init_from}; new parameters: {fresh or 'none'}")
    if ckpt_path is not None:
        ckpt = read_checkpoint(ckpt_path)
        check_compatible(ckpt, ckpt_path, module.hparams["net"])
        trim_metrics_csv(run_dir / "logs" / "metrics.csv", int(ckpt.get("global_step", 0)))
        module.resume_optim_changes = optim_changes(ckpt["hyper_parameters"].get("optim"), module.hparams["optim"])
        if module.resume_optim_changes:
            print(f"[longlab] resuming from step {ckpt.get('global_step')} with changed optimiser settings "
                  f"({'; '.join(module.resume_optim_changes)}): they apply from this step on, the schedule "
                  "recomputed at it", flush=True)
        del ckpt

    last = run_dir / "checkpoints" / "last.ckpt"
    preemption, throughput = Preemption(last), Throughput()
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += [preemption, throughput, DivergenceGuard()]
    logger = loggers(cfg, run_dir)
    extra = {}
    if wants_line_progress(bool(cfg.trainer.get("enable_progress_bar", True))):
        callbacks.append(LineProgress())
        extra["enable_progress_bar"] = False  # a bar's carriage returns make a log file unreadable
    if sequence_parallel(cfg) > 1 and cfg.trainer.get("strategy") == "ddp":
        # a later span may leave parameters unused (MEGABYTE's pad patch starts a sequence only)
        extra["strategy"] = "ddp_find_unused_parameters_true"
    trainer: L.Trainer = build(
        cfg.trainer, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir), **extra,
    )
    if sequence_parallel(cfg) > 1:  # the process count must split into sequence groups: fail before fit
        sequence_group(trainer.global_rank, trainer.world_size, sequence_parallel(cfg))
    if trainer.is_global_zero:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        if tokenizer:  # the run is self-contained: eval and generation read its tokenizer from here
            shutil.copyfile(tokenizer, run_dir / "tokenizer.json")

    if "bf16" in str(cfg.trainer.get("precision")) and trainer.strategy.root_device.type == "cpu":
        use_fp32_gemm_for_bf16()  # an AVX2-only CPU's bf16 GEMM is a scalar loop: 25-50x slower
    preemption.install()
    reset_peak_memory(trainer.strategy.root_device)  # this run's peak, not an earlier run's in this process
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        if trainer.is_global_zero:
            partial = run_metrics(cfg, module, trainer, throughput)
            write_json(run_dir / "metrics.json", {**partial, "status": "preempted"})
        raise SystemExit(preemption.exit_code) from None
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, MemoryError) or "alloc" in str(e).lower() or "out of memory" in str(e).lower():
            raise RuntimeError(
                f"out of memory training {cfg.model.get('name')} with data.batch_size={cfg.data.batch_size} x "
                f"data.seq_len={cfg.data.get('seq_len')} ({type(e).__name__}: {' '.join(str(e).split())[:120]}); "
                "lower data.batch_size (trainer.accumulate_grad_batches keeps the update size), data.seq_len or the "
                "model's width, or set model.net.checkpoint_layers=true") from None
        raise
    finally:
        preemption.uninstall()
    trainer.save_checkpoint(last, weights_only=False)  # the final state, whatever the interval
    val = trainer.validate(module, datamodule=datamodule, verbose=False, weights_only=True)[0]

    metrics = {
        "val/bpb": float(val["val/bpb"]),
        "val/loss": float(val["val/loss"]),
        "val/ppl": float(val["val/ppl"]),
        "val/acc": float(val["val/acc"]),
        **run_metrics(cfg, module, trainer, throughput),
        "status": "finished",
    }
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        plot_loss_curve(run_dir)
        print(
            f"[longlab] {metrics['model']}: {metrics['steps']} steps, {metrics['tokens_seen']:,} tokens, "
            f"val bits/byte {metrics['val/bpb']:.4f}, {metrics['train/tokens_per_s']:,.0f} tokens/s "
            f"-> {run_dir / 'metrics.json'}"
        )
    return metrics


def loggers(cfg: DictConfig, run_dir: Path) -> list:
    """Every logger of ``cfg.logger`` (``logger=[csv,tensorboard]``: both), and always the CSV logger:
    ``logs/metrics.csv`` holds the learning curves that reports and tables read."""
    chosen = [build(node) for node in (cfg.get("logger") or {}).values() if node is not None]
    if not any(isinstance(lg, ResumableCSVLogger) for lg in chosen):
        chosen.insert(0, ResumableCSVLogger(save_dir=str(run_dir), name="logs", version=""))
    return chosen


def run_metrics(cfg: DictConfig, module: CausalLMModule, trainer: L.Trainer,
                throughput: Throughput) -> dict[str, Any]:
    """What a run measured about itself (without the final validation). With ``parallel.sequence=N``
    the N ranks of a group read the same rows: an update consumes ``world / N`` ranks' worth of bytes."""
    replicas = trainer.world_size // sequence_parallel(cfg)
    corpus = getattr(trainer.datamodule, "corpus", None)
    bpt = float(getattr(corpus, "bytes_per_token", 1.0))  # a token run: its training split's bytes per token
    fpt = float(module.net.flops_per_token(int(cfg.data.seq_len or 0) or 1))
    return {
        "train/tokens_per_s": float(throughput.tokens_per_s),  # all ranks together
        "train/tokens_per_cpu_s": float(throughput.tokens_per_cpu_s),  # this rank's process
        "train/s_per_update": float(bytes_per_update(cfg) * replicas / throughput.tokens_per_s),
        "train/peak_mem_mb": peak_memory_mb(module.device),
        "params": count_parameters(module.net),
        "tokens_seen": int(throughput.tokens_seen),
        "steps": int(trainer.global_step),
        "wall_time_s": throughput.wall_time_s,  # every process of the run, resumed ones added up
        "model": cfg.model.get("name"),
        "seq_len": int(cfg.data.seq_len or 0),
        "batch_size": int(cfg.data.batch_size),
        "tokens_per_step": bytes_per_update(cfg) * replicas,
        "world_size": int(trainer.world_size),
        "seed": int(cfg.seed),
        "flops_per_token": fpt,
        "bytes_per_token": bpt,
        "flops_per_byte": fpt / bpt,
        "train/bytes_per_s": float(throughput.tokens_per_s) * bpt,
        "bytes_seen": round(throughput.tokens_seen * bpt),
    }
