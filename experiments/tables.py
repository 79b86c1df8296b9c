"""Tables: explicit rows x seeds into cells keyed by what produced them, resumable, aggregated with
the papers' numbers.

    python -m experiments.run_table <name> [--scale cpu|tiny|smoke|paper] [--seeds 0 1 2] [--results DIR]
    python -m experiments.make_table <name> [--scale ...] [--results DIR]

A cell is ``<results>/cells/<table>/<scale>/<row>/<key>/seed=<n>/`` where ``key`` hashes the cell's
composed training config (every resolved value: model, data, optimiser, trainer; and the key of the
row it is fine-tuned from), so a changed config or scale never reuses a cell. ``meta.json`` records
the key, the overrides and the git commit of the code that trained it; a finished cell is skipped,
an interrupted one resumes from its last checkpoint. Smoke runs go to ``runs/tables`` unless
``--results`` says otherwise, never over the committed ``results/``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from experiments.checkpointing import last_checkpoint
from experiments.config import CONFIGS, compose, git_commit, machine_info, to_plain, write_json
from experiments.faults import RunLock
from experiments.table_evals import EVALUATIONS
from experiments.table_spec import EvalSpec, RowSpec, TableSpec, load_table

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


# ---------------------------------------------------------------------------------------------- cells
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


def row_key(spec: TableSpec, row: RowSpec, scale: str, extra: list[str] | None = None) -> str:
    """12 hex digits of a hash of the row's composed config at this scale (seed excluded)."""
    cfg = compose("train", [*row_overrides(spec, row, scale, extra), f"run_dir={PLACEHOLDER_DIR}", "seed=0"])
    tree = to_plain(cfg)
    data = tree.get("data") or {}
    if "pattern" in data and data["pattern"] is None and "path" in data:  # the pattern that applies
        data["pattern"] = "**/*.py" if data["path"] is None else "**/*"
    for k in IGNORED_KEYS:
        _drop(tree, k)
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


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it so that the cell is recomputed") from None


def training_status(cell: Path) -> str | None:
    """``finished``, ``preempted`` (resume it before evaluating) or None (no metrics yet, or older cells)."""
    return (_read_json(cell / "metrics.json") or {}).get("status")


def interrupted(cell: Path) -> bool:
    """Its last training stopped before the end (a pre-empted run or retrain): resume it before evaluating."""
    return training_status(cell) == "preempted"


def checkpoint_gone(cell: Path) -> bool:
    """The cell finished training (in an earlier session) and its checkpoint is gone: checkpoints are not
    committed, so an evaluation or a fine-tune that needs its weights must train it again (same key)."""
    if last_checkpoint(cell) is not None:
        return False
    return training_status(cell) == "finished" or bool((_read_json(cell / "meta.json") or {}).get("finished"))


def cell_finished(cell: Path, evals: tuple[EvalSpec, ...]) -> bool:
    meta = _read_json(cell / "meta.json")
    if not meta or not meta.get("finished") or interrupted(cell):
        return False
    return all((_read_json(cell / f"{ev.name}.json") or {}).get("_eval_key") == eval_key(ev) for ev in evals)


def run_evals(spec: TableSpec, row: RowSpec, cell: Path, scale: str, out_dir: Path | None = None) -> None:
    """Run the row's evaluations on ``cell`` into ``out_dir`` (default: the cell), skipping those done."""
    out_dir = out_dir or cell
    out_dir.mkdir(parents=True, exist_ok=True)
    for ev in spec.evals_for(row, scale):
        out = out_dir / f"{ev.name}.json"
        if (_read_json(out) or {}).get("_eval_key") == eval_key(ev):
            continue
        if last_checkpoint(cell) is None:
            raise FileNotFoundError(f"{cell}: evaluation {ev.name!r} needs the cell's checkpoint, which is gone; "
                                    f"delete {cell} to retrain the cell")
        result = EVALUATIONS[ev.kind](cell, ev, str(out.relative_to(cell)))
        write_json(out, {**result, "_eval_key": eval_key(ev), "_eval": {"kind": ev.kind,
                                                                        "overrides": list(ev.overrides)}})


def set_aside_evals(cell: Path) -> None:
    """A retrain gives the cell new weights: every evaluation of the old ones (its own table's, those of
    tables that read its cells, its views') moves to ``<name>.first.json`` and runs again on the new
    weights, so that no cell mixes numbers from two trainings."""
    for f in sorted([*cell.glob("*.json"), *cell.glob("views/*/*.json")]):
        if not f.name.endswith(".first.json") and "_eval_key" in (_read_json(f) or {}):
            f.replace(f.with_name(f"{f.stem}.first.json"))


