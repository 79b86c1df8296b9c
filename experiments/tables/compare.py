"""The main job: the architectures on the same bytes, budget, data order and seed.

    python -m experiments.compare                      # four tiny presets, 3M bytes each (~10 min on 2 cores)
    python -m experiments.compare --quick              # a few steps each: checks that everything runs
    python -m experiments.compare --archs transformer megalodon --budget tokens:2e7
    python -m experiments.compare --budget flops:5e12 --set data.seq_len=512 --set data.path=~/corpus
    python -m experiments.compare --publish            # also write results/compare.md (the committed one)

Writes ``<out>/compare.md``, ``compare.csv``, ``compare_curves.png`` (validation bits per byte vs
training bytes and vs training FLOPs, and streaming bits per byte by position in the document) and
one run dir per architecture under ``<out>/<arch>/``; ``--out`` defaults to ``runs/compare``. Training
FLOPs per token are each model's ``flops_per_token(seq_len)``, counted from the config.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

from architectures.contract import check
from experiments.config import build, bytes_per_update, compose, git_commit, val_step
from experiments.evaluation.bpb import evaluate

DEFAULT_ARCHS = ["transformer_tiny", "megalodon_tiny", "megabyte_tiny", "fot_tiny"]
DEFAULT_BUDGET = "tokens:3e6"
QUICK = ["--budget", "tokens:2048", "--set", "debug=smoke", "--stream-docs", "1", "--stream-bytes", "300"]
VAL_POINTS = 8  # validation evaluations per run: the learning curve


def parse_budget(text: str) -> tuple[str, float]:
    kind, _, value = text.partition(":")
    if kind not in ("tokens", "flops") or not value:
        raise ValueError(f"--budget {text!r}: use tokens:<N> or flops:<N>, e.g. tokens:1e6 or flops:5e12")
    return kind, float(value)


def steps_for(cfg, kind: str, value: float) -> tuple[int, float]:
    """Training steps that spend the budget, and the model's FLOPs per token."""
    tokens_per_step = bytes_per_update(cfg)
    net = check(build(cfg.model.net))
    fpt = float(net.flops_per_token(int(cfg.data.seq_len)))
    tokens = value if kind == "tokens" else value / fpt
    return max(1, math.ceil(tokens / tokens_per_step)), fpt


def val_curve(run_dir: Path, tokens_per_step: int, fpt: float) -> list[dict]:
    path = run_dir / "logs" / "metrics.csv"
    points = {}
    if path.exists():
        with open(path, newline="") as fh:
            for rec in csv.DictReader(fh):
                if rec.get("val/bpb"):
                    points[val_step(rec)] = float(rec["val/bpb"])
    return [{"step": s, "bytes": s * tokens_per_step, "flops": s * tokens_per_step * fpt, "bpb": v}
            for s, v in sorted(points.items())]


