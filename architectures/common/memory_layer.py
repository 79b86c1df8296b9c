"""FoT's memory attention as a component any architecture can put in chosen layers.

A memory layer attends, in one softmax, to its local causal keys (the current window or chunk) and to
extra keys: at inference the top-``memory_k`` entries of a kNN memory (``memory/``) holding every
earlier window of the row, written after the window's own attention (a window never retrieves itself);
in CrossBatch training the previous windows of the row and of d-1 other rows (dense). Memory keys are
stored at position 0 (unrotated: LongLLaMA's ``rope_pos0``) while queries keep their in-window
rotation. ``MemorySettings`` holds the memory's fields, shared by every config that has memory layers
(``FoTConfig``, ``MegalodonConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from kernels import memory_attention
from kernels.memory_attention import memory_attention_reference
from memory import KNNMemory, MemoryConfig
from memory.knn import FAISS_INDEXES

MEMORY_BACKENDS = ("exact", "faiss", "dense")


@dataclass(frozen=True)
class MemorySettings:
    memory_backend: str = "exact"  # exact | faiss (kNN retrieval of memory_k keys) | dense (whole memory)
    memory_index: str = "flat"  # faiss: flat | ivf | hnsw
    memory_capacity: int = 65536  # entries (tokens) per row and memory layer; oldest evicted first
    memory_k: int = 128  # retrieved keys per query and head (paper: 128 for LM, 32 for the dictionary)
    memory_nlist: int | str = 64  # IVF lists, or "auto" (about 2 sqrt(n), re-chosen as the memory grows)
    memory_nprobe: int = 8
    memory_hnsw_m: int = 32
    memory_ef_search: int = 64
    memory_threads: int = 1

    def check_memory_settings(self) -> None:
        """Every memory field, whether or not the model has memory layers (a bad value is an error where the
        config is built, not silence until someone turns memory on)."""
        name = type(self).__name__
        if self.memory_backend not in MEMORY_BACKENDS:
            raise ValueError(f"{name}: memory_backend={self.memory_backend!r}; use one of {MEMORY_BACKENDS}")
        if self.memory_index not in FAISS_INDEXES:
            raise ValueError(f"{name}: memory_index={self.memory_index!r}; use one of {FAISS_INDEXES}")
        for field in ("memory_capacity", "memory_k", "memory_nlist", "memory_nprobe", "memory_hnsw_m",
                      "memory_ef_search", "memory_threads"):
            value = getattr(self, field)
            if field == "memory_nlist" and value == "auto":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                auto = " or 'auto'" if field == "memory_nlist" else ""
                raise ValueError(f"{name}: {field}={value!r} must be an integer >= 1{auto}")

    def memory_config(self) -> MemoryConfig:
        backend = "exact" if self.memory_backend == "dense" else self.memory_backend
        return MemoryConfig(capacity=self.memory_capacity, backend=backend, index=self.memory_index,
                            nlist=self.memory_nlist, nprobe=self.memory_nprobe, hnsw_m=self.memory_hnsw_m,
                            ef_search=self.memory_ef_search, faiss_threads=self.memory_threads)

    def new_memories(self, n: int, batch: int, heads: int, key_dim: int, device, value_dim: int | None = None,
                     dtype: torch.dtype = torch.float32):
        """``n`` empty memories; half-precision ``dtype`` is stored as float32 (retrieval by inner product)."""
        dtype = torch.promote_types(dtype, torch.float32)
        return [KNNMemory(batch, heads, key_dim, self.memory_config(), device=device, dtype=dtype,
                          value_dim=value_dim) for _ in range(n)]


def attend(qr, kr, v_all, m: int, m_state: dict, settings: MemorySettings, scale=None, return_weights=False,
           local_valid=None):
    """Memory attention of queries ``qr`` [B, n, H, d] (rotated at their in-window positions) that
    continue a window whose ``m`` earlier tokens are cached: local keys ``kr`` [B, m + n, H, d] (rotated)
    and values ``v_all`` [B, m + n, H, d_v], plus extra keys from ``m_state``: {"memory": KNNMemory}
    (retrieval, or the whole memory with ``memory_backend: dense``) or {"k", "v", "mask"} (dense extra
    keys at position 0: CrossBatch). ``local_valid`` [B, m + n]: False hides a local key. Returns the
    output [B, n, H, d_v] and, with ``return_weights``, the weights [B, H, m + n, M + m + n]."""
    B, n = qr.shape[:2]
    if m:  # the op's local part starts at the window's first token: pad the cached query slots
        qr = torch.cat([qr.new_zeros(B, m, *qr.shape[2:]), qr], 1)
    if "memory" in m_state:
        mem: KNNMemory = m_state["memory"]
        if settings.memory_backend == "dense":
            mk, mv, mask = mem.all()
        else:
            mk, mv, mask, _ = mem.search(rearrange(qr[:, m:], "b n h d -> b h n d"), settings.memory_k)
            if m:
                pad = lambda t: torch.cat([t.new_zeros(B, m, *t.shape[2:]), t], 1)  # noqa: E731
                mk, mv, mask = pad(mk), pad(mv), pad(mask)
        mk, mv = mk.to(qr.dtype), mv.to(qr.dtype)
    else:
        mk, mv, mask = m_state["k"], m_state["v"], m_state.get("mask")
    if return_weights:
        o, w = memory_attention_reference(qr, kr, v_all, mk, mv, mask, scale=scale, return_weights=True,
                                          local_valid=local_valid)
        return o[:, m:], w
    return memory_attention(qr, kr, v_all, mk, mv, mask, scale=scale, local_valid=local_valid)[:, m:], None


def write_window(memory: KNNMemory, k, v, keep=None) -> None:
    """Store a completed window's keys [B, n, H, d] (position 0) and values [B, n, H, d_v]; ``keep`` [B, n]
    False for tokens that precede their row's document (never stored)."""
    memory.add(rearrange(k, "b n h d -> b h n d"), rearrange(v, "b n h d -> b h n d"), keep)


def crossbatch_rows(b: int, d: int, device) -> torch.Tensor:
    """[b, d]: for each row, itself (the positive) then the d-1 next rows (negatives), mod b."""
    return (torch.arange(b, device=device)[:, None] + torch.arange(d, device=device)) % b


def crossbatch_extra(k, v, rows) -> dict:
    """Dense extra keys of CrossBatch: the previous windows' keys/values [b, P, H, d] of ``rows`` [b, d],
    own row first -> {"k", "v"} [b, d * P, H, d]."""
    return {"k": rearrange(k[rows], "b d n h e -> b (d n) h e"), "v": rearrange(v[rows], "b d n h e -> b (d n) h e")}
