"""Progress that stays readable in a log file: one line at most every ``every_s`` seconds (and at the
end) instead of a carriage-return bar. Training uses it whenever the Lightning bar is off or stdout
is not a terminal; ``Progress`` is the same for any loop (streaming evaluation, table cells)."""

from __future__ import annotations

import sys
import time

import lightning as L

from experiments.training.bookkeeping import Throughput


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """``update(done)`` prints ``[what] done/total (p%) <extra> elapsed, eta`` now and then."""

    def __init__(self, what: str, total: int, every_s: float = 30.0, unit: str = ""):
        self.what, self.total, self.every_s, self.unit = what, max(1, int(total)), every_s, unit
        self.t0 = self.last = time.perf_counter()

    def update(self, done: int, extra: str = "", force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every_s and done < self.total:
            return
        self.last = now
        frac = min(1.0, done / self.total)
        eta = (now - self.t0) / frac * (1 - frac) if frac > 0 else 0.0
        print(f"[{self.what}] {done:,}/{self.total:,}{self.unit} ({100 * frac:.0f}%) {extra}".rstrip()
              + f", {fmt_duration(now - self.t0)} elapsed, eta {fmt_duration(eta)}", flush=True)


class LineProgress(L.Callback):
    """Training progress as log lines: step, loss, bits per byte, tokens/s, elapsed and ETA."""

    def __init__(self, every_s: float = 30.0):
        self.every_s = every_s
        self.progress: Progress | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.progress = Progress("train", trainer.max_steps, self.every_s, " steps")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.progress is None or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"{k.replace('/', ' ')} {float(m[k]):.4g}" for k in ("train/loss", "train/bpb") if k in m]
        if "val/bpb" in m:  # the last validation's, with its step (not mistaken for a value at this step)
            at = f" @ step {int(float(m['val/step']))}" if "val/step" in m else ""
            parts.append(f"val bpb {float(m['val/bpb']):.4g}{at}")
        tps = next((c.tokens_per_s for c in trainer.callbacks if isinstance(c, Throughput)), float("nan"))
        if tps == tps:
            parts.append(f"{tps:,.0f} tok/s")
        self.progress.update(trainer.global_step, ", ".join(parts))


def wants_line_progress(enable_bar: bool) -> bool:
    """Lines instead of a bar: the bar is off, or stdout is a file or pipe."""
    return not enable_bar or not sys.stdout.isatty()
