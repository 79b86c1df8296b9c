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

import itertools
import re
import time
from pathlib import Path

from experiments.config import compose, write_json
from experiments.provenance import git_commit, machine_info
from experiments.tables.cells import (
    cell_dir,
    cell_finished,
    checkpoint_gone,
    default_results,
    eval_key,
    interrupted,
    pending_evals,
    read_json,
    view_dir,
)
from experiments.tables.corpora import check_table_corpus
from experiments.tables.evals import EVALUATIONS, check_overrides
from experiments.tables.keys import (
    TuningPending,
    lr_source,
    lr_text,
    row_key,
    row_overrides,
    tuned_lr,
    tuned_rows,
    tuning_cell,
)
from experiments.tables.spec import RowSpec, TableSpec, load_table
from experiments.training.checkpointing import last_checkpoint
from experiments.training.faults import RunLock


def run_evals(spec: TableSpec, row: RowSpec, cell: Path, scale: str, code: dict, out_dir: Path | None = None) -> None:
    """Run the row's evaluations on ``cell`` into ``out_dir`` (default: the cell), skipping those done; each
    result records ``code`` (the commit this process runs) and the machine."""
    out_dir = out_dir or cell
    out_dir.mkdir(parents=True, exist_ok=True)
    for ev in spec.evals_for(row, scale):
        out = out_dir / f"{ev.name}.json"
        if (read_json(out) or {}).get("_eval_key") == eval_key(ev):
            continue
        if last_checkpoint(cell) is None:
            raise FileNotFoundError(f"{cell}: evaluation {ev.name!r} needs the cell's checkpoint, which is gone; "
                                    f"delete {cell} to retrain the cell")
        result = EVALUATIONS[ev.kind](cell, ev, str(out.relative_to(cell)))
        write_json(out, {**result, "_eval_key": eval_key(ev), "_eval": {
            "kind": ev.kind, "overrides": list(ev.overrides), "code": code, "machine": machine_info()}})


SET_ASIDE = re.compile(r"\.(first|run\d+)\.json$")  # the results of earlier weights


def _aside_names(f: Path):
    """The names ``set_aside`` gives ``<name>.json``, in the order it uses them."""
    yield f.with_name(f"{f.stem}.first.json")
    for k in itertools.count(2):
        yield f.with_name(f"{f.stem}.run{k}.json")


def set_aside(f: Path) -> Path:
    """Move ``<name>.json`` of weights being replaced to ``<name>.first.json``, or, when the first run's is
    already there (a cell retrained again), to ``<name>.run<k>.json``: no earlier run's numbers are lost."""
    target = next(p for p in _aside_names(f) if not p.exists())
    f.replace(target)
    return target


def last_set_aside(f: Path) -> Path:
    """The ``set_aside`` copy of ``f`` made last (``<name>.run<k>.json`` with the largest k, else
    ``<name>.first.json``)."""
    names = _aside_names(f)
    last = next(names)
    for p in names:
        if not p.exists():
            return last
        last = p


def set_aside_evals(cell: Path) -> None:
    """A retrain gives the cell new weights: every evaluation of the old ones (its own table's, those of
    tables that read its cells, its views') is set aside (``set_aside``) and runs again on the new
    weights, so that no cell mixes numbers from two trainings."""
    for f in sorted([*cell.glob("*.json"), *cell.glob("views/*/*.json")]):
        if not SET_ASIDE.search(f.name) and "_eval_key" in (read_json(f) or {}):
            set_aside(f)


