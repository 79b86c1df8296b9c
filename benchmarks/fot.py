"""FoT's kNN memory on CPU, side by side with `memorizing-transformers-pytorch` (installed only for this):

    pip install --no-deps --target /tmp/peers memorizing-transformers-pytorch==0.4.1 einops-exts==0.0.4 \\
        joblib filelock cloudpickle
    PEERS=/tmp/peers OMP_WAIT_POLICY=PASSIVE python -m benchmarks.fot [--keys-run RUN_DIR] [--quick]

The tables:
1. exact search against its floor: one window of a memory layer (4 heads x 512 queries, d=64, top-32)
   over n keys per head; the floor is what any exact search must do on this CPU: the bf16 score matmul and
   one read of the scores (their maxima by groups of 64). The search is timed twice: the top-k entry numbers
   (``KNNMemory.search_ids``), and ``search``, which also gathers their keys and values for attention (what
   every backend must do after it: 2 x 16 MB at 512 queries, top-32), against the floor plus one copy of
   those bytes (the least the gather can cost: it writes them);
2. search on a trained FoT's own keys and queries (its first memory layer; ``--keys-run`` or a fot_tiny
   trained here for ``--keys-steps``): recall@32 of each index against exact search, and its time;
3. equal work: one memory of n keys (one head: the peer keeps one memory head shared by all heads),
   the 2,048 queries of 4 heads x 512 tokens, top-32, on the trained keys: the peer's own memory class
   beside longlab's, with recall;
4. model level: streaming with n tokens in memory (width 256, 4 layers, windows of 512, batch 1): FoT's
   per-head memory (the paper's design: 4x the peer's keys searched) against the peer's model, in ``--rounds``
   rounds that alternate the two (the ratio is taken within each round: its median and range are printed).
And the CrossBatch training step beside the peer's (5); a memory of ``--big`` tokens (4M) with its IVF recall
at nprobe 16-64, on synthetic keys or, with ``--big-keys-run``, on a trained FoT's own keys (6); filling a memory
with ``read`` against ``forward`` (7).

The peer differs from FoT: one shared K/V head for memory, cosine-sim attention, separate memory and
local softmaxes merged by a learned gate, memories in memmapped files searched by faiss HNSW (M=15,
efSearch 16), no CrossBatch.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from architectures.fot import FocusedTransformer  # noqa: E402
from benchmarks.common import measure, table  # noqa: E402
from experiments.cli import with_allocator  # noqa: E402
from memory import KNNMemory, MemoryConfig, exact  # noqa: E402
from memory.knn import faiss_threads  # noqa: E402

K = 32  # neighbours per query (the peer's default)
IVF = {"backend": "faiss", "index": "ivf", "nlist": "auto", "nprobe": 16, "faiss_threads": 1}
HNSW_PEER = {"backend": "faiss", "index": "hnsw", "hnsw_m": 15, "ef_search": 16, "faiss_threads": 1}


def recall(got: torch.Tensor, want: torch.Tensor) -> float:
    """Mean share of the exact top-k found, over queries ([..., k] ids)."""
    g, w = got.reshape(-1, got.shape[-1]).tolist(), want.reshape(-1, want.shape[-1]).tolist()
    return sum(len(set(a) & set(b)) for a, b in zip(g, w)) / max(1, sum(len(b) for b in w))


# ---------------------------------------------------------------------------------------------- 1. floor
def floor_rows(sizes, heads=4, queries=512, d=64):
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        keys = torch.randn(1, heads, n, d, generator=g)
        q = torch.randn(1, heads, queries, d, generator=g)
        mem = KNNMemory(1, heads, d, MemoryConfig(capacity=n))
        mem.add(keys, keys)
        kb, qb = keys.bfloat16(), q.bfloat16()
        block = exact.block_size(q, torch.bfloat16)

        def scores():  # the score matmul of the same blocks the search uses
            for lo in range(0, n, block):
                torch.matmul(qb, kb[:, :, lo : lo + block].transpose(-1, -2))

        s = torch.matmul(qb, kb[:, :, : min(n, block)].transpose(-1, -2))
        reps = -(-n // block)
        mm = measure(scores, repeat=3)["cpu"]
        scan = measure(lambda: s.unflatten(-1, (-1, 64)).amax(-1), repeat=3)["cpu"] * reps
        mem.search(q, K)  # the bf16 copy of the keys is built on the first search
        search = measure(lambda: mem.search(q, K), repeat=5)["cpu"]
        ids = measure(lambda: mem.search_ids(q, K), repeat=5)["cpu"]
        fp32 = KNNMemory(1, heads, d, MemoryConfig(capacity=n, exact_bf16=False))
        fp32.add(keys, keys)
        search32 = measure(lambda: fp32.search(q, K), repeat=1)["cpu"]
        # what search adds to search_ids must at least write its output: the retrieved keys and values, once
        out = torch.randn(2, 1, heads, queries, K, d, generator=g)
        dst = torch.empty_like(out)
        copy = measure(lambda: dst.copy_(out), repeat=5)["cpu"]
        rows.append({"n": n, "mm": mm * 1e3, "scan": scan * 1e3, "floor": (mm + scan) * 1e3, "ms": search * 1e3,
                     "ratio": search / (mm + scan), "ids": ids * 1e3, "ratio_ids": ids / (mm + scan),
                     "copy": copy * 1e3, "ratio_copy": search / (mm + scan + copy), "fp32": search32 * 1e3})
    return rows


# ---------------------------------------------------------------------------------------------- 2. keys
def trained_run(a) -> str:
    if a.keys_run:
        return a.keys_run
    run = tempfile.mkdtemp(prefix="fot_keys_")
    print(f"[bench] training fot_tiny for {a.keys_steps} steps into {run} (its memory layer's keys are the "
          "search tables' data; pass --keys-run to use another run)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "experiments.train", "model=fot_tiny", f"trainer.max_steps={a.keys_steps}",
                    f"run_dir={run}", "trainer.enable_progress_bar=false"], check=True, stdout=subprocess.DEVNULL)
    return run


@torch.no_grad()
def model_keys(run: str, n: int, n_queries: int):
    """Keys [H, n, d] and queries [H, n_queries, d] of the run's first memory layer over the first n + n_queries
    test bytes. The keys of the first memory layer come from layers without memory, so a small memory gives
    the same keys as a large one: the text streams (``read``: the state only, up to the memory layers) with a
    ring of 4,096 entries read out after every chunk, into one preallocated tensor (4M keys of 52 dims x 4 heads
    are 3.5 GB); the last n_queries tokens run ``forward``, whose search records the queries."""
    from experiments.training.runs import corpus_of, load_run

    cfg, module = load_run(run, net_overrides={"memory_capacity": 4096, "memory_backend": "exact"})
    net = module.net.eval()
    data = corpus_of(cfg).split("test").data
    if len(data) < n + n_queries:
        raise ValueError(f"--keys-run's test split has {len(data):,} tokens; the tables need {n + n_queries:,}")
    window = net.config.window
    if n % window:  # a memory holds whole windows: the last partial one's keys are not written yet
        raise ValueError(f"{n:,} keys is not a whole number of the run's windows of {window}; use a multiple")
    x = torch.from_numpy(np.asarray(data[: n + n_queries]).astype(np.int64))[None]
    chunk, state, keys, queries = 2048, None, None, []
    for s in range(0, n, chunk):
        state = net.read(x[:, s : min(s + chunk, n)], state)
        mem = state["memory"][0]
        if keys is None:
            keys = torch.empty(mem.H, n, mem.d)
        lo, hi = s // window * window, min(s + chunk, n) // window * window  # the windows this chunk completed
        keys[:, lo:hi] = mem.keys[0][:, torch.arange(lo, hi) % mem.capacity]
    mem = state["memory"][0]
    search = mem.search
    mem.search = lambda q, k: (queries.append(q[0].clone()), search(q, k))[1]
    net(x[:, n:], state)
    return keys, torch.cat(queries, 1)[:, :n_queries]


def key_rows(keys, queries, sizes):
    """One head's memory of n trained keys, its 512 queries: exact, IVF (lifted, auto lists), and the HNSW
    settings of the peer and of longlab's default."""
    rows = []
    q = queries[:1].unsqueeze(0)
    for n in sizes:
        kn = keys[:1, :n].unsqueeze(0)
        ref = KNNMemory(1, 1, kn.shape[-1], MemoryConfig(capacity=n))
        ref.add(kn, kn)
        want = ref.search(q, K)[3]
        norms = kn.norm(dim=-1)
        for name, cfg in [("exact", {}), ("faiss ivf (nlist auto, nprobe 16)", IVF),
                          ("faiss ivf (nlist 64, nprobe 8)", {**IVF, "nlist": 64, "nprobe": 8}),
                          ("faiss ivf inner product (before: nlist 64, nprobe 8)", None),
                          ("faiss hnsw (peer's M=15, ef 16)", HNSW_PEER),
                          ("faiss hnsw (M=32, ef 64)", {**HNSW_PEER, "hnsw_m": 32, "ef_search": 64})]:
            if name.startswith("faiss hnsw") and n > 262144:
                continue
            t0 = time.perf_counter()
            if cfg is None:
                got, ms, build = inner_product_ivf(kn[0, 0], q[0, 0], n)
            else:
                mem = KNNMemory(1, 1, kn.shape[-1], MemoryConfig(capacity=n, **cfg))
                mem.add(kn, kn)
                mem.search(q[:, :, :1], K)  # builds the index
                build = time.perf_counter() - t0
                ms = measure(lambda mem=mem: mem.search(q, K), repeat=3)["cpu"] * 1e3
                got = mem.search(q, K)[3]
            rows.append({"n": n, "backend": name, "ms": ms, "build_s": build, "recall": recall(got, want),
                         "norms": f"{float(norms.min()):.1f}-{float(norms.max()):.1f}"})
    return rows


