"""Triton timestep-norm forward: one program per (row, group) scans the tokens with Welford merges.

The running mean is kept as an offset from a shift K (the incoming mean, or the first token's mean):
adding ``delta / count`` to a mean of 1e4 loses it below float32 resolution after a few thousand
tokens, while the offset stays O(spread) and keeps the statistics exact over long streams."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tsn_scan_fwd(x_ptr, y_ptr, w_ptr, b_ptr, valid_ptr, c0_ptr, m0_ptr, v0_ptr, c_out, m_out, v_out,
                  L, D, G, DG, eps, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    g = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    mk = offs < DG
    cols = g * DG + offs
    w = tl.load(w_ptr + cols, mask=mk, other=0.0) + 1.0
    bb = tl.load(b_ptr + cols, mask=mk, other=0.0)
    c = tl.load(c0_ptr + b)
    mean0 = tl.load(m0_ptr + b * G + g)
    var = tl.load(v0_ptr + b * G + g)
    x0 = tl.load(x_ptr + (b * L) * D + cols, mask=mk, other=0.0).to(tl.float32)
    shift = tl.where(c > 0, mean0, tl.sum(x0, axis=0) / DG)  # K: any value is exact, one near the mean is stable
    off = mean0 - shift  # running mean - K
    for t in range(0, L):
        ok = tl.load(valid_ptr + b * L + t) != 0
        x = tl.load(x_ptr + (b * L + t) * D + cols, mask=mk, other=0.0).to(tl.float32)
        xs = tl.where(mk, x - shift, 0.0)
        m = tl.sum(xs, axis=0) / DG  # token mean - K
        xm = tl.where(mk, xs - m, 0.0)
        v = tl.sum(xm * xm, axis=0) / DG
        cf = c.to(tl.float32)
        cn = cf + 1.0
        delta = m - off
        off_n = off + delta / cn
        var_n = (cf * var + v + delta * delta * cf / cn) / cn
        off = tl.where(ok, off_n, off)
        var = tl.where(ok, var_n, var)
        c = tl.where(ok, c + 1, c)
        y = (xs - off) / tl.sqrt(var + eps) * w + bb
        y = tl.where(ok, y, 0.0)
        tl.store(y_ptr + (b * L + t) * D + cols, y, mask=mk)
    tl.store(c_out + b, c)
    tl.store(m_out + b * G + g, off + shift)
    tl.store(v_out + b * G + g, var)


def timestep_norm_triton_forward(x, weight, bias, num_groups, eps, count, mean, var, valid):
    B, L, D = x.shape
    G = num_groups
    y = torch.full((B, L, D), float("nan"), device=x.device, dtype=torch.float32)
    c_out = torch.empty(B, dtype=torch.int64, device=x.device)
    m_out = torch.full((B, G), float("nan"), device=x.device, dtype=torch.float32)
    v_out = torch.full_like(m_out, float("nan"))
    BLOCK = triton.next_power_of_2(D // G)
    _tsn_scan_fwd[(B, G)](
        x.contiguous(), y, weight.float().contiguous(), bias.float().contiguous(), valid.to(torch.int8).contiguous(),
        count.contiguous(), mean.float().contiguous(), var.float().contiguous(), c_out, m_out, v_out,
        L, D, G, D // G, eps, BLOCK=BLOCK,
    )
    return y, c_out, m_out, v_out
