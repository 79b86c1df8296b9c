"""TimestepNorm's no-grad forward as one fused C++ loop on the CPU (``cpu_kernel.cpp``): about one read and one
write of x, where the PyTorch path (``torch_impl.timestep_norm_fused``) makes four to six passes. At 16K tokens of
D=1024 it takes about 2x one read-and-write pass against 4-6x (``python -m benchmarks.kernels --only tsn``).

It is compiled on first use with ``torch.utils.cpp_extension`` (g++ and OpenMP, ``-O3 -march=native``, about half
a minute, once per machine: the build is cached under a name that includes the CPU's instruction-set flags, so a
shared cache never runs code built for another processor). Where it cannot be built the PyTorch path runs, and
the reason is printed once; ``LONGLAB_CPU_KERNELS=0`` never builds or uses it. It takes float32 (bf16 / fp16
inputs are widened first, as the PyTorch path does) without a mask; other calls take the PyTorch path.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
from pathlib import Path

import torch

ENV_VAR = "LONGLAB_CPU_KERNELS"
SOURCE = Path(__file__).with_name("cpu_kernel.cpp")


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "1") != "0"


def cpu_tag() -> str:
    """A short hash of this processor's instruction-set flags (``-march=native`` code is only valid on them)."""
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags += line
                break
    except OSError:
        flags += platform.processor()
    return hashlib.sha256(flags.encode()).hexdigest()[:10]


def build_root() -> Path:
    """Where compiled kernels are kept: ``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions``."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")


@functools.lru_cache(maxsize=1)
def extension():
    """The compiled module, or None (the reason printed once) where it cannot be built."""
    if not enabled():
        return None
    try:
        from torch.utils.cpp_extension import load

        venv_bin = str(Path(sys.executable).parent)  # pip's ninja lives beside the interpreter, maybe not on PATH
        if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join(x for x in (os.environ.get("PATH"), venv_bin) if x)

        digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:8]
        name = f"longlab_tsn_{cpu_tag()}_{digest}"
        build = build_root() / name
        build.mkdir(parents=True, exist_ok=True)
        if not (build / f"{name}.so").exists():
            print(f"[longlab] timestep_norm: building the C++ CPU kernel in {build} (once per machine, ~30 s)",
                  file=sys.stderr, flush=True)
        return load(name, [str(SOURCE)], extra_cflags=["-O3", "-march=native", "-fopenmp"],
                    extra_ldflags=["-fopenmp"], build_directory=str(build), verbose=False)
    except Exception as e:  # a missing compiler or headers: the PyTorch path is the same computation
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(f"[longlab] timestep_norm: the C++ CPU kernel could not be built ({first}); the PyTorch path runs "
              f"instead ({ENV_VAR}=0 skips the attempt)", flush=True)
        return None


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
