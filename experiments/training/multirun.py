"""A summary of a Hydra multirun (``python -m experiments.train -m ...``): one row per job with its
overrides and metrics, written to ``<sweep dir>/summary.md`` and ``summary.csv`` when the sweep ends.
Jobs are folders named by their overrides (``hydra.sweep.subdir``), not 0/1/2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from hydra.experimental.callback import Callback

COLUMNS = ("val/bpb", "val/loss", "train/tokens_per_s", "steps", "tokens_seen", "params", "wall_time_s")


def summarize(sweep_dir: Path) -> str:
    rows = []
    for metrics in sorted(Path(sweep_dir).glob("*/metrics.json")):
        m = json.loads(metrics.read_text())
        rows.append({"job": metrics.parent.name, **{k: m.get(k) for k in COLUMNS}})
    lines = [f"# Multirun summary: {sweep_dir}", "", "| job | " + " | ".join(COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in COLUMNS]
        lines.append(f"| {r['job']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (Path(sweep_dir) / "summary.md").write_text(text)
    with open(Path(sweep_dir) / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["job", *COLUMNS])
        w.writeheader()
        w.writerows(rows)
    return text


class MultirunSummary(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        text = summarize(Path(config.hydra.sweep.dir))
        print(text)
