"""The fair-comparison protocol of a table, as typed specs: rows sized to a reference (``MatchSpec``), each
at its tuned learning rate (``TuneSpec``), loss-vs-compute fits (``ScalingSpec``), and the checks that a
table's protocol names rows, scales and grids that exist."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MatchSpec:
    """Matched by construction (``tables.sizing``): ``rows`` (default: every row but the reference) are
    resized so that their ``rule`` value, training FLOPs per byte or parameters, equals the ``reference``
    row's within ``tolerance``; ``rule: none`` leaves every row at its preset size."""
    reference: str
    rule: str = "flops"
    rows: tuple[str, ...] | None = None
    tolerance: float = 0.03


@dataclass(frozen=True)
class TuneSpec:
    """Each row at its own tuned learning rate: the ``grid`` (a log grid of >= 4 rates) on seed ``seed``,
    the best by ``metric`` (lower is better), the grid extended by its own ratio while the best sits at an
    edge (at most ``max_extensions`` times). ``overrides`` is the tuning budget, appended to the row's
    (empty: the row's own budget, so the best rate's tuning cell is the row's cell of that seed).
    ``use_scale`` maps a scale to the scale whose tuned rates it uses (from that scale's results)."""
    grid: tuple[float, ...]
    metric: str = "metrics/val/bpb"
    seed: int = 0
    overrides: tuple[str, ...] = ()
    rows: tuple[str, ...] | None = None
    max_extensions: int = 4
    use_scale: dict = field(default_factory=dict)
    scale_overrides: dict = field(default_factory=dict)  # {scale: [overrides]} after ``overrides`` at that scale

    @property
    def ratio(self) -> float:
        return self.grid[1] / self.grid[0]


@dataclass(frozen=True)
class ScalingSpec:
    """Loss against training compute: rows grouped by ``row.group[by]`` (an architecture), each point at its
    cell's training FLOPs (FLOPs per byte x bytes seen); the frontier is the best row at each
    ``row.group[budget]``; fitted as ``E + A C^-alpha`` with bootstrap intervals over the metric's test units."""
    metric: str  # an interval metric (its eval has per-unit losses)
    by: str = "arch"
    budget: str = "budget"
    horizon: float = 1.0e22  # crossings are looked for up to this many FLOPs
    check_flops: float | None = None  # a budget to predict every frontier at (the gpu scale's)


def check_protocol(spec) -> None:
    """``spec`` (a ``tables.spec.TableSpec``): its match, tune and rows' lr_from / match_to are consistent."""
    where, names = f"configs/table/{spec.name}.yaml", [r.name for r in spec.rows]
    m, t = spec.match, spec.tune
    if m is not None:
        if m.rule not in ("flops", "params", "none"):
            raise ValueError(f"{where}: match.rule={m.rule!r}; use flops, params or none")
        unknown = [r for r in (m.reference, *(m.rows or ())) if r not in names]
        if unknown:
            raise ValueError(f"{where}: match names rows {unknown} that the table does not have ({names})")
        if not 0 < m.tolerance < 1:
            raise ValueError(f"{where}: match.tolerance={m.tolerance} must be in (0, 1), e.g. 0.03")
    for r in spec.rows:
        local = None if r.lr_table else r.lr_row  # <table>:<row>: checked at load
        for what, other in (("lr_from", local), ("match_to", r.match_to)):
            if other is not None and other not in names:
                raise ValueError(f"{where}: row {r.name!r} has {what}={other!r}, which is not a row ({names})")
        if local is not None and (t is None or spec.row(local).lr_from is not None):
            raise ValueError(f"{where}: row {r.name!r} takes lr_from={r.lr_from!r}, which must be a tuned row")
    if t is not None:
        grid = list(t.grid)
        if len(grid) < 4 or any(g <= 0 for g in grid) or grid != sorted(grid):
            raise ValueError(f"{where}: tune.grid={grid} must be >= 4 increasing positive learning rates")
        ratios = [b / a for a, b in zip(grid, grid[1:])]
        if max(ratios) / min(ratios) > 1.01:
            raise ValueError(f"{where}: tune.grid={grid} must be a log grid (a constant ratio between neighbours)")
        unknown = [r for r in (t.rows or ()) if r not in names]
        if unknown:
            raise ValueError(f"{where}: tune.rows names rows {unknown} that the table does not have ({names})")
        bad = {k: v for k, v in t.use_scale.items() if k not in spec.scales or v not in spec.scales}
        if bad:
            raise ValueError(f"{where}: tune.use_scale={bad} names scales the table does not have "
                             f"({sorted(spec.scales)})")
        if any("optim.lr" in o for o in t.overrides):
            raise ValueError(f"{where}: tune.overrides sets optim.lr; the grid sets it")


__all__ = ["MatchSpec", "ScalingSpec", "TuneSpec", "check_protocol"]
