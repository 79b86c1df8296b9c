"""Megalodon vs the Transformer baseline on CPU: training-step throughput and memory vs context, and
constant-memory streaming over a 1M-byte document. Prints markdown tables.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.megalodon [--contexts 1024 ... 32768] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from architectures.megalodon import Megalodon  # noqa: E402
from architectures.transformer import Transformer  # noqa: E402
from benchmarks.common import PeakRSS, measure, rss_bytes, table  # noqa: E402


def params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def build(kind: str, width: int, layers: int, chunk: int | None = None):
    torch.manual_seed(0)
    if kind == "transformer":
        return Transformer(d_model=width, n_layers=layers, n_heads=width // 64)
    # Megalodon at the same parameter count: Z = D/2, E = 2D, F = 2.5D (mega200M's proportions)
    return Megalodon(model_dim=width, num_layers=layers, num_heads=1, z_dim=width // 2, value_dim=2 * width,
                     ffn_hidden_dim=int(2.5 * width) // 4 * 4 - width // 2, chunk_size=chunk, norm_num_groups=16)


def train_step_rows(contexts, width, layers, chunks, tokens_per_step):
    nets = {"transformer": build("transformer", width, layers)}
    for c in chunks:
        nets[f"megalodon C={c}"] = build("megalodon", width, layers, c)
    rows = []
    for name, net in nets.items():
        net.train()
        for L in contexts:
            B = max(1, tokens_per_step // L)
            x = torch.randint(0, 256, (B, L + 1))

            def step():
                logits, _ = net(x[:, :-1])
                F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
                net.zero_grad(set_to_none=True)

            m = measure(step, repeat=1, warmup=1)
            rows.append({"model": name, "params": params(net), "L": L, "B": B, "tok_s": B * L / m["wall"],
                         "cpu_tok_s": B * L / m["cpu"], "mem_mb": m["mem_mb"]})
    return rows


@torch.no_grad()
def streaming_rows(total: int, window: int, width: int, layers: int, chunk: int, marks):
    net = build("megalodon", width, layers, chunk).eval()
    doc = torch.randint(0, 256, (1, total))
    state, rows, base = None, [], rss_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    marks = sorted(marks)
    with PeakRSS() as mem:
        for s in range(0, total, window):
            _, state = net(doc[:, s : s + window], state)
            done = s + window
            if marks and done >= marks[0]:
                rows.append({"pos": marks.pop(0), "rss_mb": (mem.peak - base) / 2**20,
                             "bytes_s": done / (time.perf_counter() - t0),
                             "cpu_bytes_s": done / (time.process_time() - c0)})
    return rows, params(net)


def decode_rows(width: int, layers: int, chunk: int, prompt: int, new: int) -> list[dict]:
    """Generation bytes/s: before (CEMA's FFT op on one token per call, chunk attention folding the
    cached chunk with dummy queries) vs after (the O(1) CEMA step with cached coefficients, queries
    attending to the cache directly)."""
    from architectures.megalodon.layers import CEMA
    from experiments.evaluation.generation import generate
    from kernels.chunk_attention import torch_impl

    net = build("megalodon", width, layers, chunk).eval()
    x = torch.randint(0, 256, (1, prompt), generator=torch.Generator().manual_seed(0))
    rows = []
    for label, step in (("before: FFT per token, folded cache", False), ("after: step recurrence, direct", True)):
        CEMA.step_recurrence = torch_impl.DIRECT_CONTINUATION = step
        r = measure(lambda: generate(net, x, new, temperature=0), repeat=2)
        rows.append({"path": label, "bytes_s": new / r["wall"], "cpu_bytes_s": new / r["cpu"]})
    CEMA.step_recurrence = torch_impl.DIRECT_CONTINUATION = True
    rows[1]["speedup"] = rows[1]["bytes_s"] / rows[0]["bytes_s"]
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--chunks", type=int, nargs="+", default=[256, 2048])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens-per-step", type=int, default=32768)
    ap.add_argument("--stream-bytes", type=int, default=1 << 20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--decode-only", action="store_true", help="only the generation table")
    a = ap.parse_args()
    drows = decode_rows(a.width, a.layers, 256, 64, 256 if a.quick else 1024)
    print(f"## generation (greedy, batch 1, width {a.width}, {a.layers} layers, chunk 256)")
    print(table(drows, [("path", "decoding path", "{}"), ("bytes_s", "bytes/s", "{:,.0f}"),
                        ("cpu_bytes_s", "bytes/CPU-s", "{:,.0f}"), ("speedup", "speed-up", "{:.2f}x")]) + "\n")
    if a.decode_only:
        return
    if a.quick:
        a.contexts, a.chunks, a.tokens_per_step, a.stream_bytes = [256, 1024], [128], 2048, 1 << 16
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, CPU; one forward+backward "
          f"of {a.tokens_per_step} tokens per step (batch = tokens / context); mem = peak extra RSS\n")
    rows = train_step_rows(a.contexts, a.width, a.layers, a.chunks, a.tokens_per_step)
    ref = {r["L"]: r["tok_s"] for r in rows if r["model"] == "transformer"}
    for r in rows:
        r["vs_tf"] = r["tok_s"] / ref[r["L"]]
    by_model = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["L"]] = r["tok_s"]
    for r in rows:
        base = by_model[r["model"]].get(2048) or by_model[r["model"]][min(by_model[r["model"]])]
        r["vs_2k"] = r["tok_s"] / base
    print(f"## training step, width {a.width}, {a.layers} layers")
    print(table(rows, [("model", "model", "{}"), ("params", "params", "{:,}"), ("L", "context", "{}"),
                       ("B", "batch", "{}"),
                       ("tok_s", "tokens/s", "{:,.0f}"), ("cpu_tok_s", "tokens/CPU-s", "{:,.0f}"),
                       ("mem_mb", "peak MB", "{:.0f}"), ("vs_tf", "vs transformer", "{:.2f}x"),
                       ("vs_2k", "vs own 2K", "{:.2f}x")]))
    marks = [m for m in (1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20) if m <= a.stream_bytes]
    srows, n = streaming_rows(a.stream_bytes, 4096, a.width, a.layers, 2048, marks)
    print(f"\n## streaming inference, Megalodon ({n:,} params, chunk 2048), windows of 4096 bytes with carried state")
    print(table(srows, [("pos", "bytes streamed", "{:,}"), ("rss_mb", "peak extra RSS MB", "{:.0f}"),
                        ("bytes_s", "bytes/s", "{:,.0f}"), ("cpu_bytes_s", "bytes/CPU-s", "{:,.0f}")]))


if __name__ == "__main__":
    main()
