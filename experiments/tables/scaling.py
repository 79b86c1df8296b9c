"""Does the ranking change with compute? Loss against training FLOPs per architecture, the compute-optimal
frontier (the best size at each budget) fitted as ``L(C) = E + A C^-alpha``, and where the fitted curves
of two architectures cross, all with bootstrap intervals.

Every cell of a scaling table is scored on the same test windows, so a bootstrap replicate resamples the
windows (and a point's seeds) once for every cell: each replicate recomputes every point's bits per
byte, picks each budget's best size, refits every frontier and looks for the crossings again. The fit
is least squares in L over a grid of E in [0, min L) with A and alpha solved in log space for each E
(no optimiser that might not converge). Crossings are looked for beyond the largest measured budget, up
to ``scaling.horizon`` FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.plotting import pyplot
from experiments.tables.cells import cell_json
from experiments.tables.intervals import LN2, REPLICATES, Units, collect
from experiments.tables.joint_fit import fit_joint
from experiments.tables.spec import TableSpec

JOINT_REPLICATES = 200  # bootstrap replicates of the joint fit (each a least-squares fit)


@dataclass(frozen=True)
class Point:
    arch: str
    size: str
    budget: str
    flops: float  # training FLOPs actually spent (FLOPs per byte x bytes seen)
    units: Units
    per_byte: float = float("nan")  # the size's training FLOPs per byte (the joint fit's N; bytes = flops / N)


@dataclass(frozen=True)
class Fit:
    E: float
    A: float
    alpha: float

    def __call__(self, C):
        return self.E + self.A * np.power(C, -self.alpha)


def fit(C: np.ndarray, L: np.ndarray, grid: int = 200) -> Fit:
    """``E + A C^-alpha`` by least squares in L; E on a grid in [0, min L), A and alpha by linear regression of
    log(L - E) on log C for each E. A point set that does not fall with compute gets alpha = 0."""
    x = np.log(C)
    best = None
    for E in np.linspace(0.0, float(L.min()) * 0.999, grid):
        y = np.log(L - E)
        slope, intercept = np.polyfit(x, y, 1)
        if slope > 0:
            continue
        f = Fit(float(E), float(math.exp(intercept)), float(-slope))
        err = float(((f(C) - L) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, f)
    return best[1] if best is not None else Fit(float(L.mean()), 0.0, 0.0)


def crossing(a: Fit, b: Fit, lo: float, hi: float) -> float | None:
    """The first C in (lo, hi] where a - b changes sign, None if it keeps its sign."""
    C = np.logspace(math.log10(lo), math.log10(hi), 2000)
    d = a(C) - b(C)
    flips = np.nonzero(np.sign(d[1:]) != np.sign(d[:-1]))[0]
    return None if len(flips) == 0 else float(C[flips[0] + 1])


def points(spec: TableSpec, rows: list, metric: str) -> list[Point]:
    """One point per row with cells: its group labels, its training FLOPs, its test units over its seeds."""
    s = spec.scaling
    file = metric.split("/")[0]
    out = []
    by_name = {r.name: r for r in spec.rows}
    for r in rows:
        if not r.cells:
            continue
        units = collect({seed: (cell_json(cell, file) or {}).get("units") for seed, cell in r.eval_cells(file).items()})
        metrics = cell_json(next(iter(r.cells.values())), "metrics") or {}
        if units is None or "flops_per_token" not in metrics:
            continue
        g = by_name[r.name].group
        out.append(Point(str(g[s.by]), str(g.get("size", r.name)), str(g[s.budget]),
                         float(metrics["flops_per_token"]) * float(metrics["tokens_seen"]), units,
                         float(metrics.get("flops_per_byte", metrics["flops_per_token"]))))
    return out


def _replicate_bpb(pts: list[Point], seed: int = 0) -> np.ndarray:
    """[points, REPLICATES] bits per byte, the windows resampled identically for every point."""
    n_units = {p.units.nll.shape[1] for p in pts}
    if len(n_units) != 1 or len({p.units.sha for p in pts}) != 1:
        raise ValueError("the scaling points were not scored on the same test windows; rerun their evaluations")
    rng = np.random.default_rng(seed)
    w_idx = rng.integers(0, n_units.pop(), (REPLICATES, pts[0].units.nll.shape[1]))
    out = np.empty((len(pts), REPLICATES))
    for i, p in enumerate(pts):
        s_idx = rng.integers(0, len(p.units.seeds), (REPLICATES, len(p.units.seeds)))
        nll = np.stack([p.units.nll[:, w].sum(1) for w in w_idx], 1)  # [seeds, R]
        cnt = np.stack([p.units.bytes[:, w].sum(1) for w in w_idx], 1)
        r = np.arange(REPLICATES)
        out[i] = nll[s_idx.T, r].sum(0) / cnt[s_idx.T, r].sum(0) / LN2
    return out


def best_sizes(pts: list[Point], bpb: np.ndarray, arch: str) -> list[int]:
    """The index in ``pts`` of the best size at each budget of ``arch``, budgets in increasing order."""
    out = []
    for budget in sorted({p.budget for p in pts if p.arch == arch}, key=float):
        idx = [i for i, p in enumerate(pts) if p.arch == arch and p.budget == budget]
        out.append(min(idx, key=lambda i: bpb[i]))
    return out


def frontier(pts: list[Point], bpb: np.ndarray, arch: str) -> tuple[np.ndarray, np.ndarray]:
    """(FLOPs, bits per byte) of the best size at each budget of ``arch``."""
    best = best_sizes(pts, bpb, arch)
    return np.array([pts[i].flops for i in best]), np.array([bpb[i] for i in best])


def _pairs(archs: list[str], fits: dict, boot: dict, top: float, horizon: float) -> list[dict]:
    """For each pair of architectures: where their fitted frontiers cross beyond ``top`` (point estimate, the
    share of bootstrap replicates with a crossing and its interval) and the gap at ``horizon``."""
    out = []
    for i, a in enumerate(archs):
        for b in archs[i + 1:]:
            crossings = [crossing(fa, fb, top, horizon) for fa, fb in zip(boot[a], boot[b])]
            found = np.array([c for c in crossings if c is not None])
            out.append({"a": a, "b": b, "point": crossing(fits[a], fits[b], top, horizon),
                        "share": len(found) / len(crossings),
                        "interval": tuple(np.percentile(found, [2.5, 97.5])) if len(found) else None,
                        "at_horizon": float(fits[a](horizon) - fits[b](horizon))})
    return out


def analyse(spec: TableSpec, rows: list) -> dict | None:
    """Point estimates and bootstrap intervals of every frontier's fit, prediction and crossing."""
    s = spec.scaling
    pts = points(spec, rows, s.metric)
    archs = sorted({p.arch for p in pts}, key=[str(r.group.get(s.by)) for r in spec.rows].index)
    archs = [a for a in archs if len({p.budget for p in pts if p.arch == a}) >= 3]
    if not archs:
        return None
    point_bpb = np.array([p.units.bpb for p in pts])
    reps = _replicate_bpb(pts)
    top = max(p.flops for p in pts)
    check = s.check_flops
    fits = {a: fit(*frontier(pts, point_bpb, a)) for a in archs}
    boot = {a: [fit(*frontier(pts, reps[:, k], a)) for k in range(REPLICATES)] for a in archs}
    out = {"points": pts, "bpb": point_bpb, "archs": archs, "fits": fits, "top": top, "check": check, "arch": {},
           "pairs": []}
    for a in archs:
        alphas = np.array([f.alpha for f in boot[a]])
        entry = {"alpha": (fits[a].alpha, *np.percentile(alphas, [2.5, 97.5]))}
        if check:
            pred = np.array([f(check) for f in boot[a]])
            entry["check"] = (float(fits[a](check)), *np.percentile(pred, [2.5, 97.5]))
        out["arch"][a] = entry
    out["pairs"] = _pairs(archs, fits, boot, top, s.horizon)
    out["joint"] = {}
    for a in archs:
        idx = [i for i, p in enumerate(pts) if p.arch == a]
        if len({pts[i].size for i in idx}) < 2:
            continue
        N = np.array([pts[i].per_byte for i in idx])
        D = np.array([pts[i].flops / pts[i].per_byte for i in idx])
        f = fit_joint(N, D, point_bpb[idx])
        reps_a = [fit_joint(N, D, reps[idx, k], start=f) for k in range(JOINT_REPLICATES)]
        entry = {"fit": f, "boot": reps_a, "b_over": (f.b / (f.a + f.b), *np.percentile(
            [g.b / (g.a + g.b) for g in reps_a], [2.5, 97.5]))}
        if check:
            entry["check"] = (float(f(check)), *np.percentile([g(check) for g in reps_a], [2.5, 97.5]))
            entry["n_check"] = float(f.optimal_n(check))
        out["joint"][a] = entry
    ja = [a for a in archs if a in out["joint"]]
    out["joint_pairs"] = _pairs(ja, {a: out["joint"][a]["fit"] for a in ja}, {a: out["joint"][a]["boot"] for a in ja},
                                top, s.horizon)
    return out


