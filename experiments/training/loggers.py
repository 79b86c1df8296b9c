"""A CSV logger that survives resumption.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when a run restarts in the same folder,
so a resumed run would lose its loss curve. ``ResumableCSVLogger`` keeps the file and appends;
``trim_metrics_csv`` first drops rows logged after the checkpoint being resumed from (a run killed
between checkpoints logged steps that will now be trained again).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from experiments.plotting import pyplot


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # keep the previous rows
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                header = next(csv.reader(fh), [])
            self.metrics_keys = sorted(header)


class ResumableCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def trim_metrics_csv(path: Path, before_step: int) -> None:
    """Keep only the rows of ``path`` whose ``step`` is below ``before_step``."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames or [], [r for r in reader if int(float(r["step"])) < before_step]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def plot_loss_curve(run_dir: Path) -> Path | None:
    """``<run_dir>/loss_curve.png``: training loss and bits per byte, and validation bits per byte, by
    step (read from logs/metrics.csv). None when matplotlib or the log is missing."""
    path = Path(run_dir) / "logs" / "metrics.csv"
    plt = pyplot()
    if plt is None or not path.is_file():
        return None
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            for key in ("train/bpb", "val/bpb"):
                if r.get(key):
                    step = float(r["val/step"]) if key == "val/bpb" and r.get("val/step") else float(r["step"])
                    series.setdefault(key, []).append((step, float(r[key])))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, pts in series.items():
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, marker="." if key == "val/bpb" else None, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    ax.set_title(str(Path(run_dir).name), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / "loss_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
