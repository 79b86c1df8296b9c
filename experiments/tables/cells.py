"""Table cells on disk: where a cell lives, whether it finished, and reading what it holds (its key, a
hash of its composed config, comes from ``tables.keys``).

A cell is ``<results>/cells/<table>/<scale>/<row>/<key>/seed=<n>/``. ``meta.json`` records the key, the
overrides, the code commit and the machines that trained it; ``metrics.json`` the training metrics; one
``<eval>.json`` per evaluation, tagged with the key of the evaluation that wrote it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from experiments.tables.spec import EvalSpec, RowSpec, TableSpec
from experiments.training.checkpointing import last_checkpoint


def default_results(scale: str) -> str:
    return "runs/tables" if scale == "smoke" else "results"


def cell_dir(results: str | Path, table: str, scale: str, row: str, key: str, seed: int) -> Path:
    return Path(results) / "cells" / table / scale / row / key / f"seed={seed}"


def eval_key(ev: EvalSpec) -> str:
    return hashlib.sha256(json.dumps([ev.kind, list(ev.overrides), ev.bytes]).encode()).hexdigest()[:12]


def read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it so that the cell is recomputed") from None


def training_status(cell: Path) -> str | None:
    """``finished``, ``preempted`` (resume it before evaluating) or None (no metrics yet, or older cells)."""
    return (read_json(cell / "metrics.json") or {}).get("status")


def interrupted(cell: Path) -> bool:
    """Its last training stopped before the end (a pre-empted run or retrain): resume it before evaluating."""
    return training_status(cell) == "preempted"


def checkpoint_gone(cell: Path) -> bool:
    """The cell finished training (in an earlier session) and its checkpoint is gone: checkpoints are not
    committed, so an evaluation or a fine-tune that needs its weights must train it again (same key)."""
    if last_checkpoint(cell) is not None:
        return False
    return training_status(cell) == "finished" or bool((read_json(cell / "meta.json") or {}).get("finished"))


def cell_finished(cell: Path, evals: tuple[EvalSpec, ...]) -> bool:
    meta = read_json(cell / "meta.json")
    if not meta or not meta.get("finished") or interrupted(cell):
        return False
    return all((read_json(cell / f"{ev.name}.json") or {}).get("_eval_key") == eval_key(ev) for ev in evals)


def view_dir(cell: Path, row: RowSpec) -> Path:
    """Where a ``cells_of`` row keeps its evaluations of another row's cell."""
    return cell / "views" / row.name


def trained_cell(cell: Path) -> Path:
    """The cell that was trained: a ``cells_of`` row's view (``view_dir``) reads another row's cell."""
    return cell.parent.parent if cell.parent.name == "views" else cell


def pending_evals(spec: TableSpec, row: RowSpec, cell: Path, scale: str) -> list[EvalSpec]:
    return [ev for ev in spec.evals_for(row, scale)
            if (read_json(cell / f"{ev.name}.json") or {}).get("_eval_key") != eval_key(ev)]


def cell_json(cell: Path, name: str) -> dict | None:
    """<cell>/<name>.json; for a cells_of row's view, files it lacks (training metrics, meta) are the
    evaluated cell's."""
    data = read_json(cell / f"{name}.json")
    if trained_cell(cell) != cell and (data is None or name == "meta"):
        data = read_json(trained_cell(cell) / f"{name}.json")
    return data


# metrics.json keys per byte of text, and the per-token key that holds the same value in a byte-level run
# trained before the per-byte keys were written
BYTE_LEVEL_ALIASES = {"flops_per_byte": "flops_per_token", "train/bytes_per_s": "train/tokens_per_s",
                      "bytes_seen": "tokens_seen"}


def metrics_key(metrics: dict, key: str) -> str:
    """The key of ``metrics.json`` that holds ``key``: a per-byte key of a run from before bytes_per_token was
    recorded (byte-level: a byte a token) is read from its per-token twin."""
    if key in BYTE_LEVEL_ALIASES and key not in metrics and "bytes_per_token" not in metrics:
        return BYTE_LEVEL_ALIASES[key]
    return key


def lookup(cell: Path, metric: str) -> float | None:
    """``file/key`` -> the value in <cell>/<file>.json (``metrics/val/bpb`` reads metrics.json)."""
    file, _, key = metric.partition("/")
    data = cell_json(cell, file)
    if data is None:
        return None
    if file == "metrics":
        key = metrics_key(data, key)
    for part in [key] if key in data else key.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return float(data) if isinstance(data, (int, float)) and not isinstance(data, bool) else None