def plot_curves(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in rows:
        if r["val_curve"]:
            axes[0].plot([p["bytes"] for p in r["val_curve"]], [p["bpb"] for p in r["val_curve"]], marker=".",
                         label=r["arch"])
            axes[1].plot([p["flops"] for p in r["val_curve"]], [p["bpb"] for p in r["val_curve"]], marker=".",
                         label=r["arch"])
        if r["curve"]:
            axes[2].plot([math.sqrt(max(c["start"], 1) * c["end"]) for c in r["curve"]], [c["bpb"] for c in r["curve"]],
                         marker="o", label=r["arch"])
    for ax, xl, title in zip(axes, ("training bytes", "training FLOPs", "position in the document (bytes)"),
                             ("validation", "validation", "streaming test documents, carried state")):
        ax.set_xscale("log", base=2 if "position" in xl else 10)
        ax.set_xlabel(xl)
        ax.set_ylabel("bits per byte")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_arch(arch: str, a, kind: str, value: float, out: Path) -> dict:
    base = [f"model={arch}", f"seed={a.seed}", "trainer.enable_progress_bar=false", *a.set]
    cfg = compose("train", base)
    steps, fpt = steps_for(cfg, kind, value)
    per_step = bytes_per_update(cfg)
    run_dir = out / arch
    print(f"[compare] {arch}: {steps} steps of {per_step:,} bytes ({kind} budget {value:.3g})", flush=True)
    done = run_dir / "metrics.json"
    if not (done.exists() and json.loads(done.read_text()).get("steps") == steps):
        # one process per model, so that peak memory (the process's max RSS) is this model's own
        every = max(1, steps // VAL_POINTS)
        overrides = [*base, f"trainer.max_steps={steps}", f"run_dir='{run_dir}'", f"trainer.val_check_interval={every}",
                     "ckpt_path=auto", f"callbacks.checkpoint.every_n_train_steps={max(1, steps // 4)}",
                     f"optim.warmup_steps={max(1, steps // 10)}", f"trainer.log_every_n_steps={max(1, every // 2)}"]
        subprocess.run([sys.executable, "-m", "experiments.train", *overrides], check=True)
    m = json.loads(done.read_text())
    # models with learned positions (MEGABYTE) stream at most max_len bytes per document
    max_len = check(build(cfg.model.net)).max_len
    doc_bytes = min(a.stream_bytes, max_len or a.stream_bytes)
    ev = evaluate(compose("eval", [f"run_dir='{run_dir}'", "eval.streaming=true", f"eval.max_docs={a.stream_docs}",
                                   f"eval.max_doc_bytes={doc_bytes}", "out=stream_metrics.json"]))
    return {"arch": arch, "params": m["params"], "flops_per_token": fpt, "steps": m["steps"],
            "tokens": m["tokens_seen"], "tokens_per_s": m["train/tokens_per_s"],
            "tokens_per_cpu_s": m.get("train/tokens_per_cpu_s", float("nan")), "wall_time_s": m["wall_time_s"],
            "peak_mem_mb": m["train/peak_mem_mb"], "val_bpb": m["val/bpb"], "stream_bpb": ev["test/stream_bpb"],
            "curve": ev["stream"]["curve"], "val_curve": val_curve(run_dir, m.get("tokens_per_step", per_step), fpt)}


def report(rows: list[dict], a, kind: str, value: float, out: Path, cmd: str) -> str:
    total = sum(r["wall_time_s"] for r in rows)
    code = git_commit()
    commit = code["commit"][:10] + ("+dirty" if code["dirty"] else "")
    lines = [f"<!-- {cmd} -->", "# Same bytes, same budget: the four architectures", "",
             f"Command: `{cmd}`. Budget {kind} {value:.3g} per model, seed {a.seed}, the default corpus unless "
             f"overridden ({' '.join(a.set) or 'no overrides'}); the same windows in the same order for every model. "
             f"Code commit {commit}. Training took {total / 60:.1f} min of wall time in all on this machine. "
             "FLOPs per token: training "
             "(forward + backward), counted from each config. One seed: differences under ~0.1 bits/byte are "
             "within seed noise at this scale (the tables in results/ use 3 seeds).", "",
             "| arch | params | train FLOPs/byte | steps | bytes | bytes/s | bytes/CPU-s | peak MB | val bits/byte | "
             "streaming bits/byte |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['params']:,} | {r['flops_per_token']:.3g} | {r['steps']} | {r['tokens']:,} | "
                     f"{r['tokens_per_s']:,.0f} | {r['tokens_per_cpu_s']:,.0f} | {r['peak_mem_mb']:.0f} | "
                     f"{r['val_bpb']:.4f} | {r['stream_bpb']:.4f} |")
    buckets = sorted({(c["start"], c["end"]) for r in rows for c in r["curve"]})
    lines += ["", "Streaming bits per byte by position in the document (test split, carried state; models with "
              "learned positions stream at most their max_len bytes):", "",
              "| arch | " + " | ".join(f"[{lo}, {hi})" for lo, hi in buckets) + " |", "|---|" + "---:|" * len(buckets)]
    for r in rows:
        got = {(c["start"], c["end"]): c["bpb"] for c in r["curve"]}
        lines.append(f"| {r['arch']} | " + " | ".join(f"{got[b]:.3f}" if b in got else "—" for b in buckets) + " |")
    lines += ["", "Validation bits per byte during training (the learning curves):", ""]
    for r in rows:
        lines.append(f"- {r['arch']}: " + ", ".join(f"{p['bytes'] / 1e6:.2f}M bytes: {p['bpb']:.3f}"
                                                    for p in r["val_curve"]))
    if plot_curves(rows, out / "compare_curves.png"):
        lines += ["", "![learning and streaming curves](compare_curves.png)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=DEFAULT_ARCHS, help="configs/model/<name>.yaml")
    ap.add_argument("--budget", default=DEFAULT_BUDGET, help="tokens:<N> or flops:<N> (training budget per model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/compare", help="folder for the report and the runs")
    ap.add_argument("--publish", action="store_true", help="also copy the report into results/ (the committed one)")
    ap.add_argument("--quick", action="store_true", help="a few steps per model: checks that everything runs")
    ap.add_argument("--set", action="append", default=[], help="Hydra override applied to every run")
    ap.add_argument("--stream-docs", type=int, default=8, help="test documents walked by the streaming eval")
    ap.add_argument("--stream-bytes", type=int, default=16384, help="bytes per document in the streaming eval")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args((QUICK if "--quick" in argv else []) + argv)
    kind, value = parse_budget(a.budget)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_arch(arch, a, kind, value, out) for arch in a.archs]
    header = ["arch", "params", "flops_per_token", "steps", "tokens", "tokens_per_s", "tokens_per_cpu_s",
              "wall_time_s", "peak_mem_mb", "val_bpb", "stream_bpb"]
    with open(out / "compare.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    text = report(rows, a, kind, value, out, ("python -m experiments.compare " + " ".join(argv)).strip())
    (out / "compare.md").write_text(text)
    if a.publish:
        results = Path("results")
        results.mkdir(exist_ok=True)
        for f in ("compare.md", "compare.csv", "compare_curves.png"):
            if (out / f).exists():
                shutil.copy(out / f, results / f)
    print(text)
    return rows


if __name__ == "__main__":
    main()
