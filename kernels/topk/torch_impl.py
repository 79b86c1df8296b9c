"""The running top-k with PyTorch ops (where the C++ kernel is not built, and on GPUs): a top-k by group maxima
per block, then a top-k of the block's best and the best so far."""

from __future__ import annotations

import torch


def group_size(n: int) -> int:
    """Scores per group of ``block_topk`` over rows of n: 8, or 16 from 32,768 (measured on 2,048 rows of bf16
    scores, top-64: the fastest of 8 / 16 / 32 / 64 at 8K, 64K and 256K)."""
    return 8 if n < 32768 else 16


def block_topk(scores: torch.Tensor, k: int, group: int | None = None):
    """``scores.topk(min(k, n), -1)`` (values, indices) over the last dim n, exactly, with less work: the
    maxima of groups of ``group`` scores select k groups, and the top-k is taken among their members.
    Every top-k score lies in one of the k groups with the largest maxima (a group left out has k groups
    of larger maxima above it, so k larger scores), so nothing is lost; a top-k over n becomes a max over
    n, a top-k over n / group and one over k * group. Any partition into groups will do, so a group is
    strided, {j, j + w, j + 2w, ...} with w = n // group: its maxima are an elementwise max of ``group``
    contiguous slices of the row (no copy, no padding; the < ``group`` scores past group * w join the
    members), where contiguous groups would need a reduction along a short inner dimension."""
    n = scores.shape[-1]
    kk = min(k, n)
    group = group or group_size(n)
    w = n // group
    if w < 4 * kk:  # small: a plain top-k is as cheap
        top = scores.topk(kk, dim=-1)
        return top.values, top.indices
    lead = scores.shape[:-1]
    flat = scores.reshape(-1, n).contiguous()
    rows = flat.shape[0]
    cols = flat.as_strided((rows, group, w), (n, w, 1)).amax(1).topk(kk, dim=-1, sorted=False).indices
    # the members of the k groups: [rows, group * kk] slots, then the ragged end
    slots = (cols.unsqueeze(1) + torch.arange(0, group * w, w, device=scores.device).view(1, group, 1))
    slots = slots.view(rows, group * kk)
    if n > group * w:
        slots = torch.cat([slots, torch.arange(group * w, n, device=scores.device).expand(rows, -1)], -1)
    top = flat.gather(-1, slots).topk(kk, dim=-1)
    return top.values.view(*lead, kk), slots.gather(-1, top.indices).view(*lead, kk)


def topk_merge_torch(scores: torch.Tensor, k: int, lo: int = 0, limit: torch.Tensor | None = None,
                     prev: tuple[torch.Tensor, torch.Tensor] | None = None, sorted: bool = True):
    """``topk_merge_reference``'s result (ties aside; in any order unless ``sorted``) by ``block_topk``."""
    R, w = scores.shape
    if limit is not None and bool((limit < w).any()):
        scores = scores.masked_fill(torch.arange(w, device=scores.device).view(1, w) >= limit.view(R, 1),
                                    float("-inf"))
    v, s = block_topk(scores, k)
    v, s = v.to(torch.promote_types(v.dtype, torch.float32)), s + lo
    if prev is not None:
        v, s = torch.cat([prev[0].to(v.dtype), v], -1), torch.cat([prev[1], s], -1)
    if v.shape[-1] < k:  # fewer scores than k: pad
        v = torch.cat([v, torch.full((R, k - v.shape[-1]), float("-inf"), dtype=v.dtype, device=v.device)], -1)
        s = torch.cat([s, torch.zeros(R, k - s.shape[-1], dtype=s.dtype, device=s.device)], -1)
    top = v.topk(k, dim=-1, sorted=sorted)
    return top.values, s.gather(-1, top.indices).masked_fill(top.values == float("-inf"), 0)


__all__ = ["block_topk", "group_size", "topk_merge_torch"]
