"""Fast PyTorch CEMA: the recurrence as a causal convolution computed by FFT.

The kernel ``k[d, j] = Re sum_n p gamma_c q^j`` needs q^j for every lag j < L. Powers are exact
exponentials ``exp(j log q)`` (never a cumulative product, which drifts), and the D*N*L table is never
materialised: with j = a*b + r (b ~ sqrt(L)), ``q^j = q^r * q^(a b)``, so the kernel is a batched
complex matrix product [D, b, N] x [D, N, L/b] -- the same arithmetic, at matmul speed and memory
O(D * N * sqrt(L)). The same factorisation gives the incoming-state term and the final state.
"""

from __future__ import annotations

import math

import torch

from kernels._dispatch import compute_dtype
from kernels.cema.reference import cema_coefficients


def cexp(z: torch.Tensor) -> torch.Tensor:
    """exp of a complex tensor via polar form: ~3x faster than ``torch.exp`` on CPU, same values."""
    return torch.polar(torch.exp(z.real), z.imag)


def _block(L: int) -> int:
    return max(1, int(math.ceil(math.sqrt(L))))


def vandermonde_sum(coef: torch.Tensor, log_q: torch.Tensor, L: int, shift: int = 0) -> torch.Tensor:
    """``out[..., d, j] = Re sum_n coef[..., d, n] * q[d, n]^(j + shift)`` for j < L.

    coef [..., D, N] complex, log_q [D, N] complex -> [..., D, L] real.
    """
    b = _block(L)
    A = (L + b - 1) // b
    r = torch.arange(b, device=log_q.device, dtype=log_q.real.dtype)
    a = torch.arange(A, device=log_q.device, dtype=log_q.real.dtype) * b + shift
    small = cexp(log_q[:, None, :] * r[None, :, None])  # [D, b, N]: q^r
    big = cexp(log_q[:, :, None] * a[None, None, :])  # [D, N, A]: q^(a b + shift)
    lhs = coef[..., :, None, :] * small  # [..., D, b, N]
    out = torch.matmul(lhs, big).real  # [..., D, b, A]
    return out.transpose(-1, -2).reshape(*out.shape[:-2], A * b)[..., :L]


def final_state(x: torch.Tensor, p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``p * sum_j q^(L-1-j) x_j`` for x [B, D, L] -> [B, D, N] complex (the zero-h0 final state)."""
    B, D, L = x.shape
    b = _block(L)
    A = (L + b - 1) // b
    xr = torch.flip(x, dims=[-1])  # xr[j'] = x[L-1-j'], weighted by q^j'
    xr = torch.nn.functional.pad(xr, (0, A * b - L)).reshape(B, D, A, b)
    r = torch.arange(b, device=x.device, dtype=x.dtype)
    a = torch.arange(A, device=x.device, dtype=x.dtype) * b
    small = cexp(log_q[:, None, :] * r[None, :, None])  # [D, b, N]
    big = cexp(log_q[:, None, :] * a[None, :, None])  # [D, A, N]
    inner = torch.matmul(xr.to(small.dtype), small)  # [B, D, A, N]
    return p * (inner * big).sum(-2)


def _fft_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: fast FFT sizes without doubling to the next power of two."""
    best = 1 << (n - 1).bit_length()
    f5 = 1
    while f5 < best:
        f3 = f5
        while f3 < best:
            f2 = f3
            while f2 < n:
                f2 *= 2
            best = min(best, f2)
            f3 *= 3
        f5 *= 5
    return best


def cema_fft(x, alpha, delta, theta, gamma, omega, h0=None, return_state=False):
    B, D, L = x.shape
    dt = compute_dtype(x.dtype)
    xc = x.to(dt)
    p, log_q, gamma_c = cema_coefficients(alpha, delta, theta, gamma)
    kernel = vandermonde_sum(p * gamma_c, log_q, L)  # [D, L]
    n = _fft_len(2 * L)
    y = torch.fft.irfft(torch.fft.rfft(xc, n=n) * torch.fft.rfft(kernel, n=n), n=n)[..., :L]
    y = y + omega.to(dt).reshape(1, D, 1) * xc
    if h0 is not None:
        y = y + vandermonde_sum(gamma_c * h0.to(log_q.dtype), log_q, L, shift=1)
    state = None
    if return_state:
        state = final_state(xc, p, log_q)
        if h0 is not None:
            state = state + cexp(log_q * L) * h0.to(log_q.dtype)
    return y.to(x.dtype), state
