"""The parts of a table's report that make a comparison checkable: 95% intervals on every bits-per-byte
metric with per-unit losses, every pairwise difference with a paired interval ("not separated" where it
contains 0), the tuned learning rates with their grids (and whether tuning changed the ranking), and
the sizes each row was matched to."""

from __future__ import annotations

from pathlib import Path

from experiments.config import OptimConfig
from experiments.tables.cells import cell_json, metrics_key
from experiments.tables.intervals import Units, collect, common_seeds, interval, paired
from experiments.tables.keys import TuningPending, lr_text, tuned_lr, tuned_rows, tuning_results, tuning_scale
from experiments.tables.spec import MetricSpec, TableSpec


def units(row, metric: MetricSpec) -> Units | None:
    """The row's per-unit losses for an interval metric, over its seeds: its eval file's ``metric_units[<the rest
    of the key>]`` (a file of several metrics: longeval's tasks x lengths), else the file's ``units``."""
    file, _, rest = metric.key.partition("/")

    def of(data: dict):
        return (data.get("metric_units") or {}).get(rest) or data.get("units")

    return collect({seed: of(cell_json(cell, file) or {}) for seed, cell in row.eval_cells(file).items()})


def interval_text(row, metric: MetricSpec) -> str | None:
    u = units(row, metric)
    return None if u is None else interval(u).text(metric.digits)


def verdict(d) -> str:
    return "separated" if d.separated else "**not separated**"


def differences(spec: TableSpec, rows: list) -> list[str]:
    """Every pair of rows on every interval metric: a - b with its paired 95% interval; with
    ``spec.differences_within``, only pairs whose groups share those keys (a scaling table: the architectures at
    one size and budget)."""
    out, within = [], spec.differences_within
    groups = {r.name: r.group for r in spec.rows}
    for m in [m for m in spec.metrics if m.interval]:
        found = [(r, units(r, m)) for r in rows]
        found = [(r, u) for r, u in found if u is not None]
        if len(found) < 2:
            continue
        pairs = f"; rows of the same {' and '.join(within)} only" if within else ""
        what = "bits/byte" if found[0][1].divisor != 1.0 else "fraction of documents right"
        out += ["", f"**{m.label or m.key}**: differences a − b ({what}; 95% paired bootstrap interval over test "
                f"units x seeds; {'lower' if m.lower_is_better else 'higher'} is better{pairs}):", "",
                "| a | b | a − b | |", "|---|---|---:|---|"]
        for i, (ra, ua) in enumerate(found):
            for rb, ub in found[i + 1:]:
                if any(groups[ra.name].get(k) != groups[rb.name].get(k) for k in within):
                    continue
                try:
                    d = paired(ua, ub)
                except ValueError as e:
                    out.append(f"| {ra.label} | {rb.label} | — | not comparable: {e} |")
                    continue
                out.append(f"| {ra.label} | {rb.label} | {d.text(m.digits, signed=True)} | {verdict(d)}"
                           f"{seeds_note(ua, ub)} |")
    return (["", "## Differences"] + out) if out else []


def seeds_note(a: Units, b: Units) -> str:
    """Where the two rows do not have the same seeds, the seeds the paired difference is on: its value is then not
    the difference of the rows' printed values (one row's other seeds are left out of it)."""
    common = common_seeds(a, b)
    return "" if set(a.seeds) == set(b.seeds) else f" (on seed{'s' * (len(common) > 1)} {common} only)"


def contrasts(spec: TableSpec, rows: list) -> list[str]:
    """Within each row, metric a − metric b (``spec.contrasts``: two ways of scoring the same test units, e.g.
    MEGABYTE's strided inference against the basic pass) with a paired 95% interval over its units x seeds."""
    metrics = {m.key: m for m in spec.metrics}
    out = []
    for a, b in spec.contrasts:
        lines = []
        for r in rows:
            ua, ub = units(r, metrics[a]), units(r, metrics[b])
            if ua is not None and ub is not None:
                d = paired(ua, ub)
                lines.append(f"| {r.label} | {d.text(4, signed=True)} | {verdict(d)} |")
        if lines:
            out += ["", f"**{metrics[a].label or a} − {metrics[b].label or b}** within each row (bits/byte; 95% "
                    "paired bootstrap interval over test units x seeds; rows without per-unit losses left out):", "",
                    "| row | a − b | |", "|---|---:|---|", *lines]
    return (["", "## Contrasts within a row"] + out) if out else []


