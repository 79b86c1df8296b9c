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
    return mean, var, final_state(state, valid, mean, var, cnt, dt)


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


# The uncentred no-grad path rounds like x * r - mean * r; it is used while every running mean is within this many
# running standard deviations of zero (relative error <= ~65 float32 ulps), else the tokens are centred first.
UNCENTRED_LIMIT = 8.0


def running_stats_nograd(m, v, valid, state):
    """``cumulative_stats`` without autograd, in place on contiguous float64 [B, L, G] tensors (about a third of
    its time: no dtype promotion inside the arithmetic, the incoming state folded into the first token, and
    the counts an ``arange`` when nothing is masked). Returns mean, var [B, L, G] (float64) and the count."""
    acc = torch.float64
    count, mean0, var0 = state
    B, L, G = m.shape
    c0 = count.to(acc)[:, None, None]
    a = m.to(acc, copy=True)
    K = torch.where(c0 > 0, mean0.to(acc)[:, None, :], a[:, :1])  # [B, 1, G]: the shift, as in cumulative_stats
    a.sub_(K)
    b = v.to(acc, copy=True).addcmul_(a, a)  # v + (m - K)^2: the token's second moment about K
    if valid is None:
        cnt = c0 + torch.arange(1, L + 1, dtype=acc, device=m.device)[None, :, None]
    else:
        vf = valid.to(acc)[..., None]
        a.mul_(vf)
        b.mul_(vf)
        cnt = c0 + torch.cumsum(vf, 1)
    if L:
        d0 = mean0.to(acc)[:, None, :] - K
        a[:, :1] += c0 * d0
        b[:, :1] += c0 * (var0.to(acc)[:, None, :] + d0 * d0)
    inv = cnt.clamp(min=1.0).reciprocal_()
    mu = a.cumsum_(1).mul_(inv)
    var = b.cumsum_(1).mul_(inv).addcmul_(mu, mu, value=-1.0).clamp_(min=0.0)
    return mu.add_(K), var, cnt


def final_state(state, valid, mean, var, cnt, dt):
    """The state after the last token: the count, and the last running mean and variance (the incoming ones where
    no token was valid). ``valid`` None: every token counts."""
    count, mean0, var0 = state
    L = mean.shape[1]
    new_count = count + (L if valid is None else valid.long().sum(1))
    if L == 0:
        return new_count, mean0.to(dt), var0.to(dt)
    has = cnt[:, -1] > 0
    return (new_count, torch.where(has, mean[:, -1], mean0.to(mean.dtype)).to(dt),
            torch.where(has, var[:, -1], var0.to(var.dtype)).to(dt))


def timestep_norm_fused(x, weight, bias, num_groups, eps=1e-5, state=None, mask=None):
    """The same values without autograd (evaluation, generation) in about four passes over x: the token means
    and the token norms (two reads), one inference ``batch_norm`` whose channels are the (token, group) pairs
    (x * r - mean * r in one pass), the affine by one ``addcmul`` in place; the running statistics on the small
    [B, L, G] tensor in float64. The token variance q - m^2 and the uncentred ``batch_norm`` round relative
    to |mean| / std, so where any running mean is more than UNCENTRED_LIMIT running standard deviations from
    zero the tokens are centred first (two more passes: the centred tokens and their norms), which keeps
    streams of mean 1e4 exact."""
    B, L, D = x.shape
    G, dg = num_groups, D // num_groups
    dt = compute_dtype(x.dtype)
    state = state if state is not None else initial_state(B, G, x.device, dt)
    valid = None if mask is None else mask.bool()
    xg = x.to(dt).reshape(B, L, G, dg)
    m = xg.mean(-1)
    v = torch.linalg.vector_norm(xg, dim=-1).square_().div_(dg).addcmul_(m, m, value=-1.0).clamp_(min=0.0)
    mean, var, cnt = running_stats_nograd(m, v, valid, state)
    far = mean.square() > (UNCENTRED_LIMIT ** 2) * (var + eps)
    if valid is not None:
        far &= valid[..., None]
    if bool(far.any()):
        d = xg - m[..., None]
        v = torch.linalg.vector_norm(d, dim=-1).square_().div_(dg)
        mean, var, cnt = running_stats_nograd(m, v, valid, state)
        src, centre = d, (mean - m.to(mean.dtype)).to(dt)  # the running mean minus the token mean, in float64 first
    else:
        src, centre = xg, mean.to(dt)
    y = torch.batch_norm(src.reshape(1, B * L * G, dg), None, None, centre.flatten(), var.to(dt).flatten(),
                         False, 0.0, eps, False).view(B, L, G, dg)
    torch.addcmul(bias.to(dt).reshape(G, dg), y, (weight.to(dt) + 1).reshape(G, dg), out=y)
    if valid is not None:
        y.masked_fill_(~valid[..., None, None], 0.0)
    return y.reshape(B, L, D).to(x.dtype), final_state(state, valid, mean, var, cnt, dt)
