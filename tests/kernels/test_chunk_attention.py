from __future__ import annotations

import math

import pytest
import torch

from kernels import chunk_attention
from tests.kernels.helpers import assert_close_rms, grads

# (B, T, H, d, C): single token, T=63, T not a multiple of C, d not a power of two, C = 1
SHAPES = [(1, 1, 1, 16, 4), (2, 63, 2, 16, 16), (1, 50, 3, 60, 16), (2, 40, 1, 8, 1), (1, 33, 2, 32, 64)]
IDS = ["T1", "T63-C16", "T50-d60", "C1", "C>T"]


def qkv(B, T, H, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, d, generator=g, dtype=dtype) for _ in range(3)]


def per_chunk_naive(q, k, v, C, scale):
    """Each chunk on its own with plain causal softmax attention."""
    B, T, H, d = q.shape
    out = q.new_empty(B, T, H, v.shape[-1])
    for s in range(0, T, C):
        e = min(s + C, T)
        sc = torch.einsum("bthd,bshd->bhts", q[:, s:e], k[:, s:e]) * scale
        n = e - s
        sc = sc.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
        out[:, s:e] = torch.einsum("bhts,bshd->bthd", sc.softmax(-1), v[:, s:e])
    return out


@pytest.mark.parametrize("B,T,H,d,C", SHAPES, ids=IDS)
@pytest.mark.parametrize("scale", [None, 1.0], ids=["scale=1/sqrt(d)", "scale=1"])
def test_reference_matches_per_chunk_attention(B, T, H, d, C, scale):
    q, k, v = qkv(B, T, H, d)
    o, _ = chunk_attention(q, k, v, C, scale=scale, backend="reference")
    torch.testing.assert_close(o, per_chunk_naive(q, k, v, C, 1 / math.sqrt(d) if scale is None else scale))


@pytest.mark.parametrize("B,T,H,d,C", SHAPES, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_sdpa_path_matches_reference(B, T, H, d, C, dtype, tol):
    leaves = [t.requires_grad_() for t in qkv(B, T, H, d, dtype)]
    o1, c1 = chunk_attention(*leaves, C, scale=0.3, backend="torch")
    o2, c2 = chunk_attention(*leaves, C, scale=0.3, backend="reference")
    assert_close_rms(o1, o2, tol, "o")
    assert c1[0].shape == c2[0].shape == (B, T % C, H, d)
    for a, b in zip(grads([o1], leaves), grads([o2], leaves)):
        assert_close_rms(a, b, tol * 10, "grad")


def test_gradcheck_float64():
    leaves = [t.requires_grad_() for t in qkv(1, 7, 2, 4)]
    for backend in ("torch", "reference"):
        assert torch.autograd.gradcheck(lambda q, k, v: chunk_attention(q, k, v, 3, backend=backend)[0], leaves)


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("cuts", [(5,), (1, 2, 3, 17, 18, 31), tuple(range(1, 40))],
                         ids=["one-cut", "odd", "per-token"])
def test_streaming_with_cache_equals_one_pass(backend, cuts):
    q, k, v = qkv(2, 40, 2, 8)
    full, _ = chunk_attention(q, k, v, 16, backend=backend)
    cache, outs, edges = None, [], [0, *cuts, 40]
    for a, b in zip(edges[:-1], edges[1:]):
        o, cache = chunk_attention(q[:, a:b], k[:, a:b], v[:, a:b], 16, cache=cache, backend=backend)
        outs.append(o)
        assert cache[0].shape[1] == b % 16  # the cache is cleared at every chunk boundary
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-12, rtol=0)


def test_nothing_crosses_a_chunk_boundary():
    q, k, v = qkv(1, 32, 1, 8)
    a, _ = chunk_attention(q, k, v, 8)
    k2, v2 = k.clone(), v.clone()
    k2[:, :8] += 1.0
    v2[:, :8] += 1.0
    b, _ = chunk_attention(q, k2, v2, 8)
    torch.testing.assert_close(a[:, 8:], b[:, 8:])
    assert not torch.allclose(a[:, :8], b[:, :8])


def test_bad_arguments_fail_clearly():
    q, k, v = qkv(1, 4, 1, 8)
    with pytest.raises(ValueError, match="chunk_size=0"):
        chunk_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="cache holds 4 tokens"):
        chunk_attention(q, k, v, 4, cache=(k, v))


@pytest.mark.interpret
@pytest.mark.parametrize("B,T,H,d,C", SHAPES, ids=IDS)
def test_triton_matches_reference(B, T, H, d, C, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    leaves = [t.requires_grad_() for t in qkv(B, T, H, d, torch.float32)]
    o1, _ = chunk_attention(*leaves, C, scale=0.3, backend="triton")
    o2, _ = chunk_attention(*leaves, C, scale=0.3, backend="reference")
    assert_close_rms(o1, o2, 1e-5, "o")
    for a, b in zip(grads([o1], leaves), grads([o2], leaves)):
        assert_close_rms(a, b, 1e-4, "grad")


@pytest.mark.interpret
def test_triton_streaming_with_cache(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, v = qkv(1, 20, 1, 16, torch.float32)
    full, _ = chunk_attention(q, k, v, 8, backend="reference")
    o1, cache = chunk_attention(q[:, :11], k[:, :11], v[:, :11], 8, backend="triton")
    o2, _ = chunk_attention(q[:, 11:], k[:, 11:], v[:, 11:], 8, cache=cache, backend="triton")
    assert_close_rms(torch.cat([o1, o2], 1), full, 1e-5, "streamed")


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("dv", [8, 40], ids=["dv<d", "dv>d"])
@pytest.mark.parametrize("scale", [None, 1.0], ids=["scale=None", "scale=1"])
def test_value_width_may_differ_from_query_width(backend, dv, scale):
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, 37, 2, 16, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 37, 2, dv, generator=g, dtype=torch.float64)
    o, cache = chunk_attention(q, k, v, 16, scale=scale, backend=backend)
    assert o.shape == (2, 37, 2, dv) and cache[1].shape == (2, 5, 2, dv)
    torch.testing.assert_close(o, per_chunk_naive(q, k, v, 16, 0.25 if scale is None else scale))


@pytest.mark.interpret
@pytest.mark.parametrize("dz,dv", [(256, 2048), (16, 40), (40, 8)], ids=["official-mega200m", "dv>d", "dv<d"])
def test_triton_with_its_own_value_width(dz, dv, monkeypatch):
    """q/k at their width and values in tiles: the official widths (d_z 256, d_v 2048) at a tiny length,
    and widths that are no power of two."""
    from kernels.chunk_attention.triton_impl import tile_sizes

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    g = torch.Generator().manual_seed(5)
    T, C = 12, 8
    q, k = (torch.randn(1, T, 1, dz, generator=g) for _ in range(2))
    v = torch.randn(1, T, 1, dv, generator=g)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    o1, c1 = chunk_attention(*leaves, C, scale=1.0 / dz ** 0.5, backend="triton")
    o2, c2 = chunk_attention(*leaves, C, scale=1.0 / dz ** 0.5, backend="reference")
    assert o1.shape == (1, T, 1, dv)
    assert_close_rms(o1, o2, 1e-5, "o")
    for a, b in zip(grads([o1], leaves), grads([o2], leaves)):
        assert_close_rms(a, b, 1e-4, "grad")
    blocks = tile_sizes(256, 2048, cuda=True)
    assert blocks["BLOCK_K"] == 256 and blocks["BLOCK_V"] == 128  # no 2048-wide tile, no q/k padding to d_v
