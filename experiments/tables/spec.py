"""Typed table specs: ``configs/table/<name>.yaml`` parsed into frozen dataclasses that reject
unknown keys (naming the allowed ones), so a typo in a table fails when it is loaded, not after an
hour of training.

A table lists explicit rows (``configs/experiment/<experiment>.yaml`` each) x seeds at one of its
scales, the evaluations run on every cell, the metrics aggregated, the papers' numbers and an
optional figure. The human-written finding lives apart, in ``results/findings/<name>.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from experiments.config import CONFIGS
from experiments.tables.protocol import MatchSpec, ScalingSpec, TuneSpec, check_protocol


def _build(cls, values: Any, where: str):
    """``cls(**values)`` after checking that every key is a field of ``cls``; nested specs are built
    from their own dicts (lists of them too)."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping with keys {_keys(cls)}, got {values!r}")
    unknown = sorted(set(values) - set(_keys(cls)))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed keys are {_keys(cls)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in values.items():
        hint = hints[k]
        inner = _spec_type(hint)
        if inner is not None and v is not None:
            if isinstance(v, list):
                v = tuple(_build(inner, item, f"{where}.{k}[{i}]") for i, item in enumerate(v))
            else:
                v = _build(inner, v, f"{where}.{k}")
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key is missing
        raise ValueError(f"{where}: {e}; allowed keys are {_keys(cls)}") from None


def _keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _spec_type(hint) -> type | None:
    for t in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(t):
            return t
        for a in typing.get_args(t):
            if dataclasses.is_dataclass(a):
                return a
    return None


@dataclass(frozen=True)
class MetricSpec:
    key: str  # "<json file>/<key>" inside a cell: metrics/val/bpb reads metrics.json["val/bpb"]
    label: str | None = None
    digits: int = 4
    lower_is_better: bool = True  # the direction a finding's "a < b" claim reads as "a is better"
    interval: bool = False  # a bits-per-byte key of an eval with per-unit losses: 95% intervals, paired differences


@dataclass(frozen=True)
class EvalSpec:
    name: str  # writes <cell>/<name>.json
    kind: str  # a key of experiments.table_evals.EVALUATIONS
    overrides: tuple[str, ...] = ()  # Hydra overrides of the kind's entry config
    bytes: int | None = None  # generation: bytes to sample
    scale_overrides: dict = field(default_factory=dict)  # {scale: [overrides]} appended at that scale

    def at(self, scale: str) -> EvalSpec:
        """This evaluation as run at ``scale``."""
        extra = tuple(self.scale_overrides.get(scale, ()))
        return dataclasses.replace(self, overrides=self.overrides + extra, scale_overrides={})


@dataclass(frozen=True)
class RowSpec:
    name: str
    experiment: str | None = None  # configs/experiment/<experiment>.yaml (None: the overrides say it all)
    label: str | None = None
    paper: dict = field(default_factory=dict)  # the papers' numbers, by paper column
    overrides: tuple[str, ...] = ()  # Hydra overrides for this row at every scale
    scale_overrides: dict = field(default_factory=dict)  # {scale: [overrides]} for this row only
    evals: tuple[EvalSpec, ...] = ()  # run on this row's cells besides the table's
    skip_table_evals: bool = False
    init_from_row: str | None = None  # fine-tune from that row's cell of the same seed
    seeds: tuple[int, ...] | None = None  # this row's seeds (None: the table's): secondary rows may run fewer
    not_applicable: tuple[str, ...] = ()  # more metric keys undefined for this row (n/a, not missing); those of
    # an eval that another row runs and this one does not are n/a without being listed
    cells_of: str | None = None  # evaluate the cells of that (earlier) row instead of training its own
    lr_from: str | None = None  # train at that (tuned) row's learning rate instead of tuning its own
    match_to: str | None = None  # the reference this row is sized to (default: the table's match.reference)
    group: dict = field(default_factory=dict)  # what the row is a point of (scaling: arch, size, budget)
    scales: tuple[str, ...] | None = None  # the scales where the row exists (None: every scale)

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def lr_table(self) -> str | None:
        """The other table whose tuned row ``lr_from: <table>:<row>`` names (None: this table, or no lr_from)."""
        return None if self.lr_from is None else (self.lr_from.rpartition(":")[0] or None)

    @property
    def lr_row(self) -> str | None:
        """The row whose tuned rate this row trains at (in ``lr_table`` or this table); None: its own."""
        return None if self.lr_from is None else self.lr_from.rpartition(":")[2]


@dataclass(frozen=True)
class FigureSpec:
    file: str  # the eval JSON (without .json) holding the curve
    path: str  # dotted path to a list of points inside it
    x: str
    y: str
    series: str | None = None
    xlabel: str | None = None
    ylabel: str | None = None
    logx: bool = True
    panels: bool = False  # one panel per series value (rows are the lines), instead of rows x series lines


@dataclass(frozen=True)
class HeatmapSpec:
    """A grid of heat maps, one row per table row and one column per panel, mean over seeds: the eval
    JSON ``file`` lists its panels under ``panels`` (e.g. tasks) and holds ``{panel: {grid: {x: {y:
    value | None}}}}`` (None: not applicable)."""
    file: str
    panels: str
    grid: str = "accuracy"
    xlabel: str | None = None
    ylabel: str | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    rows: tuple[RowSpec, ...]
    metrics: tuple[MetricSpec, ...]
    scales: dict = field(default_factory=dict)  # {scale: [Hydra overrides for every cell]}; cells_from: the source's
    note: str = ""  # what the table measures and how (generated part); the finding is separate
    command: str | None = None
    seeds: tuple[int, ...] = (0,)
    scale_seeds: dict = field(default_factory=dict)  # {scale: [seeds]} where a scale differs
    evals: tuple[EvalSpec, ...] = ()
    paper_columns: tuple[str, ...] = ()
    figure: FigureSpec | None = None
    heatmaps: HeatmapSpec | None = None
    curves: bool = False  # learning-curve figure (val bpb vs bytes and vs training FLOPs) per row
    cells_from: str | None = None  # read the cells of another table (its rows must exist there)
    default_scale: str = "cpu"  # the scale published as results/<name>.md
    match: MatchSpec | None = None  # rows sized to a reference row's compute (or parameters)
    tune: TuneSpec | None = None  # rows at their tuned learning rates
    scaling: ScalingSpec | None = None  # loss-vs-compute fits over the rows' groups
    differences_within: tuple[str, ...] = ()  # pair only rows whose ``group`` agrees on these keys (default: all)
    contrasts: tuple[tuple[str, str], ...] = ()  # [a, b] metric keys: a − b within each row, paired over its units
    context_pairs: tuple[tuple[str, str], ...] = ()  # [a, b] row names: a − b at every context (context evaluations)

    def seeds_for(self, scale: str, row: RowSpec | None = None) -> tuple[int, ...]:
        """The seeds of a scale: ``scale_seeds`` if given, the first seed only for smoke, else ``seeds``."""
        seeds = tuple(self.scale_seeds.get(scale, self.seeds[:1] if scale == "smoke" else self.seeds))
        if row is not None and row.seeds is not None and scale == self.default_scale:
            seeds = tuple(s for s in seeds if s in row.seeds)
        return seeds

    def rows_at(self, scale: str) -> tuple[RowSpec, ...]:
        """The rows that exist at ``scale`` (``RowSpec.scales``)."""
        return tuple(r for r in self.rows if r.scales is None or scale in r.scales)

    def row(self, name: str) -> RowSpec:
        for r in self.rows:
            if r.name == name:
                return r
        raise ValueError(f"table {self.name!r} has no row {name!r}; rows are {[r.name for r in self.rows]}")

    def evals_for(self, row: RowSpec, scale: str | None = None) -> tuple[EvalSpec, ...]:
        evals = (() if row.skip_table_evals else self.evals) + row.evals
        return evals if scale is None else tuple(ev.at(scale) for ev in evals)


@functools.lru_cache(maxsize=64)
def _read_yaml(path: Path, mtime_ns: int, size: int) -> dict:
    """A table file's contents, parsed once per process while it is unchanged (OmegaConf's parser is the slow
    part of reading a spec, and a command reads a table's spec, and the tables it takes rates from, hundreds of
    times)."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def known_tables() -> list[str]:
    return sorted(p.stem for p in (CONFIGS / "table").glob("*.yaml"))


def load_table(name: str) -> TableSpec:
    path = CONFIGS / "table" / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no table {name!r} (configs/table/{name}.yaml); known tables: {known_tables()}")
    stat = path.stat()
    raw = copy.deepcopy(_read_yaml(path, stat.st_mtime_ns, stat.st_size))
    spec = _build(TableSpec, raw, f"configs/table/{name}.yaml")
    if spec.name != name:
        raise ValueError(f"configs/table/{name}.yaml has name: {spec.name!r}; the name must be the file's stem")
    if spec.cells_from:
        source = load_table(spec.cells_from)
        if spec.scales:
            raise ValueError(f"table {name!r} reads the cells of {spec.cells_from!r}: its scales are that table's; "
                             "remove its scales")
        missing = [r.name for r in spec.rows if r.name not in [s.name for s in source.rows]]
        if missing:
            raise ValueError(f"table {name!r} rows {missing} are not rows of {spec.cells_from!r}")
        spec = dataclasses.replace(spec, scales=source.scales, default_scale=source.default_scale)
    elif not spec.scales:
        raise ValueError(f"configs/table/{name}.yaml has no scales; give at least smoke and cpu")
    names = [r.name for r in spec.rows]
    if len(set(names)) != len(names):
        raise ValueError(f"table {name!r} repeats row names: {names}")
    check_protocol(spec)
    for r in spec.rows:  # lr_from: <table>:<row>, a rate tuned in another table
        if r.lr_table is not None:
            table, src = r.lr_table, r.lr_row
            other = load_table(table)
            if src not in [o.name for o in other.rows] or other.tune is None or other.row(src).lr_from is not None \
                    or (other.tune.rows is not None and src not in other.tune.rows):
                raise ValueError(f"table {name!r} row {r.name!r} takes lr_from={r.lr_from!r}, which must be a tuned "
                                 f"row of table {table!r}")
    for k in spec.differences_within:
        if any(k not in r.group for r in spec.rows):
            raise ValueError(f"table {name!r}: differences_within has {k!r}, which rows "
                             f"{[r.name for r in spec.rows if k not in r.group]} do not have in their group")
    keys = {m.key for m in spec.metrics if m.interval}
    for pair in spec.contrasts:
        if len(pair) != 2 or not set(pair) <= keys:
            raise ValueError(f"table {name!r}: contrasts entry {list(pair)} must name two interval metrics of "
                             f"{sorted(keys)}")
    for pair in spec.context_pairs:
        if len(pair) != 2 or not set(pair) <= set(names):
            raise ValueError(f"table {name!r}: context_pairs entry {list(pair)} must name two rows of {names}")
    from experiments.tables.evals import EVALUATIONS

    for row in spec.rows:
        if row.experiment is not None and not (CONFIGS / "experiment" / f"{row.experiment}.yaml").exists():
            raise FileNotFoundError(f"table {name!r} row {row.name!r}: configs/experiment/{row.experiment}.yaml "
                                    "does not exist")
        if row.cells_of is not None and row.cells_of not in names[: names.index(row.name)]:
            raise ValueError(f"table {name!r} row {row.name!r}: cells_of={row.cells_of!r} must name an earlier row "
                             f"of {names}")
        if row.init_from_row is not None and row.init_from_row not in names[: names.index(row.name)]:
            raise ValueError(f"table {name!r} row {row.name!r}: init_from_row={row.init_from_row!r} must name an "
                             f"earlier row of {names}")
        unknown_scales = sorted(set(row.scale_overrides) - set(spec.scales))
        if unknown_scales:
            raise ValueError(f"table {name!r} row {row.name!r}: scale_overrides for unknown scales {unknown_scales}; "
                             f"the table's scales are {sorted(spec.scales)}")
        for ev in spec.evals_for(row):
            if ev.kind not in EVALUATIONS:
                raise ValueError(f"table {name!r} eval {ev.name!r}: kind={ev.kind!r} is unknown; "
                                 f"use one of {sorted(EVALUATIONS)}")
    return spec


def findings_path(results: Path, name: str) -> Path:
    return Path(results) / "findings" / f"{name}.md"
