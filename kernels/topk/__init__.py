from kernels.topk.op import topk_merge
from kernels.topk.reference import topk_merge_reference

__all__ = ["topk_merge", "topk_merge_reference"]