def run_table(name: str | TableSpec, scale: str | None = None, seeds: list[int] | None = None,
              results: str | None = None, extra: list[str] | None = None, rows: list[str] | None = None) -> list[Path]:
    """Train (or resume) every cell of the table (or of ``rows``) and run its evaluations; rows with a tuned
    learning rate first run their tuning cells. A table with ``cells_from`` trains nothing of its own: it
    runs the source table's cells for its rows, then its own evaluations on them."""
    spec = name if isinstance(name, TableSpec) else load_table(name)
    name = spec.name
    scale = scale or spec.default_scale
    results = results or default_results(scale)
    seeds = list(seeds) if seeds is not None else list(spec.seeds_for(scale))
    check_overrides(spec, scale)  # an evaluation that cannot run stops the table now, not after its training
    code = git_commit()  # the code this process loaded, recorded by what it trains and evaluates
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
                            code, retrain=not stopped)
            run_evals(spec, row, cell, scale, code)
        return cells
    if rows is not None:  # a subset of rows also needs the rows they start from or evaluate
        todo, rows = list(rows), set()
        while todo:
            r = spec.row(todo.pop())
            rows.add(r.name)
            todo += [p for p in (r.init_from_row, r.cells_of) if p and p not in rows]
    cells = []
    for row in spec.rows_at(scale):
        if rows is not None and row.name not in rows:
            continue
        src = spec.row(row.cells_of) if row.cells_of else row
        if src.name in tuned_rows(spec) or src.lr_from:
            other, tuned = lr_source(spec, src)
            tune(other, tuned, scale, results, extra if other is spec else None, code)
        key = row_key(spec, src, scale, extra, results=results)
        for seed in [s for s in seeds if s in spec.seeds_for(scale, row) or s not in spec.seeds_for(scale)]:
            cell = cell_dir(results, name, scale, src.name, key, seed)
            tag = f"{name}/{scale}/{row.name}/seed={seed}"
            if row.cells_of:
                if not (read_json(cell / "meta.json") or {}).get("finished"):
                    raise RuntimeError(f"{tag}: the cell of row {src.name!r} is not finished; run that row first")
                view = view_dir(cell, row)
                run_evals(spec, row, cell, scale, code, view)
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


def tune(spec: TableSpec, row: RowSpec, scale: str, results: str | Path, extra: list[str] | None,
         code: dict) -> float:
    """Train the row's tuning cells until its best rate is inside the grid (extending it at an edge); a scale
    that uses another scale's rates (``tune.use_scale``) trains none and fails, naming the command, if
    they are missing."""
    while True:
        try:
            lr = tuned_lr(spec, row, scale, extra, results)
            print(f"[table] {spec.name}/{scale}/{row.name}: tuned learning rate {lr_text(lr)}", flush=True)
            return lr
        except TuningPending as pending:
            if pending.scale != scale:
                raise
            for lr in pending.missing:
                cell = tuning_cell(spec, row, scale, lr, results, extra)
                if not (read_json(cell / "meta.json") or {}).get("finished"):
                    print(f"[table] {spec.name}/{scale}/{row.name}: tuning at lr={lr_text(lr)}", flush=True)
                    _train_cell(spec, row, scale, spec.tune.seed, cell, results, extra, code, lr=lr)


