from __future__ import annotations

import math

import pytest
import torch

from kernels import memory_attention
from tests.kernels.helpers import assert_close_rms, grads

# (B, T, H, d, M or k)
SHAPES = [(1, 1, 1, 16, 3), (2, 33, 2, 16, 20), (1, 17, 3, 60, 7)]
IDS = ["T1", "T33", "d60"]


def make(B, T, H, d, M, mode, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, d, generator=g, dtype=dtype) for _ in range(3))
    if mode == "dense":
        mk, mv = (torch.randn(B, M, H, d, generator=g, dtype=dtype) for _ in range(2))
        mask = torch.rand(B, H, M, generator=g) > 0.3
    else:
        mk, mv = (torch.randn(B, T, H, M, d, generator=g, dtype=dtype) for _ in range(2))
        mask = torch.rand(B, T, H, M, generator=g) > 0.3
    return q, k, v, mk, mv, mask


def naive(q, k, v, mk, mv, mask, scale):
    """Query by query: concatenate its allowed keys, one softmax."""
    B, T, H, d = q.shape
    out = q.new_zeros(*q.shape[:3], v.shape[-1])  # values may be wider than keys
    for b in range(B):
        for h in range(H):
            for t in range(T):
                if mk.dim() == 4:
                    sel = mask[b, h]
                    keys, vals = mk[b, sel, h], mv[b, sel, h]
                else:
                    sel = mask[b, t, h]
                    keys, vals = mk[b, t, h, sel], mv[b, t, h, sel]
                keys = torch.cat([keys, k[b, : t + 1, h]])
                vals = torch.cat([vals, v[b, : t + 1, h]])
                w = torch.softmax(keys @ q[b, t, h] * scale, 0)
                out[b, t, h] = w @ vals
    return out


@pytest.mark.parametrize("mode", ["dense", "knn"])
@pytest.mark.parametrize("B,T,H,d,M", SHAPES, ids=IDS)
def test_reference_matches_naive(mode, B, T, H, d, M):
    q, k, v, mk, mv, mask = make(B, T, H, d, M, mode)
    o = memory_attention(q, k, v, mk, mv, mask, backend="reference")
    torch.testing.assert_close(o, naive(q, k, v, mk, mv, mask, 1 / math.sqrt(d)))


@pytest.mark.parametrize("mode", ["dense", "knn"])
@pytest.mark.parametrize("B,T,H,d,M", SHAPES, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_fast_path_matches_reference(mode, B, T, H, d, M, dtype, tol):
    q, k, v, mk, mv, mask = make(B, T, H, d, M, mode, dtype)
    leaves = [t.requires_grad_() for t in (q, k, v, mk, mv)]
    o1 = memory_attention(*leaves, mask, scale=0.5, backend="torch")
    o2 = memory_attention(*leaves, mask, scale=0.5, backend="reference")
    assert_close_rms(o1, o2, tol, "o")
    for a, b in zip(grads([o1], leaves), grads([o2], leaves)):
        assert_close_rms(a, b, tol * 10, "grad")


def test_knn_with_every_key_equals_dense():
    q, k, v, mk, mv, _ = make(2, 9, 2, 8, 5, "dense")
    dense = memory_attention(q, k, v, mk, mv)
    knn_k = mk[:, None].expand(2, 9, 5, 2, 8).permute(0, 1, 3, 2, 4)
    knn_v = mv[:, None].expand(2, 9, 5, 2, 8).permute(0, 1, 3, 2, 4)
    torch.testing.assert_close(memory_attention(q, k, v, knn_k, knn_v), dense)


def test_fully_masked_memory_is_plain_causal_attention():
    q, k, v, mk, mv, _ = make(1, 6, 1, 8, 4, "dense")
    o = memory_attention(q, k, v, mk, mv, torch.zeros(1, 4, dtype=torch.bool))
    ref = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
    torch.testing.assert_close(o, ref.transpose(1, 2))


def test_gradcheck_float64():
    for mode in ("dense", "knn"):
        q, k, v, mk, mv, mask = make(1, 4, 1, 4, 3, mode)
        leaves = [t.requires_grad_() for t in (q, k, v, mk, mv)]
        for backend in ("torch", "reference"):
            f = lambda *a, b=backend, m=mask: memory_attention(*a, m, backend=b)  # noqa: E731
            assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.interpret
@pytest.mark.parametrize("mode", ["dense", "knn"])
@pytest.mark.parametrize("B,T,H,d,M", SHAPES, ids=IDS)
def test_triton_matches_reference(mode, B, T, H, d, M, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, v, mk, mv, mask = make(B, T, H, d, M, mode, torch.float32)
    leaves = [t.requires_grad_() for t in (q, k, v, mk, mv)]
    o1 = memory_attention(*leaves, mask, backend="triton")
    o2 = memory_attention(*leaves, mask, backend="reference")
    assert_close_rms(o1, o2, 1e-5, "o")
    for a, b in zip(grads([o1], leaves), grads([o2], leaves)):
        assert_close_rms(a, b, 1e-4, "grad")


@pytest.mark.parametrize("mode", ["dense", "knn"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_values_wider_than_keys(mode, backend):
    """Megalodon's memory layers: values of width d_v != d (every backend; Triton runs the torch path),
    outputs against the query-by-query softmax, gradients against the reference, float64 gradcheck."""
    B, T, H, d, dv, M = 2, 9, 2, 8, 20, 5
    q, k, _, mk, _, mask = make(B, T, H, d, M, mode)
    g = torch.Generator().manual_seed(7)
    v = torch.randn(B, T, H, dv, generator=g, dtype=torch.float64)
    mv = torch.randn(*mk.shape[:-1], dv, generator=g, dtype=torch.float64)
    o = memory_attention(q, k, v, mk, mv, mask, backend=backend)
    assert o.shape == (B, T, H, dv)
    torch.testing.assert_close(o, naive(q, k, v, mk, mv, mask, 1 / math.sqrt(d)))
    inputs = [t.clone().requires_grad_() for t in (q, k, v, mk, mv)]
    ref = grads([memory_attention(*inputs, mask, backend="reference")], inputs)
    got = grads([memory_attention(*inputs, mask, backend=backend)], inputs)
    for name, a, b in zip(("q", "k", "v", "mem_k", "mem_v"), got, ref):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("mode", ["dense", "knn"])
def test_values_wider_than_keys_gradcheck(mode):
    q, k, _, mk, _, mask = make(1, 4, 1, 4, 3, mode)
    g = torch.Generator().manual_seed(8)
    v = torch.randn(1, 4, 1, 6, generator=g, dtype=torch.float64)
    mv = torch.randn(*mk.shape[:-1], 6, generator=g, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (q, k, v, mk, mv)]
    assert torch.autograd.gradcheck(lambda *t: memory_attention(*t, mask, backend="torch"), inputs)
