"""Triton timestep-norm forward: one program per (row, group) scans the tokens with Welford merges."""

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
    mean = tl.load(m0_ptr + b * G + g)
    var = tl.load(v0_ptr + b * G + g)
    for t in range(0, L):
        ok = tl.load(valid_ptr + b * L + t) != 0
        x = tl.load(x_ptr + (b * L + t) * D + cols, mask=mk, other=0.0).to(tl.float32)
        m = tl.sum(x, axis=0) / DG
        xm = tl.where(mk, x - m, 0.0)
        v = tl.sum(xm * xm, axis=0) / DG
        cf = c.to(tl.float32)
        cn = cf + 1.0
        delta = m - mean
        mean_n = mean + delta / cn
        var_n = (cf * var + v + delta * delta * cf / cn) / cn
        mean = tl.where(ok, mean_n, mean)
        var = tl.where(ok, var_n, var)
        c = tl.where(ok, c + 1, c)
        y = (x - mean) / tl.sqrt(var + eps) * w + bb
        y = tl.where(ok, y, 0.0)
        tl.store(y_ptr + (b * L + t) * D + cols, y, mask=mk)
    tl.store(c_out + b, c)
    tl.store(m_out + b * G + g, mean)
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
