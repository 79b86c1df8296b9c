"""Shared sequence operators: a readable PyTorch reference, a fast PyTorch path and a Triton kernel
behind one validating, dispatching function per op (``backend=auto|reference|torch|triton``, or the
``LONGLAB_KERNEL_BACKEND`` environment variable). Triton is imported only when a Triton path runs."""

from kernels._dispatch import BACKENDS, resolve_backend
from kernels.cema import cema, cema_step
from kernels.chunk_attention import chunk_attention
from kernels.memory_attention import memory_attention
from kernels.timestep_norm import timestep_norm

__all__ = ["BACKENDS", "cema", "cema_step", "chunk_attention", "memory_attention", "resolve_backend", "timestep_norm"]