def inner_product_ivf(keys, q, n):
    """The IVF this commit replaced (inner-product lists, 64 of them, trained on the first 4,096 keys), kept
    here as the control of the lifted one."""
    with faiss_threads(1) as faiss:
        t0 = time.perf_counter()
        quant = faiss.IndexFlatIP(keys.shape[-1])
        idx = faiss.IndexIVFFlat(quant, keys.shape[-1], 64, faiss.METRIC_INNER_PRODUCT)
        idx.nprobe = 8
        idx.train(keys[:4096].numpy())
        idx.add(keys.numpy())
        build = time.perf_counter() - t0
        ms = measure(lambda: idx.search(q.numpy(), K), repeat=3)["cpu"] * 1e3
        return torch.from_numpy(idx.search(q.numpy(), K)[1]), ms, build


# ---------------------------------------------------------------------------------------------- 3. equal work
def equal_work_rows(keys, queries, sizes, peer_memory):
    """One memory of n keys (head 0's), the queries of every head (as the peer searches its shared memory)."""
    rows = []
    q = queries.reshape(1, 1, -1, queries.shape[-1])
    for n in sizes:
        kn = keys[:1, :n].unsqueeze(0)
        ref = KNNMemory(1, 1, kn.shape[-1], MemoryConfig(capacity=n))
        ref.add(kn, kn)
        want = ref.search(q, K)[3]
        peer_ms = None
        if peer_memory is not None:
            with tempfile.TemporaryDirectory() as tmp:
                pm = peer_memory(dim=kn.shape[-1], max_memories=n, num_indices=1,
                                 memmap_filename=os.path.join(tmp, "m.memmap"), multiprocessing=False)
                t0 = time.perf_counter()
                pm.add(torch.stack([kn[0, 0], kn[0, 0]], 1)[None])  # [b, n, (key, value), d]
                build = time.perf_counter() - t0
                peer_ms = measure(lambda: pm.search(q[0], K), repeat=3)["cpu"] * 1e3
                ids = torch.from_numpy(np.asarray(pm.knns[0].search(q[0, 0].numpy(), K, increment_age=False)))
                rows.append({"n": n, "backend": "memorizing-transformers-pytorch (hnsw M=15, ef 16)", "ms": peer_ms,
                             "build_s": build, "recall": recall(ids, want)})
                del pm
        for name, cfg in [("longlab exact", {}), ("longlab faiss ivf (nlist auto, nprobe 16)", IVF),
                          ("longlab faiss hnsw (peer's M=15, ef 16)", HNSW_PEER)]:
            if name.endswith("ef 16)") and n > 262144:
                continue
            mem = KNNMemory(1, 1, kn.shape[-1], MemoryConfig(capacity=n, **cfg))
            t0 = time.perf_counter()
            mem.add(kn, kn)
            mem.search(q[:, :, :1], K)
            build = time.perf_counter() - t0
            ms = measure(lambda mem=mem: mem.search(q, K), repeat=3)["cpu"] * 1e3
            got = mem.search(q, K)[3]
            rows.append({"n": n, "backend": name, "ms": ms, "build_s": build, "recall": recall(got, want),
                         "vs_peer": peer_ms / ms if peer_ms else None})
    return rows


