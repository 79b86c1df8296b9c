"""What a training run measures about itself, and the guard that keeps non-finite numbers out of the
weights, both as Lightning callbacks beside the LightningModule:

* ``Throughput`` — tokens seen (the budget), tokens per second of wall and CPU time, training wall time
  over every process of a resumed run, peak memory; kept in the checkpoint so a resumed run goes on
  counting where it stopped.
* ``DivergenceGuard`` — a non-finite loss, gradient or updated weight stops training before any
  checkpoint holds it, with one message that names the step, the learning rate and the fix.
"""

from __future__ import annotations

import os
import resource
import time

import lightning as L
import torch


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak GPU memory allocated (CUDA) or the process's peak resident set size (CPU), in MiB, since the
    last ``reset_peak_memory``."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def release_free_memory() -> None:
    """Hand memory the allocator keeps but no longer uses back to the kernel (glibc ``malloc_trim``; jemalloc's
    purge of every arena), so the resident set is what is live. The entry points run under an allocator that
    keeps freed memory (``experiments.cli.allocator_env``); without this, a run's peak would include what an
    earlier run in the same process left."""
    import ctypes
    import ctypes.util

    try:
        if os.environ.get("LONGLAB_ALLOCATOR") == "jemalloc":
            lib = ctypes.CDLL(None)
            lib.mallctl(b"arena.4096.purge", None, None, None, 0)  # MALLCTL_ARENAS_ALL
        else:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_memory(device: torch.device | None = None) -> bool:
    """Start a new peak for ``peak_memory_mb``, so that a run in a process that ran others before (a table
    trains its cells one after another) reports its own peak, not the process's. On CPU this resets the
    resident-set high-water mark (Linux ``/proc/self/clear_refs``); returns False where that is not
    possible (the peak is then the process's)."""
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    release_free_memory()  # memory an allocator kept from earlier work would count as this run's
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def current_lr(trainer: L.Trainer | None, default: float = float("nan")) -> float:
    try:
        return trainer.optimizers[0].param_groups[0]["lr"]
    except (AttributeError, IndexError, RuntimeError, TypeError):
        return default


class Throughput(L.Callback):
    """Counts input tokens (all ranks; a sequence-parallel group's ranks share their rows) and times the
    steps after the first two (warm-up); logs ``train/tokens_per_s`` and ``train/peak_mem_mb`` with the
    training loss."""

    def __init__(self) -> None:
        self.tokens_seen, self._tokens_timed, self._time_timed, self._cpu_timed = 0, 0, 0.0, 0.0
        self._wall_before, self._fit_t0, self._t_last, self._c_last = 0.0, None, None, 0.0

    @property
    def tokens_per_s(self) -> float:
        return self._tokens_timed / self._time_timed if self._time_timed > 0 else float("nan")

    @property
    def tokens_per_cpu_s(self) -> float:
        """Tokens per second of this process's CPU time (all its threads): less sensitive than wall time
        to other jobs sharing the machine."""
        return self._tokens_timed / self._cpu_timed if self._cpu_timed > 0 else float("nan")

    @property
    def wall_time_s(self) -> float:
        """Training wall time over every process of the run (resumed runs add up)."""
        return self._wall_before + (time.perf_counter() - self._fit_t0 if self._fit_t0 is not None else 0.0)

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_t0 = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t_last, self._c_last = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        tokens = batch["tokens"][:, :-1].numel() * trainer.world_size // pl_module.sequence_parallel
        self.tokens_seen += tokens
        if self._t_last is not None and trainer.global_step > 1:  # skip warm-up steps
            self._time_timed += time.perf_counter() - self._t_last
            self._cpu_timed += time.process_time() - self._c_last
            self._tokens_timed += tokens
        if trainer.global_step % trainer.log_every_n_steps == 0:
            if self._time_timed > 0:
                pl_module.log("train/tokens_per_s", self.tokens_per_s, prog_bar=True)
            pl_module.log("train/peak_mem_mb", peak_memory_mb(pl_module.device))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint.setdefault("longlab", {}).update({
            "tokens_seen": self.tokens_seen, "wall_time_s": self.wall_time_s,
            "timing": (self._tokens_timed, self._time_timed, self._cpu_timed)})

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        extra = checkpoint.get("longlab", {})
        self.tokens_seen = extra.get("tokens_seen", 0)
        timing = tuple(extra.get("timing", (0, 0.0, 0.0)))
        self._tokens_timed, self._time_timed, self._cpu_timed = (timing + (0.0,))[:3]
        self._wall_before = float(extra.get("wall_time_s", 0.0))


class DivergenceGuard(L.Callback):
    """Non-finite values never reach the weights or a checkpoint: the loss is checked before the backward,
    raw gradients (before clipping) before the update, the weights after it (before the checkpoint
    callbacks, which Lightning runs last)."""

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at step {trainer.global_step} "
                f"(lr={current_lr(trainer):.3g}); lower optim.lr, raise optim.warmup_steps, keep "
                "trainer.gradient_clip_val set, or train in float32 (trainer.precision=32-true)"
            )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        bad = [n for n, p in pl_module.net.named_parameters()
               if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        if bad:
            raise FloatingPointError(
                f"non-finite gradient at step {trainer.global_step} in {len(bad)} tensors (e.g. {bad[:3]}; "
                f"lr={current_lr(trainer):.3g}); the weights were not updated and the last checkpoint is the last "
                "finite one: lower optim.lr or raise optim.warmup_steps, keep trainer.gradient_clip_val set, or "
                "train in float32 (trainer.precision=32-true), then resume with ckpt_path=auto (or start afresh "
                "with ckpt_path=null if those weights have diverged too)"
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bad = [n for n, p in pl_module.net.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:  # the update itself overflowed: stop before any checkpoint of this step is written
            raise FloatingPointError(
                f"the update at step {trainer.global_step - 1} made {len(bad)} weight tensors non-finite (e.g. "
                f"{bad[:3]}; lr={current_lr(trainer):.3g}); no checkpoint of it was written: lower optim.lr and "
                "resume with ckpt_path=auto"
            )
