from __future__ import annotations

import math

import pytest
import torch

from memory import KNNMemory, MemoryConfig

B, H, D = 2, 2, 16


def filled(cfg: MemoryConfig, n_add=6, per=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    mem = KNNMemory(B, H, D, cfg)
    log_k, log_v = [], []
    for _ in range(n_add):
        k, v = torch.randn(B, H, per, D, generator=g), torch.randn(B, H, per, D, generator=g)
        mem.add(k, v)
        log_k.append(k)
        log_v.append(v)
    return mem, torch.cat(log_k, 2), torch.cat(log_v, 2)


def oracle(all_k, all_v, q, k, capacity):
    """Top-k over the newest `capacity` entries, by brute force."""
    keys, vals = all_k[:, :, -capacity:], all_v[:, :, -capacity:]
    top = torch.einsum("bhtd,bhnd->bhtn", q, keys).topk(k, -1).indices
    idx = top[..., None].expand(-1, -1, -1, -1, D)
    kk = torch.gather(keys[:, :, None].expand(-1, -1, q.shape[2], -1, -1), 3, idx)
    vv = torch.gather(vals[:, :, None].expand(-1, -1, q.shape[2], -1, -1), 3, idx)
    return kk.permute(0, 2, 1, 3, 4), vv.permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("backend,index", [("exact", "flat"), ("faiss", "flat")])
@pytest.mark.parametrize("capacity", [1000, 50], ids=["no-overflow", "overflow"])
def test_search_matches_brute_force_oracle(backend, index, capacity):
    mem, all_k, all_v = filled(MemoryConfig(capacity=capacity, backend=backend, index=index))
    q = torch.randn(B, H, 7, D, generator=torch.Generator().manual_seed(9))
    kk, vv, valid, _ = mem.search(q, 5)
    ok, ov = oracle(all_k, all_v, q, 5, min(capacity, all_k.shape[2]))
    assert valid.all()
    # same neighbours (as sets, ties aside): compare sorted scores and the values they carry
    s1 = torch.einsum("bthd,bthkd->bthk", q.transpose(1, 2), kk).sort(-1).values
    s2 = torch.einsum("bthd,bthkd->bthk", q.transpose(1, 2), ok).sort(-1).values
    torch.testing.assert_close(s1, s2)
    torch.testing.assert_close(vv.sum(-2), ov.sum(-2), atol=1e-5, rtol=1e-5)


def test_faiss_flat_returns_the_same_ids_as_exact():
    cfg = dict(capacity=70)
    m1, _, _ = filled(MemoryConfig(backend="exact", **cfg))
    m2, _, _ = filled(MemoryConfig(backend="faiss", index="flat", **cfg))
    q = torch.randn(B, H, 9, D, generator=torch.Generator().manual_seed(2))
    ids1, ids2 = m1.search(q, 8)[3], m2.search(q, 8)[3]
    assert torch.equal(ids1.sort(-1).values, ids2.sort(-1).values)


@pytest.mark.parametrize("index", ["flat", "ivf", "hnsw"])
def test_a_faiss_search_leaves_torch_thread_count_as_it_was(index, monkeypatch):
    """faiss and torch share one OpenMP runtime: a search on faiss_threads=1 must not leave torch's ops on one
    thread for the rest of the process. The index is built on faiss_threads and searched on torch's count."""
    import faiss

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    set_to = []
    real = faiss.omp_set_num_threads
    monkeypatch.setattr(faiss, "omp_set_num_threads", lambda n: set_to.append(n) or real(n))
    try:
        mem, _, _ = filled(MemoryConfig(capacity=200, backend="faiss", index=index, nlist=2, ivf_train_size=64,
                                        faiss_threads=1), per=40)
        mem.search(torch.randn(B, H, 3, D), 4)
        assert torch.get_num_threads() == 2
        assert set_to[0] == 1 and 2 in set_to  # built on faiss_threads, searched on torch's count
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("index,floor", [("ivf", 0.8), ("hnsw", 0.9)])
def test_approximate_indexes_recall_above_a_floor(index, floor):
    torch.manual_seed(0)
    cfg = MemoryConfig(capacity=4096, backend="faiss", index=index, nlist=16, nprobe=8, ivf_train_size=1024,
                       hnsw_m=16, ef_search=64)
    exact = KNNMemory(1, 1, D, MemoryConfig(capacity=4096))
    approx = KNNMemory(1, 1, D, cfg)
    for _ in range(4):
        k, v = torch.randn(1, 1, 512, D), torch.randn(1, 1, 512, D)
        exact.add(k, v)
        approx.add(k, v)
    q = torch.randn(1, 1, 64, D)
    a, e = approx.search(q, 10)[3], exact.search(q, 10)[3]
    recall = sum(len(set(a[0, 0, t].tolist()) & set(e[0, 0, t].tolist())) for t in range(64)) / (64 * 10)
    assert recall >= floor, f"{index} recall@10 {recall:.2f} < {floor}"


def recall(a, e):
    return sum(len(set(a[0, 0, t].tolist()) & set(e[0, 0, t].tolist())) for t in range(a.shape[2])) / a[0, 0].numel()


def spread_keys(n, g, clusters=32):
    """Clustered keys whose norms spread over a factor of ~3, like a trained model's."""
    centres = torch.randn(clusters, D, generator=g)
    keys = centres[torch.randint(0, clusters, (n,), generator=g)] + 0.5 * torch.randn(n, D, generator=g)
    return keys * torch.exp(torch.randn(n, 1, generator=g) * 0.3)


def spread_case(n, n_queries, seed):
    """One head's n spread keys, random queries, and their exact top-10 entry numbers."""
    g = torch.Generator().manual_seed(seed)
    keys = spread_keys(n, g).view(1, 1, -1, D)
    q = torch.randn(1, 1, n_queries, D, generator=g)
    exact = KNNMemory(1, 1, D, MemoryConfig(capacity=n))
    exact.add(keys, keys)
    return keys, q, exact.search(q, 10)[3]


def test_ivf_ranks_by_inner_product_on_keys_of_spread_norms():
    """The lifted (Euclidean) IVF finds the inner-product neighbours of keys whose norms differ: all of them
    when every list is probed (an IVF ranking by Euclidean distance without the lift would not), most of them
    with an eighth of the lists probed."""
    keys, q, want = spread_case(8192, 128, seed=11)
    for nprobe, floor in ((64, 1.0), (8, 0.9)):
        ivf = KNNMemory(1, 1, D, MemoryConfig(capacity=8192, backend="faiss", index="ivf", nlist=64, nprobe=nprobe,
                                              ivf_train_size=1024))
        ivf.add(keys, keys)
        got = recall(ivf.search(q, 10)[3], want)
        assert got >= floor, f"recall@10 {got:.3f} with {nprobe} of 64 lists probed"


@pytest.mark.parametrize("index,setting,low,high", [("ivf", "nprobe", 1, 64), ("hnsw", "ef_search", 1, 256)])
def test_search_settings_changed_on_a_built_memory_take_effect_without_a_rebuild(index, setting, low, high):
    """nprobe / ef_search are read from the config at every search: a memory built with a low setting, raised
    afterwards, searches as one built with the high setting (the same index, no rebuild), which a low setting
    does not (an IVF probing every list is exact)."""
    keys, q, want = spread_case(4096, 64, seed=13)
    base = {"capacity": 4096, "backend": "faiss", "index": index, "nlist": 64, "ivf_train_size": 1024, "hnsw_m": 4}
    mem = KNNMemory(1, 1, D, MemoryConfig(**base, **{setting: low}))
    mem.add(keys, keys)
    before = mem.search(q, 10)[3]
    built = mem._indexes[(0, 0)]
    setattr(mem.cfg, setting, high)
    after = mem.search(q, 10)[3]
    assert mem._indexes[(0, 0)] is built  # not rebuilt
    fresh = KNNMemory(1, 1, D, MemoryConfig(**base, **{setting: high}))
    fresh.add(keys, keys)
    assert torch.equal(after, fresh.search(q, 10)[3])
    assert recall(before, want) < recall(after, want)
    if index == "ivf":
        assert recall(after, want) == 1.0


def test_ivf_retrains_on_its_own_keys_as_the_memory_grows_and_for_a_longer_key():
    g = torch.Generator().manual_seed(12)
    mem = KNNMemory(1, 1, D, MemoryConfig(capacity=1 << 16, backend="faiss", index="ivf", nlist="auto", nprobe=64,
                                          ivf_train_size=1000, ivf_regrow=4.0))
    q = torch.randn(1, 1, 4, D, generator=g)
    trained, lists = [], []
    for _ in range(5):
        keys = spread_keys(1000, g).view(1, 1, -1, D)
        mem.add(keys, keys)
        mem.search(q, 4)
        trained.append(mem._ivf[(0, 0)][0])
        lists.append(mem._indexes[(0, 0)].nlist)
    assert trained == [1000, 1000, 1000, 4000, 4000]  # retrained at 4x the keys it was trained on
    assert lists == [16, 16, 16, 64, 64]  # auto: the most (a power of two) <= 2 sqrt(n) with >= 39 keys each
    # a key longer than every trained one, aligned with a query: the index is retrained and finds it first
    bound = mem._ivf[(0, 0)][1]
    long_key = q[:, :, :1] / q[:, :, :1].norm() * bound * 3
    mem.add(long_key, long_key)
    ids = mem.search(q[:, :, :1], 1)[3]
    assert mem._ivf[(0, 0)][1] == pytest.approx(bound * 3 * 1.5, rel=1e-5) and int(ids.flatten()[0]) == 5000


def test_an_ivf_index_reads_each_key_of_the_ring_once_per_update(monkeypatch):
    """Retraining reads the live keys once (trained on, then added); an update reads only the new keys, once
    (checked against the norm bound, then added); the results match an exact search of the same keys."""
    g = torch.Generator().manual_seed(3)
    mem = KNNMemory(1, 1, D, MemoryConfig(capacity=1 << 14, backend="faiss", index="ivf", nlist=8, nprobe=8,
                                          ivf_train_size=500, ivf_regrow=4.0))
    read, rows = [], mem._rows
    monkeypatch.setattr(mem, "_rows", lambda b, h, ids: read.append(len(ids)) or rows(b, h, ids))
    q = torch.randn(1, 1, 4, D, generator=g)
    exact = KNNMemory(1, 1, D, MemoryConfig(capacity=1 << 14))
    for n, want in ((600, [600]), (300, [300]), (2000, [2900])):  # trained at 600; 2,900 >= 4 x 600: retrained
        keys = spread_keys(n, g).view(1, 1, -1, D)
        mem.add(keys, keys)
        exact.add(keys, keys)
        read.clear()
        got = mem.search(q, 4)[3]
        assert read == want
        assert torch.equal(got.sort(-1).values, exact.search(q, 4)[3].sort(-1).values)  # nprobe = nlist: exact


def test_ivf_nlist_accepts_auto_and_refuses_other_words():
    MemoryConfig(nlist="auto")
    with pytest.raises(ValueError, match="nlist='many' must be an integer >= 1 or 'auto'"):
        MemoryConfig(nlist="many")


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_reset_isolates_rows(backend):
    mem, _, _ = filled(MemoryConfig(capacity=500, backend=backend))
    mem.reset(torch.tensor([True, False]))
    assert mem.size().tolist() == [0, 120]
    q = torch.randn(B, H, 3, D)
    _, _, valid, ids = mem.search(q, 4)
    assert not valid[0].any() and valid[1].all()
    assert (ids[0] == -1).all()
    mem.add(torch.ones(B, H, 2, D), torch.ones(B, H, 2, D))
    assert mem.size().tolist() == [2, 122]


@pytest.mark.parametrize("backend,index", [("exact", "flat"), ("faiss", "flat"), ("faiss", "hnsw"), ("faiss", "ivf")])
def test_overflow_evicts_oldest_and_never_returns_wrong_values(backend, index):
    cfg = MemoryConfig(capacity=30, backend=backend, index=index, nlist=2, nprobe=2, ivf_train_size=20)
    mem = KNNMemory(1, 1, D, cfg)
    # entry i has key e_i-ish and value filled with i: a returned value must match its id
    for step in range(5):
        ids = torch.arange(step * 13, step * 13 + 13, dtype=torch.float32)
        keys = torch.randn(1, 1, 13, D)
        mem.add(keys, ids.view(1, 1, 13, 1).expand(1, 1, 13, D).clone())
        q = torch.randn(1, 1, 4, D)
        _, vv, valid, got = mem.search(q, 6)
        live_from = max(0, (step + 1) * 13 - 30)
        assert (got[valid.permute(0, 2, 1, 3)] >= live_from).all(), "an evicted entry was returned"
        vals = vv[..., 0]  # [B, T, H, k]
        ids_btk = got.permute(0, 2, 1, 3)
        assert torch.equal(vals[valid], ids_btk[valid].float()), "a value does not belong to its key"
    assert mem.size().item() == 30


def test_memory_bytes_are_keys_plus_values():
    mem, _, _ = filled(MemoryConfig(capacity=100))
    assert mem.nbytes() == B * 100 * H * D * 4 * 2
    half = KNNMemory(B, H, D, MemoryConfig(capacity=100), dtype=torch.bfloat16)
    half.add(torch.randn(B, H, 10, D), torch.randn(B, H, 10, D))
    assert half.nbytes() == B * 10 * H * D * 2 * 2


def test_state_round_trip():
    mem, _, _ = filled(MemoryConfig(capacity=64))
    q = torch.randn(B, H, 5, D)
    again = KNNMemory.from_state_dict(mem.state_dict())
    for a, b in zip(mem.search(q, 3), again.search(q, 3)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend,index", [("exact", "flat"), ("faiss", "flat"), ("faiss", "hnsw"), ("faiss", "ivf")])
def test_a_clone_searches_like_its_source_and_stays_apart_from_it(backend, index):
    """``clone`` copies storage, counts and indexes: the copy returns what the source returns, now and after both
    read the same entries, and reading into one (past the ring's end) leaves the other unchanged."""
    cfg = MemoryConfig(capacity=130, backend=backend, index=index, nlist=2, nprobe=2, ivf_train_size=40)
    mem, _, _ = filled(cfg)
    mem.search(torch.randn(B, H, 2, D), 3)  # faiss indexes exist before the copy
    copy = mem.clone()
    g = torch.Generator().manual_seed(5)
    q = torch.randn(B, H, 6, D, generator=g)
    before = mem.search(q, 4)
    for a, b in zip(before, copy.search(q, 4)):
        assert torch.equal(a, b)
    k, v = torch.randn(B, H, 25, D, generator=g), torch.randn(B, H, 25, D, generator=g)
    copy.add(k, v)  # wraps the ring of the copy only
    for a, b in zip(before, mem.search(q, 4)):
        assert torch.equal(a, b)
    assert mem.count.tolist() == [120, 120] and copy.count.tolist() == [145, 145]
    mem.add(k, v)
    for a, b in zip(mem.search(q, 4), copy.search(q, 4)):
        assert torch.equal(a, b)


def test_bad_config_fails_clearly():
    with pytest.raises(ValueError, match="memory backend='annoy' is unknown"):
        MemoryConfig(backend="annoy")


@pytest.mark.parametrize("index", ["flat", "ivf", "hnsw"])
def test_faiss_equals_exact_while_the_memory_overflows(index):
    """Searches between adds, capacity 16, 200 entries: evicted entries leave every index (they once
    stayed in it, won the top-k and were masked out: fewer valid neighbours than exact, an unbounded
    index). IVF with nprobe = nlist and HNSW on a handful of keys are exact here."""
    g = torch.Generator().manual_seed(4)
    cfg = dict(capacity=16, nlist=2, nprobe=2, ivf_train_size=8, hnsw_m=16, ef_search=64)
    exact = KNNMemory(B, H, D, MemoryConfig(backend="exact", **cfg))
    approx = KNNMemory(B, H, D, MemoryConfig(backend="faiss", index=index, **cfg))
    for step in range(25):
        k, v = torch.randn(B, H, 8, D, generator=g), torch.randn(B, H, 8, D, generator=g)
        exact.add(k, v)
        approx.add(k, v)
        q = torch.randn(B, H, 5, D, generator=g)
        e, a = exact.search(q, 6), approx.search(q, 6)
        assert int(a[2].sum()) == int(e[2].sum()) == B * H * 5 * 6  # as many valid neighbours as exact
        assert torch.equal(a[3].sort(-1).values, e[3].sort(-1).values), f"step {step}"
    for idx in approx._indexes.values():
        assert idx.ntotal <= 2 * approx.capacity  # bounded: evicted entries left or were rebuilt away


def test_blocked_exact_search_equals_one_top_k():
    mem, all_k, all_v = filled(MemoryConfig(capacity=100), n_add=6, per=20)
    q = torch.randn(B, H, 7, D, generator=torch.Generator().manual_seed(3))
    one = mem._search_exact(q, 9, block=10**9)
    blocks = mem._search_exact(q, 9, block=7)
    assert torch.equal(one.sort(-1).values, blocks.sort(-1).values)


def test_exact_search_over_a_large_partly_filled_wrapped_memory_equals_brute_force():
    """Large enough for the grouped top-k (> 8192 slots), rows filled to different sizes, one wrapped."""
    g = torch.Generator().manual_seed(5)
    mem = KNNMemory(B, H, D, MemoryConfig(capacity=12000))
    k0, v0 = torch.randn(B, H, 15000, D, generator=g), torch.randn(B, H, 15000, D, generator=g)
    mem.add(k0, v0, mask=torch.stack([torch.ones(15000, dtype=torch.bool), torch.arange(15000) < 9000]))
    q = torch.randn(B, H, 6, D, generator=g)
    kk, _, valid, _ = mem.search(q, 16)
    assert valid.all()
    for b, live in ((0, k0[0, :, -12000:]), (1, k0[1, :, :9000])):
        ref = torch.einsum("htd,hnd->htn", q[b], live).topk(16, -1).values.sort(-1).values
        got = torch.einsum("thd,thkd->htk", q[b].transpose(0, 1), kk[b]).sort(-1).values
        torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("case", ["gaussian", "clustered", "ties"])
def test_bf16_candidates_give_exactly_the_float32_top_k(case, bf16_is_fast):
    """The bf16 scan with its float32 re-rank returns the float32 search's entries: on spread scores (certified
    directly), on keys clustered around the query direction, and on duplicated keys (near-ties the
    certificate cannot separate: those queries are searched again in float32)."""
    from memory import exact

    g = torch.Generator().manual_seed({"gaussian": 6, "clustered": 7, "ties": 8}[case])
    n, d, k = 20000, 32, 16
    q = torch.randn(2, 2, 24, d, generator=g)
    keys = torch.randn(2, 2, n, d, generator=g)
    if case == "clustered":  # many keys almost parallel to the first query: scores bunched at the top
        keys[:, :, ::3] = q[:, :, :1] + 0.01 * torch.randn(2, 2, keys[:, :, ::3].shape[2], d, generator=g)
    if case == "ties":
        keys[:, :, 1000:1100] = keys[:, :, 2000:2001]
        q[:, :, :4] = keys[:, :, 2000:2001]
    live = torch.tensor([n, 15000])
    mem = KNNMemory(2, 2, d, MemoryConfig(capacity=n, exact_bf16_from=1))
    mem.add(keys, keys, mask=torch.stack([torch.ones(n, dtype=torch.bool), torch.arange(n) < 15000]))
    v32, s32 = exact.search_fp32(q, keys, live, k)
    v16, s16 = exact.search_bf16(q, keys, keys.bfloat16(), mem.key_norm_max, live, k)
    # the same entries; scores to float32 rounding (a GEMM and a gathered dot sum in different orders)
    torch.testing.assert_close(v16, v32, rtol=1e-5, atol=1e-5)
    assert torch.equal(s16.sort(-1).values, s32.sort(-1).values) or case == "ties"
    ids = mem._search_exact(q, k)  # the memory takes the bf16 path here
    ref = KNNMemory(2, 2, d, MemoryConfig(capacity=n, exact_bf16=False))
    ref.add(keys, keys, mask=torch.stack([torch.ones(n, dtype=torch.bool), torch.arange(n) < 15000]))
    assert torch.equal(ids.sort(-1).values, ref._search_exact(q, k).sort(-1).values) or case == "ties"


@pytest.fixture
def bf16_is_fast(monkeypatch):
    """The memory's exact search takes its bf16 path on any processor (it keeps to float32 on a CPU with no native
    bf16 GEMM, where bf16 is no faster: ``test_an_avx2_cpu_searches_in_float32``)."""
    from kernels import bf16_matmul

    monkeypatch.setattr(bf16_matmul, "native_bf16_gemm", lambda: True)


def test_an_avx2_cpu_searches_in_float32(monkeypatch):
    """Without a native bf16 GEMM the exact search scores in float32 (PyTorch's bf16 fallback is 25-50x slower,
    half of a FoT streaming evaluation on an AVX2 EPYC): the same entries, no bf16 copy of the keys."""
    from kernels import bf16_matmul
    from memory import exact

    g = torch.Generator().manual_seed(12)
    keys, q = torch.randn(1, 2, 5000, 8, generator=g), torch.randn(1, 2, 6, 8, generator=g)
    found, real = {}, exact.search_bf16
    for native in (True, False):
        monkeypatch.setattr(bf16_matmul, "native_bf16_gemm", lambda native=native: native)
        calls = []
        monkeypatch.setattr(exact, "search_bf16", lambda *a, **kw: calls.append(1) or real(*a, **kw))
        mem = KNNMemory(1, 2, 8, MemoryConfig(capacity=6000, exact_bf16_from=1))
        mem.add(keys, keys)
        found[native] = mem.search_ids(q, 4).sort(-1).values
        assert bool(calls) == native and (mem.keys_bf16 is not None) == native
    assert torch.equal(found[True], found[False])


def test_the_bf16_certificate_sends_unseparated_queries_back_to_float32(monkeypatch):
    from memory import exact

    calls = []
    real = exact._refine
    monkeypatch.setattr(exact, "_refine", lambda *a: calls.append(int(a[4].sum())) or real(*a))
    keys = torch.ones(1, 1, 9000, 8)  # every score equal: nothing can be certified
    exact.search_bf16(torch.ones(1, 1, 3, 8), keys, keys.bfloat16(), torch.full((1, 1), 8 ** 0.5),
                      torch.tensor([9000]), 4)
    assert calls == [3]


def test_a_growing_memory_searches_with_few_matmul_shapes_and_stays_exact(monkeypatch, bf16_is_fast):
    """A memory that grows by one window between searches (a streamed evaluation) meets a new key count at every
    search. The bf16 scan pads its last block to a bucketed width (masked slots of the ring), so its matmuls take
    a few shapes instead of one per search: oneDNN keeps a primitive with the keys packed for every shape (the
    fot_dictionary evaluation grew to 20 GB of them at 246K keys). The entries found stay the float32 search's,
    at every size, with one row holding fewer entries than the other."""
    widths, real = set(), torch.matmul

    def spy(a, b, *args, **kw):
        if a.dtype == torch.bfloat16:
            widths.add(b.shape[-1])
        return real(a, b, *args, **kw)

    monkeypatch.setattr(torch, "matmul", spy)
    g = torch.Generator().manual_seed(11)
    d, k, step, steps = 16, 8, 97, 120
    mem = KNNMemory(2, 2, d, MemoryConfig(capacity=step * steps + 5, exact_bf16_from=1))
    ref = KNNMemory(2, 2, d, MemoryConfig(capacity=step * steps + 5, exact_bf16=False))
    for i in range(steps):
        keys = torch.randn(2, 2, step, d, generator=g)
        mask = torch.ones(2, step, dtype=torch.bool)
        mask[1, step // 2:] = False  # row 1 fills half as fast
        mem.add(keys, keys, mask)
        ref.add(keys, keys, mask)
        q = torch.randn(2, 2, 5, d, generator=g)
        assert torch.equal(mem._search_exact(q, k).sort(-1).values, ref._search_exact(q, k).sort(-1).values), i
    octaves = math.log2(step * steps / step) + 1
    assert len(widths) <= 4 * octaves < steps / 3, sorted(widths)  # without the buckets: one width per search


def test_bucket_widths_round_up_by_at_most_a_quarter():
    from memory.exact import bucket

    for w in [1, 2, 3, 5, 100, 4096, 4097, 16504, 65535, 245_760, 1 << 20]:
        b = bucket(w)
        assert w <= b <= max(w * 1.25, w + 1), (w, b)
    assert {bucket(w) for w in range(4097, 8193)} == {5120, 6144, 7168, 8192}


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_exact_search_takes_queries_that_require_grad_over_a_partly_filled_ring(bf16, bf16_is_fast):
    """A memory layer searches with queries from the graph being trained, over a ring larger than its live keys
    (each head's block a slice of the ring, scored by a matmul per head): the search picks entries, so it takes
    no gradient, and the entries are the same as with detached queries."""
    g = torch.Generator().manual_seed(9)
    mem = KNNMemory(1, 2, 8, MemoryConfig(capacity=6000, exact_bf16_from=1 if bf16 else 10**9))
    mem.add(torch.randn(1, 2, 5000, 8, generator=g), torch.randn(1, 2, 5000, 8, generator=g))
    q = torch.randn(1, 2, 5, 8, generator=g, requires_grad=True)
    assert torch.equal(mem.search_ids(q, 4), mem.search_ids(q.detach(), 4))
