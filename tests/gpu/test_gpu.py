"""The GPU check (``pytest -m gpu tests/gpu``; skipped without CUDA): every kernel's forward and
backward against its reference in float32 and bfloat16 on the device, each tiny preset training 50
steps with trainer=gpu, and faiss GPU search against exact. Together with benchmarks/gpu.py it is
one command: ``bash benchmarks/gpu_check.sh`` (under 10 minutes on one GPU)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_MODELS, compose
from tests.kernels.helpers import assert_close_rms, grads

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
DTYPES = [(torch.float32, 1e-4, 1e-3), (torch.bfloat16, 2e-2, 5e-2)]
BACKENDS = ["torch", "triton"]


def _cuda(*ts, dtype):
    return [t.to("cuda", dtype).requires_grad_() for t in ts]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol,gtol", DTYPES, ids=["fp32", "bf16"])
def test_chunk_attention(backend, dtype, tol, gtol):
    from kernels import chunk_attention

    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 300, 2, 64, generator=g) for _ in range(2))
    v = torch.randn(2, 300, 2, 256, generator=g)
    leaves = _cuda(q, k, v, dtype=dtype)
    o1, _ = chunk_attention(*leaves, 128, scale=0.125, backend=backend)
    o2, _ = chunk_attention(*[t.float() for t in leaves], 128, scale=0.125, backend="reference")
    assert_close_rms(o1.float(), o2, tol, "o")
    for a, b in zip(grads([o1.float()], leaves), grads([o2], leaves)):
        assert_close_rms(a.float(), b.float(), gtol, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol,gtol", DTYPES, ids=["fp32", "bf16"])
def test_cema(backend, dtype, tol, gtol):
    from kernels import cema

    g = torch.Generator().manual_seed(1)
    D, N, L = 64, 16, 1000
    x = torch.randn(2, D, L, generator=g)
    params = [torch.randn(D, N, 1, generator=g) * 0.2, torch.randn(D, N, 1, generator=g) * 0.2,
              torch.randn(D, 1, 1, generator=g), torch.randn(D, N, 2, generator=g), torch.randn(D, 1, generator=g)]
    leaves = _cuda(x, dtype=dtype) + [p.cuda().requires_grad_() for p in params]
    y1, h1 = cema(*leaves, return_state=True, backend=backend)
    y2, h2 = cema(leaves[0].float(), *leaves[1:], return_state=True, backend="reference")
    assert_close_rms(y1.float(), y2, tol, "y")
    for a, b in zip(grads([y1.float(), h1], leaves), grads([y2, h2], leaves)):
        assert_close_rms(a.float(), b.float(), gtol, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol,gtol", DTYPES, ids=["fp32", "bf16"])
def test_timestep_norm(backend, dtype, tol, gtol):
    from kernels import timestep_norm

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4096, 64, generator=g) * 3 + 100
    w, b = torch.randn(64, generator=g) * 0.1, torch.randn(64, generator=g) * 0.1
    leaves = _cuda(x, dtype=dtype) + [t.cuda().requires_grad_() for t in (w, b)]
    y1, s1 = timestep_norm(*leaves, 8, backend=backend)
    y2, s2 = timestep_norm(leaves[0].float(), *leaves[1:], 8, backend="reference")
    assert_close_rms(y1.float(), y2, tol, "y")
    assert_close_rms(s1[2].float(), s2[2], tol, "var")
    for a, c in zip(grads([y1.float()], leaves), grads([y2], leaves)):
        assert_close_rms(a.float(), c.float(), gtol, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol,gtol", DTYPES, ids=["fp32", "bf16"])
def test_memory_attention(backend, dtype, tol, gtol):
    from kernels import memory_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 64, 4, 32, generator=g) for _ in range(3))
    mk, mv = (torch.randn(2, 64, 4, 16, 32, generator=g) for _ in range(2))
    mask = torch.rand(2, 64, 4, 16, generator=g) > 0.2
    leaves = _cuda(q, k, v, mk, mv, dtype=dtype)
    o1 = memory_attention(*leaves, mask.cuda(), backend=backend)
    o2 = memory_attention(*[t.float() for t in leaves], mask.cuda(), backend="reference")
    assert_close_rms(o1.float(), o2, tol, "o")
    for a, b in zip(grads([o1.float()], leaves), grads([o2], leaves)):
        assert_close_rms(a.float(), b.float(), gtol, "grad")


@pytest.mark.parametrize("model", TINY_MODELS)
def test_tiny_presets_train_50_steps_on_the_gpu(model, tmp_path):
    from experiments.training.run import train

    m = train(compose("train", [f"model={model}", "trainer=gpu", "trainer.max_steps=50",
                                "trainer.val_check_interval=50", "optim.warmup_steps=10", f"run_dir={tmp_path}",
                                "data.batch_size=8"]))
    assert m["steps"] == 50 and m["val/bpb"] < 8


def test_faiss_gpu_search_equals_exact():
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "StandardGpuResources"):
        pytest.skip("faiss without GPU support (pip install faiss-gpu-cu12)")
    from memory import KNNMemory, MemoryConfig

    g = torch.Generator().manual_seed(4)
    exact = KNNMemory(2, 2, 32, MemoryConfig(capacity=300), device="cuda")
    gpu = KNNMemory(2, 2, 32, MemoryConfig(capacity=300, backend="faiss", index="flat"), device="cuda")
    for _ in range(10):  # past capacity: evictions on a GPU index (rebuilt from the ring)
        k, v = torch.randn(2, 2, 50, 32, generator=g).cuda(), torch.randn(2, 2, 50, 32, generator=g).cuda()
        exact.add(k, v)
        gpu.add(k, v)
        q = torch.randn(2, 2, 7, 32, generator=g).cuda()
        assert torch.equal(exact.search(q, 8)[3].sort(-1).values.cpu(), gpu.search(q, 8)[3].sort(-1).values.cpu())
        assert gpu.search_ids(q, 8).device == q.device  # the entry numbers come back where the queries are
