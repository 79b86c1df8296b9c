"""The main job: the architectures on the same bytes, budget, data order and seed.

    python -m experiments.compare                                  # four tiny presets, 0.5M bytes each
    python -m experiments.compare --archs transformer megalodon --budget tokens:2e7
    python -m experiments.compare --budget flops:5e12 --set data.seq_len=512 --set data.path=~/corpus

Writes <out>/compare.md, compare.csv, compare_curve.png (streaming bits per byte by position in the
document) and one run dir per architecture under <out>/compare/<arch>/. Training FLOPs per token are
each model's ``flops_per_token(seq_len)``: 6 x matmul parameters (forward + backward) plus attention
(and, for Megalodon, the CEMA FFT), counted from the config.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

from hydra.utils import instantiate

from architectures.contract import check
from experiments.config import bytes_per_update, compose
from experiments.evaluation import evaluate

DEFAULT_ARCHS = ["transformer_tiny", "megalodon_tiny", "megabyte_tiny", "fot_tiny"]


def parse_budget(text: str) -> tuple[str, float]:
    kind, _, value = text.partition(":")
    if kind not in ("tokens", "flops") or not value:
        raise ValueError(f"--budget {text!r}: use tokens:<N> or flops:<N>, e.g. tokens:1e6 or flops:5e12")
    return kind, float(value)


def steps_for(cfg, kind: str, value: float) -> tuple[int, float]:
    """Training steps that spend the budget, and the model's FLOPs per token."""
    tokens_per_step = bytes_per_update(cfg)
    net = check(instantiate(cfg.model.net))
    fpt = float(net.flops_per_token(int(cfg.data.seq_len)))
    tokens = value if kind == "tokens" else value / fpt
    return max(1, math.ceil(tokens / tokens_per_step)), fpt


def plot_curves(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        curve = r.get("curve") or []
        if curve:
            ax.plot([math.sqrt(max(c["start"], 1) * c["end"]) for c in curve], [c["bpb"] for c in curve],
                    marker="o", label=r["arch"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in the document (bytes)")
    ax.set_ylabel("bits per byte")
    ax.set_title("streaming evaluation: bits per byte vs position")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=DEFAULT_ARCHS, help="configs/model/<name>.yaml")
    ap.add_argument("--budget", default="tokens:5e5", help="tokens:<N> or flops:<N> (training budget per model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results")
    ap.add_argument("--set", action="append", default=[], help="Hydra override applied to every run")
    ap.add_argument("--stream-docs", type=int, default=8, help="test documents walked by the streaming eval")
    ap.add_argument("--stream-bytes", type=int, default=16384, help="bytes per document in the streaming eval")
    a = ap.parse_args(argv)
    kind, value = parse_budget(a.budget)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch in a.archs:
        base = [f"model={arch}", f"seed={a.seed}", "trainer.enable_progress_bar=false", *a.set]
        steps, fpt = steps_for(compose("train", base), kind, value)
        run_dir = out / "compare" / arch
        cfg = compose("train", base)
        print(f"[compare] {arch}: {steps} steps of {cfg.data.batch_size}x{cfg.data.seq_len} bytes "
              f"({kind} budget {value:.3g})", flush=True)
        done = run_dir / "metrics.json"
        if not (done.exists() and json.loads(done.read_text()).get("steps") == steps):
            # one process per model, so that peak memory (the process's max RSS) is this model's own
            overrides = [*base, f"trainer.max_steps={steps}", f"run_dir={run_dir}",
                         f"trainer.val_check_interval={steps}", "ckpt_path=auto",
                         f"callbacks.checkpoint.every_n_train_steps={max(1, steps // 4)}",
                         f"optim.warmup_steps={max(1, steps // 10)}"]
            subprocess.run([sys.executable, "-m", "experiments.train", *overrides], check=True)
        m = json.loads(done.read_text())
        # models with learned positions (MEGABYTE) stream at most max_len bytes per document
        max_len = check(instantiate(cfg.model.net)).max_len
        doc_bytes = min(a.stream_bytes, max_len or a.stream_bytes)
        ev = evaluate(compose("eval", [f"run_dir={run_dir}", "eval.streaming=true",
                                           f"eval.max_docs={a.stream_docs}", f"eval.max_doc_bytes={doc_bytes}",
                                           "out=stream_metrics.json"]))
        rows.append({"arch": arch, "params": m["params"], "flops_per_token": fpt, "steps": m["steps"],
                     "tokens": m["tokens_seen"], "tokens_per_s": m["train/tokens_per_s"],
                     "peak_mem_mb": m["train/peak_mem_mb"], "val_bpb": m["val/bpb"],
                     "stream_bpb": ev["test/stream_bpb"], "curve": ev["stream"]["curve"]})
    header = ["arch", "params", "flops_per_token", "steps", "tokens", "tokens_per_s", "peak_mem_mb", "val_bpb",
              "stream_bpb"]
    with open(out / "compare.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    cmd = "python -m experiments.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"<!-- {cmd.strip()} -->", "# Same bytes, same budget: the comparison", "",
             f"Command: `{cmd.strip()}`. Budget {kind} {value:.3g} per model; seed {a.seed}; default corpus "
             "unless overridden. FLOPs per token: training (forward + backward), counted from each config.", "",
             "| arch | params | train FLOPs/token | steps | tokens | tokens/s | peak MB | val bits/byte | "
             "streaming bits/byte |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['params']:,} | {r['flops_per_token']:.3g} | {r['steps']} | "
                     f"{r['tokens']:,} | {r['tokens_per_s']:,.0f} | {r['peak_mem_mb']:.0f} | {r['val_bpb']:.4f} | "
                     f"{r['stream_bpb']:.4f} |")
    buckets = sorted({(c["start"], c["end"]) for r in rows for c in r["curve"]})
    lines += ["", "Streaming bits per byte by position in the document (test split, carried state; models with "
              "learned positions stream at most their max_len bytes):", "",
              "| arch | " + " | ".join(f"[{lo}, {hi})" for lo, hi in buckets) + " |", "|---|" + "---:|" * len(buckets)]
    for r in rows:
        got = {(c["start"], c["end"]): c["bpb"] for c in r["curve"]}
        lines.append(f"| {r['arch']} | " + " | ".join(f"{got[b]:.3f}" if b in got else "—" for b in buckets) + " |")
    if plot_curves(rows, out / "compare_curve.png"):
        lines += ["", "![streaming curve](compare_curve.png)"]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
