from kernels.topk.op import rerank_topk, topk_merge
from kernels.topk.reference import rerank_topk_reference, topk_merge_reference

__all__ = ["rerank_topk", "rerank_topk_reference", "topk_merge", "topk_merge_reference"]
