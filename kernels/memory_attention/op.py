from __future__ import annotations

import math

import torch
from einops import rearrange

from kernels._autograd import recompute_grad
from kernels._dispatch import check, resolve_backend
from kernels.memory_attention.reference import dense_mask, memory_attention_reference
from kernels.memory_attention.torch_impl import memory_attention_fast


def memory_attention(q, k, v, mem_k, mem_v, mem_mask=None, scale=None, backend=None, local_valid=None):
    """FoT memory attention: one softmax over causal local keys and extra keys. q, k [B, T, H, d], v
    [B, T, H, d_v] (d_v != d: Megalodon's values; the Triton backend then runs the torch path).

    Dense / CrossBatch: ``mem_k, mem_v`` [B, M, H, d], ``mem_mask`` [B, M] or [B, H, M].
    kNN: ``mem_k, mem_v`` [B, T, H, k, d], ``mem_mask`` [B, T, H, k]. True = valid entry.
    ``local_valid`` [B, T] (optional): False hides a local key from its row's queries (a row that
    started a new document inside the window; each query's own key must stay valid). The Triton
    backend then runs the torch path.
    """
    check(q.dim() == 4 and q.shape == k.shape and v.shape[:3] == q.shape[:3],
          f"memory_attention: q, k must share one [B, T, H, d] shape and v be [B, T, H, d_v], got "
          f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, d = q.shape
    check(mem_k.shape[:-1] == mem_v.shape[:-1] and mem_v.shape[-1] == v.shape[-1],
          "memory_attention: mem_k and mem_v must have the same shape but for the value width of v")
    if mem_k.dim() == 4:
        check(mem_k.shape[0] == B and mem_k.shape[2:] == (H, d),
              f"memory_attention: dense memory must be [B={B}, M, H={H}, d={d}], got {tuple(mem_k.shape)}")
    else:
        check(mem_k.dim() == 5 and mem_k.shape[:3] == (B, T, H) and mem_k.shape[4] == d,
              f"memory_attention: kNN memory must be [B={B}, T={T}, H={H}, k, d={d}], got {tuple(mem_k.shape)}")
    if local_valid is not None:
        check(tuple(local_valid.shape) == (B, T), f"memory_attention: local_valid must be [B, T]=[{B}, {T}], "
              f"got {tuple(local_valid.shape)}")
        if bool(local_valid.all()):
            local_valid = None
    b = resolve_backend(backend, q, "memory_attention")
    if b == "reference":
        return memory_attention_reference(q, k, v, mem_k, mem_v, mem_mask, scale, local_valid=local_valid)
    if b == "torch" or local_valid is not None or v.shape[-1] != d:  # the Triton kernel: one width
        return memory_attention_fast(q, k, v, mem_k, mem_v, mem_mask, scale, local_valid)
    from kernels.memory_attention.triton_impl import memory_attention_triton_forward

    sc = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if mem_k.dim() == 4:
        M = mem_k.shape[1]
        valid = dense_mask(mem_mask, B, H, M, q.device).expand(B, H, 1, M).reshape(B * H, M)
        to_flat = lambda t: rearrange(t, "b m h d -> (b h) m d").contiguous()  # noqa: E731
    else:
        kk = mem_k.shape[3]
        valid = torch.ones(B, T, H, kk, dtype=torch.bool, device=q.device) if mem_mask is None else mem_mask.bool()
        valid = rearrange(valid, "b t h k -> (b h) t k")
        to_flat = lambda t: rearrange(t, "b t h k d -> (b h) t k d").contiguous()  # noqa: E731

    def fast(q, k, v, mem_k, mem_v, valid):
        flat = [rearrange(t, "b t h d -> (b h) t d").contiguous() for t in (q, k, v)]
        o = memory_attention_triton_forward(*flat, to_flat(mem_k), to_flat(mem_v), valid, sc)
        return (rearrange(o, "(b h) t d -> b t h d", b=B),)

    def grad_fn(q, k, v, mem_k, mem_v, valid):
        return (memory_attention_fast(q, k, v, mem_k, mem_v, mem_mask, sc),)

    (o,) = recompute_grad(fast, grad_fn, q, k, v, mem_k, mem_v, valid)
    return o.to(q.dtype)