# ---------------------------------------------------------------------------------------------- 4. model level
STREAM = {"exact": {"memory_backend": "exact"},
          "faiss ivf": {"memory_backend": "faiss", "memory_index": "ivf", "memory_nlist": "auto", "memory_nprobe": 16}}


def fot_model(width, layers, window, capacity, **memory):
    torch.manual_seed(0)
    return FocusedTransformer(d_model=width, n_layers=layers, n_heads=width // 64, window=window, memory_k=K,
                              memory_capacity=capacity, **memory)


def peer_model(cls, width, layers, capacity, directory):
    torch.manual_seed(0)
    return cls(num_tokens=256, dim=width, depth=layers, heads=width // 64, dim_head=64,
               memorizing_layers=(max(1, round(2 * layers / 3)),), max_knn_memories=capacity,
               num_retrieved_memories=K, knn_memories_directory=directory)


def with_memory_config(state: dict, **cfg) -> dict:
    """The state with every memory rebuilt under another search config (the same entries)."""
    mems = []
    for mem in state["memory"]:
        sd = mem.state_dict()
        sd["config"] = {**sd["config"], **cfg}
        mems.append(KNNMemory.from_state_dict(sd))
    return {**state, "memory": mems}


def stream_fot(a, name, filled, cap, x, mem_tokens):
    """FoT with search backend ``name`` streams the measured tokens from a fresh copy of the filled memory (its
    index or bf16 key copy built before the clock starts): wall s, CPU s, memory bytes per token."""
    net = fot_model(a.width, a.layers, a.window, cap, **STREAM[name]).eval()
    state = None
    if filled is not None:
        cfg = {"backend": "exact"} if name == "exact" else {k: v for k, v in IVF.items() if k != "faiss_threads"}
        state = with_memory_config(filled, **cfg)
        for m in state["memory"]:  # steady state: the index (or the keys' bf16 copy) is built before timing
            m.search(torch.zeros(1, m.H, 1, m.d), K)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(mem_tokens, x.shape[1], a.window):
        _, state = net(x[:, s : s + a.window], state)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    mem = state["memory"][0]
    return wall, cpu, mem.nbytes() / max(1, int(mem.size()[0]))