def tuning(spec: TableSpec, rows: list, scale: str, results: str | Path, extra) -> list[str]:
    """Each tuned row's grid (tuning metric per rate, the chosen one in bold) and the ranking at the shared
    default rate against the ranking at the tuned rates (seed 0's tuning metric)."""
    names = tuned_rows(spec)
    if not names:
        return []
    t, tscale = spec.tune, tuning_scale(spec, scale)
    res = results if tscale == scale else "results"
    out = ["", "## Learning rates", "",
           f"Tuned per row on seed {t.seed} at scale {tscale} ({t.metric}, lower is better; grid {list(t.grid)}, "
           f"extended by x{t.ratio:g} while the best sat at an edge"
           + (f"; tuning budget: `{' '.join(t.overrides)}`" if t.overrides else "; the full budget") + "):", ""]
    by_rate: dict[str, dict[float, float]] = {}
    for r in rows:
        if r.name not in names:
            continue
        values = tuning_results(spec, spec.row(r.name), tscale, res, extra)
        by_rate[r.name] = values
        if not values:
            out.append(f"- {r.label}: not tuned yet")
            continue
        best = min(values, key=values.get)
        out.append(f"- {r.label}: " + ", ".join((f"**{lr_text(lr)}: {v:.4f}**" if lr == best else
                                                  f"{lr_text(lr)}: {v:.4f}") for lr, v in sorted(values.items())))
    for r in rows:  # rates transferred from another table's tuned row
        row = spec.row(r.name)
        if row.lr_table is not None:
            try:
                rate = lr_text(tuned_lr(spec, row, scale, None, results))
            except (TuningPending, ValueError) as e:
                rate = f"not available yet ({' '.join(str(e).split())[:160]})"
            out.append(f"- {r.label}: {rate}, transferred from row {row.lr_from} (tuned there)")
    lr = float(lr_text(OptimConfig().lr))  # the house default every row shared before tuning
    if len(by_rate) > 1 and all(lr in v for v in by_rate.values()):
        label = {r.name: r.label for r in rows}
        at = sorted(by_rate, key=lambda n: by_rate[n][lr])
        tuned = sorted(by_rate, key=lambda n: min(by_rate[n].values()))
        same = "the same ranking" if at == tuned else "a different ranking"
        out.append(f"- ranking at the shared default rate {lr_text(lr)}: {' < '.join(label[n] for n in at)}; at the "
                   f"tuned rates: {' < '.join(label[n] for n in tuned)} ({same}; seed {t.seed}, {t.metric})")
    return out


def context_units(row, name: str) -> dict[int, Units]:
    """{context: Units over the row's seeds} of a context evaluation named ``name``."""
    per_c: dict[int, dict[int, dict]] = {}
    for seed, cell in row.eval_cells(name).items():
        for c, u in ((cell_json(cell, name) or {}).get("units") or {}).items():
            per_c.setdefault(int(c), {})[seed] = u
    return {c: u for c, u in sorted((c, collect(v)) for c, v in per_c.items()) if u is not None}