def view_dir(cell: Path, row: RowSpec) -> Path:
    """Where a ``cells_of`` row keeps its evaluations of another row's cell."""
    return cell / "views" / row.name


def trained_cell(cell: Path) -> Path:
    """The cell that was trained: a ``cells_of`` row's view (``view_dir``) reads another row's cell."""
    return cell.parent.parent if cell.parent.name == "views" else cell


def run_table(name: str, scale: str | None = None, seeds: list[int] | None = None, results: str | None = None,
              extra: list[str] | None = None, rows: list[str] | None = None) -> list[Path]:
    """Train (or resume) every cell of the table (or of ``rows``) and run its evaluations. A table with
    ``cells_from`` trains nothing of its own: it runs the source table's cells for its rows, then its
    own evaluations on them."""
    spec = load_table(name)
    scale = scale or spec.default_scale
    results = results or default_results(scale)
    seeds = list(seeds) if seeds is not None else list(spec.seeds_for(scale))
    if spec.cells_from:
        print(f"[table] {name} reads the cells of {spec.cells_from}")
        cells = run_table(spec.cells_from, scale, seeds, results, extra, rows=[r.name for r in spec.rows])
        mine = {r.name for r in spec.rows}
        cells = [c for c in cells if c.parent.parent.name in mine]  # .../<row>/<key>/seed=<n>
        source = load_table(spec.cells_from)
        for cell in cells:
            row = spec.row(cell.parent.parent.name)
            stopped = interrupted(cell)
            if pending_evals(spec, row, cell, scale) and (stopped or checkpoint_gone(cell)):
                # a cell trained in another session is retrained; an interrupted retrain resumes
                _train_cell(source, source.row(row.name), scale, int(cell.name[5:]), cell, results, extra,
                            git_commit(), retrain=not stopped)
            run_evals(spec, row, cell, scale)
        return cells
    if rows is not None:  # a subset of rows also needs the rows they start from or evaluate
        todo, rows = list(rows), set()
        while todo:
            r = spec.row(todo.pop())
            rows.add(r.name)
            todo += [p for p in (r.init_from_row, r.cells_of) if p and p not in rows]
    code = git_commit()
    cells = []
    for row in spec.rows:
        if rows is not None and row.name not in rows:
            continue
        src = spec.row(row.cells_of) if row.cells_of else row
        key = row_key(spec, src, scale, extra)
        for seed in [s for s in seeds if s in spec.seeds_for(scale, row) or s not in spec.seeds_for(scale)]:
            cell = cell_dir(results, name, scale, src.name, key, seed)
            tag = f"{name}/{scale}/{row.name}/seed={seed}"
            if row.cells_of:
                if not (_read_json(cell / "meta.json") or {}).get("finished"):
                    raise RuntimeError(f"{tag}: the cell of row {src.name!r} is not finished; run that row first")
                view = view_dir(cell, row)
                run_evals(spec, row, cell, scale, view)
                write_json(view / "meta.json", {"row": row.name, "cells_of": src.name, "finished": _now()})
                cells.append(view)
                continue
            cells.append(cell)
            if cell_finished(cell, spec.evals_for(row, scale)):
                print(f"[table] {tag}: done ({key}), skipped")
                continue
            retrain = bool(pending_evals(spec, row, cell, scale)) and checkpoint_gone(cell)
            _train_cell(spec, row, scale, seed, cell, results, extra, code, retrain=retrain)
    return cells


def pending_evals(spec: TableSpec, row: RowSpec, cell: Path, scale: str) -> list[EvalSpec]:
    return [ev for ev in spec.evals_for(row, scale)
            if (_read_json(cell / f"{ev.name}.json") or {}).get("_eval_key") != eval_key(ev)]


