from __future__ import annotations

import math

import pytest
import torch

from kernels import cema, cema_step
from kernels.cema import cema_coefficients, cema_reference
from tests.kernels.helpers import assert_close_rms, grads

# (B, D, N, L) with readable ids: single step, odd lengths, D and N not powers of two
SHAPES = [(1, 3, 2, 1), (2, 5, 4, 63), (1, 7, 16, 100), (2, 16, 3, 129)]
IDS = ["L1", "L63", "N16-L100", "D16-N3-L129"]


def params(D, N, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    alpha = torch.randn(D, N, 1, generator=g, dtype=dtype) * 0.5
    delta = torch.randn(D, N, 1, generator=g, dtype=dtype) * 0.5
    theta = torch.randn(D, 1, 1, generator=g, dtype=dtype)
    gamma = torch.randn(D, N, 2, generator=g, dtype=dtype)
    omega = torch.randn(D, 1, generator=g, dtype=dtype) * 0.25
    return [alpha, delta, theta, gamma, omega]


def inputs(B, D, N, L, dtype=torch.float64, seed=1, h0=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, L, generator=g, dtype=dtype)
    h = None
    if h0:
        ct = torch.complex128 if dtype == torch.float64 else torch.complex64
        re, im = (torch.randn(B, D, N, generator=g, dtype=dtype) for _ in range(2))
        h = torch.complex(re, im).to(ct)
    return x, h


def test_coefficients_match_the_spec():
    alpha, delta, theta, gamma, _ = params(3, 4)
    p, log_q, gc = cema_coefficients(alpha, delta, theta, gamma)
    q = torch.exp(log_q)
    d, k = 2, 3  # order index k=3 is the 4th order: phase (k+1) * 2pi/N * sigmoid(theta)
    mag = 1 - torch.sigmoid(alpha[d, k, 0]) * torch.sigmoid(delta[d, k, 0])
    phase = (k + 1) * 2 * math.pi / 4 * torch.sigmoid(theta[d, 0, 0])
    torch.testing.assert_close(q[d, k], torch.polar(mag, phase))
    torch.testing.assert_close(gc[d, k], torch.complex(gamma[d, k, 0], gamma[d, k, 1]) / 2.0)
    assert (q.abs() < 1).all()


@pytest.mark.parametrize("B,D,N,L", SHAPES, ids=IDS)
def test_reference_matches_closed_form(B, D, N, L):
    """y_t = sum_j Re(sum_k p gamma q^j) x_{t-j} + omega x_t + Re(sum_k gamma q^(t+1) h0)."""
    x, h0 = inputs(B, D, N, L)
    P = params(D, N)
    y, h = cema_reference(x, *P, h0=h0)
    p, log_q, gc = cema_coefficients(*P[:4])
    q = torch.exp(log_q)
    j = torch.arange(L, dtype=torch.float64)
    powers = q[..., None] ** j  # [D, N, L], direct complex powers
    kern = (p[..., None] * gc[..., None] * powers).sum(1).real  # [D, L]
    y_cf = torch.zeros(B, D, L, dtype=torch.float64)
    for t in range(L):
        y_cf[..., t] = (kern[:, : t + 1].flip(-1) * x[..., : t + 1]).sum(-1)
        y_cf[..., t] += (gc * q ** (t + 1) * h0).sum(-1).real
    y_cf += P[4].reshape(1, D, 1) * x
    torch.testing.assert_close(y, y_cf, atol=1e-10, rtol=1e-10)
    h_cf = q**L * h0 + p * (x[..., None, :] * q[..., None] ** (L - 1 - j)).sum(-1)
    torch.testing.assert_close(h, h_cf, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("B,D,N,L", SHAPES, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)], ids=["f64", "f32"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["h0=none", "h0"])
def test_fft_path_matches_reference(B, D, N, L, dtype, tol, with_h0):
    x, h0 = inputs(B, D, N, L, dtype, h0=with_h0)
    P = [t.to(dtype) for t in params(D, N)]
    leaves = [t.clone().requires_grad_() for t in [x, *P] + ([h0] if with_h0 else [])]
    hx = leaves[6] if with_h0 else None
    y1, s1 = cema(leaves[0], *leaves[1:6], h0=hx, return_state=True, backend="torch")
    g1 = grads([y1, s1], leaves)
    y2, s2 = cema(leaves[0], *leaves[1:6], h0=hx, return_state=True, backend="reference")
    g2 = grads([y2, s2], leaves)
    assert_close_rms(y1, y2, tol, "y")
    assert_close_rms(s1, s2, tol, "state")
    names = ["x", "alpha", "delta", "theta", "gamma", "omega", "h0"]
    for name, a, b in zip(names, g1, g2):
        assert_close_rms(a, b, tol * 10, f"grad {name}")


def test_gradcheck_float64():
    x, h0 = inputs(1, 2, 3, 6)
    P = params(2, 3)
    leaves = [t.clone().requires_grad_() for t in [x, *P, h0]]
    for backend in ("torch", "reference"):
        def f(x, a, d, t, g, o, h):
            y, s = cema(x, a, d, t, g, o, h0=h, return_state=True, backend=backend)
            return y, torch.view_as_real(s)
        assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("cut", [1, 17, 50])
def test_streaming_two_segments_equal_one_pass(cut):
    x, _ = inputs(2, 4, 5, 64, h0=False)
    P = params(4, 5)
    y, h = cema(x, *P, return_state=True)
    y1, h1 = cema(x[..., :cut], *P, return_state=True)
    y2, h2 = cema(x[..., cut:], *P, h0=h1, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h2, h, atol=1e-10, rtol=1e-10)


def test_recurrent_step_matches_full_pass():
    x, h0 = inputs(2, 4, 5, 20)
    P = params(4, 5)
    y, h = cema(x, *P, h0=h0, return_state=True)
    state, ys = h0, []
    for t in range(20):
        yt, state = cema_step(x[..., t], state, *P)
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, -1), y, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(state, h, atol=1e-10, rtol=1e-10)


