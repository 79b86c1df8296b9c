"""A bounded kNN memory of (key, value) pairs per (batch row, head), searched by inner product.

Storage is a ring buffer of ``capacity`` entries per row (all heads together), the source of truth
for every backend: entry number i of a row lives in slot i mod capacity, so when a row overflows the
oldest entries are overwritten first (eviction: oldest first). A search backend only proposes entry
numbers; results are read back from the ring and dropped if their entry was evicted meanwhile, so an
overflowing memory can return fewer neighbours but never wrong values.

Backends:
* ``exact`` — torch matmul + top-k on any device (the oracle);
* ``faiss`` — one index per (row, head): ``flat`` (IndexFlatIP, exact), ``ivf`` (IndexIVFFlat with
  ``nlist``/``nprobe``; trained on the first ``ivf_train_size`` keys, searched exactly until then), or
  ``hnsw`` (IndexHNSWFlat with ``hnsw_m``/``ef_search``; rebuilt from the ring after evictions). A GPU
  index is used when faiss has GPU support and the tensors live on CUDA. faiss is imported lazily;

Dense attention over the whole memory (FoT's ``memory_backend: dense``) needs no search: ``all()``
hands every live entry to attention, whatever the backend.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

BACKENDS = ("exact", "faiss")
FAISS_INDEXES = ("flat", "ivf", "hnsw")


@dataclass
class MemoryConfig:
    capacity: int = 65536  # entries per batch row (a token writes one entry per head)
    backend: str = "exact"
    index: str = "flat"  # faiss: flat | ivf | hnsw
    nlist: int = 64
    nprobe: int = 8
    ivf_train_size: int = 4096
    hnsw_m: int = 32
    ef_search: int = 64
    faiss_threads: int = 1

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"memory backend={self.backend!r} is unknown; use one of {BACKENDS}")
        if self.index not in FAISS_INDEXES:
            raise ValueError(f"memory index={self.index!r} is unknown; use one of {FAISS_INDEXES}")
        if self.capacity < 1:
            raise ValueError(f"memory capacity={self.capacity} must be >= 1")


def _faiss():
    import torch  # noqa: F401  (torch before faiss: both bundle OpenMP)

    try:
        return importlib.import_module("faiss")
    except ImportError as e:
        raise ImportError("memory backend 'faiss' needs faiss: `pip install faiss-cpu` (or faiss-gpu-cu12)") from e


class KNNMemory:
    def __init__(self, batch: int, heads: int, head_dim: int, config: MemoryConfig | None = None,
                 device=None, dtype=torch.float32):
        self.cfg = config or MemoryConfig()
        self.B, self.H, self.d = batch, heads, head_dim
        C = self.cfg.capacity
        self.keys = torch.zeros(batch, heads, C, head_dim, device=device, dtype=dtype)
        self.values = torch.zeros(batch, heads, C, head_dim, device=device, dtype=dtype)
        self.count = torch.zeros(batch, dtype=torch.int64)  # entries ever written per row (CPU)
        self._indexes: dict[tuple[int, int], object] = {}
        self._indexed: dict[tuple[int, int], int] = {}  # entries added to each index so far
        self._keepalive: dict[tuple[int, int], object] = {}

    # ------------------------------------------------------------------ bookkeeping
    @property
    def capacity(self) -> int:
        return self.cfg.capacity

    def size(self) -> torch.Tensor:
        """Live entries per row."""
        return self.count.clamp(max=self.capacity)

    def nbytes(self) -> int:
        """Bytes held by live keys and values (the ring), not counting index structures."""
        per = self.H * self.d * self.keys.element_size() * 2
        return int(self.size().sum()) * per

    def index_nbytes(self) -> int:
        faiss = _faiss() if self._indexes else None
        total = 0
        for idx in self._indexes.values():
            try:
                total += faiss.serialize_index(idx).size
            except Exception:  # noqa: BLE001 - GPU indexes cannot be serialised
                pass
        return total

    def valid_mask(self) -> torch.Tensor:
        """[B, capacity] True where a slot holds a live entry."""
        slots = torch.arange(self.capacity)
        return (slots[None, :] < self.size()[:, None]).to(self.keys.device)

    # ------------------------------------------------------------------ writing
    def add(self, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Append keys/values [B, H, n, d] (detached); ``mask`` [B, n] False = padding, never stored."""
        keys, values = keys.detach().to(self.keys.dtype), values.detach().to(self.values.dtype)
        B, H, n, d = keys.shape
        if (B, H, d) != (self.B, self.H, self.d):
            raise ValueError(f"memory holds [B={self.B}, H={self.H}, d={self.d}] entries, got {tuple(keys.shape)}")
        for b in range(B):
            sel = slice(None) if mask is None else mask[b].to(torch.bool).cpu()
            kb, vb = keys[b][:, sel], values[b][:, sel]
            m = kb.shape[1]
            if m == 0:
                continue
            if m > self.capacity:  # only the newest `capacity` entries can survive
                kb, vb = kb[:, -self.capacity :], vb[:, -self.capacity :]
                self.count[b] += m - self.capacity
                m = self.capacity
            start = int(self.count[b])
            slots = (torch.arange(start, start + m) % self.capacity).to(self.keys.device)
            self.keys[b][:, slots] = kb
            self.values[b][:, slots] = vb
            self.count[b] += m

    def reset(self, rows=None) -> None:
        """Forget rows (a bool mask [B], a list of indices, or None for all), e.g. at document boundaries."""
        if rows is None:
            idx = list(range(self.B))
        elif isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            idx = rows.nonzero().flatten().tolist()
        else:
            idx = [int(r) for r in rows]
        for b in idx:
            self.count[b] = 0
            for h in range(self.H):
                self._indexes.pop((b, h), None)
                self._indexed.pop((b, h), None)

    # ------------------------------------------------------------------ reading
    def all(self):
        """Every live entry for dense attention: keys, values [B, n, H, d] and mask [B, n], where n is the
        largest number of live entries of a row (slots fill in order before the ring wraps)."""
        n = int(self.size().max())
        return self.keys[:, :, :n].transpose(1, 2), self.values[:, :, :n].transpose(1, 2), self.valid_mask()[:, :n]

    def search(self, queries: torch.Tensor, k: int):
        """Top-k entries by inner product for queries [B, H, T, d].

        Returns keys, values [B, T, H, k, d], a validity mask [B, T, H, k] and the entry numbers
        [B, H, T, k] (-1 where invalid)."""
        if self.cfg.backend == "faiss":
            ids = self._search_faiss(queries, k)
        else:
            ids = self._search_exact(queries, k)
        return self.gather(ids)

    def gather(self, ids: torch.Tensor):
        B, H, T, k = ids.shape
        live_from = (self.count - self.capacity).clamp(min=0).to(ids.device)
        valid = (ids >= live_from.view(B, 1, 1, 1)) & (ids >= 0)
        slots = torch.where(valid, ids % self.capacity, torch.zeros_like(ids)).to(self.keys.device)
        idx = slots.reshape(B, H, T * k, 1).expand(-1, -1, -1, self.d)
        kk = torch.gather(self.keys, 2, idx).view(B, H, T, k, self.d)
        vv = torch.gather(self.values, 2, idx).view(B, H, T, k, self.d)
        valid = valid.to(self.keys.device)
        return kk.permute(0, 2, 1, 3, 4), vv.permute(0, 2, 1, 3, 4), valid.permute(0, 2, 1, 3), \
            torch.where(valid, ids.to(valid.device), torch.full_like(ids, -1).to(valid.device))

    def _search_exact(self, queries, k):
        # slots fill in order before the ring wraps: only the first max(size) slots can be live
        n = max(1, int(self.size().max()))
        scores = torch.einsum("bhtd,bhcd->bhtc", queries.to(self.keys.dtype), self.keys[:, :, :n])
        scores = scores.masked_fill(~self.valid_mask()[:, None, None, :n], float("-inf"))
        kk = min(k, n)
        top = scores.topk(kk, dim=-1)
        slots = top.indices
        # slot -> entry number: the newest entry in that slot
        count = self.count.to(slots.device).view(-1, 1, 1, 1)
        base = (count - 1 - slots) // self.capacity * self.capacity + slots
        ids = torch.where(torch.isfinite(top.values), base, torch.full_like(base, -1))
        if kk < k:
            ids = torch.cat([ids, torch.full((*ids.shape[:-1], k - kk), -1, dtype=ids.dtype, device=ids.device)], -1)
        return ids

    # ------------------------------------------------------------------ faiss
    def _index_for(self, b: int, h: int):
        faiss = _faiss()
        faiss.omp_set_num_threads(self.cfg.faiss_threads)
        cfg, d = self.cfg, self.d
        key = (b, h)
        live_from = max(0, int(self.count[b]) - self.capacity)
        idx = self._indexes.get(key)
        done = self._indexed.get(key, 0)
        rebuild = idx is None or done < live_from and cfg.index == "hnsw"
        if cfg.index == "ivf" and idx is not None and not idx.is_trained and int(self.count[b]) >= cfg.ivf_train_size:
            rebuild = True
        if rebuild:
            done = live_from
            if cfg.index == "flat":
                idx = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
            elif cfg.index == "hnsw":
                idx = faiss.IndexIDMap2(faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT))
                faiss.downcast_index(idx.index).hnsw.efSearch = cfg.ef_search
            else:
                quant = faiss.IndexFlatIP(d)
                idx = faiss.IndexIVFFlat(quant, d, cfg.nlist, faiss.METRIC_INNER_PRODUCT)  # ids built in
                idx.nprobe = cfg.nprobe
                self._keepalive[key] = quant  # the IVF index does not own its quantizer
                n_live = int(self.count[b]) - live_from
                if n_live >= cfg.ivf_train_size:
                    ids = torch.arange(live_from, int(self.count[b]))
                    idx.train(self._rows(b, h, ids))
            if self.keys.is_cuda and hasattr(faiss, "StandardGpuResources"):
                self._gpu_res = getattr(self, "_gpu_res", None) or faiss.StandardGpuResources()
                idx = faiss.index_cpu_to_gpu(self._gpu_res, self.keys.device.index or 0, idx)
            self._indexes[key] = idx
        elif done < live_from:  # evicted entries leave the index (flat / ivf support removal)
            idx.remove_ids(faiss.IDSelectorRange(done, live_from))
            done = live_from
        if int(self.count[b]) > done and getattr(idx, "is_trained", True):
            ids = torch.arange(max(done, live_from), int(self.count[b]))
            idx.add_with_ids(self._rows(b, h, ids), ids.numpy().astype("int64"))
        elif not getattr(idx, "is_trained", True):
            return idx  # an untrained IVF index: searched exactly until it has enough keys
        self._indexed[key] = int(self.count[b])
        return idx

    def _rows(self, b, h, ids):
        return self.keys[b, h, (ids % self.capacity).to(self.keys.device)].float().cpu().contiguous().numpy()

    def _search_faiss(self, queries, k):
        B, H, T, _ = queries.shape
        out = torch.full((B, H, T, k), -1, dtype=torch.int64)
        q = queries.detach().float().cpu()
        for b in range(B):
            if int(self.count[b]) == 0:
                continue
            for h in range(H):
                idx = self._index_for(b, h)
                if self.cfg.index == "ivf" and not getattr(idx, "is_trained", True):
                    out[b, h] = self._exact_row(q[b, h], b, h, k)
                    continue
                _, ids = idx.search(q[b, h].contiguous().numpy(), k)
                out[b, h] = torch.from_numpy(ids)
        return out.to(queries.device)

    def _exact_row(self, q, b, h, k):
        n = int(self.size()[b])
        live_from = max(0, int(self.count[b]) - self.capacity)
        ids = torch.arange(live_from, live_from + n)
        keys = self.keys[b, h, (ids % self.capacity).to(self.keys.device)].float().cpu()
        top = (q @ keys.T).topk(min(k, n), -1).indices
        res = torch.full((q.shape[0], k), -1, dtype=torch.int64)
        res[:, : top.shape[1]] = ids[top]
        return res

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"keys": self.keys, "values": self.values, "count": self.count.clone(),
                "config": dict(vars(self.cfg))}

    @classmethod
    def from_state_dict(cls, sd: dict) -> KNNMemory:
        B, H, C, d = sd["keys"].shape
        mem = cls(B, H, d, MemoryConfig(**sd["config"]), device=sd["keys"].device, dtype=sd["keys"].dtype)
        mem.keys.copy_(sd["keys"])
        mem.values.copy_(sd["values"])
        mem.count.copy_(sd["count"])
        return mem

    def map_tensors(self, fn) -> KNNMemory:
        """The same memory with ``fn`` applied to its storage (detach, device moves)."""
        new = KNNMemory.__new__(KNNMemory)
        new.__dict__.update(self.__dict__)
        new.keys, new.values = fn(self.keys), fn(self.values)
        new._indexes, new._indexed = dict(self._indexes), dict(self._indexed)
        return new