def _train_cell(spec: TableSpec, row: RowSpec, scale: str, seed: int, cell: Path, results: str | Path,
                extra: list[str] | None, code: dict, retrain: bool = False) -> None:
    """Train (or resume) one cell and run its evaluations. ``retrain``: the cell finished in an earlier
    session whose checkpoint is gone (checkpoints are not committed) and an evaluation needs it: train it
    again from scratch with the same config (the key is unchanged), keeping the first run's metrics in
    ``metrics.first.json`` (its evaluations in ``<name>.first.json``: they run again on the new weights)
    and stating any difference in validation bits per byte."""
    from experiments.training import train

    key = cell.parent.name
    tag = f"{spec.name}/{scale}/{row.name}/seed={seed}"
    overrides = [*row_overrides(spec, row, scale, extra), f"seed={seed}", f"run_dir='{cell}'",
                 "ckpt_path=auto", "trainer.enable_progress_bar=false"]
    if row.init_from_row:
        parent_key = row_key(spec, spec.row(row.init_from_row), scale, extra)
        parent = cell_dir(results, spec.name, scale, row.init_from_row, parent_key, seed)
        if checkpoint_gone(parent):  # a fine-tune that starts now, or a retrain, needs the parent's weights
            _train_cell(spec, spec.row(row.init_from_row), scale, seed, parent, results, extra, code, retrain=True)
        overrides.append(f"init_from='{parent}'")
    with RunLock(cell, "table cell"):  # a second run_table on this cell fails at once
        meta = _read_json(cell / "meta.json") or {"table": spec.name, "scale": scale, "row": row.name,
                                                  "seed": seed, "key": key, "overrides": overrides,
                                                  "started": _now()}
        first = None
        if retrain:
            first = _read_json(cell / "metrics.json")
            if first is not None:
                write_json(cell / "metrics.first.json", first)
                (cell / "metrics.json").unlink()
            set_aside_evals(cell)
            meta["retrained"] = {"started": _now(), "why": "an evaluation needs the checkpoint, not kept",
                                 "first_finished": meta.pop("finished", None)}  # unfinished until retrained
            print(f"[table] {tag}: retraining ({key}): its checkpoint is gone and an evaluation needs it",
                  flush=True)
        meta["code"] = code
        here = machine_info()  # bf16 numerics differ between processors: say which trained the cell
        meta["machines"] = [m for m in meta.get("machines", []) if m != here] + [here]
        write_json(cell / "meta.json", meta)
        cfg = compose("train", overrides)
        metrics = _read_json(cell / "metrics.json")
        if metrics is None or metrics.get("steps", -1) < cfg.trainer.max_steps:
            print(f"[table] {tag}: training ({key}: {' '.join(overrides)})", flush=True)
            metrics = train(cfg)
        if first is not None and "val/bpb" in first:
            diff = metrics["val/bpb"] - first["val/bpb"]
            meta["retrained"]["val_bpb_change"] = diff
            print(f"[table] {tag}: retrained val bits/byte {metrics['val/bpb']:.6f} (first run "
                  f"{first['val/bpb']:.6f}, change {diff:+.2e})", flush=True)
        run_evals(spec, row, cell, scale)  # a retrained cell: its own table's, on the new weights
        meta["finished"] = _now()
        write_json(cell / "meta.json", meta)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------------------------------------- reading cells
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
        meta = _read_json(d / "meta.json")
        if meta and meta.get("finished"):
            found[int(d.name.split("=", 1)[1]) if not src_row.cells_of else int(d.parent.parent.name[5:])] = d
    return found


def cell_json(cell: Path, name: str) -> dict | None:
    """<cell>/<name>.json; for a cells_of row's view, files it lacks (training metrics, meta) are the
    evaluated cell's."""
    data = _read_json(cell / f"{name}.json")
    if trained_cell(cell) != cell and (data is None or name == "meta"):
        data = _read_json(trained_cell(cell) / f"{name}.json")
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


def cli_run(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m experiments.run_table")
    ap.add_argument("name")
    ap.add_argument("--scale", default=None, help="a scale of the table (default: its default_scale, cpu)")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--results", default=None, help="default: results (runs/tables for --scale smoke)")
    ap.add_argument("--set", action="append", default=[], help="extra Hydra override for every cell")
    a = ap.parse_args(argv)
    from experiments.table_report import make_table

    run_table(a.name, a.scale, a.seeds, a.results, a.set)
    print(make_table(a.name, a.results, a.scale, a.set))


def cli_make(argv=None):
    import argparse

    from experiments.table_report import make_table

    ap = argparse.ArgumentParser(prog="python -m experiments.make_table")
    ap.add_argument("name")
    ap.add_argument("--scale", default=None)
    ap.add_argument("--results", default=None)
    ap.add_argument("--set", action="append", default=[], help="the --set overrides the cells were run with")
    a = ap.parse_args(argv)
    print(make_table(a.name, a.results, a.scale, a.set))


__all__ = ["cell_dir", "cell_json", "cli_make", "cli_run", "lookup", "row_cells", "row_key", "run_table"]