def _train_cell(spec: TableSpec, row: RowSpec, scale: str, seed: int, cell: Path, results: str | Path,
                extra: list[str] | None, code: dict, retrain: bool = False, lr: float | None = None) -> None:
    """Train (or resume) one cell and run its evaluations. ``retrain``: the cell finished in an earlier
    session whose checkpoint is gone (checkpoints are not committed) and an evaluation needs it: train it
    again from scratch with the same config (the key is unchanged), keeping the first run's metrics in
    ``metrics.first.json`` (its evaluations in ``<name>.first.json``: they run again on the new weights)
    and stating any difference in validation bits per byte. ``lr``: a tuning cell at that rate (trained,
    not evaluated: its evaluations run if the rate is chosen and the cell becomes one of the row's)."""
    from experiments.training.run import train

    key = cell.parent.name
    tag = f"{spec.name}/{scale}/{row.name}/seed={seed}"
    overrides = [*row_overrides(spec, row, scale, extra, lr, results), f"seed={seed}", f"run_dir='{cell}'",
                 "ckpt_path=auto", "trainer.enable_progress_bar=false"]
    if row.init_from_row:
        parent_key = row_key(spec, spec.row(row.init_from_row), scale, extra, results=results)
        parent = cell_dir(results, spec.name, scale, row.init_from_row, parent_key, seed)
        if checkpoint_gone(parent):  # a fine-tune that starts now, or a retrain, needs the parent's weights
            _train_cell(spec, spec.row(row.init_from_row), scale, seed, parent, results, extra, code, retrain=True)
        overrides.append(f"init_from='{parent}'")
    with RunLock(cell, "table cell"):  # a second run_table on this cell fails at once
        cfg = compose("train", overrides)
        check_table_corpus(results, spec.name, scale, cfg, tag)  # before the cell's records change
        meta = read_json(cell / "meta.json") or {"table": spec.name, "scale": scale, "row": row.name,
                                                  "seed": seed, "key": key, "overrides": overrides,
                                                  "started": _now()}
        first = None
        if retrain:
            first = read_json(cell / "metrics.json")
            if first is not None:
                set_aside(cell / "metrics.json")
            set_aside_evals(cell)
            if "retrained" in meta:  # retrained before: that retrain's record stays
                meta.setdefault("earlier_retrains", []).append(meta["retrained"])
            meta["retrained"] = {"started": _now(), "why": "an evaluation needs the checkpoint, not kept",
                                 "first_finished": meta.pop("finished", None)}  # unfinished until retrained
            print(f"[table] {tag}: retraining ({key}): its checkpoint is gone and an evaluation needs it",
                  flush=True)
        elif "retrained" in meta and "val_bpb_change" not in meta["retrained"]:  # a retrain resumed
            first = read_json(last_set_aside(cell / "metrics.json"))
        metrics = read_json(cell / "metrics.json")
        if metrics is None or metrics.get("steps", -1) < cfg.trainer.max_steps:
            # the code and machine that train it (a new evaluation of a trained cell records its own)
            meta["code"] = code
            here = machine_info()  # bf16 numerics differ between processors: say which trained the cell
            meta["machines"] = [m for m in meta.get("machines", []) if m != here] + [here]
            write_json(cell / "meta.json", meta)
            print(f"[table] {tag}: training ({key}: {' '.join(overrides)})", flush=True)
            metrics = train(cfg)
        if first is not None and "val/bpb" in first:
            diff = metrics["val/bpb"] - first["val/bpb"]
            meta["retrained"]["val_bpb_change"] = diff
            print(f"[table] {tag}: retrained val bits/byte {metrics['val/bpb']:.6f} (first run "
                  f"{first['val/bpb']:.6f}, change {diff:+.2e})", flush=True)
        if lr is None:
            run_evals(spec, row, cell, scale, code)  # a retrained cell: its own table's, on the new weights
        meta["finished"] = _now()
        write_json(cell / "meta.json", meta)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def cli_run(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m experiments.run_table")
    ap.add_argument("name")
    ap.add_argument("--scale", default=None, help="a scale of the table (default: its default_scale, cpu)")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--results", default=None, help="default: results (runs/tables for --scale smoke)")
    ap.add_argument("--set", action="append", default=[], help="extra Hydra override for every cell")
    ap.add_argument("--rows", nargs="+", help="train and evaluate only these rows (the report shows every row)")
    a = ap.parse_args(argv)
    from experiments.tables.report import make_table

    spec = load_table(a.name)
    unknown = sorted(set(a.rows or ()) - {r.name for r in spec.rows})
    if unknown:
        raise ValueError(f"--rows {unknown}: table {a.name!r} has rows {[r.name for r in spec.rows]}")
    run_table(spec, a.scale, a.seeds, a.results, a.set, rows=a.rows)
    print(make_table(a.name, a.results, a.scale, a.set))


__all__ = ["cli_run", "run_evals", "run_table"]
