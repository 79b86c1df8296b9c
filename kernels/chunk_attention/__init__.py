from kernels.chunk_attention.op import chunk_attention
from kernels.chunk_attention.reference import chunk_attention_reference, chunk_mask

__all__ = ["chunk_attention", "chunk_attention_reference", "chunk_mask"]
