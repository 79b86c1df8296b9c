"""The GPU benchmark of the prepared check: training tokens/s of the four architectures at 4K and 32K
context (bf16 autocast, fused torch paths vs the Triton kernels), and each kernel's Triton vs torch
time, the measurements ``kernels._dispatch.AUTO_ON_CUDA`` should be set from.

    bash benchmarks/gpu_check.sh            # pytest -m gpu tests/gpu, then this script
    python -m benchmarks.gpu [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import table
from tests.conftest import build_net

ARCHS = {"transformer": [], "megalodon": [], "megabyte": ["model.net.max_len=32768"], "fot": []}


def step_time(net, B, T, steps, backend=None):
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    x = torch.randint(0, 256, (B, T + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, _ = net(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def kernel_rows(quick: bool) -> list[dict]:
    from kernels import cema, chunk_attention, timestep_norm

    L = 4096 if quick else 32768
    g = torch.Generator(device="cuda").manual_seed(0)
    cases = {
        "chunk_attention": lambda b: chunk_attention(*(torch.randn(1, L, 4, 256, device="cuda", generator=g,
                                                                   dtype=torch.bfloat16) for _ in range(2)),
                                                     torch.randn(1, L, 4, 512, device="cuda", generator=g,
                                                                 dtype=torch.bfloat16), 2048, backend=b),
        "cema": lambda b: cema(torch.randn(1, 1024, L, device="cuda", generator=g),
                               *(torch.randn(*s, device="cuda", generator=g) * 0.2 for s in
                                 ((1024, 16, 1), (1024, 16, 1), (1024, 1, 1), (1024, 16, 2), (1024, 1))), backend=b),
        "timestep_norm": lambda b: timestep_norm(torch.randn(1, L, 1024, device="cuda", generator=g),
                                                 torch.zeros(1024, device="cuda"), torch.zeros(1024, device="cuda"),
                                                 32, backend=b),
    }
    rows = []
    for op, fn in cases.items():
        times = {}
        for b in ("torch", "triton"):
            fn(b)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(5):
                fn(b)
            torch.cuda.synchronize()
            times[b] = (time.perf_counter() - t0) / 5 * 1e3
        rows.append({"op": op, "L": L, "torch": times["torch"], "triton": times["triton"],
                     "ratio": times["torch"] / times["triton"]})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    rows = []
    for T in (4096,) if a.quick else (4096, 32768):
        B = max(1, 65536 // T)
        for arch, extra in ARCHS.items():
            for backend in ("torch", "triton"):
                torch.manual_seed(0)
                net = build_net(arch, extra + [f"data.seq_len={T}", f"model.net.kernel_backend={backend}"]
                                if arch == "megalodon" else extra + [f"data.seq_len={T}"]).cuda().train()
                try:
                    dt = step_time(net, B, T, 3 if a.quick else 10)
                    rows.append({"arch": arch, "T": T, "backend": backend, "tok_s": B * T / dt,
                                 "mem_gb": torch.cuda.max_memory_allocated() / 2**30})
                except torch.cuda.OutOfMemoryError:
                    rows.append({"arch": arch, "T": T, "backend": backend, "tok_s": None})
                torch.cuda.reset_peak_memory_stats()
                del net
                if arch != "megalodon":
                    break  # one kernel path only matters for Megalodon
    print(table(rows, [("arch", "arch", ""), ("T", "context", "{:,}"), ("backend", "kernels", ""),
                       ("tok_s", "tokens/s (bf16 training)", "{:,.0f}"), ("mem_gb", "peak GB", "{:.1f}")]))
    print()
    print(table(kernel_rows(a.quick), [("op", "op", ""), ("L", "L", "{:,}"), ("torch", "torch ms", "{:.2f}"),
                                       ("triton", "triton ms", "{:.2f}"), ("ratio", "torch / triton", "{:.2f}")]))


if __name__ == "__main__":
    main()
