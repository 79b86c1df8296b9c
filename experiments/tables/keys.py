"""What configuration a table cell has, and the key that names it: the row's overrides at a scale, the
sizing rule's widths (``spec.match``) and the tuned learning rate (``spec.tune``), hashed over the composed
config so that a changed config never reuses a cell."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import yaml

from experiments.config import CONFIGS, compose, to_plain
from experiments.tables.canonical import canonical, dotted
from experiments.tables.cells import cell_dir, default_results, lookup, read_json, view_dir
from experiments.tables.sizing import bytes_per_token, match, measure
from experiments.tables.spec import RowSpec, TableSpec, load_table

REPO = CONFIGS.parent
PLACEHOLDER_DIR = "CELL"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _base_overrides(spec: TableSpec, row: RowSpec, scale: str, extra: list[str] | None = None) -> list[str]:
    if scale not in spec.scales:
        raise ValueError(f"table {spec.name!r} has no scale {scale!r}; it has {sorted(spec.scales)}")
    return [*([f"experiment={row.experiment}"] if row.experiment else []), *spec.scales[scale], *row.overrides,
            *row.scale_overrides.get(scale, []), *(extra or [])]


def row_overrides(spec: TableSpec, row: RowSpec, scale: str, extra: list[str] | None = None,
                  lr: float | None = None, results: str | Path | None = None) -> list[str]:
    """The overrides of the row's cells at ``scale``: experiment, scale, row, extra, then the sizing rule's
    widths and the tuned learning rate. ``lr``: a tuning cell's (that rate, with the tuning budget)."""
    base = _base_overrides(spec, row, scale, extra)
    base += sizing_overrides(spec, row, scale, base, extra)
    if lr is not None:
        return [*base, *spec.tune.overrides, *spec.tune.scale_overrides.get(scale, []), f"optim.lr={lr_text(lr)}"]
    tuned = tuned_lr(spec, row, scale, extra, results)
    return base if tuned is None else [*base, f"optim.lr={lr_text(tuned)}"]


