from __future__ import annotations

import torch

from kernels._dispatch import BACKENDS, check
from kernels.topk import cpu_impl
from kernels.topk.reference import rerank_topk_reference, topk_merge_reference
from kernels.topk.torch_impl import topk_merge_torch


def topk_merge(scores: torch.Tensor, k: int, lo: int = 0, limit: torch.Tensor | None = None,
               prev: tuple[torch.Tensor, torch.Tensor] | None = None, sorted: bool = True,
               backend: str | None = None):
    """The best ``k`` (values [R, k] float32 descending, slots [R, k] int64) of a block of scores [R, w] (column j
    is slot ``lo + j``; row r reads its first ``limit[r]`` columns) and of ``prev``, the best so far (values,
    slots [R, kp]; -inf: empty). A row short of k scores is padded with -inf at slot 0. Ties are broken either
    way; ``sorted=False`` returns the best k in any order (cheaper; the reference always sorts). On CPU the C++
    kernel runs where it is built (``cpu_impl``), else ``block_topk`` (as on GPUs: there is no Triton kernel, so
    only ``backend="reference"`` changes the path, and ``LONGLAB_KERNEL_BACKEND`` is not read)."""
    check(scores.dim() == 2, f"topk_merge: scores must be [R, w], got {tuple(scores.shape)}")
    R, w = scores.shape
    check(k >= 1, f"topk_merge: k={k} must be >= 1")
    check(scores.dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64),
          f"topk_merge: scores must be floating point, got {scores.dtype}")
    if limit is not None:
        check(tuple(limit.shape) == (R,), f"topk_merge: limit must be [{R}], got {tuple(limit.shape)}")
    if prev is not None:
        check(prev[0].dim() == 2 and prev[0].shape[0] == R and prev[1].shape == prev[0].shape,
              f"topk_merge: prev must be (values, slots) [{R}, kp], got {tuple(prev[0].shape)}, "
              f"{tuple(prev[1].shape)}")
    check(backend is None or backend in BACKENDS, f"topk_merge: backend={backend!r} is unknown; use one of {BACKENDS}")
    if backend == "reference":
        return topk_merge_reference(scores, k, lo, limit, prev)
    if cpu_impl.usable(scores, lo):
        out = cpu_impl.topk_merge_cpu(scores, k, lo, limit, prev, sorted)
        if out is not None:
            return out
    return topk_merge_torch(scores, k, lo, limit, prev, sorted)


def rerank_topk(queries: torch.Tensor, keys: torch.Tensor, cand_v: torch.Tensor, cand_s: torch.Tensor, k: int,
                backend: str | None = None):
    """The best ``k`` candidates by their exact scores: queries [G, T, d], keys [G, C, d], candidate slots
    ``cand_s`` [G * T, m] of row r in ``keys[r // T]`` (``cand_v`` -inf: empty). Returns values [G * T, k]
    descending (-inf padded) and slots (0 where empty). On CPU in float32 the C++ kernel reads each candidate
    key once, where the reference gathers them into a copy first."""
    check(queries.dim() == 3 and keys.dim() == 3 and queries.shape[0] == keys.shape[0]
          and queries.shape[2] == keys.shape[2],
          f"rerank_topk: queries [G, T, d] and keys [G, C, d], got {tuple(queries.shape)}, {tuple(keys.shape)}")
    G, T, _ = queries.shape
    check(cand_s.dim() == 2 and cand_s.shape[0] == G * T and cand_v.shape == cand_s.shape,
          f"rerank_topk: candidates must be [{G * T}, m], got {tuple(cand_v.shape)}, {tuple(cand_s.shape)}")
    check(backend is None or backend in BACKENDS, f"rerank_topk: backend={backend!r} is unknown; use one of {BACKENDS}")
    if backend != "reference":
        out = cpu_impl.rerank_topk_cpu(queries, keys, cand_v, cand_s, k)
        if out is not None:
            return out
    return rerank_topk_reference(queries, keys, cand_v, cand_s, k)
