"""Fast PyTorch chunked attention: fold chunks into the batch dimension, one causal SDPA call.

[B, T, H, d] -> pad T to n*C -> [(B n), H, C, d]; a single 4-D ``scaled_dot_product_attention``
with ``is_causal`` is then exactly block-diagonal causal attention. A cache of S tokens of the
current chunk is handled by prepending S dummy queries (their outputs are dropped).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from kernels.sdpa import fused, sdpa, uses_math


def _sdpa(q, k, v, scale):
    """Causal SDPA on [N, H, C, d] tensors. CPU's fused (flash) kernel needs one head width for q, k and
    v (the math fallback is ~2.4x slower there in float32 and materialises C x C scores), so widths are
    equalised by zero-padding (padding q and k leaves the scores unchanged; padded value columns are dropped).
    Short bf16 rows run the math backend (``kernels.sdpa``), which takes any value width."""
    d, dv = q.shape[-1], v.shape[-1]
    if d == dv or uses_math(q, k):
        return sdpa(q, k, v, is_causal=True, scale=scale)
    w = max(d, dv)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    q, k, vp = F.pad(q, (0, w - d)), F.pad(k, (0, w - d)), F.pad(v, (0, w - dv))
    return fused(q, k, vp, is_causal=True, scale=scale)[..., :dv]


DIRECT_CONTINUATION = True  # False: queries continuing a cached chunk take the fold path (comparisons)


def _continue_masked(q, k, v, chunk_size, scale, k_cache, v_cache, cache_valid):
    """The queries that continue the cached chunk, with some cached keys hidden per row: one SDPA call
    with an explicit mask; the queries after the chunk boundary go through the fast path."""
    B, T, H, d = q.shape
    S = k_cache.shape[1]
    first = min(chunk_size - S, T)
    kk = torch.cat([k_cache.to(k.dtype), k[:, :first]], 1).transpose(1, 2)
    vv = torch.cat([v_cache.to(v.dtype), v[:, :first]], 1).transpose(1, 2)
    causal = torch.ones(first, S + first, dtype=torch.bool, device=q.device).tril(S)
    keys = torch.cat([cache_valid.to(q.device).bool(), cache_valid.new_ones(B, first, dtype=torch.bool)], 1)
    mask = causal[None, None] & keys[:, None, None, :]
    o1 = sdpa(q[:, :first].transpose(1, 2), kk, vv, attn_mask=mask, scale=scale)
    o1 = o1.transpose(1, 2)
    if first == T:
        keep = (S + T) % chunk_size
        return o1, kk.transpose(1, 2)[:, S + T - keep :], vv.transpose(1, 2)[:, S + T - keep :]
    o2, kc, vc = chunk_attention_sdpa(q[:, first:], k[:, first:], v[:, first:], chunk_size, scale)
    return torch.cat([o1, o2], 1), kc, vc


def chunk_attention_sdpa(q, k, v, chunk_size, scale=None, k_cache=None, v_cache=None, cache_valid=None):
    B, T, H, d = q.shape
    C = chunk_size
    S = 0 if k_cache is None else k_cache.shape[1]
    if S and ((cache_valid is not None and not bool(cache_valid.all())) or (DIRECT_CONTINUATION and S + T <= C)):
        # continuing the cached chunk (decoding, streaming): the queries attend to cache + new keys
        # directly, without the S dummy queries and width padding of the fold below (O(S) per token)
        return _continue_masked(q, k, v, chunk_size, scale, k_cache, v_cache,
                                cache_valid if cache_valid is not None else k_cache.new_ones(B, S, dtype=torch.bool))
    if S:  # v may have its own head width d_v
        q = torch.cat([q.new_zeros(B, S, H, d), q], 1)
        k = torch.cat([k_cache.to(k.dtype), k], 1)
        v = torch.cat([v_cache.to(v.dtype), v], 1)
    total = S + T
    if total <= C:  # one (partial) chunk: plain causal attention, no padding to C
        o = _sdpa(*(t.transpose(1, 2) for t in (q, k, v)), scale)
        o = o.transpose(1, 2)[:, S:]
        keep = total % C
        return o, k[:, total - keep :], v[:, total - keep :]
    n = (total + C - 1) // C
    pad = n * C - total
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
    fold = "b (n c) h d -> (b n) h c d"
    qf, kf, vf = (rearrange(t, fold, c=C) for t in (q, k, v))
    o = _sdpa(qf, kf, vf, scale)
    o = rearrange(o, "(b n) h c d -> b (n c) h d", n=n)[:, S:total]
    keep = total % C
    return o, k[:, total - keep : total], v[:, total - keep : total]


def chunk_attention_dropout(q, k, v, chunk_size, scale, k_cache, v_cache, cache_valid, p, mode):
    """Chunked attention with dropout (training): the cache joined to the keys, chunks folded into the
    batch, an explicit [C, C] mask per chunk. ``post_softmax`` drops weights after the softmax and
    rescales by 1/(1-p); ``dropkey`` drops keys before it (never a query's own)."""
    B, T, H, d = q.shape
    C = chunk_size
    S = 0 if k_cache is None else k_cache.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if S:
        q = torch.cat([q.new_zeros(B, S, H, d), q], 1)
        k, v = torch.cat([k_cache.to(k.dtype), k], 1), torch.cat([v_cache.to(v.dtype), v], 1)
    total = S + T
    n = (total + C - 1) // C
    pad = n * C - total
    valid = torch.ones(B, n * C, dtype=torch.bool, device=q.device)
    if S and cache_valid is not None:
        valid[:, :S] = cache_valid.to(q.device).bool()
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
    fold = "b (n c) h d -> (b n) h c d"
    qf, kf, vf = (rearrange(t, fold, c=C) for t in (q, k, v))
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()[None, None] & \
        rearrange(valid, "b (n c) -> (b n) 1 1 c", c=C)
    own = torch.eye(C, dtype=torch.bool, device=q.device)
    if mode == "dropkey":
        keep = torch.rand(mask.shape[0], H, C, C, device=q.device) >= p
        o = sdpa(qf, kf, vf, attn_mask=mask & (keep | own), scale=scale)
    else:
        o = sdpa(qf, kf, vf, attn_mask=mask | own, scale=scale, dropout_p=p)
    o = rearrange(o, "(b n) h c d -> b (n c) h d", n=n)[:, S:total]
    keep_n = total % C
    return o, k[:, total - keep_n : total], v[:, total - keep_n : total]
