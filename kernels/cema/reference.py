"""Readable specification of Megalodon's complex exponential moving average (CEMA).

Per channel d and order k (N orders), with real input x_t:

    p      = sigmoid(alpha)                                  (input weight, real)
    q      = (1 - sigmoid(alpha) * sigmoid(delta)) * exp(i * phi),  phi_k = k * (2 pi / N) * sigmoid(theta)
    h_t    = q * h_{t-1} + p * x_t                           (h in C^N)
    y_t    = Re(sum_k gamma_c[k] * h_t[k]) + omega * x_t,    gamma_c = (gamma_re + i gamma_im) / sqrt(N)
"""

from __future__ import annotations

import math

import torch

from kernels._dispatch import compute_dtype


def cema_coefficients(alpha, delta, theta, gamma):
    """-> (p [D, N] real, log_q [D, N] complex, gamma_c [D, N] complex), in the compute dtype.

    ``theta=None`` gives phase 0 and ``gamma`` [D, N, 1] real output weights: MEGA's damped real EMA
    (h_t = p x_t + (1 - p delta) h_{t-1}, y = sum gamma h / sqrt(N) + omega x), computed by the same code.
    """
    dt = compute_dtype(alpha.dtype)
    N = alpha.shape[1]
    p = torch.sigmoid(alpha.to(dt)).squeeze(-1)
    r = 1.0 - p * torch.sigmoid(delta.to(dt)).squeeze(-1)
    if theta is None:
        phi = torch.zeros_like(r)
    else:
        k = torch.arange(1, N + 1, device=alpha.device, dtype=dt)
        phi = torch.sigmoid(theta.to(dt)).reshape(-1, 1) * (2 * math.pi / N) * k
    log_q = torch.complex(torch.log(r), phi)
    g_im = gamma[..., 1].to(dt) if gamma.shape[-1] == 2 else torch.zeros_like(gamma[..., 0], dtype=dt)
    gamma_c = torch.complex(gamma[..., 0].to(dt), g_im) / math.sqrt(N)
    return p, log_q, gamma_c


def cema_reference(x, alpha, delta, theta, gamma, omega, h0=None):
    """Sequential complex recurrence. x [B, D, L] -> (y [B, D, L], h_L [B, D, N] complex)."""
    B, D, L = x.shape
    dt = compute_dtype(x.dtype)
    p, log_q, gamma_c = cema_coefficients(alpha, delta, theta, gamma)
    q = torch.exp(log_q)
    h = torch.zeros(B, D, p.shape[1], dtype=q.dtype, device=x.device) if h0 is None else h0.to(q.dtype)
    xc = x.to(dt)
    ys = []
    for t in range(L):
        h = q * h + p * xc[:, :, t, None]
        ys.append((gamma_c * h).sum(-1).real)
    y = torch.stack(ys, dim=-1) if ys else xc.new_zeros(B, D, 0)
    y = y + omega.to(dt).reshape(1, D, 1) * xc
    return y.to(x.dtype), h


def cema_step_reference(x_t, h, alpha, delta, theta, gamma, omega):
    """One decoding step: x_t [B, D], h [B, D, N] complex -> (y_t [B, D], h_new)."""
    p, log_q, gamma_c = cema_coefficients(alpha, delta, theta, gamma)
    dt = compute_dtype(x_t.dtype)
    xc = x_t.to(dt)
    h = torch.exp(log_q) * h + p * xc[..., None]
    y = (gamma_c * h).sum(-1).real + omega.to(dt).reshape(-1) * xc
    return y.to(x_t.dtype), h
