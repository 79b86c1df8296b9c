"""Tables: explicit rows x seeds into fixed folders, resumable, aggregated with the papers' numbers.

    python -m experiments.run_table <name> [--scale tiny|paper] [--seeds 0 1] [--results results]
    python -m experiments.make_table <name> [--results results]

``configs/table/<name>.yaml`` lists the rows (each ``configs/experiment/<name>/<row>.yaml``), seeds,
the evaluations to run on every cell, the metrics to aggregate, the paper's numbers and the figure.
A cell lives in ``<results>/<name>/<row>/seed=<n>/``: a finished cell (``done``) is skipped, an
interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from experiments.compare import compose_cfg
from experiments.train import train, write_json

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_table(name: str) -> dict:
    path = CONFIGS / "table" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONFIGS / "table").glob("*.yaml"))
        raise FileNotFoundError(f"no table {name!r} (configs/table/{name}.yaml); known tables: {known}")
    t = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    for row in t["rows"]:
        exp = CONFIGS / "experiment" / f"{row['experiment']}.yaml"
        if not exp.exists():
            raise FileNotFoundError(f"table {name!r} row {row['name']!r}: configs/experiment/{row['experiment']}.yaml "
                                    "does not exist")
    return t


def cell_dir(results: Path, table: str, row: str, seed: int) -> Path:
    return results / table / row / f"seed={seed}"


# ---------------------------------------------------------------------------------------------- running
def run_evals(table: dict, row: dict, cell: Path) -> None:
    shared = [] if row.get("skip_table_evals") else table.get("evals", [])
    for ev in shared + row.get("evals", []):
        out = cell / f"{ev['name']}.json"
        if out.exists():
            continue
        kind, overrides = ev["kind"], [f"run_dir='{cell}'", f"out={out.name}", *ev.get("overrides", [])]
        if kind in ("window", "stream"):
            from experiments.eval import evaluate

            evaluate(compose_cfg("eval", overrides + (["eval.streaming=true"] if kind == "stream" else [])))
        elif kind == "fot":
            from experiments.fot_eval import run

            run(compose_cfg("fot_eval", overrides))
        elif kind == "generation":
            write_json(out, generation_speed(cell, int(ev.get("bytes", 2048))))
        else:
            raise ValueError(f"table {table['name']!r}: unknown eval kind {kind!r}")


@torch.no_grad()
def generation_speed(run_dir: Path, n_bytes: int) -> dict:
    from experiments.generation import generate
    from experiments.runs import load_run

    _, module = load_run(run_dir)
    prompt = torch.tensor([list(b"def main():\n    ")])
    t0, c0 = time.perf_counter(), time.process_time()
    generate(module.net, prompt, n_bytes, temperature=1.0, generator=torch.Generator().manual_seed(0))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"bytes": n_bytes, "bytes_per_s": n_bytes / wall, "bytes_per_cpu_s": n_bytes / cpu}


def run_table(name: str, scale: str = "tiny", seeds: list[int] | None = None, results: str = "results",
              extra: list[str] | None = None) -> list[Path]:
    table = load_table(name)
    if table.get("cells_from"):
        print(f"[table] {name} reads the cells of {table['cells_from']}: running that table")
        return run_table(table["cells_from"], scale, seeds, results, extra)
    seeds = seeds if seeds is not None else table.get("seeds", [0])
    scale_overrides = table.get("scales", {}).get(scale)
    if scale_overrides is None:
        raise ValueError(f"table {name!r} has no scale {scale!r}; it has {sorted(table.get('scales', {}))}")
    cells = []
    for row in table["rows"]:
        for seed in seeds:
            cell = cell_dir(Path(results), name, row["name"], seed)
            cells.append(cell)
            if (cell / "done").exists():
                print(f"[table] {name}/{row['name']}/seed={seed}: done, skipped")
                continue
            overrides = [f"experiment={row['experiment']}", f"seed={seed}", f"run_dir='{cell}'", "ckpt_path=auto",
                         "trainer.enable_progress_bar=false", *scale_overrides, *row.get("overrides", []),
                         *(extra or [])]
            if row.get("init_from_row"):
                overrides.append(f"init_from='{cell_dir(Path(results), name, row['init_from_row'], seed)}'")
            print(f"[table] {name}/{row['name']}/seed={seed}: training ({' '.join(overrides)})")
            cfg = compose_cfg("train", overrides)
            m = cell / "metrics.json"
            if not m.exists() or json.loads(m.read_text()).get("steps", -1) < cfg.trainer.max_steps:
                train(cfg)
            run_evals(table, row, cell)
            (cell / "done").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    return cells


# ---------------------------------------------------------------------------------------------- aggregation
def lookup(cell: Path, metric: str) -> float | None:
    """``file/key`` -> the value in <cell>/<file>.json (``metrics/val/bpb`` reads metrics.json)."""
    file, _, key = metric.partition("/")
    path = cell / f"{file}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    for part in [key] if key in data else key.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return float(data) if isinstance(data, (int, float)) else None


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt(mean: float, std: float | None, digits: int = 4) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def aggregate(table: dict, results: Path) -> list[dict]:
    seeds = table.get("seeds", [0])
    source = table.get("cells_from", table["name"])
    rows = []
    for row in table["rows"]:
        out: dict[str, Any] = {"row": row["name"], "label": row.get("label", row["name"])}
        for metric in table["metrics"]:
            vals, missing = [], []
            for s in seeds:
                v = lookup(cell_dir(results, source, row["name"], s), metric["key"])
                (vals.append(v) if v is not None and not math.isnan(v) else missing.append(s))
            out[metric["key"]] = (mean_std(vals) if vals else None, len(vals), missing)
        out["paper"] = row.get("paper", {})
        rows.append(out)
    return rows


def curve_points(table: dict, results: Path, row: str) -> dict[str, list[tuple[float, float, float | None]]]:
    """Mean (and std) over seeds of the figure's curves for one row: {series: [(x, mean, std)]}."""
    fig = table["figure"]
    series: dict[str, dict[float, list[float]]] = {}
    for s in table.get("seeds", [0]):
        path = cell_dir(results, table.get("cells_from", table["name"]), row, s) / f"{fig['file']}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        for part in fig["path"].split("."):
            data = data[part]
        for item in data:
            label = str(item.get(fig["series"], "")) if fig.get("series") else ""
            series.setdefault(label, {}).setdefault(float(item[fig["x"]]), []).append(float(item[fig["y"]]))
    return {k: [(x, *mean_std(v)) for x, v in sorted(pts.items())] for k, pts in series.items()}


