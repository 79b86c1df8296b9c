"""Readable specification of chunked (block-diagonal causal) attention.

Position i attends to position j iff j <= i and floor(i / C) == floor(j / C): nothing crosses a
chunk boundary. Layout [B, T, H, d]. ``scale`` multiplies the scores (None -> 1/sqrt(d); Megalodon
normalises Q/K itself and passes 1.0). Softmax in float32 (or float64).
"""

from __future__ import annotations

import math

import torch

from kernels._dispatch import compute_dtype


def chunk_mask(T: int, C: int, device, offset: int = 0) -> torch.Tensor:
    """[T, offset + T] boolean mask for queries at stream positions offset..offset+T-1 over keys at
    positions 0..offset+T-1 (the first ``offset`` keys are the cache of the current chunk)."""
    qi = torch.arange(offset, offset + T, device=device)[:, None]
    kj = torch.arange(offset + T, device=device)[None, :]
    return (kj <= qi) & (kj // C == qi // C)


def chunk_attention_reference(q, k, v, chunk_size, scale=None, k_cache=None, v_cache=None, cache_valid=None):
    """q, k, v [B, T, H, d]; optional cache [B, S, H, d] of the current chunk's earlier tokens (S < C);
    ``cache_valid`` [B, S] (optional) False where a cached token is invisible (a row that started a
    new document inside the chunk).

    Returns (o [B, T, H, d], k_cache', v_cache') where the new cache holds the keys/values of the
    last, unfinished chunk (empty when the stream ends on a chunk boundary).
    """
    B, T, H, d = q.shape  # v may have its own head width d_v
    dt = compute_dtype(q.dtype)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    S = 0 if k_cache is None else k_cache.shape[1]
    kk = k if k_cache is None else torch.cat([k_cache.to(k.dtype), k], 1)
    vv = v if v_cache is None else torch.cat([v_cache.to(v.dtype), v], 1)
    scores = torch.einsum("bthd,bshd->bhts", q.to(dt), kk.to(dt)) * scale
    allowed = chunk_mask(T, chunk_size, q.device, S)
    if cache_valid is not None and S:
        keys = torch.cat([cache_valid.to(q.device).bool(), cache_valid.new_ones(B, T, dtype=torch.bool)], 1)
        allowed = allowed & keys[:, None, None, :]
    scores = scores.masked_fill(~allowed, float("-inf"))
    o = torch.einsum("bhts,bshd->bthd", torch.softmax(scores, -1), vv.to(dt)).to(q.dtype)
    keep = (S + T) % chunk_size
    return o, kk[:, S + T - keep :], vv[:, S + T - keep :]
