"""Fast PyTorch timestep normalisation: per-token group statistics, then shifted cumulative sums.

Only the small [B, L, G] statistics are accumulated, in float64 and shifted by a per-(row, group)
reference value K (the incoming mean, or the first token's mean), which keeps long streams exact
where a float32 ``cumsum(x^2)`` would lose the variance to cancellation.
"""

from __future__ import annotations

import torch

from kernels._dispatch import compute_dtype
from kernels.timestep_norm.reference import initial_state, token_group_stats


def cumulative_stats(m, v, valid, state, dt):
    """Running mean and variance [B, L, G] (float64) of every group from per-token stats ``m``, ``v`` [B, L, G],
    and the state after the last token."""
    acc = torch.float64
    count, mean0, var0 = state
    vf = valid.to(acc)[..., None]
    c0 = count.to(acc)[:, None, None]
    first = m[:, :1].to(acc)
    K = torch.where(c0 > 0, mean0.to(acc)[:, None, :], first)  # [B, 1, G]: any shift is exact; near the mean is stable
    dm = (m.to(acc) - K) * vf
    s1 = torch.cumsum(dm, 1)
    s2 = torch.cumsum((v.to(acc) + dm.pow(2)) * vf, 1)
    cnt = c0 + torch.cumsum(vf, 1)
    cnt_safe = cnt.clamp(min=1.0)
    d0 = mean0.to(acc)[:, None, :] - K
    mu_k = (c0 * d0 + s1) / cnt_safe  # mean minus K
    ex2 = (c0 * (var0.to(acc)[:, None, :] + d0.pow(2)) + s2) / cnt_safe
    var = (ex2 - mu_k.pow(2)).clamp(min=0.0)
    mean = mu_k + K
    new_count = count + valid.long().sum(1)
    if m.shape[1] > 0:
        has = cnt[:, -1] > 0
        last_mean = torch.where(has, mean[:, -1], mean0.to(acc))
        last_var = torch.where(has, var[:, -1], var0.to(acc))
    else:
        last_mean, last_var = mean0.to(acc), var0.to(acc)
    return mean, var, (new_count, last_mean.to(dt), last_var.to(dt))


def timestep_norm_cumsum(x, weight, bias, num_groups, eps=1e-5, state=None, mask=None):
    """The differentiable path (autograd through every step)."""
    B, L, D = x.shape
    G = num_groups
    dt = compute_dtype(x.dtype)
    state = state if state is not None else initial_state(B, G, x.device, dt)
    m, v = token_group_stats(x, G)
    valid = torch.ones(B, L, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    mean, var, new_state = cumulative_stats(m, v, valid, state, dt)
    xg = x.to(dt).reshape(B, L, G, D // G)
    y = (xg - mean.to(dt)[..., None]) * torch.rsqrt(var.to(dt)[..., None] + eps)
    y = y * (weight.to(dt) + 1).reshape(G, D // G) + bias.to(dt).reshape(G, D // G)
    y = torch.where(valid[..., None, None], y, torch.zeros_like(y)).reshape(B, L, D)
    return y.to(x.dtype), new_state


def timestep_norm_fused(x, weight, bias, num_groups, eps=1e-5, state=None, mask=None):
    """The same values without autograd, in six passes over x instead of eleven: the token means (one read),
    the centred tokens ``d`` (one write) and their norms (one read), the normalisation by one inference
    ``batch_norm`` on ``d`` whose channels are the (token, group) pairs (it subtracts the running mean's offset
    from the token mean and divides by sqrt(var + eps) in one pass), the affine by one ``addcmul`` in place.
    Centring before squaring keeps the two-pass precision on streams with a large mean (``var_mean`` over
    a 32-wide last dimension would do the same but runs ~30x slower on CPU). Used where no gradient is
    needed (evaluation, generation)."""
    B, L, D = x.shape
    G, dg = num_groups, D // num_groups
    dt = compute_dtype(x.dtype)
    state = state if state is not None else initial_state(B, G, x.device, dt)
    xg = x.to(dt).reshape(B, L, G, dg)
    m = xg.mean(-1)
    d = xg - m[..., None]
    v = torch.linalg.vector_norm(d, dim=-1).square_().div_(dg)
    valid = torch.ones(B, L, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    mean, var, new_state = cumulative_stats(m, v, valid, state, dt)
    offset = (mean - m.to(mean.dtype)).to(dt).flatten()  # running mean minus token mean, in float64 first
    y = torch.batch_norm(d.view(1, B * L * G, dg), None, None, offset, var.to(dt).flatten(),
                         False, 0.0, eps, False).view(B, L, G, dg)
    torch.addcmul(bias.to(dt).reshape(G, dg), y, (weight.to(dt) + 1).reshape(G, dg), out=y)
    if mask is not None:
        y.masked_fill_(~valid[..., None, None], 0.0)
    return y.reshape(B, L, D).to(x.dtype), new_state
