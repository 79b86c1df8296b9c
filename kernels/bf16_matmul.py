"""bf16 matrix products on CPUs that have no native bf16 GEMM.

PyTorch runs a bf16 ``mm`` / ``addmm`` / ``bmm`` / ``baddbmm`` on the CPU through oneDNN only where the processor
has AVX-512 (or AMX); elsewhere (an AVX2-only EPYC or Xeon) it falls back to a scalar reference loop
(``cpublas_gemm_impl``, ``bf16_dot_with_fp32_arith``) that is 25-50x slower than float32 MKL on the same
shapes: an 8192x128 @ 128x512 product took 1,209 ms in bf16 and 22 ms as below, one thread of an AVX2 EPYC.
Under ``bf16-mixed`` training nine tenths of a step went there (py-spy).

On such a machine :func:`use_fp32_gemm_for_bf16` routes those four operators, for bf16 operands, through a
float32 GEMM of the same bf16 values, rounded once to bf16: the products of two bf16 numbers are exact in
float32 and the reference accumulates in float32 too, so the result is the native one up to the order of the
float32 summation (at most one bf16 rounding step apart; tested against the reference). Backward passes call
the same operators, so they take the same route. Other dtypes run PyTorch's own kernels (through the ``out=``
overloads, which the route leaves alone). Nothing changes on a machine with a native bf16 GEMM; set
``LONGLAB_BF16_MATMUL=native`` to keep PyTorch's kernels anyway (``fp32-gemm`` forces the route, for tests).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import warnings

import torch

ENV = "LONGLAB_BF16_MATMUL"
_LIB: torch.library.Library | None = None  # the registration lives as long as this object
_SAID: list[bool] = []


@functools.cache
def native_bf16_gemm() -> bool:
    """Whether PyTorch's CPU bf16 GEMM is a native (oneDNN) one here: x86 with AVX-512 or AMX, or not x86."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    return bool(torch.cpu._is_avx512_supported() or torch.cpu._is_amx_tile_supported())


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls on ``device`` are faster than float32 ones can be: any accelerator, a CPU with a
    native bf16 GEMM. (Routed, a bf16 matmul costs a float32 one plus the casts; PyTorch's fallback 25-50x.)"""
    return torch.device(device).type != "cpu" or native_bf16_gemm()


def wants_route() -> bool:
    """Whether bf16 CPU matmuls should take the float32-GEMM route on this machine (``LONGLAB_BF16_MATMUL``)."""
    choice = os.environ.get(ENV, "auto")
    if choice not in ("auto", "native", "fp32-gemm"):
        raise ValueError(f"{ENV}={choice!r}: use auto, native or fp32-gemm")
    return choice == "fp32-gemm" or (choice == "auto" and not native_bf16_gemm())


def _routed(op):
    """The CPU kernel of ``op`` (mm, bmm, addmm, baddbmm; the last two operands are the factors): bf16 operands
    through the float32 one, rounded to bf16; other dtypes PyTorch's own kernel, through the ``out=`` overload."""

    def impl(*args, **kw):
        if all(t.dtype == torch.bfloat16 for t in args):
            return impl(*(t.float() for t in args), **kw).to(torch.bfloat16)
        a, b = args[-2:]
        return op.out(*args, **kw, out=a.new_empty((*a.shape[:-1], b.shape[-1])))

    return impl


def use_fp32_gemm_for_bf16() -> bool:
    """Route bf16 ``mm``/``addmm``/``bmm``/``baddbmm`` on the CPU through float32 GEMMs where this machine has no
    native bf16 GEMM (:func:`wants_route`), once per process; says so in one line. Returns whether the route
    is on."""
    global _LIB
    if _LIB is not None:
        return True
    if not wants_route():
        return False
    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # "overriding a previously registered kernel": that is the point
        warnings.simplefilter("ignore")
        for name in ("mm", "bmm", "addmm", "baddbmm"):
            lib.impl(name, _routed(getattr(torch.ops.aten, name)), "CPU")
    _LIB = lib
    if not _SAID:  # once per process, however often a benchmark or test turns it off and on again
        _SAID.append(True)
        print("[kernels] this CPU has no native bf16 GEMM (no AVX-512 / AMX): bf16 matmuls run as float32 GEMMs of "
              f"the same bf16 values, rounded to bf16 (the native result up to summation order; {ENV}=native "
              "keeps PyTorch's slow fallback)", flush=True)
    return True


def route_active() -> bool:
    return _LIB is not None


def stop_fp32_gemm_for_bf16() -> None:
    """PyTorch's own kernels again."""
    global _LIB
    if _LIB is not None:
        _LIB._destroy()
        _LIB = None


@contextlib.contextmanager
def pytorch_bf16_kernels():
    """PyTorch's own bf16 kernels inside (a benchmark timing its fallback, a test comparing against it), the
    route as it was after."""
    was = route_active()
    stop_fp32_gemm_for_bf16()
    try:
        yield
    finally:
        if was:
            use_fp32_gemm_for_bf16()


__all__ = ["ENV", "fast_bf16", "native_bf16_gemm", "pytorch_bf16_kernels", "route_active", "stop_fp32_gemm_for_bf16",
           "use_fp32_gemm_for_bf16", "wants_route"]