def context_use(spec: TableSpec, rows: list) -> list[str]:
    """For every context evaluation: bits per byte of the same target bytes at each context (95% intervals
    over documents x seeds), the gain of each context over the previous one (paired), and the usable
    context: the largest context whose gain over the previous one is separated and positive, and the total
    gain. Every later evaluation (other documents read first, a part of the state reset, a model setting
    changed such as a smaller memory) also gets, per row, its difference from the first evaluation without
    distractors at each context: what that change did. Evaluations of some rows only (``RowSpec.evals``) list
    those rows."""
    out, evals = [], {}
    for row in spec.rows:
        for ev in spec.evals_for(row):
            if ev.kind == "context":
                evals.setdefault(ev.name, ev)
    from experiments.evaluation.context import reset_text  # the evaluation's own words (loads it only here)

    plain = None  # the first evaluation without distractors: what each distract evaluation is compared with
    for ev in evals.values():
        found = [(r, context_units(r, ev.name)) for r in rows]
        found = [(r, u) for r, u in found if u]
        if not found:
            continue
        contexts = sorted({c for _, u in found for c in u})
        result = cell_json(next(iter(found[0][0].cells.values())), ev.name) or {}
        distract = result.get("distractors") or 0
        plain = plain or (None if distract else (ev.name, {r.name: u for r, u in found}))
        versus = plain if plain and plain[0] != ev.name else None  # every other evaluation: its difference
        after = (f"{distract:,} bytes of other documents ({reset_text(result.get('distract_reset') or [])}), then "
                 if distract else "")
        nets = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}"
                         for k, v in (result.get("net_overrides") or {}).items())
        model = f", with the model's {nets}," if nets else ""
        below = f"; below that, the difference from the {versus[0]} evaluation at the same c (paired)" if versus else ""
        out += ["", f"## Context use ({ev.name})", "",
                f"The same target bytes of each test document scored{model} after reading {after}only the last c bytes "
                "before them (bits per byte, 95% interval over documents x seeds); below each, the gain over the "
                f"previous context (paired interval){below}. Usable context: the largest c whose gain over the "
                f"previous one is separated from 0; total gain: c={contexts[-1]:,} over c={contexts[0]:,} (paired).",
                "",
                "| row | " + " | ".join(f"c={c:,}" for c in contexts) + " | usable context | total gain |",
                "|---|" + "---:|" * (len(contexts) + 2)]
        for r, u in found:
            cells, gains, usable = [], [], 0
            for i, c in enumerate(contexts):
                cells.append(interval(u[c]).text(3) if c in u else "—")
                if i and c in u and contexts[i - 1] in u:
                    g = paired(u[contexts[i - 1]], u[c])
                    gains.append(f"{g.text(3, signed=True)}")
                    if g.separated and g.value > 0:
                        usable = c
                else:
                    gains.append("")
            ends = [u.get(contexts[0]), u.get(contexts[-1])]
            total = paired(*ends).text(3, signed=True) if None not in ends else "—"
            out.append(f"| {r.label} | " + " | ".join(cells) + f" | {usable:,} bytes | {total} |")
            out.append("| ↳ gain | " + " | ".join(gains) + " | | |")
            base = versus[1].get(r.name) if versus else None
            if base:
                diffs = [paired(u[c], base[c]).text(3, signed=True) if c in u and c in base else "" for c in contexts]
                out.append(f"| ↳ − {versus[0]} | " + " | ".join(diffs) + " | | |")
        out += context_pairs(spec, {r.name: (r.label, u) for r, u in found}, contexts)
    return out


def context_pairs(spec: TableSpec, found: dict, contexts: list[int]) -> list[str]:
    """Row a − row b at every context both have (``spec.context_pairs``), paired over the documents x seeds."""
    pairs = [(a, b) for a, b in spec.context_pairs if a in found and b in found]
    if not pairs:
        return []
    out = ["", "Between rows (a − b, paired over documents x seeds; negative: a is better):", "",
           "| a − b | " + " | ".join(f"c={c:,}" for c in contexts) + " |", "|---|" + "---:|" * len(contexts)]
    for a, b in pairs:
        (la, ua), (lb, ub) = found[a], found[b]
        diffs = [paired(ua[c], ub[c]).text(3, signed=True) if c in ua and c in ub else "—" for c in contexts]
        out.append(f"| {la} − {lb} | " + " | ".join(diffs) + " |")
    return out


def matching(spec: TableSpec, rows: list, scale: str) -> list[str]:
    """Params and training FLOPs per byte of every row, and their ratio to the reference's."""
    m = spec.match
    if m is None:
        return []
    sizes = {}
    for r in rows:
        metrics = next((cell_json(c, "metrics") for c in r.cells.values()), None)
        fpb = metrics and metrics_key(metrics, "flops_per_byte")
        if metrics and fpb in metrics and "params" in metrics:
            sizes[r.name] = (float(metrics[fpb]), int(metrics["params"]), metrics.get("train/s_per_update"))
    ref = sizes.get(m.reference)
    if ref is None:
        return []
    out = ["", "## Matching", "",
           f"Rule: **{m.rule}** (reference: {spec.row(m.reference).title}, tolerance {m.tolerance:.0%}); "
           "seconds per update (the MEGABYTE paper's other rule) of one cell beside it:", "",
           "| row | params | train FLOPs/byte | FLOPs ratio | params ratio | s/update |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.name in sizes:
            f, p, s = sizes[r.name]
            out.append(f"| {r.label} | {p:,} | {f:,.0f} | {f / ref[0]:.3f} | {p / ref[1]:.2f} | "
                       + (f"{s:.3f}" if s else "—") + " |")
    return out


__all__ = ["context_pairs", "context_units", "context_use", "contrasts", "differences", "interval_text", "matching",
           "tuning", "units"]