def section(spec: TableSpec, rows: list, png: Path) -> list[str]:
    """The report's scaling section (and its figure), or nothing when fewer than 3 budgets have cells."""
    if spec.scaling is None:
        return []
    r = analyse(spec, rows)
    if r is None:
        png.unlink(missing_ok=True)
        return ["", "## Scaling", "", "(fewer than 3 budgets with finished cells for every architecture: no fit yet)"]
    s = spec.scaling
    lines = ["", "## Scaling", "",
             f"Frontier: the best size at each budget ({s.metric}); fit `L(C) = E + A C^-alpha` (C: training FLOPs); "
             f"95% intervals from {REPLICATES} bootstrap replicates over test windows x seeds (every cell scored on "
             "the same windows).", "",
             "| architecture | alpha | E | A | " + (f"predicted at {s.check_flops:.0e} FLOPs | " if s.check_flops
                                                   else "") + "frontier (FLOPs: bits/byte, size) |",
             "|---|---:|---:|---:|" + ("---:|" if s.check_flops else "") + "---|"]
    one_size = {}
    for a in r["archs"]:
        f, e = r["fits"][a], r["arch"][a]
        best = best_sizes(r["points"], r["bpb"], a)
        pts = ", ".join(f"{r['points'][i].flops:.2e}: {r['bpb'][i]:.3f} {r['points'][i].size}" for i in best)
        sizes = {r["points"][i].size for i in best}
        if len(sizes) == 1:
            one_size[a] = sizes.pop()
        pred = f"{e['check'][0]:.3f} [{e['check'][1]:.3f}, {e['check'][2]:.3f}] | " if s.check_flops else ""
        lines.append(f"| {a} | {e['alpha'][0]:.3f} [{e['alpha'][1]:.3f}, {e['alpha'][2]:.3f}] | {f.E:.3f} | "
                     f"{f.A:.3g} | {pred}{pts} |")
    if one_size:
        lines += ["", "**One size is best at every budget** for " + ", ".join(f"{a} ({z})" for a, z in one_size.items())
                  + ": there the frontier is that model's learning curve, its E that model's floor, not a "
                  "compute-optimal frontier (which moves to larger models as compute grows); its predictions and "
                  "crossings say where that size would go, and overstate the loss a growing model reaches."]
    lines += ["", f"Crossings beyond the largest measured budget ({r['top']:.2e} FLOPs), up to {s.horizon:.0e}:", ""]
    lines += _crossing_lines(r["pairs"], s.horizon)
    if r["joint"]:
        lines += ["", "Second estimate, from every size and budget at once: `L(N, D) = E + A n^-a + B d^-b` (N: the "
                  "size's training FLOPs per byte, D: bytes trained on, C = N D; n, d over their medians; Hoffmann et "
                  "al.'s approach 3), minimised over N at each C, so the frontier's size can grow past the sizes "
                  f"measured; 95% intervals from {JOINT_REPLICATES} bootstrap replicates.", "",
                  "| architecture | a | b | E | optimal N grows as C^ | " + (
                      f"predicted at {s.check_flops:.0e} FLOPs | optimal FLOPs/byte there |" if s.check_flops else "")
                  + " at a bound |",
                  "|---|---:|---:|---:|---:|" + ("---:|---:|" if s.check_flops else "") + "---|"]
        for a, e in r["joint"].items():
            f, bo = e["fit"], e["b_over"]
            pred = (f" {e['check'][0]:.3f} [{e['check'][1]:.3f}, {e['check'][2]:.3f}] | {e['n_check']:.3g} |"
                    if s.check_flops else "")
            lines.append(f"| {a} | {f.a:.3f} | {f.b:.3f} | {f.E:.3f} | {bo[0]:.2f} [{bo[1]:.2f}, {bo[2]:.2f}] |{pred}"
                         f" {', '.join(f.at_bound) or 'none'} |")
        stuck = [a for a, e in r["joint"].items() if e["fit"].at_bound]
        if stuck:
            lines += ["", f"**The joint fit is not determined for {', '.join(stuck)}**: a parameter sits at its bound "
                      "or its term vanishes (the points do not fix it), and resampling test windows cannot widen the "
                      "interval for that: "
                      "read those rows' predictions and crossings as unsupported by these points."]
        lines += ["", "Crossings of these frontiers:", ""] + _crossing_lines(r["joint_pairs"], s.horizon)
    if draw(r, png, spec):
        lines += ["", f"![scaling]({png.name})"]
    return lines


