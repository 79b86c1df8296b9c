"""kNN memory for the Focused Transformer: one API (add / search / all / reset / state_dict) over an
exact torch backend (the oracle) and faiss indexes (imported lazily); ``all()`` serves dense attention."""

from memory.knn import BACKENDS, KNNMemory, MemoryConfig

__all__ = ["BACKENDS", "KNNMemory", "MemoryConfig"]
