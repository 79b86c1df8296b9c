"""kernels.sdpa: short bf16 rows run PyTorch's math backend, everything else the default kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels.bf16_matmul import pytorch_bf16_kernels
from kernels.sdpa import MATH_KEYS, sdpa, uses_math


@pytest.fixture(autouse=True)
def pytorch_kernels():
    """PyTorch's own bf16 kernels, as on a CPU with a native bf16 GEMM (a bf16 run earlier in this process may
    have routed them through float32 GEMMs: test_bf16_matmul.py checks that route)."""
    with pytorch_bf16_kernels():
        yield


def _qkv(n_rows, n_keys, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n_rows, 2, n, 16, generator=g).to(dtype) for n in (8, n_keys, n_keys)]


@pytest.mark.parametrize("n_keys,dtype,math", [(12, torch.bfloat16, True), (MATH_KEYS, torch.bfloat16, True),
                                               (12, torch.float32, False), (MATH_KEYS + 8, torch.bfloat16, False)])
def test_each_case_runs_the_backend_it_names(n_keys, dtype, math):
    """Bit for bit the result of the backend ``uses_math`` names, and within rounding of a float64 reference."""
    q, k, v = _qkv(64, n_keys, dtype)
    mask = torch.ones(8, n_keys, dtype=torch.bool).tril(n_keys - 8)  # causal after a prefix of n_keys - 8 keys
    assert uses_math(q, k) == math
    got = sdpa(q, k, v, attn_mask=mask)
    if math:
        with sdpa_kernel(SDPBackend.MATH):
            want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(got, want)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
    assert (got.double() - ref).abs().max() < (0.05 if dtype == torch.bfloat16 else 1e-5)


def test_the_backends_round_differently_so_the_dispatch_is_observable():
    """If the default kernel rounded exactly as the math backend, the test above could not tell which ran."""
    q, k, v = _qkv(64, 12, torch.bfloat16)
    assert not torch.equal(sdpa(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_gradients_match_the_default_kernel_to_bf16_rounding():
    q, k, v = (t.requires_grad_() for t in _qkv(32, 16, torch.bfloat16, seed=1))
    sdpa(q, k, v, is_causal=True).float().pow(2).sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    F.scaled_dot_product_attention(q, k, v, is_causal=True).float().pow(2).sum().backward()
    for a, b in zip(got, (q.grad, k.grad, v.grad)):
        assert (a.float() - b.float()).abs().max() <= 0.05 * b.float().abs().max()
