"""The running top-k of a blocked scan, in plain PyTorch: the spec of ``topk_merge``."""

from __future__ import annotations

import torch


def topk_merge_reference(scores: torch.Tensor, k: int, lo: int = 0, limit: torch.Tensor | None = None,
                         prev: tuple[torch.Tensor, torch.Tensor] | None = None):
    """The best ``k`` of one block of scores [R, w] and the best so far, per row.

    Column j of the block is slot ``lo + j``; a row reads its first ``limit[r]`` columns (the rest are dead
    slots; default: all). ``prev`` (values [R, kp], slots [R, kp] int64; -inf values are empty) is the best of
    earlier blocks. Returns values [R, k] (float32; float64 scores stay float64), sorted descending, and their
    slots [R, k] int64; a row with fewer than k live scores is padded with -inf at slot 0."""
    R, w = scores.shape
    x = scores.to(torch.promote_types(scores.dtype, torch.float32))
    if limit is not None:
        x = x.masked_fill(torch.arange(w, device=x.device).view(1, w) >= limit.view(R, 1), float("-inf"))
    slots = torch.arange(lo, lo + w, device=x.device).expand(R, w)
    if prev is not None:
        x, slots = torch.cat([prev[0].to(x.dtype), x], 1), torch.cat([prev[1], slots], 1)
    x = torch.cat([x, torch.full((R, k), float("-inf"), dtype=x.dtype, device=x.device)], 1)  # padding
    slots = torch.cat([slots, torch.zeros(R, k, dtype=slots.dtype, device=x.device)], 1)
    top = x.topk(k, dim=-1)
    return top.values, slots.gather(-1, top.indices).masked_fill(top.values == float("-inf"), 0)


def rerank_topk_reference(queries: torch.Tensor, keys: torch.Tensor, cand_v: torch.Tensor, cand_s: torch.Tensor,
                          k: int):
    """The best ``k`` of candidate slots by their float32 scores: queries [G, T, d], keys [G, C, d], candidates
    ``cand_s`` [G * T, m] (slots of row r in ``keys[r // T]``; ``cand_v`` -inf: empty). Returns values
    [G * T, k] descending (-inf padded) and slots [G * T, k] (0 where empty)."""
    G, T, d = queries.shape
    m = cand_s.shape[1]
    empty = cand_v == float("-inf")
    slots = torch.where(empty, torch.zeros_like(cand_s), cand_s)
    rows = torch.arange(G, device=keys.device).repeat_interleave(T).view(-1, 1) * keys.shape[1]
    ck = keys.reshape(-1, d).index_select(0, (rows + slots).reshape(-1)).view(G * T, m, d)
    scores = torch.einsum("rd,rmd->rm", queries.reshape(G * T, d), ck).masked_fill(empty, float("-inf"))
    if m < k:
        scores = torch.cat([scores, scores.new_full((G * T, k - m), float("-inf"))], 1)
        slots = torch.cat([slots, slots.new_zeros(G * T, k - m)], 1)
    top = scores.topk(k, dim=-1)
    return top.values, slots.gather(-1, top.indices).masked_fill(top.values == float("-inf"), 0)


__all__ = ["rerank_topk_reference", "topk_merge_reference"]
