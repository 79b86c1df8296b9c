import subprocess
import sys

import pytest
import torch

from kernels import chunk_attention, resolve_backend
from tests.conftest import REPO


def test_auto_picks_torch_on_cpu(monkeypatch):
    monkeypatch.delenv("LONGLAB_KERNEL_BACKEND", raising=False)
    assert resolve_backend(None, torch.zeros(1), "op") == "torch"
    assert resolve_backend("auto", torch.zeros(1), "op") == "torch"


def test_environment_variable_overrides_and_call_wins(monkeypatch):
    monkeypatch.setenv("LONGLAB_KERNEL_BACKEND", "reference")
    assert resolve_backend(None, torch.zeros(1), "op") == "reference"
    assert resolve_backend("torch", torch.zeros(1), "op") == "torch"


def test_unknown_backend_is_named(monkeypatch):
    with pytest.raises(ValueError, match=r"backend='cuda' is unknown"):
        resolve_backend("cuda", torch.zeros(1), "op")
    monkeypatch.setenv("LONGLAB_KERNEL_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"backend='fast' is unknown.*LONGLAB_KERNEL_BACKEND"):
        resolve_backend(None, torch.zeros(1), "op")


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 4, 1, 16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        chunk_attention(q, q, q, 2, backend="triton")


def test_importing_kernels_loads_neither_triton_nor_faiss():
    code = "import sys, kernels, memory; print(sorted(m for m in ('triton', 'faiss') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
