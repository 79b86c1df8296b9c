"""Readable specification of FoT memory attention: one softmax over local causal keys plus extra keys.

For query i (layout [B, T, H, d]):

    scores = [ q_i . K_loc[j] for j <= i ;  q_i . K_x[m] for valid m ] * scale      -> ONE softmax
    out_i  = sum_j w_j V_loc[j] + sum_m w_m V_x[m]

Extra keys come in two shapes:
* dense / CrossBatch: a set shared by all queries of a row, ``mem_k, mem_v`` [B, M, H, d] with
  ``mem_mask`` [B, M] or [B, H, M] (True = valid);
* kNN: per-query retrieved keys, ``mem_k, mem_v`` [B, T, H, k, d] with ``mem_mask`` [B, T, H, k].
"""

from __future__ import annotations

import math

import torch

from kernels._dispatch import compute_dtype


def local_causal_mask(T: int, device, window: int | None = None) -> torch.Tensor:
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    m = j <= i
    if window is not None:
        m &= (i - j) < window
    return m


def dense_mask(mem_mask, B, H, M, device):
    if mem_mask is None:
        return torch.ones(B, H, 1, M, dtype=torch.bool, device=device)
    if mem_mask.dim() == 2:
        return mem_mask[:, None, None, :].bool()
    return mem_mask[:, :, None, :].bool()


def local_mask(T: int, device, local_valid=None) -> torch.Tensor:
    """[T, T] causal, or [B, 1, T, T] with ``local_valid`` [B, T] (False: a key hidden from its row's
    queries; a query's own key always stays, so no row of scores is empty)."""
    m = local_causal_mask(T, device)
    if local_valid is None:
        return m
    own = torch.eye(T, dtype=torch.bool, device=device)
    return m & (local_valid.to(device).bool()[:, None, None, :] | own)


def memory_attention_reference(q, k, v, mem_k, mem_v, mem_mask=None, scale=None, return_weights=False,
                               local_valid=None):
    B, T, H, d = q.shape
    dt = compute_dtype(q.dtype)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qc, kc, vc = q.to(dt), k.to(dt), v.to(dt)
    local = torch.einsum("bthd,bshd->bhts", qc, kc) * scale
    local = local.masked_fill(~local_mask(T, q.device, local_valid), float("-inf"))
    if mem_k.dim() == 4:  # dense [B, M, H, d]
        M = mem_k.shape[1]
        extra = torch.einsum("bthd,bmhd->bhtm", qc, mem_k.to(dt)) * scale
        extra = extra.masked_fill(~dense_mask(mem_mask, B, H, M, q.device), float("-inf"))
        w = torch.softmax(torch.cat([extra, local], -1), -1)
        o = torch.einsum("bhtm,bmhd->bthd", w[..., :M], mem_v.to(dt))
        o = o + torch.einsum("bhts,bshd->bthd", w[..., M:], vc)
    else:  # kNN [B, T, H, k, d]
        kk = mem_k.shape[3]
        extra = torch.einsum("bthd,bthkd->bhtk", qc, mem_k.to(dt)) * scale
        if mem_mask is not None:
            extra = extra.masked_fill(~mem_mask.bool().permute(0, 2, 1, 3), float("-inf"))
        w = torch.softmax(torch.cat([extra, local], -1), -1)
        o = torch.einsum("bhtk,bthkd->bthd", w[..., :kk], mem_v.to(dt))
        o = o + torch.einsum("bhts,bshd->bthd", w[..., kk:], vc)
    o = o.to(q.dtype)
    return (o, w) if return_weights else o
