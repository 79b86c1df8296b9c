from __future__ import annotations

import math

import torch
from einops import rearrange

from kernels._autograd import recompute_grad
from kernels._dispatch import check, resolve_backend
from kernels.chunk_attention.reference import chunk_attention_reference
from kernels.chunk_attention.torch_impl import chunk_attention_dropout, chunk_attention_sdpa


def common_dtype(*tensors):
    """One dtype for q, k, v and the cache: under autocast (where q/k may arrive in float32 and v in
    bfloat16) the autocast dtype, as SDPA itself would use; otherwise the promoted dtype. The Triton
    path's recompute backward runs outside autocast and needs them equal."""
    present = [t for t in tensors if t is not None]
    device = present[0].device.type
    if torch.is_autocast_enabled(device):
        dt = torch.get_autocast_dtype(device)
    else:
        dt = present[0].dtype
        for t in present[1:]:
            dt = torch.promote_types(dt, t.dtype)
    return tuple(None if t is None else t.to(dt) for t in tensors)


def chunk_attention(q, k, v, chunk_size, scale=None, cache=None, cache_valid=None, backend=None,
                    dropout_p: float = 0.0, dropout_mode: str = "post_softmax"):
    """Causal attention inside blocks of ``chunk_size`` tokens. q, k, v [B, T, H, d].

    ``cache`` = (k, v) [B, S, H, d] of the current chunk's earlier tokens (S < chunk_size): the queries
    then continue that chunk (streaming / decoding). Returns (o [B, T, H, d], cache') where cache'
    holds the unfinished last chunk, empty on a chunk boundary. ``scale`` None means 1/sqrt(d).
    ``cache_valid`` [B, S] (optional): False hides a cached token from every query of its row (a row
    that started a new document inside the current chunk); the Triton backend then runs the torch path.
    ``dropout_p`` (training only): ``post_softmax`` drops attention weights after the softmax (the
    official code), ``dropkey`` drops keys before it (a query always keeps its own key); both run
    on the torch path.
    """
    check(0.0 <= dropout_p < 1.0, f"chunk_attention: dropout_p={dropout_p} must be in [0, 1)")
    check(dropout_mode in ("post_softmax", "dropkey"),
          f"chunk_attention: dropout_mode={dropout_mode!r}; use post_softmax or dropkey")
    check(q.dim() == 4 and q.shape == k.shape and v.dim() == 4 and v.shape[:3] == q.shape[:3],
          f"chunk_attention: q, k must be [B, T, H, d] and v [B, T, H, d_v], got {tuple(q.shape)}, "
          f"{tuple(k.shape)}, {tuple(v.shape)}")
    check(isinstance(chunk_size, int) and chunk_size >= 1, f"chunk_attention: chunk_size={chunk_size!r} must be >= 1")
    k_cache, v_cache = cache if cache is not None else (None, None)
    if k_cache is not None and k_cache.shape[1] == 0:
        k_cache = v_cache = None
    if k_cache is not None:
        check(k_cache.shape[1] < chunk_size, f"chunk_attention: cache holds {k_cache.shape[1]} tokens, "
              f"which is not less than chunk_size={chunk_size}")
    if cache_valid is not None:
        S = 0 if k_cache is None else k_cache.shape[1]
        check(tuple(cache_valid.shape) == (q.shape[0], S),
              f"chunk_attention: cache_valid must be [B, S]=[{q.shape[0]}, {S}], got {tuple(cache_valid.shape)}")
        if S == 0 or bool(cache_valid.all()):
            cache_valid = None
    b = resolve_backend(backend, q, "chunk_attention")
    q, k, v, k_cache, v_cache = common_dtype(q, k, v, k_cache, v_cache)
    if b == "reference":
        o, kc, vc = chunk_attention_reference(q, k, v, chunk_size, scale, k_cache, v_cache, cache_valid)
        return o, (kc, vc)
    if dropout_p > 0:
        o, kc, vc = chunk_attention_dropout(q, k, v, chunk_size, scale, k_cache, v_cache, cache_valid, dropout_p,
                                            dropout_mode)
        return o, (kc, vc)
    if b == "torch" or cache_valid is not None:
        o, kc, vc = chunk_attention_sdpa(q, k, v, chunk_size, scale, k_cache, v_cache, cache_valid)
        return o, (kc, vc)
    from kernels.chunk_attention.triton_impl import chunk_attention_triton_forward

    B, T, H, d = q.shape
    S = 0 if k_cache is None else k_cache.shape[1]
    sc = 1.0 / math.sqrt(d) if scale is None else float(scale)
    qq = torch.cat([q.new_zeros(B, S, H, d), q], 1) if S else q
    kk = torch.cat([k_cache.to(k.dtype), k], 1) if S else k
    vv = torch.cat([v_cache.to(v.dtype), v], 1) if S else v

    def fast(qq, kk, vv):
        flat = [rearrange(t, "b t h d -> (b h) t d").contiguous() for t in (qq, kk, vv)]
        o = chunk_attention_triton_forward(*flat, chunk_size, sc)
        return (rearrange(o, "(b h) t d -> b t h d", b=B),)

    def grad_fn(qq, kk, vv):
        return (chunk_attention_sdpa(qq, kk, vv, chunk_size, sc)[0],)

    (o,) = recompute_grad(fast, grad_fn, qq, kk, vv)
    total = S + T
    keep = total % chunk_size
    return o[:, S:].to(q.dtype), (kk[:, total - keep :], vv[:, total - keep :])
