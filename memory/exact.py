"""Exact top-k by inner product over a ring of keys, the oracle of every search backend, in two ways that
return the same entries:

* ``search_fp32`` — float32 scores by blocks of slots, a running top-k (``kernels.topk.topk_merge``: one C++
  pass per row on CPU), so the score matrix never exceeds a budget;
* ``search_bf16`` — the same scan with bfloat16 scores (half the memory traffic, and the CPU's bf16 matrix
  units), keeping ``k + extra`` candidates per query, re-ranked exactly in float32. It is exact by a
  certificate, not by hope: a bf16 score differs from the float32 one by at most
  ``delta = u * (2 |q| max|k| + |s|)`` (u = 2^-8, bf16's unit roundoff: two rounded inputs, one rounded
  output), so when the k-th exact score among the candidates exceeds the largest bf16 score left out by more
  than ``delta``, nothing left out can be in the top-k. A query without that margin (many near-ties) is
  searched again in float32.
"""

from __future__ import annotations

import torch

from kernels.topk import rerank_topk, topk_merge

BF16_U = 2.0 ** -8


def bucket(width: int, per_octave: int = 4) -> int:
    """``width`` rounded up to one of ``per_octave`` steps per power of two (at most 25% more)."""
    step = 1 << max(0, width.bit_length() - 1 - (per_octave.bit_length() - 1))
    return -(-width // step) * step


def _scan(queries: torch.Tensor, keys: torch.Tensor, live: torch.Tensor, k: int, block: int, n: int | None = None,
          buckets: bool = False, sorted: bool = True):
    """Running top-k (values, slots) of ``queries @ keys^T`` over blocks of slots [0, n) (default: all of
    ``keys``); slots >= ``live`` [B] are dead. ``queries`` [B, H, T, d] and ``keys`` [B, H, C, d] of one dtype.
    ``sorted``: descending by score (else in any order). ``buckets``: the last block reads on (within C; the
    slots past ``live`` are masked) to a ``bucket`` width, so that the matmuls take few shapes: oneDNN's bf16
    matmul keeps a primitive with the keys packed for every shape it meets, and a memory that grows by one
    window per search meets a new shape at every search (the fot_dictionary evaluation reached 20 GB of them
    at 246K keys and was killed)."""
    C = keys.shape[2]
    n = C if n is None else n
    queries = queries.detach()  # the search picks entries; no gradient flows through it
    B, H, T, _ = queries.shape
    live_rows = live.to(keys.device).view(B, 1).expand(B, H * T).reshape(-1)
    best = None
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        if buckets:
            hi = min(C, lo + bucket(hi - lo))
        blk = keys[:, :, lo:hi]
        if blk.is_contiguous():
            scores = torch.matmul(queries, blk.transpose(-1, -2))
        else:  # a slice of a ring (here, or the caller's keys[:, :, :n]) is not one strided batch: a matmul per head
            # reads its rows in place (a batched matmul over the slice copied it whole first: 32 MB per search at
            # 65,536 bf16 keys x 4 heads)
            scores = torch.empty(B, H, T, hi - lo, dtype=queries.dtype, device=queries.device)
            for b in range(B):
                for h in range(H):
                    torch.mm(queries[b, h], blk[b, h].t(), out=scores[b, h])
        best = topk_merge(scores.view(B * H * T, hi - lo), k, lo, (live_rows - lo).clamp(0, hi - lo), best,
                          sorted=sorted and lo + block >= n)
    return best[0].view(B, H, T, k), best[1].view(B, H, T, k)


def block_size(queries: torch.Tensor, dtype: torch.dtype = torch.float32, budget: int = 1 << 28) -> int:
    """Slots per block so that a block's score matrix (of ``dtype``) takes at most ``budget`` bytes (256 MB), at
    least 4096: large blocks, because torch's top-k costs less per score over long rows than over many short
    ones (one block of 65,536 slots is 1.5x faster than four of 16,384 for 2,048 queries)."""
    per_slot = max(1, queries.shape[0] * queries.shape[1] * queries.shape[2]) * torch.finfo(dtype).bits // 8
    return max(4096, budget // per_slot)


def search_fp32(queries: torch.Tensor, keys: torch.Tensor, live: torch.Tensor, k: int,
                block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k (scores, slots) [B, H, T, k]; -inf scores (slot 0) where a row has fewer live slots than k."""
    return _scan(queries.to(keys.dtype), keys, live, k, block or block_size(queries, keys.dtype))


def search_bf16(queries: torch.Tensor, keys: torch.Tensor, keys_bf16: torch.Tensor, key_norm_max: torch.Tensor,
                live: torch.Tensor, k: int, extra: int | None = None, block: int | None = None, n: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k of ``search_fp32``, from bfloat16 candidates re-ranked in float32 (see the module's note).
    ``keys_bf16``: ``keys`` in bfloat16; ``key_norm_max`` [B, H]: an upper bound of the keys' norms. ``n``: the
    slots searched (default: all); ``keys`` may be a whole ring, whose slots past ``n`` the bf16 scan reads
    (masked) to keep its matmul shapes few."""
    extra = k if extra is None else extra
    n = keys.shape[2] if n is None else n
    q = queries.to(keys.dtype)
    cand_v, cand_s = _scan(q.to(torch.bfloat16), keys_bf16, live, k + extra,
                           block or block_size(queries, torch.bfloat16), n=n, buckets=True, sorted=False)
    # exact float32 scores of the candidates, and their top-k
    B, H, T, m = cand_s.shape
    vals, slots = rerank_topk(q.reshape(B * H, T, -1), keys.reshape(B * H, keys.shape[2], -1),
                              cand_v.reshape(B * H * T, m), cand_s.reshape(B * H * T, m), k)
    vals, slots = vals.view(B, H, T, k), slots.view(B, H, T, k)
    # the certificate: every score left out (<= the last candidate's bf16 score) plus its error bound must lie
    # below the k-th exact score; rows with fewer live slots than k + extra left nothing out
    if m > k:
        left_out = cand_v.amin(-1)  # the smallest candidate (unsorted)
        delta = BF16_U * (2 * q.norm(dim=-1) * key_norm_max.to(q.device).unsqueeze(-1) + left_out.abs())
        unsure = torch.isfinite(left_out) & ~(vals[..., -1] > left_out + delta)
        if bool(unsure.any()):
            vals, slots = _refine(q, keys[:, :, :n], live, k, unsure, vals, slots)
    return vals, slots


def _refine(q, keys, live, k, unsure, vals, slots):
    """Float32 search again for the queries the bf16 candidates could not certify."""
    vals, slots = vals.clone(), slots.clone()
    for b, h in unsure.any(-1).nonzero().tolist():
        t = unsure[b, h].nonzero().flatten()
        v, s = search_fp32(q[b:b + 1, h:h + 1, t], keys[b:b + 1, h:h + 1], live[b:b + 1], k)
        vals[b, h, t], slots[b, h, t] = v[0, 0], s[0, 0]
    return vals, slots


__all__ = ["block_size", "bucket", "search_bf16", "search_fp32"]
