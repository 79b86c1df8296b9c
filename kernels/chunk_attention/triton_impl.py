"""Triton chunked attention forward: flash-style online softmax over the keys of each query's chunk.

Layout [B*H, T, d] for q and k (their own width d) and [B*H, T, d_v] for v. The grid is (row,
query block, value tile): a program computes the scores of its query block at the q/k width only
and accumulates one tile of BLOCK_V value columns, so wide values (Megalodon's d_v = 2048 with
d_z = 256 in the official presets) are split across programs instead of one tile of 2048 columns
(far beyond a GPU's shared memory) with q/k padded to it (8x the needed QK work). A query block only
visits key blocks from the start of its first query's chunk up to its last query.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_common import online_softmax_update


@triton.jit
def _chunk_attn_fwd(q_ptr, k_ptr, v_ptr, o_ptr, T, DK, DV, C, scale,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr):
    bh = tl.program_id(0)
    m0 = tl.program_id(1) * BLOCK_M
    v0 = tl.program_id(2) * BLOCK_V
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = v0 + tl.arange(0, BLOCK_V)
    qk_base, v_base = bh * T * DK, bh * T * DV
    qmask = (offs_m[:, None] < T) & (offs_k[None, :] < DK)
    q = tl.load(q_ptr + qk_base + offs_m[:, None] * DK + offs_k[None, :], mask=qmask, other=0.0).to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)
    q_chunk = offs_m // C
    start = ((m0 // C) * C // BLOCK_N) * BLOCK_N
    end = tl.minimum(m0 + BLOCK_M, T)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kmask = (offs_n[:, None] < T) & (offs_k[None, :] < DK)
        k = tl.load(k_ptr + qk_base + offs_n[:, None] * DK + offs_k[None, :], mask=kmask, other=0.0).to(tl.float32)
        vmask = (offs_n[:, None] < T) & (offs_v[None, :] < DV)
        v = tl.load(v_ptr + v_base + offs_n[:, None] * DV + offs_v[None, :], mask=vmask, other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * scale
        allowed = (offs_n[None, :] <= offs_m[:, None]) & ((offs_n[None, :] // C) == q_chunk[:, None]) \
            & (offs_n[None, :] < T)
        s = tl.where(allowed, s, float("-inf"))
        m_i, l_i, acc, p = online_softmax_update(s, m_i, l_i, acc)
        acc += tl.dot(p, v)
    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # rows past T have no keys; never stored
    omask = (offs_m[:, None] < T) & (offs_v[None, :] < DV)
    tl.store(o_ptr + v_base + offs_m[:, None] * DV + offs_v[None, :], o, mask=omask)


def tile_sizes(dk: int, dv: int, cuda: bool) -> dict[str, int]:
    """Block sizes: q/k at their own (power-of-two) width, values in tiles of at most 128 columns."""
    return {"BLOCK_M": 64 if cuda else 16, "BLOCK_N": 64 if cuda else 16,
            "BLOCK_K": max(16, triton.next_power_of_2(dk)), "BLOCK_V": min(128, max(16, triton.next_power_of_2(dv)))}


def chunk_attention_triton_forward(q, k, v, chunk_size, scale):
    """q, k [BH, T, d], v [BH, T, d_v] (contiguous) -> o [BH, T, d_v] float32."""
    BH, T, DK = q.shape
    DV = v.shape[-1]
    o = torch.full((BH, T, DV), float("nan"), device=q.device, dtype=torch.float32)
    blocks = tile_sizes(DK, DV, q.is_cuda)
    grid = (BH, triton.cdiv(T, blocks["BLOCK_M"]), triton.cdiv(DV, blocks["BLOCK_V"]))
    _chunk_attn_fwd[grid](q, k, v, o, T, DK, DV, chunk_size, scale, **blocks)
    return o
