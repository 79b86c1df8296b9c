from kernels.memory_attention.op import memory_attention
from kernels.memory_attention.reference import memory_attention_reference

__all__ = ["memory_attention", "memory_attention_reference"]
