"""Aggregating a table's cells into ``results/<name>.md`` (+ .csv, figures): mean ± std over seeds,
missing seeds shown, the papers' numbers beside ours, a header that states where every number came
from (scale, steps, bytes per row, seeds, commits), and the human-written finding kept apart in
``results/findings/<name>.md`` with its claims checked against the numbers.

A finding states its machine-checkable claims as HTML comments, one per line::

    <!-- claim: megalodon < ema_real on metrics/val/bpb -->

(``<`` = lower value; whether lower is better is the metric's ``lower_is_better``). ``make_table``
warns when a claim disagrees with the means, or, for rows sharing 2+ seeds (the same data order and
test bytes), when it does not hold on every seed's paired difference; otherwise when the gap lies
within one seed std.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from experiments.provenance import describe_machine
from experiments.tables import sections
from experiments.tables.cells import cell_json, default_results, eval_key, lookup, metrics_key, trained_cell
from experiments.tables.keys import row_cells
from experiments.tables.spec import TableSpec, findings_path, load_table

CLAIM = re.compile(r"<!--\s*claim:\s*(\S+)\s*([<>])\s*(\S+)\s+on\s+(\S+)\s*-->")


@dataclass
class RowResult:
    name: str
    label: str
    paper: dict
    seeds: list[int]
    not_applicable: tuple[str, ...] = ()
    values: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> seed -> value
    steps: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    commits: set[str] = field(default_factory=set)
    machines: dict[str, set[str]] = field(default_factory=dict)  # machine line -> cells it trained ("" unrecorded)
    cells: dict[int, Path] = field(default_factory=dict)
    stale: dict[int, set[str]] = field(default_factory=dict)  # seed -> evaluations run with other settings
    retrained: dict[int, float | None] = field(default_factory=dict)  # seed -> val bpb change on retraining

    def eval_cells(self, name: str) -> dict[int, Path]:
        """The cells whose evaluation ``name`` is current (an out-of-date one is never read)."""
        return {s: c for s, c in self.cells.items() if name not in self.stale.get(s, ())}

    def stats(self, metric: str) -> tuple[float, float | None, list[int]] | None:
        vals = self.values.get(metric, {})
        missing = [s for s in self.seeds if s not in vals]
        if not vals:
            return None
        v = list(vals.values())
        return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None), missing


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt(mean: float, std: float | None, digits: int = 4) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def aggregate(spec: TableSpec, results: str | Path, scale: str, extra=None) -> list[RowResult]:
    out = []
    eval_names = {ev.name for row in spec.rows for ev in spec.evals_for(row)}  # a row's metrics of another's eval: n/a
    for row in spec.rows_at(scale):
        cells = row_cells(spec, row, scale, results, extra)
        requested = list(spec.seeds_for(scale, row))
        skipped = eval_names - {ev.name for ev in spec.evals_for(row)}
        not_run = tuple(m.key for m in spec.metrics if m.key.split("/")[0] in skipped)
        r = RowResult(row.name, row.title, dict(row.paper), sorted(set(requested) | set(cells)),
                      row.not_applicable + not_run, cells=cells)
        expected = {ev.name: eval_key(ev) for ev in spec.evals_for(row, scale)}
        for seed, cell in cells.items():
            r.stale[seed] = {name for name, key in expected.items()
                             if (cell_json(cell, name) or {}).get("_eval_key") not in (None, key)}
            for m in spec.metrics:
                if m.key.split("/")[0] in r.stale[seed]:
                    continue  # run with other settings than the table's: rerun it, never show it as current
                v = lookup(cell, m.key)
                if v is not None and not math.isnan(v):
                    r.values.setdefault(m.key, {})[seed] = v
            metrics = cell_json(cell, "metrics") or {}
            if "steps" in metrics:
                r.steps.append(int(metrics["steps"]))
                r.tokens.append(int(metrics.get(metrics_key(metrics, "bytes_seen"), 0)))  # bytes, not tokens
            meta = cell_json(cell, "meta") or {}
            code = meta.get("code", {})
            if "retrained" in meta:  # trained again for a lost checkpoint: its numbers are not the first run's
                r.retrained[seed] = meta["retrained"].get("val_bpb_change")
            for m in meta.get("machines") or [None]:
                r.machines.setdefault(describe_machine(m) if m else "", set()).add(str(trained_cell(cell)))
            r.commits.add(str(code.get("commit", "unknown"))[:10] + ("+dirty" if code.get("dirty") else ""))
        out.append(r)
    return out


def check_claims(text: str, rows: list[RowResult], spec: TableSpec) -> list[str]:
    """Warnings for the claims of a finding that the numbers do not support."""
    by_name = {r.name: r for r in rows}
    metrics = {m.key: m for m in spec.metrics}
    warnings = []
    for a, op, b, key in CLAIM.findall(text):
        claim = f"{a} {op} {b} on {key}"
        if a not in by_name or b not in by_name or key not in metrics:
            warnings.append(f"claim '{claim}' names an unknown row or metric (rows {list(by_name)}, "
                            f"metrics {list(metrics)})")
            continue
        sa, sb = by_name[a].stats(key), by_name[b].stats(key)
        if sa is None or sb is None:
            warnings.append(f"claim '{claim}' cannot be checked: no numbers for {a if sa is None else b}")
            continue
        (ma, da, _), (mb, db, _) = sa, sb
        holds = ma < mb if op == "<" else ma > mb
        va, vb = by_name[a].values.get(key, {}), by_name[b].values.get(key, {})
        paired = [va[s] - vb[s] for s in sorted(set(va) & set(vb))]
        if not holds:
            warnings.append(f"claim '{claim}' DISAGREES with the numbers ({a} {ma:.4f} vs {b} {mb:.4f})")
        elif len(paired) >= 2:  # the same seeds (same data order and test bytes): the paired differences
            agree = sum((d < 0) if op == "<" else (d > 0) for d in paired)
            if agree < len(paired):
                warnings.append(f"claim '{claim}' holds on the means but on {agree} of {len(paired)} seeds only "
                                f"(paired differences {', '.join(f'{d:+.4f}' for d in paired)})")
        elif abs(ma - mb) <= max(da or 0.0, db or 0.0):
            warnings.append(f"claim '{claim}' holds on the means but the gap {abs(ma - mb):.4f} is within one "
                            f"seed std ({max(da or 0, db or 0):.4f})")
    return warnings


def output_name(spec: TableSpec, scale: str) -> str:
    return spec.name if scale == spec.default_scale else f"{spec.name}.{scale}"


def make_table(name: str | TableSpec, results: str | None = None, scale: str | None = None, extra=None) -> str:
    spec = name if isinstance(name, TableSpec) else load_table(name)
    name = spec.name
    scale = scale or spec.default_scale
    res = Path(results or default_results(scale))
    rows = aggregate(spec, res, scale, extra)
    if not any(r.cells for r in rows):
        raise ValueError(
            f"table {name!r} has no finished cell at scale {scale!r} under {res / 'cells'} for the current configs; "
            f"nothing was written (run `python -m experiments.run_table {name} --scale {scale}` first)"
        )
    out_name = output_name(spec, scale)
    seeds = sorted({s for r in rows for s in r.seeds})
    commits = sorted({c for r in rows for c in r.commits})
    overrides = " ".join(spec.scales[scale]) or "(none)"
    head = [f"<!-- generated by: python -m experiments.make_table {name} --scale {scale} --results {res} -->",
            f"# {spec.title}", "",
            f"Scale **{scale}** (cell overrides: `{overrides}`); seeds {seeds}; mean ± std over seeds (std needs 2+); "
            f"code commit(s) {', '.join(commits)}. Reproduce: "
            f"`{spec.command or f'python -m experiments.run_table {name}'} --scale {scale}` then "
            f"`python -m experiments.make_table {name} --scale {scale}`.", ""]
    machines: dict[str, set[str]] = {}
    for r in rows:
        for line, trained in r.machines.items():
            machines.setdefault(line, set()).update(trained)
    if any(machines):  # bf16 numerics differ between processors: a reader should know which ran the cells
        n = {line: len(cells) for line, cells in machines.items()}
        known = "; ".join(f"{line}: {k} cell{'s' * (k > 1)}" for line, k in sorted(n.items()) if line)
        older = f"; not recorded for {n['']} older cell{'s' * (n[''] > 1)}" if n.get("") else ""
        head += [f"Trained on {known}{older}.", ""]
    again = [f"{r.label} seed{'s' * (len(r.retrained) > 1)} " + ", ".join(f"{s}" + ("" if d is None else f" ({d:+.1e})")
                                                                          for s, d in sorted(r.retrained.items()))
             for r in rows if r.retrained]
    if again:  # a retrain changes numbers that may already have been reported: say which cells
        head += ["Retrained for a checkpoint that was not kept (val bits/byte change from the first run; the first "
                 f"run's numbers are kept beside each cell in `*.first.json`): {'; '.join(again)}.", ""]
    if spec.note:
        head += [spec.note.strip(), ""]
    metric_cols = [m.label or m.key for m in spec.metrics]
    cols = metric_cols + ["steps", "train bytes"] + [f"paper: {p}" for p in spec.paper_columns]
    lines = ["| row | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    csv_rows = []
    for r in rows:
        cells = []
        for m in spec.metrics:
            if m.key in r.not_applicable:
                cells.append("n/a")
                continue
            st = r.stats(m.key)
            text = "—" if st is None else fmt(st[0], st[1], m.digits)
            if m.interval and st is not None:
                u, have = sections.units(r, m), sorted(r.values.get(m.key, {}))
                if u is None:
                    text += " (no per-unit losses: no interval)"
                elif sorted(u.seeds) != have:  # an interval over some seeds would not be the mean shown
                    text += f" (per-unit losses for seeds {sorted(u.seeds)} of {have} only: no interval)"
                else:
                    text = sections.interval_text(r, m)
            missing = [s for s in r.seeds if s not in r.values.get(m.key, {})]
            if missing:
                text += f" (missing seeds {missing})"
            cells.append(text)
            csv_rows.append({"row": r.name, "metric": m.key, "mean": None if st is None else st[0],
                             "std": None if st is None else st[1], "n": len(r.values.get(m.key, {})),
                             "missing": missing})
        cells.append(_span(r.steps))
        cells.append(_span(r.tokens, thousands=True))
        cells += [str(r.paper.get(p, "—")) for p in spec.paper_columns]
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    body = head + lines
    stale = [f"{r.label}: {', '.join(sorted(set().union(*r.stale.values())))} (seeds "
             f"{sorted(s for s, names in r.stale.items() if names)})" for r in rows if any(r.stale.values())]
    if stale:
        body += ["", "Evaluations run with other settings than this table's are left out until rerun (`python -m "
                 f"experiments.run_table {name} --scale {scale}`): " + "; ".join(stale) + "."]
    if any(m.interval and m.lower_is_better for m in spec.metrics):
        body += ["", "Interval metrics: bits per byte pooled over seeds with a 95% bootstrap interval [lo, hi] over "
                 "test units x seeds; other metrics: mean ± std over seeds."]
    elif any(m.interval for m in spec.metrics):
        body += ["", "Interval metrics: the fraction of test documents answered right, pooled over seeds, with a 95% "
                 "bootstrap interval [lo, hi] over documents x seeds; other metrics: mean ± std over seeds."]
    body += sections.matching(spec, rows, scale) + sections.tuning(spec, rows, scale, res, extra)
    body += sections.differences(spec, rows) + sections.contrasts(spec, rows) + sections.context_use(spec, rows)
    if spec.scaling is not None:
        from experiments.tables.scaling import section

        body += section(spec, rows, res / f"{out_name}_scaling.png")
    if spec.figure:
        from experiments.tables.figures import draw_figure, figure_lines

        png = res / f"{out_name}.png"
        if draw_figure(spec, rows, png):
            body += ["", f"![{name}]({png.name})"]
        else:  # nothing to draw: an earlier run's picture would be stale
            png.unlink(missing_ok=True)
        body += figure_lines(spec, rows)
    if spec.heatmaps:
        from experiments.tables.figures import draw_heatmaps

        png = res / f"{out_name}_heatmaps.png"
        if draw_heatmaps(spec, rows, png):
            body += ["", f"{spec.heatmaps.grid.replace('_', ' ').capitalize()} by "
                     f"{spec.heatmaps.xlabel or 'x'} and {spec.heatmaps.ylabel or 'y'} (mean over seeds; blank: "
                     "not applicable):", "", f"![heat maps]({png.name})"]
        else:
            png.unlink(missing_ok=True)
    if spec.curves:
        from experiments.tables.figures import draw_learning_curves

        png = res / f"{out_name}_curves.png"
        if draw_learning_curves(spec, rows, png):
            body += ["", "Learning curves (validation bits per byte vs training bytes and vs training FLOPs; "
                     "mean over seeds):", "", f"![learning curves]({png.name})"]
        else:
            png.unlink(missing_ok=True)
    body += ["", "## Finding", ""]
    finding = findings_path(res, name)
    if scale == spec.default_scale and finding.exists():
        text = finding.read_text()
        body.append(text.strip())
        warnings = check_claims(text, rows, spec)
        for w in warnings:
            print(f"[table] warning: {name}: {w}")
        body += [""] + [f"> ⚠ check: {w}" for w in warnings]
    else:
        where = finding.relative_to(res) if finding.is_relative_to(res) else finding
        body.append(f"(none written for scale {scale}: a finding is written by hand in {where} "
                    "after looking at the numbers)")
    text = "\n".join(body).rstrip() + "\n"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"{out_name}.md").write_text(text)
    with open(res / f"{out_name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["row", "metric", "mean", "std", "n", "missing"])
        w.writeheader()
        w.writerows(csv_rows)
    return text


def _span(values: list[int], thousands: bool = False) -> str:
    if not values:
        return "—"
    f = (lambda v: f"{v:,}") if thousands else str
    lo, hi = min(values), max(values)
    return f(lo) if lo == hi else f"{f(lo)}–{f(hi)}"


def cli_make(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m experiments.make_table")
    ap.add_argument("name")
    ap.add_argument("--scale", default=None)
    ap.add_argument("--results", default=None)
    ap.add_argument("--set", action="append", default=[], help="the --set overrides the cells were run with")
    a = ap.parse_args(argv)
    print(make_table(a.name, a.results, a.scale, a.set))