def make_table(name: str, results: str = "results", command: str | None = None) -> str:
    table = load_table(name)
    res = Path(results)
    rows = aggregate(table, res)
    seeds = table.get("seeds", [0])
    head = [f"<!-- generated by: python -m experiments.make_table {name} --results {results} -->",
            f"# {table['title']}", "",
            f"Reproduce: `{table.get('command', f'python -m experiments.run_table {name}')}` then "
            f"`python -m experiments.make_table {name}`. Seeds {seeds}; mean ± std over seeds (std needs 2+).", ""]
    if table.get("note"):
        head += [table["note"].strip(), ""]
    metric_cols = [m.get("label", m["key"]) for m in table["metrics"]]
    paper_cols = table.get("paper_columns", [])
    lines = ["| row | " + " | ".join(metric_cols + [f"paper: {p}" for p in paper_cols]) + " |",
             "|---|" + "---:|" * (len(metric_cols) + len(paper_cols))]
    csv_rows = []
    for r in rows:
        cells = []
        for m in table["metrics"]:
            stats, n, missing = r[m["key"]]
            text = "—" if stats is None else fmt(*stats, digits=m.get("digits", 4))
            if missing:
                text += f" (missing seeds {missing})"
            cells.append(text)
            csv_rows.append({"row": r["row"], "metric": m["key"], "mean": None if stats is None else stats[0],
                             "std": None if stats is None else stats[1], "n": n, "missing": missing})
        cells += [str(r["paper"].get(p, "—")) for p in paper_cols]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    body = head + lines
    if table.get("figure"):
        png = res / f"{name}.png"
        if draw_figure(table, res, png):
            body += ["", f"![{name}]({png.name})"]
        fig = table["figure"]
        for r in table["rows"]:
            pts = curve_points(table, res, r["name"])
            for label, xs in pts.items():
                body.append("")
                body.append(f"{r.get('label', r['name'])}{' / ' + label if label else ''}: " + ", ".join(
                    f"{fig['x']}={x:g}: {fmt(m, s, 3)}" for x, m, s in xs))
    text = "\n".join(body) + "\n"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"{name}.md").write_text(text)
    with open(res / f"{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["row", "metric", "mean", "std", "n", "missing"])
        w.writeheader()
        w.writerows(csv_rows)
    return text


def draw_figure(table: dict, results: Path, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig_cfg = table["figure"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = False
    for r in table["rows"]:
        for label, pts in curve_points(table, results, r["name"]).items():
            if not pts:
                continue
            xs, ms, ss = zip(*pts)
            name = r.get("label", r["name"]) + (f" ({label})" if label else "")
            ax.errorbar(xs, ms, yerr=[s or 0 for s in ss], marker="o", capsize=3, label=name)
            drawn = True
    if not drawn:
        plt.close(fig)
        return False
    if fig_cfg.get("logx", True):
        ax.set_xscale("log")
    ax.set_xlabel(fig_cfg.get("xlabel", fig_cfg["x"]))
    ax.set_ylabel(fig_cfg.get("ylabel", fig_cfg["y"]))
    ax.set_title(table["title"], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def cli_run(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m experiments.run_table")
    ap.add_argument("name")
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--results", default="results")
    ap.add_argument("--set", action="append", default=[], help="extra Hydra override for every cell")
    a = ap.parse_args(argv)
    run_table(a.name, a.scale, a.seeds, a.results, a.set)
    print(make_table(a.name, a.results))


def cli_make(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m experiments.make_table")
    ap.add_argument("name")
    ap.add_argument("--results", default="results")
    a = ap.parse_args(argv)
    print(make_table(a.name, a.results, " ".join(sys.argv)))
