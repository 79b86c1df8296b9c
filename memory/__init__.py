"""kNN memory for the Focused Transformer: one API (add / search / all / reset / state_dict) over an
exact torch backend (the oracle), faiss indexes (imported lazily) and dense attention."""

from memory.knn import BACKENDS, KNNMemory, MemoryConfig

__all__ = ["BACKENDS", "KNNMemory", "MemoryConfig"]
