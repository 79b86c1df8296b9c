"""Kernel benchmarks on CPU (fp32): each op's fast path vs its reference, and the targets of the
kernel issue. Prints markdown tables.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.kernels [--lengths 1024 4096 16384 65536] [--quick]
        [--only short|tsn|window]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from architectures.common.attention import BAND, causal_window_mask, windowed  # noqa: E402
from benchmarks.common import measure, table  # noqa: E402
from experiments.cli import with_allocator  # noqa: E402
from kernels import cema, chunk_attention, memory_attention, timestep_norm  # noqa: E402
from kernels.sdpa import uses_math  # noqa: E402
from kernels.timestep_norm import torch_impl as tsn_torch  # noqa: E402

REF_MAX_L = 4096  # the sequential references are Python loops: skipped above this length


def cema_rows(lengths, D, N, B=1):
    rows = []
    for L in lengths:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, D, L, generator=g, requires_grad=True)
        P = [torch.randn(D, N, 1) * 0.5, torch.randn(D, N, 1) * 0.5, torch.randn(D, 1, 1), torch.randn(D, N, 2),
             torch.randn(D, 1) * 0.25]
        P = [p.requires_grad_() for p in P]

        def fast():
            y, _ = cema(x, *P, backend="torch")
            y.sum().backward()

        kern = torch.randn(D, L, requires_grad=True)
        n = 2 * L

        def floor():  # two plain FFT convolutions of the same size (forward + backward of one conv)
            for _ in range(2):
                y = torch.fft.irfft(torch.fft.rfft(x.detach(), n=n) * torch.fft.rfft(kern.detach(), n=n), n=n)[..., :L]
            return y

        f, b = measure(fast), measure(floor)
        row = {"L": L, "fast_ms": f["wall"] * 1e3, "fast_cpu_ms": f["cpu"] * 1e3, "fast_mb": f["mem_mb"],
               "floor_ms": b["wall"] * 1e3, "ratio": f["wall"] / b["wall"]}
        if L <= REF_MAX_L:
            def ref():
                y, _ = cema(x, *P, backend="reference")
                y.sum().backward()
            r = measure(ref, repeat=1, warmup=0)
            row.update(ref_ms=r["wall"] * 1e3, ref_mb=r["mem_mb"], speedup=r["wall"] / f["wall"])
        rows.append(row)
    return rows


def tsn_rows(lengths, D, G, B=1):
    rows = []
    for L in lengths:
        x = torch.randn(B, L, D)
        w, b = torch.zeros(D), torch.zeros(D)
        f = measure(lambda: timestep_norm(x, w, b, G, backend="torch"))  # no grad: the C++ kernel where it is built
        t = measure(lambda: tsn_torch.timestep_norm_fused(x, w, b, G))  # the PyTorch no-grad path
        limit, tsn_torch.UNCENTRED_LIMIT = tsn_torch.UNCENTRED_LIMIT, 0.0  # force its centring branch
        try:
            cen = measure(lambda: tsn_torch.timestep_norm_fused(x, w, b, G))
        finally:
            tsn_torch.UNCENTRED_LIMIT = limit
        xr = x.clone().requires_grad_()
        a = measure(lambda: timestep_norm(xr, w, b, G, backend="torch"))  # the differentiable path's forward
        c = measure(lambda: x * 2)  # one read-and-write pass over the tensor
        row = {"L": L, "fast_ms": f["wall"] * 1e3, "fast_cpu_ms": f["cpu"] * 1e3, "fast_mb": f["mem_mb"],
               "grad_ms": a["wall"] * 1e3, "floor_ms": c["wall"] * 1e3, "ratio": f["wall"] / c["wall"],
               "centred_ms": cen["wall"] * 1e3, "torch_ms": t["wall"] * 1e3, "torch_ratio": t["wall"] / c["wall"]}
        if L <= REF_MAX_L:
            r = measure(lambda: timestep_norm(x, w, b, G, backend="reference"), repeat=1, warmup=0)
            row.update(ref_ms=r["wall"] * 1e3, ref_mb=r["mem_mb"], speedup=r["wall"] / f["wall"])
        rows.append(row)
    return rows


def chunk_rows(lengths, H, d, C, B=1):
    rows = []
    for L in lengths:
        q, k, v = (torch.randn(B, L, H, d) for _ in range(3))
        f = measure(lambda: chunk_attention(q, k, v, C, backend="torch"))
        row = {"L": L, "fast_ms": f["wall"] * 1e3, "fast_cpu_ms": f["cpu"] * 1e3, "fast_mb": f["mem_mb"],
               "us_per_tok": f["wall"] * 1e6 / L}
        if L <= 16384:
            qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
            full = measure(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True), repeat=1)
            row.update(full_ms=full["wall"] * 1e3, full_mb=full["mem_mb"], speedup=full["wall"] / f["wall"])
        if L <= REF_MAX_L:
            r = measure(lambda: chunk_attention(q, k, v, C, backend="reference"), repeat=1, warmup=0)
            row.update(ref_ms=r["wall"] * 1e3, ref_mb=r["mem_mb"])
        rows.append(row)
    return rows


def memattn_rows(lengths, H, d, T=512, knn=32):
    rows = []
    for M in lengths:
        q, k, v = (torch.randn(1, T, H, d) for _ in range(3))
        mk, mv = (torch.randn(1, M, H, d) for _ in range(2))
        f = measure(lambda: memory_attention(q, k, v, mk, mv, backend="torch"))
        r = measure(lambda: memory_attention(q, k, v, mk, mv, backend="reference"), repeat=1)
        kk, kv = (torch.randn(1, T, H, knn, d) for _ in range(2))
        kn = measure(lambda: memory_attention(q, k, v, kk, kv, backend="torch"))
        rows.append({"L": M, "fast_ms": f["wall"] * 1e3, "fast_mb": f["mem_mb"], "ref_ms": r["wall"] * 1e3,
                     "ref_mb": r["mem_mb"], "speedup": r["wall"] / f["wall"], "knn_ms": kn["wall"] * 1e3})
    return rows


def short_rows(keys, rows_tokens=4096, H=2, d=16, dv=64):
    """Causal attention forward+backward over rows of ``C`` keys (``rows_tokens`` tokens in all), the CPU flash
    kernel against the math backend, in bf16 and float32: where ``kernels.sdpa`` switches."""
    out = []
    for dtype in (torch.bfloat16, torch.float32):
        for C in keys:
            N = max(1, rows_tokens // C)
            q, k = (torch.randn(N, H, C, d, dtype=dtype, requires_grad=True) for _ in range(2))
            v = torch.randn(N, H, C, dv, dtype=dtype, requires_grad=True)

            def run(backend, q=q, k=k, v=v):
                def step():
                    with sdpa_kernel(backend):
                        qq, kk, vv = (q, k, v) if backend == SDPBackend.MATH else (
                            F.pad(q, (0, dv - d)), F.pad(k, (0, dv - d)), v)  # flash needs one head width
                        F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, scale=d ** -0.5).sum().backward()
                return measure(step, repeat=5)

            fl, ma = run(SDPBackend.FLASH_ATTENTION), run(SDPBackend.MATH)
            out.append({"dtype": str(dtype).removeprefix("torch."), "C": C, "N": N, "flash_ms": fl["cpu"] * 1e3,
                        "math_ms": ma["cpu"] * 1e3, "ratio": fl["cpu"] / ma["cpu"],
                        "chosen": "math" if uses_math(q, k) else "flash"})
    return out


def window_rows(windows, B=16, H=4, d=64):
    """A window of T = W queries after a full cache (S = T + W - 1 keys) under a sliding window of W, as
    longeval streams a Transformer: the banded attention (``windowed``) against one masked attention over
    all S keys, forward, no grad. The banded path is the same softmax over the same keys."""
    rows = []
    for W in windows:
        S = 2 * W - 1
        q = torch.randn(B, H, W, d)
        k, v = (torch.randn(B, H, S, d) for _ in range(2))
        mask = causal_window_mask(W, S, W, q.device)
        with torch.no_grad():
            band = measure(lambda: windowed(q, k, v, mask, W))
            full = measure(lambda: windowed(q, k, v, mask, None))  # no window given: one masked call
            err = (windowed(q, k, v, mask, W) - windowed(q, k, v, mask, None)).abs().max().item()
        rows.append({"W": W, "S": S, "band_ms": band["wall"] * 1e3, "band_cpu_ms": band["cpu"] * 1e3,
                     "band_mb": band["mem_mb"], "full_ms": full["wall"] * 1e3, "full_cpu_ms": full["cpu"] * 1e3,
                     "full_mb": full["mem_mb"], "ratio": full["cpu"] / band["cpu"], "err": err})
    return rows


def print_window(windows):
    print(f"## sliding-window attention, a window of W queries after a full cache (S = 2W - 1 keys), B=16, H=4, "
          f"d=64, forward: banded (blocks of {BAND} queries, architectures.common.attention.windowed) vs one "
          "masked call over all keys (the banded path runs one call too where S < W + 2 x the block)")
    print(table(window_rows(windows), [
        ("W", "W", "{}"), ("S", "keys S", "{}"), ("band_ms", "banded ms", "{:.1f}"),
        ("band_cpu_ms", "banded CPU ms", "{:.1f}"), ("band_mb", "banded MB", "{:.0f}"),
        ("full_ms", "masked ms", "{:.1f}"), ("full_cpu_ms", "masked CPU ms", "{:.1f}"),
        ("full_mb", "masked MB", "{:.0f}"), ("ratio", "masked/banded CPU", "{:.2f}x"),
        ("err", "max abs diff", "{:.1e}")]))


def print_tsn(lengths, D, cols):
    from kernels.timestep_norm import cpu_impl

    fast = "the C++ CPU kernel" if cpu_impl.extension() is not None else "the PyTorch path (no C++ kernel here)"
    print(f"## timestep_norm forward, B=1, D={D}, G=32 (fast: the no-grad path, {fast}; torch: the PyTorch no-grad "
          "path, uncentred on this stream; centred: its branch for streams far from zero, forced; floor: one "
          "read-and-write pass, x * 2)")
    print(table(tsn_rows(lengths, D, 32), cols + [("torch_ms", "torch ms", "{:.1f}"),
                                                    ("torch_ratio", "torch/pass", "{:.2f}"),
                                                    ("centred_ms", "centred ms", "{:.1f}"),
                                                    ("grad_ms", "with-grad fwd ms", "{:.1f}"),
                                                    ("floor_ms", "one pass ms", "{:.1f}"),
                                                    ("ratio", "fast/pass", "{:.2f}")]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--only", choices=["short", "tsn", "window"], help="print one table only")
    a = ap.parse_args()
    with_allocator()  # measured under the allocator every entry point runs with
    lengths = [256, 1024] if a.quick else a.lengths
    D, N = (32, 4) if a.quick else (256, 16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"allocator {os.environ.get('LONGLAB_ALLOCATOR')}, fp32, CPU; times are medians; "
          f"mem = peak extra RSS; reference loops skipped above L={REF_MAX_L}\n")
    cols = [("L", "L", "{}"), ("fast_ms", "fast ms", "{:.1f}"), ("fast_cpu_ms", "fast CPU ms", "{:.1f}"),
            ("fast_mb", "fast MB", "{:.0f}"), ("ref_ms", "reference ms", "{:.0f}"), ("ref_mb", "ref MB", "{:.0f}"),
            ("speedup", "ref/fast", "{:.0f}x")]
    if a.only == "tsn":
        return print_tsn(lengths, D * 4, cols)
    windows = [512, 1024] if a.quick else [512, 1024, 2048]
    if a.only == "window":
        return print_window(windows)
    keys = [8, 64] if a.quick else [4, 8, 16, 32, 64, 128, 256, 512, 1024]
    print("## short-row attention: causal forward+backward over 4096 tokens as rows of C keys, 2 heads of 16 "
          "(values of 64), CPU ms: the flash kernel vs the math backend (kernels.sdpa runs the chosen one)")
    print(table(short_rows(keys), [("dtype", "dtype", "{}"), ("C", "C (keys per row)", "{}"), ("N", "rows", "{}"),
                                   ("flash_ms", "flash CPU ms", "{:.1f}"), ("math_ms", "math CPU ms", "{:.1f}"),
                                   ("ratio", "flash/math", "{:.2f}x"), ("chosen", "kernels.sdpa runs", "{}")]))
    if a.only == "short":
        return
    print()
    print(f"## cema forward+backward, B=1, D={D}, N={N} (floor: two rfft/irfft convolutions of the same size)")
    print(table(cema_rows(lengths, D, N),
                cols + [("floor_ms", "floor ms", "{:.1f}"), ("ratio", "fast/floor", "{:.2f}")]))
    print()
    print_tsn(lengths, D * 4, cols)
    C = 256 if a.quick else 2048
    print(f"\n## chunk_attention forward, B=1, H=4, d=64, C={C} (vs full causal SDPA)")
    print(table(chunk_rows(lengths, 4, 64, C), [c for c in cols if c[0] != "speedup"] + [
        ("us_per_tok", "fast us/token", "{:.2f}"), ("full_ms", "full SDPA ms", "{:.1f}"),
        ("full_mb", "full MB", "{:.0f}"), ("speedup", "full/chunk", "{:.1f}x")]))
    mems = [1024, 4096] if a.quick else [4096, 16384, 65536]
    print("\n## memory_attention forward, dense memory of M keys, T=512 local, H=4, d=64 (kNN: k=32 per query)")
    print(table(memattn_rows(mems, 4, 64), [("L", "M", "{}"), ("fast_ms", "fast ms", "{:.1f}"),
                                           ("fast_mb", "fast MB", "{:.0f}"), ("ref_ms", "reference ms", "{:.1f}"),
                                           ("ref_mb", "ref MB", "{:.0f}"), ("speedup", "ref/fast", "{:.1f}x"),
                                           ("knn_ms", "kNN k=32 ms", "{:.1f}")]))
    print()
    print_window(windows)


if __name__ == "__main__":
    main()