def _crossing_lines(pairs: list[dict], horizon: float) -> list[str]:
    lines = []
    for p in pairs:
        lead = p["a"] if p["at_horizon"] < 0 else p["b"]
        if p["point"] is None and p["share"] < 0.5:
            lines.append(f"- {p['a']} vs {p['b']}: no crossing within {horizon:.0e} FLOPs (crossings in "
                         f"{p['share']:.0%} of replicates); at {horizon:.0e} the fits put {lead} ahead by "
                         f"{abs(p['at_horizon']):.3f} bits/byte")
        else:
            where = "none at the point estimate" if p["point"] is None else f"{p['point']:.2e}"
            iv = f" [{p['interval'][0]:.2e}, {p['interval'][1]:.2e}]" if p["interval"] else ""
            lines.append(f"- {p['a']} vs {p['b']}: curves cross at {where} FLOPs{iv} (in {p['share']:.0%} of "
                         f"replicates)")
    return lines


def draw(r: dict, png: Path, spec: TableSpec) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    hi = max(spec.scaling.check_flops or 0, r["top"] * 100)
    for k, a in enumerate(r["archs"]):
        color = f"C{k}"
        mine = [(p.flops, b) for p, b in zip(r["points"], r["bpb"]) if p.arch == a]
        ax.scatter(*zip(*mine), color=color, s=14, alpha=0.6)
        C = np.logspace(math.log10(min(c for c, _ in mine)), math.log10(hi), 100)
        ax.plot(C, r["fits"][a](C), color=color, label=f"{a} (alpha {r['arch'][a]['alpha'][0]:.2f})")
        if a in r["joint"]:
            ax.plot(C, r["joint"][a]["fit"](C), color=color, ls="--", lw=1)
    ax.axvline(r["top"], color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("test bits per byte")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="solid: best size per budget; dashed: L(N, D)" if r["joint"] else None,
              title_fontsize=7)
    ax.set_title(spec.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


__all__ = ["Fit", "analyse", "best_sizes", "crossing", "fit", "section"]
