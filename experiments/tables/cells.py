"""Table cells: where a cell lives, the key that names it (a hash of its composed config, so a changed
config never reuses a cell), and reading what finished cells hold.

A cell is ``<results>/cells/<table>/<scale>/<row>/<key>/seed=<n>/``. ``meta.json`` records the key, the
overrides, the code commit and the machines that trained it; ``metrics.json`` the training metrics; one
``<eval>.json`` per evaluation, tagged with the key of the evaluation that wrote it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from experiments.config import CONFIGS, compose, to_plain
from experiments.tables.spec import EvalSpec, RowSpec, TableSpec, load_table
from experiments.training.checkpointing import last_checkpoint

REPO = CONFIGS.parent
PLACEHOLDER_DIR = "CELL"
# values that never change what a cell computes
IGNORED_KEYS = ("run_dir", "seed", "ckpt_path", "init_from", "trainer.enable_progress_bar", "data.cache_dir",
                "callbacks.checkpoint.enable_version_counter")
# config keys added after cells were keyed, with the value that reproduces the behaviour from before
# they existed: at that value a key is left out of the hash, so adding a neutral option never orphans
# finished cells (any other value changes the key). Append here whenever a config gains a key.
NEUTRAL_ADDITIONS: dict[str, object] = {
    "data.source": "auto", "data.text_field": "text", "data.doc_separator": None, "data.block_bytes": None,
    "data.split_bytes": None, "data.hf_name": None, "data.hf_config": None,
    "model.net.attention_dropout_mode": "post_softmax", "model.net.checkpoint_layers": False,
    "data.loss_on": "all", "parallel.sequence": 1, "data.segment_len": None,
}
# classes that moved to another module (a ``_target_`` says where code lives, not what a cell computes): the
# name a key was computed with, so that reorganising the code never orphans finished cells
MOVED_TARGETS: dict[str, str] = {
    "experiments.training.loggers.ResumableCSVLogger": "experiments.loggers.ResumableCSVLogger",
    "experiments.training.parallel.block_classes": "experiments.parallel.block_classes",
}
# the same for fields an architecture's config gained (at their defaults), by the net's _target_
_MEMORY_DEFAULTS: dict[str, object] = {
    "memory_layers": [], "memory_backend": "exact", "memory_index": "flat", "memory_capacity": 65536,
    "memory_k": 128, "memory_nlist": 64, "memory_nprobe": 8, "memory_hnsw_m": 32, "memory_ef_search": 64,
    "memory_threads": 1,
}
NEUTRAL_NET_ADDITIONS: dict[str, dict[str, object]] = {
    "architectures.megalodon.Megalodon": _MEMORY_DEFAULTS,
    "architectures.megabyte.Megabyte": {**_MEMORY_DEFAULTS, "global_window": 0},
}


def default_results(scale: str) -> str:
    return "runs/tables" if scale == "smoke" else "results"


def row_overrides(spec: TableSpec, row: RowSpec, scale: str, extra: list[str] | None = None) -> list[str]:
    if scale not in spec.scales:
        raise ValueError(f"table {spec.name!r} has no scale {scale!r}; it has {sorted(spec.scales)}")
    return [f"experiment={row.experiment}", *spec.scales[scale], *row.overrides,
            *row.scale_overrides.get(scale, []), *(extra or [])]


_MISSING = object()


def _get(tree: dict, dotted: str, default=None):
    for p in dotted.split("."):
        if not isinstance(tree, dict) or p not in tree:
            return default
        tree = tree[p]
    return tree


def _drop(tree: dict, dotted: str) -> None:
    """Remove ``dotted`` from ``tree``, and any parent it leaves empty (a group that only held it)."""
    *parents, last = dotted.split(".")
    path = [tree]
    for p in parents:
        node = path[-1].get(p) if isinstance(path[-1], dict) else None
        if node is None:
            return
        path.append(node)
    if not isinstance(path[-1], dict):
        return
    path[-1].pop(last, None)
    for node, key in zip(reversed(path[:-1]), reversed(parents)):
        if node.get(key) == {}:
            node.pop(key)


def _unmove_targets(tree) -> None:
    if isinstance(tree, dict):
        if tree.get("_target_") in MOVED_TARGETS:
            tree["_target_"] = MOVED_TARGETS[tree["_target_"]]
        for v in tree.values():
            _unmove_targets(v)
    elif isinstance(tree, list):
        for v in tree:
            _unmove_targets(v)


def row_key(spec: TableSpec, row: RowSpec, scale: str, extra: list[str] | None = None) -> str:
    """12 hex digits of a hash of the row's composed config at this scale (seed excluded)."""
    cfg = compose("train", [*row_overrides(spec, row, scale, extra), f"run_dir={PLACEHOLDER_DIR}", "seed=0"])
    tree = to_plain(cfg)
    data = tree.get("data") or {}
    if "pattern" in data and data["pattern"] is None and "path" in data:  # the pattern that applies
        data["pattern"] = "**/*.py" if data["path"] is None else "**/*"
    for k in IGNORED_KEYS:
        _drop(tree, k)
    _unmove_targets(tree)
    neutral_net = NEUTRAL_NET_ADDITIONS.get(str(_get(tree, "model.net._target_")), {})
    for k, neutral in [*NEUTRAL_ADDITIONS.items(), *((f"model.net.{f}", v) for f, v in neutral_net.items())]:
        if _get(tree, k, _MISSING) == neutral:
            _drop(tree, k)
    parent = "" if row.init_from_row is None else row_key(spec, spec.row(row.init_from_row), scale, extra)
    blob = json.dumps({"config": tree, "init_from": parent}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


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


def row_cells(spec: TableSpec, row: RowSpec, scale: str, results: str | Path, extra=None) -> dict[int, Path]:
    """Finished cells of the row's current key, by seed (any seed found on disk, not only the spec's)."""
    source = load_table(spec.cells_from) if spec.cells_from else spec
    src_row = source.row(row.name)
    trained = source.row(src_row.cells_of) if src_row.cells_of else src_row
    key = row_key(source, trained, scale, extra)
    base = Path(results) / "cells" / source.name / scale / trained.name / key
    found = {}
    for d in sorted(base.glob("seed=*")):
        d = view_dir(d, src_row) if src_row.cells_of else d
        meta = read_json(d / "meta.json")
        if meta and meta.get("finished"):
            found[int(d.name.split("=", 1)[1]) if not src_row.cells_of else int(d.parent.parent.name[5:])] = d
    return found


def cell_json(cell: Path, name: str) -> dict | None:
    """<cell>/<name>.json; for a cells_of row's view, files it lacks (training metrics, meta) are the
    evaluated cell's."""
    data = read_json(cell / f"{name}.json")
    if trained_cell(cell) != cell and (data is None or name == "meta"):
        data = read_json(trained_cell(cell) / f"{name}.json")
    return data


def lookup(cell: Path, metric: str) -> float | None:
    """``file/key`` -> the value in <cell>/<file>.json (``metrics/val/bpb`` reads metrics.json)."""
    file, _, key = metric.partition("/")
    data = cell_json(cell, file)
    if data is None:
        return None
    for part in [key] if key in data else key.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return float(data) if isinstance(data, (int, float)) and not isinstance(data, bool) else None
