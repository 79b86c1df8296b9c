from __future__ import annotations

import pytest
import torch

from kernels import timestep_norm
from kernels.timestep_norm import timestep_norm_reference, torch_impl
from tests.kernels.helpers import assert_close_rms, grads

# (B, L, D, G): a single token, odd lengths, group width not a power of two
SHAPES = [(1, 1, 4, 2), (2, 63, 12, 3), (3, 100, 60, 4), (2, 37, 16, 16)]
IDS = ["L1", "L63-dg4", "D60-dg15", "dg1"]


def make(B, L, D, G, dtype=torch.float64, seed=0, state=True, mask=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D, generator=g, dtype=dtype) * 2 + 0.5
    w = torch.randn(D, generator=g, dtype=dtype) * 0.1
    b = torch.randn(D, generator=g, dtype=dtype) * 0.1
    st = None
    if state:
        st = (torch.randint(1, 50, (B,), generator=g), torch.randn(B, G, generator=g, dtype=dtype),
              torch.rand(B, G, generator=g, dtype=dtype) + 0.5)
    m = None
    if mask:
        m = torch.rand(B, L, generator=g) > 0.2
    return x, w, b, st, m


def closed_form(x, w, b, G, eps, state, mask):
    """The spec's formula, scalar by scalar: statistics of all scalars of the group seen so far."""
    B, L, D = x.shape
    y = torch.zeros_like(x)
    xg = x.reshape(B, L, G, D // G)
    for r in range(B):
        c0, mu0, var0 = (0, torch.zeros(G, dtype=x.dtype), torch.zeros(G, dtype=x.dtype)) if state is None else \
            (int(state[0][r]), state[1][r], state[2][r])
        for t in range(L):
            if mask is not None and not mask[r, t]:
                continue
            keep = torch.ones(t + 1, dtype=torch.bool) if mask is None else mask[r, : t + 1]
            seen = xg[r, : t + 1][keep]  # [n, G, dg]
            n = seen.shape[0]
            s1 = c0 * mu0 + seen.mean(-1).sum(0)
            s2 = c0 * (var0 + mu0**2) + (seen**2).mean(-1).sum(0)
            mu = s1 / (c0 + n)
            var = s2 / (c0 + n) - mu**2
            out = (xg[r, t] - mu[:, None]) / torch.sqrt(var[:, None] + eps)
            y[r, t] = out.reshape(D) * (w + 1) + b
    return y


@pytest.mark.parametrize("B,L,D,G", SHAPES, ids=IDS)
@pytest.mark.parametrize("with_state,with_mask", [(False, False), (True, True)], ids=["fresh", "state+mask"])
def test_reference_matches_closed_form(B, L, D, G, with_state, with_mask):
    x, w, b, st, m = make(B, L, D, G, state=with_state, mask=with_mask)
    y, _ = timestep_norm_reference(x, w, b, G, 1e-5, st, m)
    torch.testing.assert_close(y, closed_form(x, w, b, G, 1e-5, st, m), atol=1e-9, rtol=1e-9)


def test_first_token_uses_its_own_statistics():
    x = torch.randn(1, 1, 8, dtype=torch.float64)
    y, (c, mu, var) = timestep_norm(x, torch.zeros(8), torch.zeros(8), 1, eps=0.0)
    torch.testing.assert_close(y, (x - x.mean()) / x.std(unbiased=False))
    assert c.item() == 1


@pytest.mark.parametrize("B,L,D,G", SHAPES, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_cumsum_path_matches_reference(B, L, D, G, dtype, tol):
    x, w, b, st, m = make(B, L, D, G, dtype)
    leaves = [t.clone().requires_grad_() for t in (x, w, b, st[1], st[2])]
    st_l = (st[0], leaves[3], leaves[4])
    y1, s1 = timestep_norm(leaves[0], leaves[1], leaves[2], G, state=st_l, mask=m, backend="torch")
    y2, s2 = timestep_norm(leaves[0], leaves[1], leaves[2], G, state=st_l, mask=m, backend="reference")
    assert torch.equal(s1[0], s2[0])
    assert_close_rms(y1, y2, tol, "y")
    assert_close_rms(s1[1], s2[1], tol, "mean")
    assert_close_rms(s1[2], s2[2], tol, "var")
    for name, a, c in zip(["x", "w", "b", "mean0", "var0"], grads([y1, s1[1], s1[2]], leaves),
                          grads([y2, s2[1], s2[2]], leaves)):
        assert_close_rms(a, c, tol * 10, f"grad {name}")


@pytest.mark.parametrize("B,L,D,G", SHAPES, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("with_state,with_mask", [(False, False), (True, True)], ids=["fresh", "state+mask"])
def test_no_grad_path_matches_reference(B, L, D, G, dtype, tol, with_state, with_mask):
    """Without autograd the torch backend takes its fused path (batch_norm on centred tokens)."""
    x, w, b, st, m = make(B, L, D, G, dtype, seed=B + L, state=with_state, mask=with_mask)
    with torch.no_grad():
        y1, s1 = timestep_norm(x, w, b, G, state=st, mask=m, backend="torch")
    y2, s2 = timestep_norm(x, w, b, G, state=st, mask=m, backend="reference")
    assert torch.equal(s1[0], s2[0])
    for name, a, c in zip(["y", "mean", "var"], (y1, s1[1], s1[2]), (y2, s2[1], s2[2])):
        assert_close_rms(a, c, tol, name)
    if with_mask:
        assert (y1[~m] == 0).all()


@pytest.mark.parametrize("limit", [0.0, float("inf")], ids=["always-centred", "never-centred"])
def test_no_grad_path_both_branches_match_reference(limit, monkeypatch):
    """The no-grad path normalises uncentred tokens unless a running mean is far from zero; either branch, forced,
    gives the reference's numbers on ordinary streams (mean 0.5, spread 2, carried state and padding)."""
    monkeypatch.setattr(torch_impl, "UNCENTRED_LIMIT", limit)
    x, w, b, st, m = make(2, 63, 12, 3, torch.float32, seed=7)
    with torch.no_grad():
        y1, s1 = timestep_norm(x, w, b, 3, state=st, mask=m, backend="torch")
    y2, s2 = timestep_norm(x, w, b, 3, state=st, mask=m, backend="reference")
    for name, a, c in zip(["y", "mean", "var"], (y1, s1[1], s1[2]), (y2, s2[1], s2[2])):
        assert_close_rms(a, c, 1e-5, name)


@pytest.mark.parametrize("offset,centred,tol", [(5.0, False, 1e-5), (1e4, True, 1e-4)], ids=["5-std", "1e4"])
def test_no_grad_path_centres_only_streams_far_from_zero(offset, centred, tol, monkeypatch):
    """A stream 5 standard deviations from zero (groups of 32) stays on the uncentred branch and keeps float32
    accuracy; one of mean 1e4 takes the centring branch, without which its outputs would be lost (checked). At 1e4
    float32 itself costs 1.8e-5 (the float32 reference, and the path before this branch existed, read the same).
    The PyTorch path (the C++ kernel, which centres every token, is switched off; it is checked below)."""
    monkeypatch.setenv("LONGLAB_CPU_KERNELS", "0")
    g = torch.Generator().manual_seed(3)
    x = (offset + torch.randn(1, 4096, 64, generator=g, dtype=torch.float64)).float()
    w, b = torch.zeros(64), torch.zeros(64)
    ref, (_, _, ref_var) = timestep_norm(x.double(), w.double(), b.double(), 2, backend="reference")
    calls = []
    real = torch_impl.running_stats_nograd
    monkeypatch.setattr(torch_impl, "running_stats_nograd", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        y, (_, _, var) = timestep_norm(x, w, b, 2, backend="torch")
    assert len(calls) == (2 if centred else 1)
    assert_close_rms(y.double(), ref, tol, "y")
    assert_close_rms(var.double(), ref_var, tol, "var")
    if centred:  # the uncentred branch on this stream: the test above would catch a missing fallback
        monkeypatch.setattr(torch_impl, "UNCENTRED_LIMIT", float("inf"))
        with torch.no_grad():
            y_bad, _ = timestep_norm(x, w, b, 2, backend="torch")
        assert (y_bad.double() - ref).pow(2).mean().sqrt() > 1e-2


def test_gradcheck_float64():
    x, w, b, st, m = make(2, 5, 6, 2)
    leaves = [t.clone().requires_grad_() for t in (x, w, b, st[1], st[2])]
    for backend in ("torch", "reference"):
        def f(x, w, b, mu, var):
            y, (_, m1, v1) = timestep_norm(x, w, b, 2, state=(st[0], mu, var), mask=m, backend=backend)
            return y, m1, v1
        assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("cuts", [(1,), (30, 31, 50)], ids=["1", "odd"])
def test_streaming_segments_equal_one_pass(cuts):
    x, w, b, _, m = make(2, 80, 12, 3, state=False)
    y, s = timestep_norm(x, w, b, 3, mask=m)
    state, ys, edges = None, [], [0, *cuts, 80]
    for a, e in zip(edges[:-1], edges[1:]):
        out, state = timestep_norm(x[:, a:e], w, b, 3, state=state, mask=m[:, a:e])
        ys.append(out)
    torch.testing.assert_close(torch.cat(ys, 1), y, atol=1e-10, rtol=1e-10)
    for a, c in zip(state, s):
        torch.testing.assert_close(a, c)


def test_padding_outputs_zero_and_updates_nothing():
    x, w, b, st, _ = make(1, 6, 8, 2)
    mask = torch.tensor([[True, False, True, False, False, True]])
    y, s = timestep_norm(x, w, b, 2, state=st, mask=mask)
    assert (y[0, ~mask[0]] == 0).all()
    y2, s2 = timestep_norm(x[:, mask[0]], w, b, 2, state=st)
    torch.testing.assert_close(y[0, mask[0]], y2[0])
    assert s[0].item() == s2[0].item() == st[0].item() + 3


def test_long_stream_with_a_large_mean_stays_exact_in_float32():
    """200K tokens with mean 1e4 and unit spread: naive float32 sums of squares lose the variance."""
    g = torch.Generator().manual_seed(0)
    L, D = 200_000, 4
    x64 = 1e4 + torch.randn(1, L, D, generator=g, dtype=torch.float64)
    w = b = torch.zeros(D)
    y, (_, mu, var) = timestep_norm(x64.float(), w, b, 1)
    exact_var = x64.var(unbiased=False).item()
    assert abs(var.item() - exact_var) / exact_var < 1e-3
    assert abs(mu.item() - x64.mean().item()) < 1e-3
    # the naive float32 cumulative sum of squares, for contrast, is far off
    naive = (torch.cumsum(x64.float().pow(2).sum(-1), 1)[0, -1] / (L * D) - x64.float().mean() ** 2).item()
    assert abs(naive - exact_var) / exact_var > 1e-2
    # and the normalised last token is right
    ref_last = (x64[0, -1] - x64.mean()) / (exact_var + 1e-5) ** 0.5
    assert_close_rms(y[0, -1].double(), ref_last, 1e-3, "last token")


def test_bad_arguments_fail_clearly():
    x = torch.randn(1, 4, 10)
    with pytest.raises(ValueError, match="num_groups=3 must divide the model dim D=10"):
        timestep_norm(x, torch.zeros(10), torch.zeros(10), 3)


@pytest.mark.interpret
@pytest.mark.parametrize("B,L,D,G", SHAPES[:3], ids=IDS[:3])
def test_triton_matches_reference(B, L, D, G, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, w, b, st, m = make(B, L, D, G, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (x, w, b, st[1], st[2])]
    st_l = (st[0], leaves[3], leaves[4])
    y1, s1 = timestep_norm(leaves[0], leaves[1], leaves[2], G, state=st_l, mask=m, backend="triton")
    y2, s2 = timestep_norm(leaves[0], leaves[1], leaves[2], G, state=st_l, mask=m, backend="reference")
    assert torch.equal(s1[0], s2[0])
    assert_close_rms(y1, y2, 1e-5, "y")
    assert_close_rms(s1[1], s2[1], 1e-5, "mean")
    assert_close_rms(s1[2], s2[2], 1e-5, "var")
    for a, c in zip(grads([y1, s1[1], s1[2]], leaves), grads([y2, s2[1], s2[2]], leaves)):
        assert_close_rms(a, c, 1e-4, "grad")


@pytest.mark.parametrize("backend", ["reference", "torch", pytest.param("triton", marks=pytest.mark.interpret)])
def test_long_stream_with_a_large_mean_for_every_backend(backend, monkeypatch):
    """4096 tokens of mean 3e5 and unit spread in float32: the running mean's updates delta / count fall
    below float32 resolution at 3e5 (0.03) after a few dozen tokens, so an unshifted Welford mean
    stalls and its error enters the variance (the Triton kernel did this: 120% variance error at
    65536 tokens of mean 1e4 in one report). Every backend keeps mean and variance."""
    if backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    g = torch.Generator().manual_seed(1)
    L, D = 4096, 4
    x = (3e5 + torch.randn(1, L, D, generator=g, dtype=torch.float64)).float()
    x64 = x.double()  # the exact statistics of the float32 input itself
    y, (_, mu, var) = timestep_norm(x, torch.zeros(D), torch.zeros(D), 1, backend=backend)
    exact_var = x64.var(unbiased=False).item()
    assert abs(var.item() - exact_var) / exact_var < 1e-3, (backend, var.item(), exact_var)
    assert abs(mu.item() - x64.mean().item()) < 0.05  # float32 resolution at 3e5 is 0.03
    ref_last = (x64[0, -1] - x64.mean()) / (exact_var + 1e-5) ** 0.5
    assert_close_rms(y[0, -1].double(), ref_last, 0.1, "last token")


# ---------------------------------------------------------------------------------------------- the C++ CPU kernel
def cpu_kernel():
    import shutil

    from kernels.timestep_norm import cpu_impl

    ext = cpu_impl.extension()
    if ext is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the PyTorch path runs (tested above)")
    assert ext is not None, "g++ is here but the C++ TimestepNorm kernel was not built (see the printed reason)"
    return cpu_impl


@pytest.mark.parametrize("B,L,D,G", [*SHAPES, (2, 257, 96, 8)], ids=[*IDS, "L257"])
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "state"])
def test_cpu_kernel_matches_reference(B, L, D, G, with_state):
    cpu_impl = cpu_kernel()
    x, w, b, st, _ = make(B, L, D, G, torch.float32, seed=B * L + D, state=with_state, mask=False)
    st32 = None if st is None else (st[0], st[1].float(), st[2].float())
    y, (c, m, v) = cpu_impl.timestep_norm_cpu(x, w, b, G, 1e-5, st32 if st32 else torch_impl.initial_state(B, G, "cpu"))
    ref = timestep_norm_reference(x.double(), w.double(), b.double(), G, 1e-5,
                                  None if st is None else (st[0], st[1].double(), st[2].double()))
    assert torch.equal(c, ref[1][0])
    assert_close_rms(y.double(), ref[0], 1e-5, "y")
    assert_close_rms(m.double(), ref[1][1], 1e-6, "mean")
    assert_close_rms(v.double(), ref[1][2], 1e-5, "var")


def test_cpu_kernel_is_what_runs_without_grad_and_segments_equal_one_pass(monkeypatch):
    cpu_impl = cpu_kernel()
    calls = []
    real = cpu_impl.timestep_norm_cpu
    monkeypatch.setattr(cpu_impl, "timestep_norm_cpu", lambda *a: calls.append(1) or real(*a))
    x, w, b, _, mask = make(2, 90, 24, 4, torch.float32, seed=3, state=False)
    whole, s_whole = timestep_norm(x, w, b, 4)
    assert calls, "the no-grad call did not take the C++ kernel"
    st, parts = None, []
    for lo, hi in ((0, 1), (1, 40), (40, 90)):
        y, st = timestep_norm(x[:, lo:hi], w, b, 4, state=st)
        parts.append(y)
    assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-6)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(st, s_whole))
    n = len(calls)
    timestep_norm(x, w, b, 4, mask=mask)  # a mask: the PyTorch path
    timestep_norm(x.requires_grad_(), w, b, 4)  # autograd: the differentiable path
    monkeypatch.setenv(cpu_impl.ENV_VAR, "0")
    timestep_norm(x.detach(), w, b, 4)  # switched off
    assert len(calls) == n


def test_cpu_kernel_widens_bf16_as_the_pytorch_path_does():
    cpu_impl = cpu_kernel()
    x, w, b, _, _ = make(2, 64, 32, 4, torch.float32, seed=5, state=False, mask=False)
    xb = x.bfloat16()
    y, s = cpu_impl.timestep_norm_cpu(xb, w, b, 4, 1e-5, torch_impl.initial_state(2, 4, "cpu"))
    y2, s2 = torch_impl.timestep_norm_fused(xb, w, b, 4)
    assert y.dtype == torch.bfloat16 and (y.float() - y2.float()).abs().max() <= 0.02
    assert all(torch.allclose(p.float(), q.float(), atol=1e-5) for p, q in zip(s, s2))


def test_a_cpu_kernel_that_cannot_be_built_says_so_once_and_the_pytorch_path_runs(monkeypatch, capsys):
    import torch.utils.cpp_extension as cpp

    from kernels.timestep_norm import cpu_impl

    def broken(*a, **k):
        raise RuntimeError("Error building extension: g++ not found\nmore lines")

    cpu_impl.extension.cache_clear()
    monkeypatch.setattr(cpp, "load", broken)
    try:
        x, w, b, _, _ = make(1, 20, 8, 2, torch.float32, state=False, mask=False)
        y, _ = timestep_norm(x, w, b, 2)
        timestep_norm(x, w, b, 2)
        out = capsys.readouterr().out
        assert out.count("could not be built (Error building extension: g++ not found); the PyTorch path") == 1
        assert torch.allclose(y, torch_impl.timestep_norm_fused(x, w, b, 2)[0], atol=1e-6)
    finally:
        cpu_impl.extension.cache_clear()


@pytest.mark.parametrize("offset", [5.0, 1e4])
def test_cpu_kernel_keeps_streams_far_from_zero(offset):
    """Every token is centred on its own mean before its second moment, and the running statistics merge in
    float64: a stream of mean 1e4 keeps the float32 reference's accuracy."""
    cpu_impl = cpu_kernel()
    g = torch.Generator().manual_seed(3)
    x = (offset + torch.randn(1, 4096, 64, generator=g, dtype=torch.float64)).float()
    w, b = torch.zeros(64), torch.zeros(64)
    ref, (_, _, ref_var) = timestep_norm(x.double(), w.double(), b.double(), 2, backend="reference")
    y, (_, _, var) = cpu_impl.timestep_norm_cpu(x, w, b, 2, 1e-5, torch_impl.initial_state(1, 2, "cpu"))
    assert_close_rms(y.double(), ref, 1e-4, "y")
    assert_close_rms(var.double(), ref_var, 1e-5, "var")
