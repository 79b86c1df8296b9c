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


__all__ = ["topk_merge_reference"]