def test_bf16_input_is_computed_in_float32():
    x, _ = inputs(1, 8, 4, 256, torch.float32, h0=False)
    P = [t.float() for t in params(8, 4)]
    y32, _ = cema(x, *P)
    y16, _ = cema(x.bfloat16(), *[t.bfloat16() for t in P])
    assert y16.dtype == torch.bfloat16
    assert_close_rms(y16.float(), y32, 3e-2, "bf16 vs fp32")


def test_long_sequence_stays_accurate_float32():
    """Powers built as exp(j log q), never by cumulative products: no drift over 20K steps."""
    x, _ = inputs(1, 2, 4, 20000, torch.float64, h0=False)
    P = params(2, 4)
    P[0] = P[0] - 3.0  # small p: slowly decaying, long memory
    ref, _ = cema(x, *P, backend="torch")
    y32, _ = cema(x.float(), *[t.float() for t in P], backend="torch")
    assert_close_rms(y32, ref, 1e-4, "fp32 FFT path at L=20000")


def test_bad_shapes_fail_clearly():
    x, _ = inputs(1, 3, 2, 5)
    P = params(3, 2)
    with pytest.raises(ValueError, match=r"gamma must be \[3, 2, 2\]"):
        cema(x, P[0], P[1], P[2], P[3][:, :, :1], P[4])
    with pytest.raises(ValueError, match="x must be"):
        cema(x[0], *P)


@pytest.mark.interpret
@pytest.mark.parametrize("B,D,N,L", SHAPES[:3], ids=IDS[:3])
def test_triton_matches_reference(B, D, N, L, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, h0 = inputs(B, D, N, L, torch.float32)
    P = [t.float() for t in params(D, N)]
    leaves = [t.clone().requires_grad_() for t in [x, *P, h0]]
    y1, s1 = cema(leaves[0], *leaves[1:6], h0=leaves[6], return_state=True, backend="triton")
    g1 = grads([y1, s1], leaves)
    y2, s2 = cema(leaves[0], *leaves[1:6], h0=leaves[6], return_state=True, backend="reference")
    g2 = grads([y2, s2], leaves)
    assert_close_rms(y1, y2, 1e-5, "y")
    assert_close_rms(s1, s2, 1e-5, "state")
    for a, b in zip(g1, g2):
        assert_close_rms(a, b, 1e-4, "grad")
