"""The running top-k in C++ on the CPU (``cpu_kernel.cpp``): the maxima of strided groups give each row a threshold
at or below its k-th best, and one vectorised compare keeps the few scores above it, so a block of scores is read
about twice from cache (where ``torch.topk`` costs far more per row than a read). Compiled on first use
(``kernels.cpu_build``); ``LONGLAB_CPU_KERNELS=0`` never builds or uses it."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from kernels import cpu_build

SOURCE = Path(__file__).with_name("cpu_kernel.cpp")


@functools.lru_cache(maxsize=1)
def extension():
    """The compiled module, or None (the reason printed once) where it cannot be built."""
    return cpu_build.load("topk_merge", "longlab_topk", SOURCE)


def usable(scores: torch.Tensor, lo: int = 0) -> bool:
    """Whether this call can take the C++ kernel (before building it): its slots lo .. lo + w fit in 31 bits."""
    return (cpu_build.enabled() and scores.device.type == "cpu" and scores.dim() == 2
            and scores.dtype in (torch.float32, torch.bfloat16) and 0 <= lo and lo + scores.shape[1] < 2 ** 31)


def topk_merge_cpu(scores, k, lo, limit, prev, sorted=True):
    """``topk_merge_reference``'s result from the C++ kernel, or None when it is not built."""
    ext = extension()
    if ext is None:
        return None
    R, w = scores.shape
    if scores.stride(1) != 1:
        scores = scores.contiguous()
    limit = torch.full((R,), w, dtype=torch.int64) if limit is None else limit.to(torch.int64).contiguous()
    if prev is None:
        pv, ps = torch.empty(R, 0), torch.empty(R, 0, dtype=torch.int64)
    else:
        pv, ps = prev[0].to(torch.float32).contiguous(), prev[1].to(torch.int64).contiguous()
    return tuple(ext.topk_merge(scores, int(lo), limit, pv, ps, int(k), bool(sorted)))


def rerank_topk_cpu(queries, keys, cand_v, cand_s, k):
    """``rerank_topk_reference``'s result from the C++ kernel (one pass over each row's candidate keys, no gathered
    copy), or None when it is not built or the inputs are not float32 on the CPU."""
    if (not cpu_build.enabled() or queries.device.type != "cpu" or keys.device.type != "cpu"
            or queries.dtype != torch.float32 or keys.dtype != torch.float32
            or cand_v.dtype not in (torch.float32, torch.bfloat16)):
        return None  # checked before building: GPU tensors never build the CPU kernel
    ext = extension()
    if ext is None:
        return None
    return tuple(ext.rerank_topk(queries.contiguous(), keys.contiguous(), cand_v.contiguous(),
                                 cand_s.to(torch.int64).contiguous(), int(k)))


__all__ = ["extension", "rerank_topk_cpu", "topk_merge_cpu", "usable"]
