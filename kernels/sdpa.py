"""``scaled_dot_product_attention`` with the CPU kernel chosen by row length and precision.

On CPU, PyTorch's fused (flash) kernel is the faster one for long rows and in float32, but in bf16 / fp16 it
is several times slower than the math backend on short rows (Megalodon's chunks of 16-256 tokens, MEGABYTE's
patches of 4-8 bytes): forward+backward of causal rows of 16 keys (4096 tokens, 2 heads of 16, values of 64)
took 38.4 CPU-ms with the flash kernel and 6.4 with the math one in bf16 (6.0x), 2.5-3.6x at 4-64 keys, 2.2x at
128, 1.3x at 256; level at 512 keys, the flash kernel ahead at 1024 (0.65x); in float32 the flash kernel is as
fast or faster at every length (``python -m benchmarks.kernels --only short``: results/benchmarks/kernels.md).
The math backend is the same computation and rounds alike to bf16 precision (tested).

On a CPU with no native bf16 GEMM (``kernels.bf16_matmul``'s route on) the fused kernel's own bf16 GEMMs are
PyTorch's scalar fallback too (three quarters of a FoT training step, py-spy): there bf16 attention runs in
float32 on the same bf16 values, output rounded to bf16 (:func:`fused`), the flash kernel at every length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels.bf16_matmul import route_active

MATH_KEYS = 256  # rows of at most this many keys, in bf16 / fp16 on CPU, run the math backend


def routed(q: torch.Tensor) -> bool:
    """Whether bf16 attention on ``q`` runs in float32 (a CPU with no native bf16 GEMM, the route on)."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and route_active()


def uses_math(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether ``sdpa`` runs these rows on the math backend."""
    return (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and k.shape[-2] <= MATH_KEYS
            and not routed(q))


def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, **kw)``; bf16 on a CPU with no native bf16 GEMM: the same in
    float32 on the bf16 values, rounded to bf16."""
    if not routed(q):
        return F.scaled_dot_product_attention(q, k, v, **kw)
    mask = kw.get("attn_mask")
    if mask is not None and mask.is_floating_point():
        kw = {**kw, "attn_mask": mask.float()}
    with torch.autocast("cpu", enabled=False):  # autocast would cast the float32 operands back to bf16
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kw).to(q.dtype)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, **kw)`` on the faster CPU kernel for these rows."""
    if uses_math(q, k):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, **kw)
    return fused(q, k, v, **kw)


__all__ = ["MATH_KEYS", "fused", "routed", "sdpa", "uses_math"]