def row_key(spec: TableSpec, row: RowSpec, scale: str, extra: list[str] | None = None, lr: float | None = None,
            results: str | Path | None = None) -> str:
    """12 hex digits of a hash of the row's composed config at this scale (seed excluded)."""
    tree = canonical(composed(row_overrides(spec, row, scale, extra, lr, results)))
    parent = "" if row.init_from_row is None else row_key(spec, spec.row(row.init_from_row), scale, extra,
                                                          results=results)
    blob = json.dumps({"config": tree, "init_from": parent}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def row_cells(spec: TableSpec, row: RowSpec, scale: str, results: str | Path, extra=None) -> dict[int, Path]:
    """Finished cells of the row's current key, by seed (any seed found on disk, not only the spec's); none
    while the row's learning rate is not tuned."""
    source = load_table(spec.cells_from) if spec.cells_from else spec
    src_row = source.row(row.name)
    trained = source.row(src_row.cells_of) if src_row.cells_of else src_row
    try:
        key = row_key(source, trained, scale, extra, results=results)
    except TuningPending:
        return {}
    base = Path(results) / "cells" / source.name / scale / trained.name / key
    found = {}
    for d in sorted(base.glob("seed=*")):
        d = view_dir(d, src_row) if src_row.cells_of else d
        meta = read_json(d / "meta.json")
        if meta and meta.get("finished"):
            found[int(d.name.split("=", 1)[1]) if not src_row.cells_of else int(d.parent.parent.name[5:])] = d
    return found


class TuningPending(LookupError):
    """A row's learning rate is not tuned yet: ``missing`` rates still need their tuning cell."""

    def __init__(self, message: str, missing: list[float], scale: str):
        super().__init__(message)
        self.missing, self.scale = missing, scale


def _value(v) -> str:
    """A Hydra override value."""
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return repr(v) if isinstance(v, float) else str(v)


def lr_text(lr: float) -> str:
    return f"{lr:.4g}"


@functools.lru_cache(maxsize=1024)
def _composed(overrides: tuple[str, ...]) -> str:
    return json.dumps(to_plain(compose("train", [*overrides, f"run_dir={PLACEHOLDER_DIR}", "seed=0"])),
                      sort_keys=True, default=str)


def composed(overrides: list[str]) -> dict:
    """The plain composed training config of these overrides (run_dir and seed at placeholders), cached."""
    return json.loads(_composed(tuple(overrides)))


def sizing_overrides(spec: TableSpec, row: RowSpec, scale: str, base: list[str], extra: list[str] | None) -> list[str]:
    """``model.net.*`` overrides that size the row to the reference (``spec.match``), or none. A row fine-tuned
    from another (``init_from_row``) has its parent's size: the parent's widths, whatever the rule says. A
    token-level row (``data.tokenizer``) also gets ``data.seq_len``: windows of the reference's bytes on average
    (the same training bytes per step), its FLOPs matched per byte of text."""
    m = spec.match
    if m is not None and row.init_from_row is not None:
        parent = spec.row(row.init_from_row)
        return sizing_overrides(spec, parent, scale, _base_overrides(spec, parent, scale, extra), extra)
    if m is None or m.rule == "none" or row.name == m.reference or (m.rows is not None and row.name not in m.rows):
        return []
    ref = composed(_base_overrides(spec, spec.row(row.match_to or m.reference), scale, extra))
    mine = composed(base)
    out = []
    ref_bpt, my_bpt = bytes_per_token(ref["data"]), bytes_per_token(mine["data"])
    if (ref_bpt, my_bpt) != (1.0, 1.0):  # tokens: windows of the reference's bytes, FLOPs matched per byte
        seq_len = max(1, round(int(ref["data"]["seq_len"]) * ref_bpt / my_bpt))
        if seq_len != int(mine["data"]["seq_len"]):
            out.append(f"data.seq_len={seq_len}")
            mine = composed([*base, *out])
    target = measure(ref["model"]["net"], int(ref["data"]["seq_len"])).value(m.rule)
    if m.rule == "flops":  # per byte, in the row's own units (per token)
        target *= my_bpt / ref_bpt
    changed, _ = match(mine["model"]["net"], int(mine["data"]["seq_len"]), target, m.rule, m.tolerance,
                       what=f"table {spec.name!r} row {row.name!r}")
    return [*out, *(f"model.net.{k}={_value(v)}" for k, v in sorted(changed.items()))]


def lr_source(spec: TableSpec, row: RowSpec) -> tuple[TableSpec, RowSpec]:
    """The table and row whose tuned rate ``row`` trains at: its own, the row named by ``lr_from``, or, for
    ``lr_from: <table>:<row>``, that row of another table (a rate transferred from it, e.g. the same model size
    tuned on another corpus)."""
    if row.lr_from is None:
        return spec, row
    other = load_table(row.lr_table) if row.lr_table else spec
    return other, other.row(row.lr_row)


def tuned_rows(spec: TableSpec) -> list[str]:
    """Rows with a tuning stage of their own (not those that take another row's rate, ``lr_from``)."""
    t = spec.tune
    return [] if t is None else [r.name for r in spec.rows
                                 if (t.rows is None or r.name in t.rows) and r.lr_from is None]


def tuning_scale(spec: TableSpec, scale: str) -> str:
    return spec.tune.use_scale.get(scale, scale)


def tuning_cell(spec: TableSpec, row: RowSpec, scale: str, lr: float, results: str | Path,
                extra: list[str] | None = None) -> Path:
    """The tuning cell of ``row`` at ``lr`` (the row's own cell of the tuning seed when the tuning budget is
    the row's, else a cell of ``<row>.tune``)."""
    return cell_dir(results, spec.name, scale, tuning_name(spec, row), row_key(spec, row, scale, extra, lr=lr),
                    spec.tune.seed)


def tuning_name(spec: TableSpec, row: RowSpec) -> str:
    return row.name if not spec.tune.overrides else f"{row.name}.tune"


def tuning_rates(spec: TableSpec) -> list[float]:
    """Every rate a tuning cell may have: the grid and its possible extensions at either edge."""
    t = spec.tune
    return [float(lr_text(t.grid[0] * t.ratio**k)) for k in range(-t.max_extensions, len(t.grid) + t.max_extensions)]


def cell_lr(cell: Path) -> float | None:
    """The learning rate a cell was trained at, from its config.yaml (None: no such file)."""
    path = cell / "config.yaml"
    lr = dotted(yaml.load(path.read_text(), Loader=_YAML_LOADER), "optim.lr") if path.exists() else None
    return None if lr is None else float(lr_text(float(lr)))


def tuning_results(spec: TableSpec, row: RowSpec, scale: str, results: str | Path,
                   extra: list[str] | None = None) -> dict[float, float]:
    """{rate: metric} of the row's finished tuning cells over the grid and its possible extensions."""
    t = spec.tune
    folder = Path(results) / "cells" / spec.name / scale / tuning_name(spec, row)
    # a key is composed (the slow part) only at the rates the folder's cells were trained at, unless one's is unknown
    trained = {cell_lr(c.parent) for c in folder.glob(f"*/seed={t.seed}/meta.json")}
    out = {}
    for lr in tuning_rates(spec):
        if lr not in trained and None not in trained:
            continue
        cell = tuning_cell(spec, row, scale, lr, results, extra)
        if (read_json(cell / "meta.json") or {}).get("finished"):
            value = lookup(cell, t.metric)
            if value is not None:
                out[lr] = value
    return out


def tuned_lr(spec: TableSpec, row: RowSpec, scale: str, extra: list[str] | None = None,
             results: str | Path | None = None) -> float | None:
    """The row's tuned learning rate (None: the row is not tuned). Reads the tuning cells of the tuning scale
    (``tune.use_scale``; from that scale's default results when it is not this scale); raises TuningPending
    naming the rates still to run, or ValueError when the best stays at an edge after every extension."""
    if row.lr_from is not None:
        other, src = lr_source(spec, row)
        return tuned_lr(other, src, scale, extra if other is spec else None, results)
    if row.name not in tuned_rows(spec):
        return None
    t, tscale = spec.tune, tuning_scale(spec, scale)
    res = results if (tscale == scale and results is not None) else default_results(tscale)
    values = tuning_results(spec, row, tscale, res, extra)
    where = f"table {spec.name!r} row {row.name!r}: learning rates"
    grid = [float(lr_text(g)) for g in t.grid]
    missing = [g for g in grid if g not in values]
    if missing:
        raise TuningPending(f"{where} {missing} are not tuned at scale {tscale!r} under {res}; run "
                            f"`python -m experiments.run_table {spec.name} --scale {tscale}` first", missing, tscale)
    tried = set(grid)
    for _ in range(t.max_extensions + 1):
        best = min(tried, key=lambda lr: values[lr])
        if min(tried) < best < max(tried):
            return best
        nxt = float(lr_text(best / t.ratio if best == min(tried) else best * t.ratio))
        if len(tried) - len(grid) >= t.max_extensions:
            break
        if nxt not in values:
            raise TuningPending(f"{where}: the best of {sorted(tried)} is {best:g}, at an edge of the grid; "
                                f"{nxt:g} is not tuned yet", [nxt], tscale)
        tried.add(nxt)
    raise ValueError(f"{where}: the best rate is still at an edge of {sorted(tried)} after {t.max_extensions} "
                     "extensions; widen tune.grid or raise tune.max_extensions")
