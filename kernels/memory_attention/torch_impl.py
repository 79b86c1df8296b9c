"""Fast PyTorch memory attention.

Dense mode is one ``scaled_dot_product_attention`` over [memory ; local] keys with a boolean mask
(memory columns valid where the memory mask says, local columns causal). kNN mode computes the
local scores with a matmul and the k retrieved scores per query, and merges the two in one
numerically safe softmax without materialising a [T, M] matrix.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from kernels._dispatch import compute_dtype
from kernels.memory_attention.reference import dense_mask, local_mask
from kernels.sdpa import fused


def memory_attention_fast(q, k, v, mem_k, mem_v, mem_mask=None, scale=None, local_valid=None):
    B, T, H, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if mem_k.dim() == 4:
        M = mem_k.shape[1]
        keys = torch.cat([mem_k.to(k.dtype), k], 1)
        vals = torch.cat([mem_v.to(v.dtype), v], 1)
        mask = torch.cat([
            dense_mask(mem_mask, B, H, M, q.device).expand(B, H, T, M),
            local_mask(T, q.device, local_valid).expand(B, H, T, T),
        ], -1)
        o = fused(
            rearrange(q, "b t h d -> b h t d"), rearrange(keys, "b s h d -> b h s d"),
            rearrange(vals, "b s h d -> b h s d"), attn_mask=mask, scale=scale,
        )
        return rearrange(o, "b h t d -> b t h d")
    dt = compute_dtype(q.dtype)
    qc = q.to(dt)
    local = torch.einsum("bthd,bshd->bhts", qc, k.to(dt)) * scale
    local = local.masked_fill(~local_mask(T, q.device, local_valid), float("-inf"))
    # retrieved scores as one batched matrix-vector product over the gathered keys' own layout [B T H, k, d]
    # (an einsum would copy them into [B T H, d, k] first: a full pass over the largest tensor here)
    K = mem_k.shape[3]
    extra = torch.bmm(mem_k.to(dt).reshape(B * T * H, K, d), qc.reshape(B * T * H, d, 1))
    extra = extra.view(B, T, H, K).permute(0, 2, 1, 3) * scale
    if mem_mask is not None:
        extra = extra.masked_fill(~mem_mask.bool().permute(0, 2, 1, 3), float("-inf"))
    mx = torch.maximum(local.amax(-1, keepdim=True), extra.amax(-1, keepdim=True))  # local has j=i: finite
    pl, pe = torch.exp(local - mx), torch.exp(extra - mx)
    z = pl.sum(-1, keepdim=True) + pe.sum(-1, keepdim=True)
    o = torch.einsum("bhts,bshd->bthd", pl / z, v.to(dt)) + torch.einsum("bhtk,bthkd->bthd", pe / z, mem_v.to(dt))
    return o.to(q.dtype)
