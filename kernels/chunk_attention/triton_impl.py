"""Triton chunked attention forward: flash-style online softmax over the keys of each query's chunk.

Layout [B*H, T, d]. A query block only visits key blocks from the start of its first query's chunk
up to its last query; the mask keeps keys in the query's own chunk and at or before it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_common import online_softmax_update


@triton.jit
def _chunk_attn_fwd(q_ptr, k_ptr, v_ptr, o_ptr, T, HD, C, scale,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(0)
    m0 = tl.program_id(1) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    base = bh * T * HD
    qmask = (offs_m[:, None] < T) & (offs_d[None, :] < HD)
    q = tl.load(q_ptr + base + offs_m[:, None] * HD + offs_d[None, :], mask=qmask, other=0.0).to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    q_chunk = offs_m // C
    start = ((m0 // C) * C // BLOCK_N) * BLOCK_N
    end = tl.minimum(m0 + BLOCK_M, T)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kmask = (offs_n[:, None] < T) & (offs_d[None, :] < HD)
        k = tl.load(k_ptr + base + offs_n[:, None] * HD + offs_d[None, :], mask=kmask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + base + offs_n[:, None] * HD + offs_d[None, :], mask=kmask, other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * scale
        allowed = (offs_n[None, :] <= offs_m[:, None]) & ((offs_n[None, :] // C) == q_chunk[:, None]) \
            & (offs_n[None, :] < T)
        s = tl.where(allowed, s, float("-inf"))
        m_i, l_i, acc, p = online_softmax_update(s, m_i, l_i, acc)
        acc += tl.dot(p, v)
    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # rows past T have no keys; never stored
    tl.store(o_ptr + base + offs_m[:, None] * HD + offs_d[None, :], o, mask=qmask)


def chunk_attention_triton_forward(q, k, v, chunk_size, scale):
    """q, k, v [BH, T, d] (contiguous) -> o [BH, T, d] float32."""
    BH, T, HD = q.shape
    o = torch.full((BH, T, HD), float("nan"), device=q.device, dtype=torch.float32)
    BLOCK_D = max(16, triton.next_power_of_2(HD))
    BLOCK = 16 if not q.is_cuda else 64
    grid = (BH, triton.cdiv(T, BLOCK))
    _chunk_attn_fwd[grid](q, k, v, o, T, HD, chunk_size, scale, BLOCK_M=BLOCK, BLOCK_N=BLOCK, BLOCK_D=BLOCK_D)
    return o
