"""TimestepNorm's no-grad forward as one fused C++ loop on the CPU (``cpu_kernel.cpp``): about one read and one
write of x, where the PyTorch path (``torch_impl.timestep_norm_fused``) makes four to six passes. At 16K tokens of
D=1024 it takes about 2x one read-and-write pass against 4-6x (``python -m benchmarks.kernels --only tsn``).

It is compiled on first use (``kernels.cpu_build``: about half a minute, once per machine). Where it cannot be
built the PyTorch path runs, and the reason is printed once; ``LONGLAB_CPU_KERNELS=0`` never builds or uses it. It
takes float32 (bf16 / fp16 inputs are widened first, as the PyTorch path does) without a mask; other calls take
the PyTorch path.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from kernels import cpu_build
from kernels.cpu_build import ENV_VAR, enabled

SOURCE = Path(__file__).with_name("cpu_kernel.cpp")


@functools.lru_cache(maxsize=1)
def extension():
    """The compiled module, or None (the reason printed once) where it cannot be built."""
    return cpu_build.load("timestep_norm", "longlab_tsn", SOURCE)


def usable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mask) -> bool:
    """Whether this call can take the fused kernel (before building it)."""
    return (enabled() and mask is None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16,
                                                                                 torch.float16)
            and weight.device.type == "cpu" and bias.device.type == "cpu")


def timestep_norm_cpu(x, weight, bias, num_groups, eps, state):
    """(y, (count, mean, var)) as ``timestep_norm_fused`` computes them, or None when the kernel is not built.
    ``state`` (count [B] int64, mean [B, G], var [B, G]) in float32."""
    ext = extension()
    if ext is None:
        return None
    count, mean, var = state
    x32 = x.to(torch.float32).contiguous()
    y, m, v = ext.tsn_forward(x32, weight.to(torch.float32).contiguous(), bias.to(torch.float32).contiguous(),
                              int(num_groups), float(eps), count.to(torch.int64).contiguous(),
                              mean.to(torch.float32).contiguous(), var.to(torch.float32).contiguous())
    return y.to(x.dtype), (count + x.shape[1], m, v)


__all__ = ["ENV_VAR", "extension", "timestep_norm_cpu", "usable"]
