"""Triton memory attention forward: one online softmax over extra keys, then the causal local keys.

Layouts (host side prepares them): q, k, v [BH, T, d]; dense memory [BH, M, d] with a validity
mask [BH, M]; kNN memory [BH, T, K, d] with a mask [BH, T, K].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_common import online_softmax_update


@triton.jit
def _local_part(q, k_ptr, v_ptr, base, offs_m, offs_d, T, HD, scale, m_i, l_i, acc, m0,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    end = tl.minimum(m0 + BLOCK_M, T)
    for n0 in range(0, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kmask = (offs_n[:, None] < T) & (offs_d[None, :] < HD)
        k = tl.load(k_ptr + base + offs_n[:, None] * HD + offs_d[None, :], mask=kmask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + base + offs_n[:, None] * HD + offs_d[None, :], mask=kmask, other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * scale
        s = tl.where((offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] < T), s, float("-inf"))
        m_i, l_i, acc, p = online_softmax_update(s, m_i, l_i, acc)
        acc += tl.dot(p, v)
    return m_i, l_i, acc


@triton.jit
def _mem_attn_dense_fwd(q_ptr, k_ptr, v_ptr, mk_ptr, mv_ptr, mm_ptr, o_ptr, T, M, HD, scale,
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
    for n0 in range(0, M, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        inb = offs_n < M
        kmask = inb[:, None] & (offs_d[None, :] < HD)
        k = tl.load(mk_ptr + bh * M * HD + offs_n[:, None] * HD + offs_d[None, :], mask=kmask, other=0.0)
        v = tl.load(mv_ptr + bh * M * HD + offs_n[:, None] * HD + offs_d[None, :], mask=kmask, other=0.0)
        valid = (tl.load(mm_ptr + bh * M + offs_n, mask=inb, other=0) != 0) & inb
        s = tl.dot(q, tl.trans(k.to(tl.float32))) * scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_i, l_i, acc, p = online_softmax_update(s, m_i, l_i, acc)
        acc += tl.dot(p, v.to(tl.float32))
    m_i, l_i, acc = _local_part(q, k_ptr, v_ptr, base, offs_m, offs_d, T, HD, scale, m_i, l_i, acc, m0,
                                BLOCK_M, BLOCK_N)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # rows past T have no keys; never stored
    tl.store(o_ptr + base + offs_m[:, None] * HD + offs_d[None, :], out, mask=qmask)


@triton.jit
def _mem_attn_knn_fwd(q_ptr, k_ptr, v_ptr, mk_ptr, mv_ptr, mm_ptr, o_ptr, T, K, HD, scale,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    bh = tl.program_id(0)
    m0 = tl.program_id(1) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    base = bh * T * HD
    qmask = (offs_m[:, None] < T) & (offs_d[None, :] < HD)
    q = tl.load(q_ptr + base + offs_m[:, None] * HD + offs_d[None, :], mask=qmask, other=0.0).to(tl.float32)
    # retrieved keys of each query: [BLOCK_M, BLOCK_K, BLOCK_D]
    row = (bh * T + offs_m)[:, None, None] * K * HD + offs_k[None, :, None] * HD + offs_d[None, None, :]
    rmask = (offs_m[:, None, None] < T) & (offs_k[None, :, None] < K) & (offs_d[None, None, :] < HD)
    mk = tl.load(mk_ptr + row, mask=rmask, other=0.0).to(tl.float32)
    mv = tl.load(mv_ptr + row, mask=rmask, other=0.0).to(tl.float32)
    vmask = (offs_m[:, None] < T) & (offs_k[None, :] < K)
    valid = tl.load(mm_ptr + (bh * T + offs_m)[:, None] * K + offs_k[None, :], mask=vmask, other=0) != 0
    s = tl.sum(q[:, None, :] * mk, axis=2) * scale
    s = tl.where(valid & vmask, s, float("-inf"))
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    m_i, l_i, acc, p = online_softmax_update(s, m_i, l_i, acc)
    acc += tl.sum(p[:, :, None] * mv, axis=1)
    m_i, l_i, acc = _local_part(q, k_ptr, v_ptr, base, offs_m, offs_d, T, HD, scale, m_i, l_i, acc, m0,
                                BLOCK_M, BLOCK_N)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # rows past T have no keys; never stored
    tl.store(o_ptr + base + offs_m[:, None] * HD + offs_d[None, :], out, mask=qmask)


def memory_attention_triton_forward(q, k, v, mem_k, mem_v, mem_valid, scale):
    """q, k, v [BH, T, d]; dense mem [BH, M, d] + valid [BH, M], or kNN mem [BH, T, K, d] + valid [BH, T, K]."""
    BH, T, HD = q.shape
    o = torch.full((BH, T, HD), float("nan"), device=q.device, dtype=torch.float32)
    BLOCK_D = max(16, triton.next_power_of_2(HD))
    BLOCK = 16 if not q.is_cuda else 64
    grid = (BH, triton.cdiv(T, BLOCK))
    valid = mem_valid.to(torch.int8).contiguous()
    if mem_k.dim() == 3:
        _mem_attn_dense_fwd[grid](q, k, v, mem_k.contiguous(), mem_v.contiguous(), valid, o, T, mem_k.shape[1],
                                  HD, scale, BLOCK_M=BLOCK, BLOCK_N=BLOCK, BLOCK_D=BLOCK_D)
    else:
        Kn = mem_k.shape[2]
        BM = 16
        _mem_attn_knn_fwd[(BH, triton.cdiv(T, BM))](
            q, k, v, mem_k.contiguous(), mem_v.contiguous(), valid, o, T, Kn, HD, scale,
            BLOCK_M=BM, BLOCK_N=BM, BLOCK_D=BLOCK_D, BLOCK_K=max(16, triton.next_power_of_2(Kn)),
        )
    return o
