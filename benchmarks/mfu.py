"""Training MFU on CPU: the measured matmul peaks (fp32 and bf16) and the share of them a training step of the
Transformer at 2K context reaches, in fp32 and under bf16 autocast (what ``trainer.precision=bf16-mixed``
runs), side by side in one run.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.mfu [--model transformer] [--seq 2048] [--batch 4] [--steps 6]
        [--profile] [--attention]

FLOPs are the model's own accounting (``flops_per_token``: 3 x the forward matmuls and causal attention, the
count every table matches compute with); a step is forward, loss, backward and the AdamW update. The peak is
the best of square matmuls of a few sizes, per CPU-second (so it does not depend on how many cores were
free) and per wall-second at this process's threads. MFU = model FLOPs per CPU-second / peak per CPU-second.
A profile of the bf16 step's most expensive ops follows (``--profile``), to show where the rest goes, and
``--attention`` times causal attention alone at the model's shape with PyTorch's fused CPU kernel, its math
backend and attention written as blocks of bf16 matmuls (what the matrix units would run).

On a CPU with no native bf16 GEMM (AVX2 only: ``kernels.bf16_matmul``) the bf16 rows are measured as training runs
them there, through float32 GEMMs of the bf16 values, beside PyTorch's own bf16 matmul (its scalar fallback;
``--native-bf16`` also times a training step on it, slow).
"""

from __future__ import annotations

import argparse
import contextlib
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import measure, table  # noqa: E402
from experiments.cli import with_allocator  # noqa: E402
from experiments.config import build, compose  # noqa: E402
from kernels.bf16_matmul import (  # noqa: E402
    native_bf16_gemm,
    pytorch_bf16_kernels,
    route_active,
    stop_fp32_gemm_for_bf16,
    use_fp32_gemm_for_bf16,
)


def matmul_peak(dtype: torch.dtype, sizes=(1024, 2048, 4096)) -> dict:
    """The best GFLOP per CPU-second (and per wall-second) of ``a @ b`` over square sizes, in ``dtype``."""
    best = {"cpu": 0.0, "wall": 0.0, "n": 0}
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
        m = measure(lambda: torch.matmul(a, b), repeat=3)
        wall, cpu = m["wall"], m["cpu"]
        flops = 2.0 * n ** 3 / 1e9
        if flops / cpu > best["cpu"]:
            best = {"cpu": flops / cpu, "wall": flops / wall, "n": n}
    return best


def train_step(net, opt, x, bf16: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits, _ = net(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def blocked_attention(q, k, v, block: int) -> torch.Tensor:
    """Causal attention by blocks of queries, each against the keys up to its end: two bf16 matmuls per block
    (where AMX would run them) and an fp32 softmax. A probe of what plain matmuls give, not a kernel."""
    t, outs = q.shape[-2], []
    for s in range(0, t, block):
        e = min(s + block, t)
        scores = torch.matmul(q[..., s:e, :], k[..., :e, :].transpose(-1, -2))
        scores = scores.to(torch.promote_types(q.dtype, torch.float32)) * q.shape[-1] ** -0.5
        future = torch.arange(e).view(1, -1) > torch.arange(s, e).view(-1, 1)
        outs.append(torch.matmul(torch.softmax(scores.masked_fill(future, float("-inf")), -1).to(q.dtype),
                                 v[..., :e, :]))
    return torch.cat(outs, -2)


def attention_rows(batch: int, heads: int, seq: int, head_dim: int, repeat: int) -> list[dict]:
    """Causal attention forward+backward in bf16 at the model's shape: PyTorch's fused (flash) CPU kernel, its
    math backend and ``blocked_attention``, in GFLOP per CPU-second (3 x the causal forward's 2 matmuls)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def math(q, k, v):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    flops = 3 * 2 * 2 * batch * heads * seq * seq / 2 * head_dim
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(batch, heads, seq, head_dim, generator=g).bfloat16().requires_grad_() for _ in range(3)]
    rows = []
    for name, fn in (("flash (fused CPU kernel)", lambda q, k, v: F.scaled_dot_product_attention(q, k, v,
                                                                                                 is_causal=True)),
                     ("math backend", math),
                     ("blocked, 256 queries", lambda q, k, v: blocked_attention(q, k, v, 256)),
                     ("blocked, 512 queries", lambda q, k, v: blocked_attention(q, k, v, 512))):
        m = measure(lambda fn=fn: fn(*qkv).float().sum().backward(), repeat=repeat)
        rows.append({"kernel": name, "cpu": m["cpu"] * 1e3, "wall": m["wall"] * 1e3, "gflops": flops / m["cpu"] / 1e9})
    return rows


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="transformer")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print the bf16 step's most expensive ops")
    ap.add_argument("--attention", action="store_true",
                    help="also time causal attention alone at the model's shape (flash, math, blocked matmuls)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--native-bf16", action="store_true",
                    help="where the CPU has no native bf16 GEMM, also time a bf16 step on PyTorch's fallback (slow)")
    a = ap.parse_args(argv)
    with_allocator()  # measured under the allocator every entry point runs with
    sizes = (256, 512) if a.quick else (1024, 2048, 4096)
    if a.quick:
        a.model, a.seq, a.batch, a.steps = "transformer_tiny", 256, 2, 2
    routed, was_on = not native_bf16_gemm(), route_active()  # bf16 through float32 GEMMs here, as training runs it
    if routed:
        use_fp32_gemm_for_bf16()
    peaks = {"fp32": matmul_peak(torch.float32, sizes)}
    if routed:  # PyTorch's own bf16 GEMM is a scalar loop here: small sizes only
        with pytorch_bf16_kernels():
            peaks["bf16, PyTorch's fallback"] = matmul_peak(torch.bfloat16, sizes[:1] if a.quick else (256, 512, 1024))
    peaks["bf16"] = matmul_peak(torch.bfloat16, sizes)
    x = torch.randint(0, 256, (a.batch, a.seq + 1), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = build(compose("train", [f"model={a.model}", f"data.seq_len={a.seq}"]).model.net)
    params = sum(p.numel() for p in net.parameters())
    step_flops = net.flops_per_token(a.seq) * a.batch * a.seq
    rows = []
    names = ["fp32", "bf16"] + (["bf16, PyTorch's fallback"] if routed and a.native_bf16 else [])
    for name in names:
        opt = torch.optim.AdamW(net.parameters(), 1e-4)
        with pytorch_bf16_kernels() if name.startswith("bf16,") else contextlib.nullcontext():
            m = measure(lambda: train_step(net, opt, x, name != "fp32"), repeat=a.steps)
        wall, cpu = m["wall"], m["cpu"]
        rows.append({"precision": name, "tok_s": a.batch * a.seq / wall, "gflops_cpu": step_flops / cpu / 1e9,
                     "peak": peaks[name]["cpu"], "mfu": step_flops / cpu / 1e9 / peaks[name]["cpu"]
                     if name in ("fp32", "bf16") else None,  # the fallback's square-matmul peak is no ceiling
                     "wall": wall, "cpu": cpu})
    rows.append({"precision": "bf16 / fp32", "tok_s": rows[1]["tok_s"] / rows[0]["tok_s"],
                 "gflops_cpu": rows[1]["gflops_cpu"] / rows[0]["gflops_cpu"], "peak": peaks["bf16"]["cpu"] / peaks[
                     "fp32"]["cpu"]})
    if len(rows) == 4:
        rows.append({"precision": "bf16 / bf16 on PyTorch's fallback", "tok_s": rows[1]["tok_s"] / rows[2]["tok_s"],
                     "gflops_cpu": rows[1]["gflops_cpu"] / rows[2]["gflops_cpu"],
                     "peak": peaks["bf16"]["cpu"] / peaks["bf16, PyTorch's fallback"]["cpu"]})
    head = (("no native bf16 GEMM on this CPU: bf16 rows through float32 GEMMs (kernels.bf16_matmul)\n\n" if routed
             else "") + f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator "
            f"{os.environ.get('LONGLAB_ALLOCATOR')}; model={a.model} ({params / 1e6:.1f}M parameters), "
            f"{a.batch} x {a.seq} tokens per step, {step_flops / 1e9:.1f} GFLOP per step (flops_per_token); "
            f"medians of {a.steps} steps\n\n")
    peak_text = table([{"dtype": k, **v} for k, v in peaks.items()], [
        ("dtype", "matmul dtype", ""), ("cpu", "peak GFLOP / CPU-s", "{:,.0f}"),
        ("wall", "GFLOP / wall-s", "{:,.0f}"), ("n", "at n", "{}")])
    step_text = table(rows, [
        ("precision", "training", ""), ("tok_s", "tokens/s", "{:,.2f}"), ("gflops_cpu", "GFLOP / CPU-s", "{:,.1f}"),
        ("peak", "peak GFLOP / CPU-s", "{:,.1f}"), ("mfu", "MFU", "{:.1%}"), ("wall", "s / step", "{:.2f}"),
        ("cpu", "CPU-s / step", "{:.2f}")])
    text = head + "## matmul peaks\n" + peak_text + "\n\n## training step\n" + step_text
    if a.attention:
        c = net.config
        rows = attention_rows(a.batch, c.n_heads, a.seq, c.d_model // c.n_heads, a.steps)
        text += (f"\n\n## causal attention alone, bf16 forward+backward ({a.batch} x {c.n_heads} heads x {a.seq} x "
                 f"{c.d_model // c.n_heads})\n" + table(rows, [
                     ("kernel", "kernel", ""), ("cpu", "CPU-ms", "{:,.1f}"), ("wall", "wall-ms", "{:,.1f}"),
                     ("gflops", "GFLOP / CPU-s", "{:,.1f}")]))
    print(text)
    if a.profile:
        opt = torch.optim.AdamW(net.parameters(), 1e-4)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            train_step(net, opt, x, True)
        print("\n## bf16 step profile\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    if routed and not was_on:  # the process as it was
        stop_fp32_gemm_for_bf16()
    return text


if __name__ == "__main__":
    main()