def stream_peer(a, cls, cap, x, mem_tokens):
    """The peer fills a fresh memory with the same tokens, then streams the measured ones: wall s, CPU s."""
    with tempfile.TemporaryDirectory() as tmp:
        peer = peer_model(cls, a.width, a.layers, cap, tmp).eval()
        with peer.knn_memories_context(batch_size=1) as knn:
            for s in range(0, mem_tokens, a.window):
                peer(x[:, s : s + a.window], knn)
            t0, c0 = time.perf_counter(), time.process_time()
            for s in range(mem_tokens, x.shape[1], a.window):
                peer(x[:, s : s + a.window], knn)
            return time.perf_counter() - t0, time.process_time() - c0, None


PEER = "memorizing-transformers-pytorch (faiss hnsw)"


@torch.no_grad()
def streaming_rows(a, cls):
    """Each memory size is filled once for FoT (through its IVF path: the entries do not depend on the search);
    then ``a.rounds`` rounds, each streaming the same measured tokens with every FoT backend from a fresh copy of
    that memory and with the peer from a memory it fills afresh, in alternating order (FoT first in even rounds,
    the peer first in odd ones). Speeds are medians over the rounds; the ratio to the peer is taken within each
    round (the two ran minutes apart at most) and reported as the median and the range over rounds, since one
    run's ratio moved by up to 25% between runs on these machines."""
    rows, W = [], a.window
    for mem_tokens in a.memories:
        cap = max(mem_tokens + 4 * W, 1024)
        x = torch.randint(0, 256, (1, mem_tokens + a.measure_tokens), generator=torch.Generator().manual_seed(0))
        filled = None
        if mem_tokens:
            net = fot_model(a.width, a.layers, W, cap, **STREAM["faiss ivf"]).eval()
            t0 = time.perf_counter()
            for s in range(0, mem_tokens, 4 * W):
                _, filled = net(x[:, s : min(s + 4 * W, mem_tokens)], filled)
            print(f"[bench] {mem_tokens:,} tokens in memory filled in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
        backends = {f"FoT (longlab, {n})": n for n in STREAM if mem_tokens or n == "exact"}
        with_peer = cls is not None and mem_tokens <= a.peer_max
        runs: dict[str, list] = {n: [] for n in [*backends, *[PEER] * with_peer]}
        for r in range(a.rounds):
            for n in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                runs[n].append(stream_peer(a, cls, cap, x, mem_tokens) if n == PEER else
                               stream_fot(a, backends[n], filled, cap, x, mem_tokens))
        for n, got in runs.items():
            row = {"model": n, "mem": mem_tokens, "tok_s": statistics.median(a.measure_tokens / w for w, _, _ in got),
                   "cpu_tok_s": statistics.median(a.measure_tokens / c for _, c, _ in got),
                   "bytes_per_token": got[0][2]}
            if with_peer:  # tokens per CPU-second against the peer's in the same round
                ratios = [peer[1] / mine[1] for mine, peer in zip(got, runs[PEER], strict=True)]
                row["vs_peer"] = statistics.median(ratios)
                row["vs_peer_range"] = f"{min(ratios):.2f}-{max(ratios):.2f}x"
            rows.append(row)
    return rows


def train_rows(a, cls):
    rows = []
    W, b = a.window, 8
    net = fot_model(a.width, a.layers, W, 65536).train()
    x = torch.randint(0, 256, (b, 2 * W + 1))
    for d in (1, 2, 8):
        def step(d=d):
            logits = net.forward_crossbatch(x[:, :W], x[:, W : 2 * W], d)
            F.cross_entropy(logits.flatten(0, 1), x[:, W + 1 :].flatten()).backward()
            net.zero_grad(set_to_none=True)
        m = measure(step, repeat=2)
        rows.append({"model": f"FoT CrossBatch d={d} (prev + current window)", "tok_s": b * 2 * W / m["wall"],
                     "cpu_tok_s": b * 2 * W / m["cpu"]})
    if cls is not None:
        with tempfile.TemporaryDirectory() as tmp:
            peer = peer_model(cls, a.width, a.layers, 65536, tmp).train()
            with peer.knn_memories_context(batch_size=b) as knn:
                def pstep():
                    loss = peer(x[:, : 2 * W], knn, labels=x[:, 1 : 2 * W + 1])
                    loss.backward()
                    peer.zero_grad(set_to_none=True)
                m = measure(pstep, repeat=2)
            rows.append({"model": "memorizing-transformers-pytorch (2 windows)", "tok_s": b * 2 * W / m["wall"],
                         "cpu_tok_s": b * 2 * W / m["cpu"]})
    return rows


# ---------------------------------------------------------------------------------------------- 6. a large memory
def big_rows(n, trained=None, nprobes=(16, 32, 64), heads=4, d=64, queries=512, chunk=65536):
    """One batch row's memory of ``n`` tokens (float32 keys and values), filled chunk by chunk, searched by the
    lifted IVF at each of ``nprobes`` (one index: nprobe is a search setting) and exactly: resident memory, build
    and search time, recall. The keys are a trained FoT's when ``trained`` is given (a dict of its first memory
    layer's "keys" [H, n, d] and the next tokens' "queries" [H, q, d], popped here: once the ring is filled it
    holds the only copy), else synthetic (Gaussian directions, norms spread over 1.4-15 as a trained FoT's keys
    are; no cluster structure, so an IVF's recall on them is a floor, not a model's)."""
    from benchmarks.common import rss_bytes
    from experiments.training.bookkeeping import release_free_memory

    g = torch.Generator().manual_seed(0)
    if trained is not None:
        q = trained.pop("queries")[None]
        heads, d = q.shape[1], q.shape[-1]
        given = trained.pop("keys")
        held = given.nbytes  # handed back once the ring has them: not counted in the growth
        chunks = (keys[None] for keys in given.split(chunk, 1))
        del given
    else:
        q = torch.randn(1, heads, queries, d, generator=g)

        def spread(m):
            x = torch.randn(1, heads, m, d, generator=g)
            return x / x.norm(dim=-1, keepdim=True) * (1.4 + 13.6 * torch.rand(1, heads, m, 1, generator=g))
        chunks = (spread(min(chunk, n - s)) for s in range(0, n, chunk))
        held = 0

    release_free_memory()
    base = rss_bytes() - held
    mem = KNNMemory(1, heads, d, MemoryConfig(capacity=n, **IVF))
    t0 = time.perf_counter()
    for keys in chunks:
        mem.add(keys, keys)
    fill = time.perf_counter() - t0
    del chunks, keys
    release_free_memory()
    t0 = time.perf_counter()
    mem.search(q[:, :, :1], K)  # trains the quantizers and files every key
    build = time.perf_counter() - t0
    runs = {}
    for p in nprobes:
        mem.cfg.nprobe = p
        runs[p] = (measure(lambda: mem.search(q, K), repeat=3)["cpu"] * 1e3, mem.search(q, K)[3])
    grown = (rss_bytes() - base) / 2**30
    ring_gib, index_gib = mem.nbytes() / 2**30, mem.index_nbytes() / 2**30
    mem.cfg.backend = "exact"  # the same entries searched exactly (a copy of the ring would not fit beside it)
    ex = measure(lambda: mem.search(q, K), repeat=1, warmup=1)
    want = mem.search(q, K)[3]
    rows = [{"n": n, "backend": f"faiss ivf (nlist auto, nprobe {p})", "ms": ms, "recall": recall(got, want),
             **({"build_s": build, "fill_s": fill, "gib": grown, "ring_gib": ring_gib, "index_gib": index_gib}
                if i == 0 else {})} for i, (p, (ms, got)) in enumerate(runs.items())]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux; the whole run's peak
    return rows + [{"n": n, "backend": "exact", "ms": ex["cpu"] * 1e3, "recall": 1.0,
                    "gib": (rss_bytes() - base) / 2**30, "peak_gib": peak}]


def read_rows(a):
    """Filling a memory with n tokens before its queries, window by window: ``forward`` (every layer, the memory
    layers' retrieval and the head) against ``read`` (only up to the last memory layer's keys and values; the
    same state bit for bit, tests/architectures/test_fot.py)."""
    rows = []
    for n in a.read_sizes:
        net = fot_model(a.width, a.layers, a.window, n + a.window).eval()
        x = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(0))
        out = {}
        for how in ("forward", "read"):
            state = None
            w0, c0 = time.perf_counter(), time.process_time()
            with torch.no_grad():
                for s in range(0, n, a.window):
                    state = net(x[:, s: s + a.window], state)[1] if how == "forward" else net.read(
                        x[:, s: s + a.window], state)
            out[how] = (time.perf_counter() - w0, time.process_time() - c0)
        rows.append({"n": n, "fwd_cpu": out["forward"][1], "read_cpu": out["read"][1],
                     "speedup": out["forward"][1] / out["read"][1], "read_tok_s": n / out["read"][0]})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 65536, 262144, 1048576])
    ap.add_argument("--key-sizes", type=int, nargs="+", default=[8192, 65536, 262144])
    ap.add_argument("--memories", type=int, nargs="+", default=[0, 8192, 65536, 262144, 1048576])
    ap.add_argument("--peer-max", type=int, default=262144, help="largest memory the peer streams with")
    ap.add_argument("--keys-run", help="a trained FoT run whose memory layer's keys the search tables use")
    ap.add_argument("--keys-steps", type=int, default=300)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--measure-tokens", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3, help="streaming table: rounds, FoT and the peer alternating")
    ap.add_argument("--big", type=int, default=4 * 1048576, help="tokens in the large memory of table 6")
    ap.add_argument("--big-keys-run", help="a trained FoT run whose first memory layer's keys over --big test tokens "
                    "fill table 6's memory (default: synthetic keys)")
    ap.add_argument("--read-sizes", type=int, nargs="+", default=[8192, 65536], help="memories filled in table 7")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["floor", "keys", "equal", "stream", "train", "big", "read"])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error(f"--rounds {a.rounds}: the streaming table needs at least one round")
    with_allocator()  # measured under the allocator every entry point runs with
    if a.quick:
        a.sizes, a.key_sizes, a.memories, a.window, a.measure_tokens, a.width, a.layers, a.keys_steps = (
            [8192], [8192], [0, 4096], 128, 512, 128, 2, 20)
        a.big, a.read_sizes = 65536, [4096]
    if os.environ.get("PEERS"):
        sys.path.insert(0, os.environ["PEERS"])
    try:
        from memorizing_transformers_pytorch import MemorizingTransformer as cls
        from memorizing_transformers_pytorch.knn_memory import KNNMemory as peer_memory
    except ImportError:
        cls = peer_memory = None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"allocator {os.environ.get('LONGLAB_ALLOCATOR')}, CPU; peer package: "
          f"{'found' if cls else 'not installed (set PEERS=...)'}; times are CPU-seconds (median of 3)\n")
    if "floor" not in a.skip:
        print(f"## 1. exact search against its floor: 4 heads x 512 queries, d=64, top-{K}, n keys per head")
        print(table(floor_rows(a.sizes), [
            ("n", "keys per head", "{:,}"), ("mm", "bf16 score matmul ms", "{:.0f}"),
            ("scan", "one read of the scores ms", "{:.0f}"), ("floor", "floor ms", "{:.0f}"),
            ("ids", "exact top-k ids ms", "{:.0f}"), ("ratio_ids", "ids / floor", "{:.2f}x"),
            ("ms", "+ gather of keys and values ms", "{:.0f}"), ("ratio", "search / floor", "{:.2f}x"),
            ("copy", "one copy of the gathered bytes ms", "{:.1f}"),
            ("ratio_copy", "search / (floor + copy)", "{:.2f}x"), ("fp32", "float32 exact search ms", "{:.0f}")]))
    if {"keys", "equal"} - set(a.skip):
        run = trained_run(a)
        n = max(a.key_sizes)
        keys, queries = model_keys(run, n, 512)
        print(f"\nkeys and queries: the first memory layer of {run} over {n + 512:,} test tokens "
              f"({keys.shape[0]} heads of {keys.shape[-1]} dims)")
        if "keys" not in a.skip:
            print(f"\n## 2. search on a trained FoT's keys: one head's memory of n keys, its 512 queries, top-{K}")
            print(table(key_rows(keys, queries, a.key_sizes), [
                ("n", "keys", "{:,}"), ("backend", "backend", "{}"), ("ms", "ms / 512 queries", "{:.1f}"),
                ("build_s", "index build s", "{:.2f}"), ("recall", f"recall@{K} vs exact", "{:.3f}"),
                ("norms", "key norms", "{}")]))
        if "equal" not in a.skip:
            print(f"\n## 3. equal work: one memory of n keys, {queries.shape[0] * 512:,} queries "
                  f"({queries.shape[0]} heads x 512 tokens), top-{K}, on the trained keys")
            print(table(equal_work_rows(keys, queries, a.key_sizes, peer_memory), [
                ("n", "keys", "{:,}"), ("backend", "backend", "{}"), ("ms", "search ms", "{:.1f}"),
                ("vs_peer", "vs peer", "{:.2f}x"), ("build_s", "add + index build s", "{:.2f}"),
                ("recall", f"recall@{K} vs exact", "{:.3f}")]))
    if "stream" not in a.skip:
        print(f"\n## 4. streaming evaluation, width {a.width}, {a.layers} layers ({a.width // 64} memory heads), "
              f"windows of {a.window}, batch 1, {a.measure_tokens:,} tokens measured, medians of {a.rounds} rounds "
              "(FoT and the peer alternating; the ratio taken within each round)")
        print(table(streaming_rows(a, cls), [
            ("model", "model", "{}"), ("mem", "tokens in memory", "{:,}"), ("tok_s", "tokens/s", "{:,.0f}"),
            ("cpu_tok_s", "tokens/CPU-s", "{:,.0f}"), ("vs_peer", "vs peer (CPU-s), median", "{:.2f}x"),
            ("vs_peer_range", f"range over {a.rounds} rounds", "{}"), ("bytes_per_token", "memory bytes/token",
                                                                     "{:,.0f}")]))
    if "train" not in a.skip:
        print("\n## 5. training step, batch 8")
        print(table(train_rows(a, cls), [("model", "model", "{}"), ("tok_s", "tokens/s", "{:,.0f}"),
                                         ("cpu_tok_s", "tokens/CPU-s", "{:,.0f}")]))
    if "big" not in a.skip:
        trained, keys = None, "synthetic keys of spread norms, 4 heads x 64 dims"
        if a.big_keys_run:
            k, q = model_keys(a.big_keys_run, a.big, 512)
            trained = {"keys": k, "queries": q}
            keys = (f"the first memory layer's keys of {a.big_keys_run} over {a.big:,} test tokens, queries from the "
                    f"next 512, {k.shape[0]} heads x {k.shape[-1]} dims")
            del k, q
        print(f"\n## 6. a memory of {a.big:,} tokens (one batch row, float32 keys and values; {keys}), "
              f"4 heads x 512 queries, top-{K}")
        print(table(big_rows(a.big, trained), [
            ("n", "tokens", "{:,}"), ("backend", "backend", "{}"), ("ms", "search ms", "{:.0f}"),
            ("recall", f"recall@{K} vs exact", "{:.3f}"), ("fill_s", "fill s", "{:.0f}"),
            ("build_s", "index build s", "{:.0f}"), ("ring_gib", "ring GiB", "{:.1f}"),
            ("index_gib", "index GiB", "{:.1f}"), ("gib", "resident GiB (process growth)", "{:.1f}"),
            ("peak_gib", "process peak resident GiB", "{:.1f}")]))
    if "read" not in a.skip:
        print(f"\n## 7. filling a memory before its queries (exact search), width {a.width}, {a.layers} layers, "
              f"windows of {a.window}, batch 1: forward against read (the state only), CPU-seconds, one run")
        print(table(read_rows(a), [
            ("n", "tokens filled", "{:,}"), ("fwd_cpu", "forward CPU-s", "{:.1f}"),
            ("read_cpu", "read CPU-s", "{:.1f}"), ("speedup", "read speedup", "{:.1f}x"),
            ("read_tok_s", "read tokens/s", "{:,.0f}")]))


if __name__ == "__main__":
    main()
