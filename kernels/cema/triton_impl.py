"""Triton CEMA forward: a scan over time. Each program owns a block of channels of one batch row and
keeps their complex states (all N orders) in registers from step to step; a streaming caller
carries the same state from one chunk of the sequence to the next through h0 / h_L. Imported
lazily (only when used)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.cema.reference import cema_coefficients


@triton.jit
def _cema_scan_fwd(x_ptr, y_ptr, p_ptr, qr_ptr, qi_ptr, gr_ptr, gi_ptr, om_ptr, h0r_ptr, h0i_ptr,
                   hr_ptr, hi_ptr, D, L, N: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, N)
    md = offs_d < D
    m2 = md[:, None] & (offs_n[None, :] < N)
    dn = offs_d[:, None] * N + offs_n[None, :]
    p = tl.load(p_ptr + dn, mask=m2, other=0.0)
    qr = tl.load(qr_ptr + dn, mask=m2, other=0.0)
    qi = tl.load(qi_ptr + dn, mask=m2, other=0.0)
    gr = tl.load(gr_ptr + dn, mask=m2, other=0.0)
    gi = tl.load(gi_ptr + dn, mask=m2, other=0.0)
    om = tl.load(om_ptr + offs_d, mask=md, other=0.0)
    hr = tl.load(h0r_ptr + b * D * N + dn, mask=m2, other=0.0)
    hi = tl.load(h0i_ptr + b * D * N + dn, mask=m2, other=0.0)
    row = b * D * L + offs_d * L
    for t in range(0, L):  # the scan: the state stays in registers from step to step
        xt = tl.load(x_ptr + row + t, mask=md, other=0.0).to(tl.float32)
        nr = qr * hr - qi * hi + p * xt[:, None]
        hi = qr * hi + qi * hr
        hr = nr
        y = tl.sum(gr * hr - gi * hi, axis=1) + om * xt
        tl.store(y_ptr + row + t, y, mask=md)
    tl.store(hr_ptr + b * D * N + dn, hr, mask=m2)
    tl.store(hi_ptr + b * D * N + dn, hi, mask=m2)


def cema_triton_forward(x, alpha, delta, theta, gamma, omega, h0=None):
    """-> (y [B, D, L] float32, h_L [B, D, N] complex64)."""
    B, D, L = x.shape
    N = alpha.shape[1]
    NP = max(16, triton.next_power_of_2(N))
    p, log_q, gamma_c = cema_coefficients(alpha.float(), delta.float(), None if theta is None else theta.float(),
                                          gamma.float())
    q = torch.exp(log_q)
    pad = lambda t: torch.nn.functional.pad(t, (0, NP - N)).contiguous()  # noqa: E731
    coef = [pad(t) for t in (p, q.real, q.imag, gamma_c.real, gamma_c.imag)]
    if h0 is None:
        h0r = h0i = torch.zeros(B, D, NP, device=x.device, dtype=torch.float32)
    else:
        h0c = h0.to(torch.complex64)
        h0r, h0i = pad(h0c.real.float()), pad(h0c.imag.float())
    y = torch.full((B, D, L), float("nan"), device=x.device, dtype=torch.float32)
    hr = torch.full((B, D, NP), float("nan"), device=x.device, dtype=torch.float32)
    hi = torch.full_like(hr, float("nan"))
    BLOCK_D = 16
    grid = (B, triton.cdiv(D, BLOCK_D))
    _cema_scan_fwd[grid](x.contiguous(), y, *coef, omega.reshape(-1).float().contiguous(), h0r, h0i, hr, hi,
                         D, L, N=NP, BLOCK_D=BLOCK_D)
    return y, torch.complex(hr[..., :N], hi[..., :N])
