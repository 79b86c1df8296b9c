"""Figures of a table: the spec's curve (an eval's list of points), heat maps (an eval's grids, rows x
panels) and learning curves (validation bits per byte vs training bytes and vs training FLOPs, read
from each cell's ``logs/metrics.csv``)."""

from __future__ import annotations

import csv
import statistics
import textwrap
from pathlib import Path

from experiments.config import val_step
from experiments.plotting import pyplot
from experiments.tables.cells import cell_json, read_json, trained_cell


def curve_points(spec, row) -> dict[str, list[tuple[float, float, float | None]]]:
    """Mean (and std) over the row's seeds of the figure's curves: {series: [(x, mean, std)]}."""
    fig = spec.figure
    series: dict[str, dict[float, list[float]]] = {}
    for cell in row.eval_cells(fig.file).values():
        data = read_json(cell / f"{fig.file}.json")
        if data is None:
            continue
        for part in fig.path.split("."):
            data = data[part]
        for item in data:
            label = str(item.get(fig.series, "")) if fig.series else ""
            series.setdefault(label, {}).setdefault(float(item[fig.x]), []).append(float(item[fig.y]))
    out = {}
    for k, pts in series.items():
        out[k] = [(x, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None) for x, v in sorted(pts.items())]
    return out


def figure_lines(spec, rows) -> list[str]:
    lines = []
    for r in rows:
        for label, pts in curve_points(spec, r).items():
            text = ", ".join(f"{spec.figure.x}={x:g}: {m:.3f}" + (f" ± {s:.3f}" if s is not None else "")
                             for x, m, s in pts)
            lines += ["", f"{r.label}{' / ' + label if label else ''}: {text}"]
    return lines


def draw_figure(spec, rows, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    f = spec.figure
    curves = [(r, label, pts) for r in rows for label, pts in curve_points(spec, r).items() if pts]
    if not curves:
        return False
    panels = sorted({label for _, label, _ in curves}) if f.panels else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 if len(panels) == 1 else 4.2 * len(panels), 4),
                             squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        for r, label, pts in curves:
            if f.panels and label != panel:
                continue
            xs, ms, ss = zip(*pts)
            ax.errorbar(xs, ms, yerr=[s or 0 for s in ss], marker="o", capsize=3,
                        label=r.label + (f" ({label})" if label and not f.panels else ""))
        if f.logx:
            ax.set_xscale("log")
        ax.set_xlabel(f.xlabel or f.x)
        ax.set_title(panel or "", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f.ylabel or f.y)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(textwrap.fill(spec.title, 90 if len(panels) == 1 else 150), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def heatmap_grids(spec, row) -> dict[str, tuple[list[str], list[str], list[list[float | None]]]]:
    """Mean over the row's seeds of each panel's grid: {panel: (xs, ys, values[y][x])}, panels in the
    order the cells list them; a value that is None in every cell (not applicable) stays None."""
    h = spec.heatmaps
    acc: dict[str, dict[tuple[str, str], list[float]]] = {}
    for cell in row.eval_cells(h.file).values():
        data = read_json(cell / f"{h.file}.json")
        for panel in (data or {}).get(h.panels, []):
            for x, column in data[panel][h.grid].items():
                for y, v in column.items():
                    acc.setdefault(panel, {}).setdefault((x, y), [])
                    if v is not None:
                        acc[panel][(x, y)].append(float(v))
    out = {}
    for panel, vals in acc.items():
        xs = sorted({x for x, _ in vals}, key=float)
        ys = sorted({y for _, y in vals}, key=float)
        out[panel] = (xs, ys, [[statistics.fmean(vals[x, y]) if vals.get((x, y)) else None for x in xs]
                               for y in ys])
    return out


def draw_heatmaps(spec, rows, path: Path) -> bool:
    """Rows x panels of heat maps (x: columns, y: lines; each panel drawn as experiments.longeval draws one
    run's), values in [0, 1] annotated, n/a blank."""
    plt = pyplot()
    grids = [(r, g) for r, g in ((r, heatmap_grids(spec, r)) for r in rows) if g]
    if plt is None or not grids:
        return False
    import numpy as np

    from experiments.evaluation.long_context import draw_grid, length_label

    panels = list(dict.fromkeys(p for _, g in grids for p in g))
    fig, axes = plt.subplots(len(grids), len(panels), figsize=(1.2 + 3.2 * len(panels), 2.0 * len(grids) + 0.6),
                             squeeze=False)
    for i, (r, g) in enumerate(grids):
        for j, panel in enumerate(panels):
            ax = axes[i][j]
            if panel not in g:
                ax.axis("off")
                continue
            xs, ys, vals = g[panel]
            arr = np.array([[np.nan if v is None else v for v in line] for line in vals], dtype=float)
            draw_grid(ax, arr, [length_label(float(x)) for x in xs], [f"{float(y):g}" for y in ys], fontsize=7)
            if i == 0:
                ax.set_title(panel, fontsize=9)
            if i == len(grids) - 1:
                ax.set_xlabel(spec.heatmaps.xlabel or "", fontsize=8)
            if j == 0:  # the row's label, then the axis
                ax.set_ylabel(textwrap.fill(r.label, 30) + "\n" + (spec.heatmaps.ylabel or ""), fontsize=7)
    fig.suptitle(textwrap.fill(spec.title, 40 * len(panels)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def learning_curve(cell: Path) -> list[tuple[float, float, float]] | None:
    """[(training bytes, training FLOPs, val bpb)] of one cell, from its metrics.csv."""
    metrics = cell_json(cell, "metrics")
    path = trained_cell(cell) / "logs" / "metrics.csv"
    if metrics is None or not path.exists():
        return None
    per_step = metrics["tokens_per_step"]  # tokens: bytes are bytes_per_token times as many
    fpt = float(metrics.get("flops_per_token", float("nan")))
    bpt = float(metrics.get("bytes_per_token", 1.0))
    pts = {}
    with open(path, newline="") as fh:
        for rec in csv.DictReader(fh):
            if rec.get("val/bpb"):
                pts[val_step(rec)] = float(rec["val/bpb"])
    return [(s * per_step * bpt, s * per_step * fpt, v) for s, v in sorted(pts.items())]


def draw_learning_curves(spec, rows, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for r in rows:
        curves = [c for c in (learning_curve(cell) for cell in r.cells.values()) if c]
        if not curves:
            continue
        by_x: dict[float, list[tuple[float, float]]] = {}
        for c in curves:
            for b, fl, v in c:
                by_x.setdefault(b, []).append((fl, v))
        xs = sorted(by_x)
        bpb = [statistics.fmean(v for _, v in by_x[x]) for x in xs]
        flops = [statistics.fmean(f for f, _ in by_x[x]) for x in xs]
        axes[0].plot(xs, bpb, marker=".", label=r.label)
        axes[1].plot(flops, bpb, marker=".", label=r.label)
        drawn = True
    if drawn:
        for ax, xl in zip(axes, ("training bytes", "training FLOPs")):
            ax.set_xscale("log")
            ax.set_xlabel(xl)
            ax.set_ylabel("validation bits per byte")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(textwrap.fill(spec.title, 110), fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn
