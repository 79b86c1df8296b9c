"""bf16 matmuls on CPUs without a native bf16 GEMM (``kernels.bf16_matmul``): routed through float32 GEMMs of the
same bf16 values, they give PyTorch's own bf16 results up to the float32 summation order, forward and backward,
for every routed operator, and leave other dtypes exact; bf16 attention (``kernels.sdpa``) runs in float32
there. The route is process-wide, so each check runs in a fresh interpreter where
``LONGLAB_BF16_MATMUL=fp32-gemm`` forces it on any processor."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from kernels import bf16_matmul

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import torch
    from kernels.bf16_matmul import route_active, use_fp32_gemm_for_bf16

    torch.manual_seed(int.from_bytes(__import__("os").urandom(4), "little"))  # fresh inputs every run
    bf = torch.bfloat16
    x = torch.randn(3, 40, 24)
    w = torch.randn(56, 24, requires_grad=True)
    b = torch.randn(56, requires_grad=True)

    def ops():
        a, m, c = torch.randn(17, 24).to(bf), torch.randn(24, 9).to(bf), torch.randn(9).to(bf)
        p, q, r = torch.randn(4, 11, 24).to(bf), torch.randn(4, 24, 6).to(bf), torch.randn(4, 11, 6).to(bf)
        return [torch.mm(a, m), torch.addmm(c, a, m, beta=0.5, alpha=2.0), torch.bmm(p, q),
                torch.baddbmm(r, p, q, beta=-1.0, alpha=0.25), a.t().mm(a)]  # a transposed operand too

    def attention():  # kernels.sdpa: causal, a boolean mask, a float mask; forward and backward
        from kernels.sdpa import fused, sdpa
        qkv = [torch.randn(2, 3, n, 16).to(bf).requires_grad_() for n in (40, 300, 300)]
        keep = torch.ones(40, 300, dtype=torch.bool).tril(260)
        outs = [fused(*qkv[:1], *[t[:, :, :40] for t in qkv[1:]], is_causal=True), sdpa(*qkv, attn_mask=keep),
                fused(*qkv, attn_mask=torch.zeros(40, 300).masked_fill(~keep, float("-inf")).to(bf))]
        return [*outs, *torch.autograd.grad(sum(o.float().square().sum() for o in outs), qkv)]

    def model():
        xs = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=bf):
            y = torch.nn.functional.linear(xs, w, b)
            z = torch.einsum("bij,bkj->bik", y, y[:, :8])
            loss = z.float().square().mean() + y.float().mean()
        return [loss, *torch.autograd.grad(loss, [xs, w, b])]

    rng = torch.get_rng_state()
    native_ops, native_model, native_attention = ops(), model(), attention()
    exact = [torch.randn(7, 5, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)]
    native_exact = exact[0] @ exact[1]
    assert not route_active()
    assert use_fp32_gemm_for_bf16() and route_active()
    torch.set_rng_state(rng)
    routed_ops, routed_model, routed_attention = ops(), model(), attention()
    for n, r in zip(native_ops, routed_ops):
        assert r.dtype == bf and r.shape == n.shape
        # one bf16 rounding step apart at most: the same products, another float32 summation order
        assert torch.allclose(r.float(), n.float(), rtol=2 ** -7, atol=2 ** -7 * n.float().abs().max().item()), (r, n)
    for n, r in zip(native_model, routed_model):
        assert torch.allclose(r, n, rtol=0.02, atol=0.02 * n.abs().max().item()), (r, n)
    for n, r in zip(native_attention, routed_attention):  # attention: float32 inside, one rounding to bf16
        assert r.dtype == bf and torch.allclose(r.float(), n.float(), rtol=0.02, atol=0.02 * n.abs().max().item())
    assert torch.equal(exact[0] @ exact[1], native_exact)  # float64: PyTorch's own kernel, bit for bit
    assert torch.equal(torch.mm(torch.ones(2, 3, dtype=torch.int64), torch.ones(3, 2, dtype=torch.int64)),
                       torch.full((2, 2), 3, dtype=torch.int64))
    print("ok")
""")


def run_script(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_routed_bf16_matmuls_match_the_native_ones_forward_and_backward():
    r = run_script(SCRIPT, LONGLAB_BF16_MATMUL="fp32-gemm")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
    assert "bf16 matmuls run as float32 GEMMs" in r.stdout  # said once, in one line


def test_bf16_autocast_of_an_evaluation_turns_the_route_on_where_wanted():
    code = ("import torch; from experiments.evaluation.bpb import autocast; from kernels.bf16_matmul import "
            "route_active\nwith autocast(torch.device('cpu'), '32'): pass\nprint(route_active())\n"
            "with autocast(torch.device('cpu'), 'bf16-mixed'): pass\nprint(route_active())")
    forced = run_script(code, LONGLAB_BF16_MATMUL="fp32-gemm").stdout.splitlines()
    assert [forced[0], forced[-1]] == ["False", "True"] and "bf16 matmuls run as float32" in forced[1], forced
    kept = run_script(code, LONGLAB_BF16_MATMUL="native").stdout.splitlines()
    assert kept == ["False", "False"], kept


def test_the_route_setting_is_checked(monkeypatch):
    monkeypatch.setenv(bf16_matmul.ENV, "fast")
    with pytest.raises(ValueError, match="LONGLAB_BF16_MATMUL='fast'"):
        bf16_matmul.wants_route()
    monkeypatch.setenv(bf16_matmul.ENV, "native")
    assert not bf16_matmul.wants_route()
    monkeypatch.setenv(bf16_matmul.ENV, "auto")
    assert bf16_matmul.wants_route() == (not bf16_matmul.native_bf16_gemm())
