"""A bounded kNN memory of (key, value) pairs per (batch row, head), searched by inner product.

Storage is a ring buffer of ``capacity`` entries per row (all heads together), the source of truth
for every backend: entry number i of a row lives in slot i mod capacity, so when a row overflows the
oldest entries are overwritten first (eviction: oldest first). A search backend only proposes entry
numbers; results are read back from the ring and dropped if their entry was evicted meanwhile, so an
overflowing memory can return fewer neighbours but never wrong values.

Backends:
* ``exact`` — torch matmul + top-k on any device (the oracle);
* ``faiss`` — one index per (row, head): ``flat`` (IndexFlatIP, exact), ``ivf`` (IndexIVFFlat with
  ``nlist``/``nprobe``, searched exactly until ``ivf_train_size`` keys are live), or
  ``hnsw`` (IndexHNSWFlat with ``hnsw_m``/``ef_search``; it cannot remove: evicted entries are over-fetched
  and dropped, the index rebuilt from the ring once they reach half of it). A GPU
  index is used when faiss has GPU support and the tensors live on CUDA. faiss is imported lazily;

The IVF index searches inner products as Euclidean distances (Bachrach et al. 2014): a key k becomes
[k, sqrt(R^2 - |k|^2)] and a query q becomes [q, 0], so |q' - k'|^2 = |q|^2 + R^2 - 2 q.k ranks keys exactly
as q.k does, for every key of norm <= R. Trained model keys have norms spread over a factor of 5 or more,
and inner-product lists (centroids compared by q.c) favour the lists of long centroids over the lists that
hold a query's best keys: on a trained fot_tiny's keys (norms 1.4-15) recall@32 at 64 lists and nprobe 8 is
0.90 with inner-product lists and 0.96 lifted, at 8K, 64K and 256K keys (``benchmarks/fot.py``, table 2). Its
quantizer is trained on the memory's own live keys, with R 1.5 times the longest of them, and retrained (the
index rebuilt from the ring) when the live keys have grown ``ivf_regrow`` times since, or a new key is longer
than R; ``nlist="auto"`` picks
the number of lists at each training (about 2 sqrt(n), at least 39 keys per list).

Dense attention over the whole memory (FoT's ``memory_backend: dense``) needs no search: ``all()``
hands every live entry to attention, whatever the backend.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from kernels import bf16_matmul
from memory import exact

BACKENDS = ("exact", "faiss")
IVF_NORM_MARGIN = 1.5  # the IVF's norm bound R over its training keys' longest (recall on model keys: no loss)
FAISS_INDEXES = ("flat", "ivf", "hnsw")


@dataclass
class MemoryConfig:
    capacity: int = 65536  # entries per batch row (a token writes one entry per head)
    backend: str = "exact"
    index: str = "flat"  # faiss: flat | ivf | hnsw
    nlist: int | str = 64  # or "auto": about 2 sqrt(live keys), chosen at each (re)training
    nprobe: int = 8
    ivf_train_size: int = 4096
    ivf_regrow: float = 4.0  # retrain once the live keys have grown this many times since the last training
    hnsw_m: int = 32
    ef_search: int = 64
    faiss_threads: int = 1  # faiss's threads while it builds an index (k-means training, adds); searches run on
    # torch's thread count: a search's results do not depend on its threads, a k-means' could
    exact_bf16: bool = True  # exact search: bf16 candidates re-ranked in float32, certified exact (memory.exact),
    # where bf16 matmuls are fast (kernels.bf16_matmul.fast_bf16: not on an AVX2-only CPU, where float32 is as fast)
    exact_bf16_from: int = 4096  # ... from this many live entries on (below, float32 is faster: search ms bf16 vs
    # float32, 4 heads x 512 queries, top-32, AMX Xeon, 2 threads: 12.9 vs 10.5 at 2K, 16.0 vs 17.5 at 4K, 24.6 vs
    # 33.8 at 8K, 69.8 vs 138.5 at 32K entries)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"memory backend={self.backend!r} is unknown; use one of {BACKENDS}")
        if self.index not in FAISS_INDEXES:
            raise ValueError(f"memory index={self.index!r} is unknown; use one of {FAISS_INDEXES}")
        if self.capacity < 1:
            raise ValueError(f"memory capacity={self.capacity} must be >= 1")
        if self.nlist != "auto" and (isinstance(self.nlist, bool) or not isinstance(self.nlist, int) or self.nlist < 1):
            raise ValueError(f"memory nlist={self.nlist!r} must be an integer >= 1 or 'auto'")
        if not self.ivf_regrow > 1:
            raise ValueError(f"memory ivf_regrow={self.ivf_regrow} must be > 1 (retrain when the keys grow that much)")


def auto_nlist(n: int) -> int:
    """IVF lists for ``n`` training keys: the largest power of two <= 2 sqrt(n) with >= 39 keys per list (faiss
    warns below), at least 1."""
    nlist = 1
    while nlist * 2 <= 2 * n ** 0.5 and nlist * 2 * 39 <= n:
        nlist *= 2
    return nlist


def _faiss():
    import torch  # noqa: F401  (torch before faiss: both bundle OpenMP)

    try:
        return importlib.import_module("faiss")
    except ImportError as e:
        raise ImportError("memory backend 'faiss' needs faiss: `pip install faiss-cpu` (or faiss-gpu-cu12)") from e


@contextmanager
def faiss_threads(n: int):
    """faiss's OpenMP threads set to ``n`` inside the block, torch's thread count restored after it. faiss and
    torch share one OpenMP runtime, so ``faiss.omp_set_num_threads`` is torch's setting too: left at 1, the rest
    of the process ran torch's OpenMP ops on one thread, silently (FoT streaming with exact search, after a
    faiss call in the same process, at 0.59-0.69x its wall-clock speed; a float32 flash attention of 4 x 512 x 64
    at 2.4x its CPU time; benchmarks.fot table 4 and a probe, AMX Xeon)."""
    faiss, threads = _faiss(), torch.get_num_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield faiss
    finally:
        torch.set_num_threads(threads)


class KNNMemory:
    def __init__(self, batch: int, heads: int, head_dim: int, config: MemoryConfig | None = None,
                 device=None, dtype=torch.float32, value_dim: int | None = None):
        """``value_dim``: the values' width when it differs from the keys' (Megalodon: E/H vs Z/H)."""
        self.cfg = config or MemoryConfig()
        self.B, self.H, self.d = batch, heads, head_dim
        self.dv = head_dim if value_dim is None else value_dim
        C = self.cfg.capacity
        self.keys = torch.zeros(batch, heads, C, head_dim, device=device, dtype=dtype)
        self.values = torch.zeros(batch, heads, C, self.dv, device=device, dtype=dtype)
        self.count = torch.zeros(batch, dtype=torch.int64)  # entries ever written per row (CPU)
        self.keys_bf16: torch.Tensor | None = None  # the keys in bfloat16 for the exact search (built when needed)
        self.key_norm_max = torch.zeros(batch, heads, device=device)  # an upper bound of live keys' norms
        self._indexes: dict[tuple[int, int], object] = {}
        self._indexed: dict[tuple[int, int], tuple[int, int]] = {}  # entry numbers [lo, hi) each index holds
        self._keepalive: dict[tuple[int, int], object] = {}
        self._on_gpu: dict[tuple[int, int], bool] = {}
        self._ivf: dict[tuple[int, int], tuple[int, float]] = {}  # (keys trained on, norm bound R) per IVF index

    # ------------------------------------------------------------------ bookkeeping
    @property
    def capacity(self) -> int:
        return self.cfg.capacity

    def size(self) -> torch.Tensor:
        """Live entries per row."""
        return self.count.clamp(max=self.capacity)

    def nbytes(self) -> int:
        """Bytes held by live keys and values (the ring), not counting index structures."""
        per = self.H * (self.d + self.dv) * self.keys.element_size()
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
        if (B, H, d) != (self.B, self.H, self.d) or values.shape != (B, H, n, self.dv):
            raise ValueError(f"memory holds keys [B={self.B}, H={self.H}, d={self.d}] and values of width {self.dv}, "
                             f"got keys {tuple(keys.shape)} and values {tuple(values.shape)}")
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
            if self.keys_bf16 is not None:
                self.keys_bf16[b][:, slots] = kb.to(torch.bfloat16)
            norms = kb.float().norm(dim=-1).amax(-1).to(self.key_norm_max.device)
            self.key_norm_max[b] = torch.maximum(self.key_norm_max[b], norms)
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
            self.key_norm_max[b] = 0
            for h in range(self.H):
                self._indexes.pop((b, h), None)
                self._indexed.pop((b, h), None)
                self._on_gpu.pop((b, h), None)
                self._ivf.pop((b, h), None)

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
        return self.gather(self.search_ids(queries, k))

    def search_ids(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """The entry numbers [B, H, T, k] of ``search`` (-1 where invalid), without reading their keys and values."""
        if self.cfg.backend == "faiss":
            return self._search_faiss(queries, k)
        return self._search_exact(queries, k)

    def gather(self, ids: torch.Tensor):
        """Keys/values of entry numbers ``ids`` [B, H, T, k] (-1 or evicted: invalid), read from the ring
        with one contiguous row gather (the ring viewed as [B*H*capacity, d])."""
        B, H, T, k = ids.shape
        dev = self.keys.device
        ids = ids.to(dev)
        live_from = (self.count - self.capacity).clamp(min=0).to(dev)
        valid = ids >= live_from.view(B, 1, 1, 1)  # live_from >= 0, so -1 is invalid too
        # -1 reads slot 0 and an evicted entry the newer one in its slot; both are masked by valid
        row = (torch.arange(B, device=dev).view(B, 1, 1, 1) * H + torch.arange(H, device=dev).view(1, H, 1, 1))
        flat = (ids.clamp(min=0) % self.capacity + row * self.capacity).permute(0, 2, 1, 3).reshape(-1)
        kk = self.keys.view(-1, self.d).index_select(0, flat).view(B, T, H, k, self.d)
        vv = self.values.view(-1, self.dv).index_select(0, flat).view(B, T, H, k, self.dv)
        return kk, vv, valid.permute(0, 2, 1, 3), ids.masked_fill(~valid, -1)

    def _search_exact(self, queries, k, block: int | None = None):
        """Exact top-k (``memory.exact``): bf16 candidates certified in float32 for large memories of float32
        keys, float32 blocks otherwise."""
        n = max(1, int(self.size().max()))  # slots fill in order before the ring wraps
        live = self.size()
        keys = self.keys[:, :, :n]
        if (self.cfg.exact_bf16 and self.keys.dtype == torch.float32 and n >= self.cfg.exact_bf16_from
                and bf16_matmul.fast_bf16(queries.device)):  # an AVX2-only CPU: float32 (bf16 is no faster there)
            if self.keys_bf16 is None:
                self.keys_bf16 = self.keys.to(torch.bfloat16)
            best_v, best_s = exact.search_bf16(queries, self.keys, self.keys_bf16, self.key_norm_max, live, k,
                                               block=block, n=n)
        else:
            best_v, best_s = exact.search_fp32(queries, keys, live, k, block)
        ids = best_s  # slot -> the newest entry there: the slot itself until the ring wraps
        if int(self.count.max()) > self.capacity:
            count = self.count.to(best_s.device).view(-1, 1, 1, 1)
            ids = (count - 1 - best_s) // self.capacity * self.capacity + best_s
        return ids.masked_fill(best_v == float("-inf"), -1)  # exact search: k entries, -inf where empty

    # ------------------------------------------------------------------ faiss
    def _new_index(self, b: int, h: int, live_from: int):
        """A fresh (row, head) index, and the live keys it was trained on (an IVF index trains on them, lifted:
        ``_index_for`` adds those same rows rather than reading the ring again), or None."""
        faiss, cfg, d = _faiss(), self.cfg, self.d
        trained_on = None
        if cfg.index == "flat":
            idx = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        elif cfg.index == "hnsw":
            idx = faiss.IndexIDMap2(faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT))
        else:  # Euclidean IVF over keys lifted to norm R (see the module's note)
            self._ivf.pop((b, h), None)
            ids = torch.arange(live_from, int(self.count[b]))
            n = len(ids)
            nlist = auto_nlist(n) if cfg.nlist == "auto" else cfg.nlist
            quant = faiss.IndexFlatL2(d + 1)
            idx = faiss.IndexIVFFlat(quant, d + 1, nlist, faiss.METRIC_L2)  # ids built in
            idx.cp.max_points_per_centroid = 64  # k-means on a sample: training stays seconds at 1M keys
            idx.cp.niter = 10
            self._keepalive[(b, h)] = quant  # the IVF index does not own its quantizer
            if n >= cfg.ivf_train_size:  # trained on the memory's own live keys
                keys = self._rows(b, h, ids)
                bound = IVF_NORM_MARGIN * float(keys.norm(dim=-1).max())
                self._ivf[(b, h)] = (n, bound)
                trained_on = self._lifted(keys, bound)
                idx.train(trained_on.numpy())
        if self.keys.is_cuda and cfg.index != "hnsw" and hasattr(faiss, "StandardGpuResources"):
            self._gpu_res = getattr(self, "_gpu_res", None) or faiss.StandardGpuResources()
            idx = faiss.index_cpu_to_gpu(self._gpu_res, self.keys.device.index or 0, idx)
            self._on_gpu[(b, h)] = True
        return idx, trained_on

    def _index_for(self, b: int, h: int):
        """The (row, head) index, brought up to date: evicted entries leave it (flat / IVF on CPU remove
        them; HNSW and GPU indexes, which cannot, are rebuilt from the ring once stale entries reach half
        of them, and searched with k + stale candidates meanwhile); new entries are added."""
        faiss = _faiss()
        cfg, key = self.cfg, (b, h)
        count = int(self.count[b])
        live_from = max(0, count - self.capacity)
        idx = self._indexes.get(key)
        lo, hi = self._indexed.get(key, (live_from, live_from))
        stale = max(0, live_from - lo)
        untrained_ivf = cfg.index == "ivf" and idx is not None and not idx.is_trained
        removable = cfg.index != "hnsw" and not self._on_gpu.get(key, False)
        new_ids = torch.arange(max(hi, live_from), count)
        rebuild = idx is None or (untrained_ivf and count - live_from >= cfg.ivf_train_size) or \
            (stale and not removable and stale * 2 >= hi - lo) or \
            (key in self._ivf and count - live_from >= cfg.ivf_regrow * self._ivf[key][0])  # grew: retrain
        fresh = None  # a trained IVF index's new keys, read once: checked against its norm bound, then added
        if not rebuild and key in self._ivf and len(new_ids):
            fresh = self._rows(b, h, new_ids)
            rebuild = bool(fresh.norm(dim=-1).max() > self._ivf[key][1])  # would not rank by inner product
        ready = None  # the rows to add as the index takes them (lifted, for IVF), when already read
        if rebuild:
            self._on_gpu.pop(key, None)
            idx, ready = self._new_index(b, h, live_from)
            lo = hi = live_from
            new_ids = torch.arange(live_from, count)
        else:
            if stale and removable:
                idx.remove_ids(faiss.IDSelectorRange(lo, live_from))
                lo = live_from
            if fresh is not None:
                ready = self._lifted(fresh, self._ivf[key][1])
        if getattr(idx, "is_trained", True) and len(new_ids):
            ready = self._rows(b, h, new_ids) if ready is None else ready  # flat / HNSW: plain keys
            idx.add_with_ids(ready.numpy(), new_ids.numpy().astype("int64"))
            hi = count
        self._indexes[key] = idx
        self._indexed[key] = (lo, hi)
        return idx, max(0, live_from - lo)

    @staticmethod
    def _lifted(keys: torch.Tensor, bound: float) -> torch.Tensor:
        """Keys [n, d] -> [n, d + 1] of norm ``bound``: Euclidean distance to [q, 0] ranks as inner product."""
        extra = (bound ** 2 - keys.pow(2).sum(-1, keepdim=True)).clamp(min=0).sqrt()
        return torch.cat([keys, extra], -1).contiguous()

    def _rows(self, b, h, ids) -> torch.Tensor:
        """Keys of entry numbers ``ids`` of (row b, head h): float32, on the CPU, contiguous (faiss reads them)."""
        return self.keys[b, h, (ids % self.capacity).to(self.keys.device)].float().cpu().contiguous()

    def _search_faiss(self, queries, k):
        """One search call per (row, head) index with all of that row's queries at once; candidates
        that were evicted after indexing are over-fetched and dropped. The indexes are updated and trained on
        ``faiss_threads`` threads and searched on torch's thread count (4 heads x 512 queries, IVF on a trained
        FoT's keys: the same CPU time, half the wall time on 2 threads), torch's own setting restored after."""
        searching = torch.get_num_threads()  # a search's results do not depend on its threads; a build's may
        with faiss_threads(self.cfg.faiss_threads):
            return self._search_indexes(queries, k, searching)

    def _search_indexes(self, queries, k, searching: int):
        faiss = _faiss()
        B, H, T, _ = queries.shape
        out = torch.full((B, H, T, k), -1, dtype=torch.int64)
        q = queries.detach().float().cpu().contiguous()
        for b in range(B):
            if int(self.count[b]) == 0:
                continue
            live_from = max(0, int(self.count[b]) - self.capacity)
            for h in range(H):
                idx, stale = self._index_for(b, h)
                if self.cfg.index == "ivf" and not getattr(idx, "is_trained", True):
                    out[b, h] = self._exact_row(q[b, h], b, h, k)  # too few keys to train yet
                    continue
                self._search_settings(idx, self._on_gpu.get((b, h), False))
                rows = q[b, h]  # (not ``queries``: the result goes back to the queries' device)
                if (b, h) in self._ivf:  # [q, 0]: Euclidean distance to the lifted keys ranks by q.k
                    rows = torch.nn.functional.pad(rows, (0, 1))
                faiss.omp_set_num_threads(searching)
                _, ids = idx.search(rows.contiguous().numpy(), k + stale)
                faiss.omp_set_num_threads(self.cfg.faiss_threads)
                ids = torch.from_numpy(ids)
                if stale:  # keep the first k live ones per query
                    live = ids >= live_from
                    order = torch.argsort((~live).to(torch.int8), dim=-1, stable=True)[:, :k]
                    ids = torch.where(live.gather(-1, order), ids.gather(-1, order), torch.full_like(order, -1))
                out[b, h] = ids[:, :k]
        return out.to(queries.device)

    def _search_settings(self, idx, on_gpu: bool) -> None:
        """The config's search settings (IVF ``nprobe``, HNSW ``ef_search``) put on an index before each search:
        changing them on a built memory takes effect at its next search, with no rebuild (at 4M keys an IVF
        build takes minutes; its recall against nprobe is a setting to sweep)."""
        faiss, cfg = _faiss(), self.cfg
        if cfg.index == "ivf":
            ivf = idx if on_gpu else faiss.extract_index_ivf(idx)  # a GPU IVF index has nprobe and nlist itself
            ivf.nprobe = min(cfg.nprobe, ivf.nlist)
        elif cfg.index == "hnsw":
            faiss.downcast_index(idx.index).hnsw.efSearch = cfg.ef_search

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
        mem = cls(B, H, d, MemoryConfig(**sd["config"]), device=sd["keys"].device, dtype=sd["keys"].dtype,
                  value_dim=sd["values"].shape[-1])
        mem.keys.copy_(sd["keys"])
        mem.values.copy_(sd["values"])
        mem.count.copy_(sd["count"])
        mem.key_norm_max = mem.keys.float().norm(dim=-1).amax(-1).to(mem.key_norm_max.device)  # bounds the live ones
        return mem

    def clone(self) -> KNNMemory:
        """An independent copy: reading more into one leaves the other as it was (an evaluation continues one read
        prefix several ways). Its storage, counts and CPU faiss indexes are copied; a GPU index is not, and the
        copy rebuilds it from its ring at its first search (the same neighbours for a flat index)."""
        new = self.map_tensors(torch.clone)
        new.count = self.count.clone()
        new._indexes, new._indexed, new._keepalive, new._on_gpu, new._ivf = {}, {}, {}, {}, {}
        faiss = _faiss() if self._indexes else None
        for key, idx in self._indexes.items():
            if self._on_gpu.get(key, False):
                continue
            new._indexes[key] = faiss.clone_index(idx)  # an IVF copy owns a copy of its quantizer
            new._indexed[key] = self._indexed[key]
            if key in self._ivf:
                new._ivf[key] = self._ivf[key]
        return new

    def map_tensors(self, fn) -> KNNMemory:
        """The same memory with ``fn`` applied to its storage (detach, device moves)."""
        new = KNNMemory.__new__(KNNMemory)
        new.__dict__.update(self.__dict__)
        new.keys, new.values = fn(self.keys), fn(self.values)
        new.keys_bf16 = None if self.keys_bf16 is None else fn(self.keys_bf16)
        new.key_norm_max = fn(self.key_norm_max)
        new._indexes, new._indexed, new._on_gpu = dict(self._indexes), dict(self._indexed), dict(self._on_gpu)
        new._ivf = dict(self._ivf)
        return new
