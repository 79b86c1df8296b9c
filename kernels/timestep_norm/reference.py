"""Readable specification of Megalodon's timestep normalisation.

For each batch row and group g (G groups of d_g = D/G channels), the output at token t uses the
mean and population variance of ALL t * d_g scalars of that group seen so far (tokens 0..t of the
stream, including earlier segments through the carried state) -- the within-token variance included:

    c_t   = c_0 + (valid tokens up to t)
    mu_t  = (c_0 mu_0 + sum_s m_s) / c_t
    var_t = (c_0 (var_0 + mu_0^2) + sum_s (v_s + m_s^2)) / c_t - mu_t^2
    y_t   = (x_t - mu_t) / sqrt(var_t + eps) * (weight + 1) + bias

with m_s, v_s the mean and population variance of token s's group. Padded tokens output 0 and
change nothing. The reference merges one token at a time with Chan/Welford updates (stable).
"""

from __future__ import annotations

import torch

from kernels._dispatch import compute_dtype


def initial_state(B: int, G: int, device, dtype=torch.float32):
    return (
        torch.zeros(B, dtype=torch.int64, device=device),
        torch.zeros(B, G, dtype=dtype, device=device),
        torch.ones(B, G, dtype=dtype, device=device),
    )


def token_group_stats(x: torch.Tensor, G: int):
    """x [B, L, D] -> per-token group mean and population variance, each [B, L, G] (compute dtype)."""
    B, L, D = x.shape
    xg = x.to(compute_dtype(x.dtype)).reshape(B, L, G, D // G)
    m = xg.mean(-1)
    v = (xg - m[..., None]).pow(2).mean(-1)
    return m, v


def timestep_norm_reference(x, weight, bias, num_groups, eps=1e-5, state=None, mask=None):
    B, L, D = x.shape
    G = num_groups
    dt = compute_dtype(x.dtype)
    count, mean, var = state if state is not None else initial_state(B, G, x.device, dt)
    count, mean, var = count.clone(), mean.to(dt).clone(), var.to(dt).clone()
    m, v = token_group_stats(x, G)
    # Welford on the mean's offset from a shift K (the incoming mean, or the first token's): a mean of
    # 1e4 would otherwise swallow the updates delta / count of a long stream below float32 resolution
    K = torch.where(count[:, None] > 0, mean, m[:, 0] if L else mean)
    mean, m = mean - K, m - K[:, None]
    xg_shift = K[..., None]
    xg = x.to(dt).reshape(B, L, G, D // G)
    scale = (weight.to(dt) + 1).reshape(G, D // G)
    shift = bias.to(dt).reshape(G, D // G)
    valid = torch.ones(B, L, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    ys = []
    for t in range(L):
        ok = valid[:, t]
        c_new = count + ok.long()
        cf, cn = count.to(dt)[:, None], c_new.clamp(min=1).to(dt)[:, None]
        delta = m[:, t] - mean
        mean_new = mean + delta / cn
        var_new = (cf * var + v[:, t] + delta.pow(2) * cf / cn) / cn
        mean = torch.where(ok[:, None], mean_new, mean)
        var = torch.where(ok[:, None], var_new, var)
        count = c_new
        y = (xg[:, t] - xg_shift - mean[..., None]) * torch.rsqrt(var[..., None] + eps) * scale + shift
        ys.append(torch.where(ok[:, None, None], y, torch.zeros_like(y)))
    y = torch.stack(ys, 1).reshape(B, L, D) if ys else x.new_zeros(B, 0, D)
    return y.to(x.dtype), (count, mean + K, var)
