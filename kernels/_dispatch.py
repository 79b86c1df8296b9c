"""Backend selection shared by every op.

``backend`` per call, else the environment variable ``LONGLAB_KERNEL_BACKEND``, else ``auto``:

* ``reference`` — the readable PyTorch spec (slow loops where the math is a recurrence);
* ``torch``     — the fast PyTorch path (what runs on CPU);
* ``triton``    — the Triton kernel (CUDA tensors, or any tensors under ``TRITON_INTERPRET=1``);
* ``auto``      — per op, the backend measured fastest on CUDA (``AUTO_ON_CUDA``), ``torch`` elsewhere.

``AUTO_ON_CUDA`` holds only measured choices. Until ``benchmarks/gpu.py`` has timed the Triton
kernels against the torch paths on a GPU, every op's auto choice is ``torch`` (cuFFT for CEMA,
cumulative sums for TimestepNorm, fused SDPA for chunk attention); ``backend="triton"`` still
selects a kernel explicitly.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

BACKENDS = ("auto", "reference", "torch", "triton")
ENV_VAR = "LONGLAB_KERNEL_BACKEND"
# op -> backend for CUDA tensors under "auto": only entries a GPU benchmark has shown faster (none yet)
AUTO_ON_CUDA: dict[str, str] = {}


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str | None, x: torch.Tensor, op: str) -> str:
    choice = backend or os.environ.get(ENV_VAR, "auto")
    if choice not in BACKENDS:
        raise ValueError(f"{op}: backend={choice!r} is unknown; use one of {BACKENDS} (or set {ENV_VAR})")
    if choice == "auto":
        pick = AUTO_ON_CUDA.get(op, "torch") if x.is_cuda else "torch"
        return pick if pick != "triton" or triton_available() else "torch"
    if choice == "triton":
        if not triton_available():
            raise ImportError(
                f"{op}: backend='triton' needs the triton package; install it with `pip install triton` "
                "(or the project's [gpu] / [dev] extras), or use backend='torch'"
            )
        if not x.is_cuda and not interpreting():
            raise RuntimeError(
                f"{op}: backend='triton' got {x.device.type} tensors; Triton runs on CUDA devices, or on "
                "the CPU only under TRITON_INTERPRET=1 (slow, for tests). Use backend='torch' or 'auto' on CPU"
            )
    return choice


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in ``promote_types(dtype, float32)``: bf16/fp16 -> fp32, fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)
