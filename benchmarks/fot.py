"""FoT on CPU: kNN retrieval backends, and the model's training / streaming speed with a memory of
0 .. 256K tokens, side by side with `memorizing-transformers-pytorch` (installed only for this):

    pip install --no-deps --target /tmp/peers memorizing-transformers-pytorch==0.4.1 einops-exts==0.0.4 \
        joblib filelock cloudpickle
    PEERS=/tmp/peers OMP_WAIT_POLICY=PASSIVE python -m benchmarks.fot

The peer differs from FoT: one shared K/V head for memory, cosine-sim attention, separate memory and
local softmaxes merged by a learned gate, memories in memmapped files (HNSW via faiss), no CrossBatch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from architectures.fot import FocusedTransformer  # noqa: E402
from benchmarks.common import measure, table  # noqa: E402
from memory import KNNMemory, MemoryConfig  # noqa: E402


def retrieval_rows(sizes, d=64, queries=512, k=32):
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        keys = torch.randn(1, 1, n, d, generator=g)
        q = torch.randn(1, 1, queries, d, generator=g)
        exact = KNNMemory(1, 1, d, MemoryConfig(capacity=n))
        exact.add(keys, keys)
        ref = exact.search(q, k)[3]
        for name, cfg in [("exact (torch)", MemoryConfig(capacity=n)),
                          ("faiss flat", MemoryConfig(capacity=n, backend="faiss", index="flat", faiss_threads=2)),
                          ("faiss ivf", MemoryConfig(capacity=n, backend="faiss", index="ivf", nlist=256, nprobe=16,
                                                     ivf_train_size=min(n, 16384), faiss_threads=2)),
                          ("faiss hnsw", MemoryConfig(capacity=n, backend="faiss", index="hnsw", hnsw_m=16,
                                                      ef_search=64, faiss_threads=2))]:
            if name == "faiss hnsw" and n > 262144:
                continue
            mem = KNNMemory(1, 1, d, cfg)
            mem.add(keys, keys)
            t0 = time.perf_counter()
            mem.search(q[:, :, :1], k)  # builds the index
            build = time.perf_counter() - t0
            m = measure(lambda mem=mem: mem.search(q, k), repeat=3)
            got = mem.search(q, k)[3]
            recall = sum(len(set(got[0, 0, t].tolist()) & set(ref[0, 0, t].tolist())) for t in range(queries)) / (
                queries * k)
            rows.append({"n": n, "backend": name, "ms": m["wall"] * 1e3, "build_s": build, "recall": recall})
    return rows


STREAM_BACKENDS = {"exact": {"memory_backend": "exact"},
                   "faiss flat": {"memory_backend": "faiss", "memory_index": "flat"},
                   "faiss ivf": {"memory_backend": "faiss", "memory_index": "ivf"},
                   "faiss hnsw": {"memory_backend": "faiss", "memory_index": "hnsw"}}


def fot_model(width, layers, window, capacity, backend="exact", **memory):
    torch.manual_seed(0)
    return FocusedTransformer(d_model=width, n_layers=layers, n_heads=width // 64, window=window, memory_k=32,
                              memory_capacity=capacity, **({"memory_backend": backend} | memory))


def peer_model(cls, width, layers, capacity, directory):
    torch.manual_seed(0)
    return cls(num_tokens=256, dim=width, depth=layers, heads=width // 64, dim_head=64,
               memorizing_layers=(max(1, round(2 * layers / 3)),), max_knn_memories=capacity,
               num_retrieved_memories=32, knn_memories_directory=directory)


@torch.no_grad()
def streaming_rows(a, cls):
    rows = []
    W = a.window
    for mem_tokens in a.memories:
        cap = max(mem_tokens + 4 * W, 1024)
        x = torch.randint(0, 256, (1, mem_tokens + a.measure_tokens))
        for name in a.backends if mem_tokens else ["exact"]:
            net = fot_model(a.width, a.layers, W, cap, **STREAM_BACKENDS[name]).eval()
            state = None
            for s in range(0, mem_tokens, 4 * W):  # fill the memory (not timed)
                _, state = net(x[:, s : min(s + 4 * W, mem_tokens)], state)
            t0, c0 = time.perf_counter(), time.process_time()
            for s in range(mem_tokens, x.shape[1], W):
                _, state = net(x[:, s : s + W], state)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            mem = state["memory"][0] if state else None
            per_token = mem.nbytes() / max(1, int(mem.size()[0])) if mem is not None and int(mem.size()[0]) else None
            kv = 2 * a.width * 4  # keys + values of one token (all heads), float32
            rows.append({"model": f"FoT (ours, {name})", "mem": mem_tokens, "tok_s": a.measure_tokens / wall,
                         "cpu_tok_s": a.measure_tokens / cpu, "bytes_per_token": per_token,
                         "kv_ratio": per_token / kv if per_token else None})
        if cls is not None:
            with tempfile.TemporaryDirectory() as tmp:
                peer = peer_model(cls, a.width, a.layers, cap, tmp).eval()
                with peer.knn_memories_context(batch_size=1) as knn:
                    for s in range(0, mem_tokens, W):
                        peer(x[:, s : s + W], knn)
                    t0, c0 = time.perf_counter(), time.process_time()
                    for s in range(mem_tokens, x.shape[1], W):
                        peer(x[:, s : s + W], knn)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows.append({"model": "memorizing-transformers-pytorch (faiss hnsw)", "mem": mem_tokens,
                         "tok_s": a.measure_tokens / wall, "cpu_tok_s": a.measure_tokens / cpu})
            peer_tok_s = rows[-1]["tok_s"]
            for r in rows:
                if r["mem"] == mem_tokens:
                    r["vs_peer"] = r["tok_s"] / peer_tok_s
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[16384, 65536, 262144, 1048576])
    ap.add_argument("--memories", type=int, nargs="+", default=[0, 8192, 65536])
    ap.add_argument("--backends", nargs="+", default=list(STREAM_BACKENDS), choices=list(STREAM_BACKENDS))
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--measure-tokens", type=int, default=2048)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.memories, a.window, a.measure_tokens, a.width, a.layers = [4096], [0, 4096], 128, 512, 128, 2
    if os.environ.get("PEERS"):
        sys.path.insert(0, os.environ["PEERS"])
    try:
        from memorizing_transformers_pytorch import MemorizingTransformer as cls
    except ImportError:
        cls = None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; peer package: "
          f"{'found' if cls else 'not installed (set PEERS=...)'}\n")
    print("## retrieval: one (row, head) memory of n keys, d=64, 512 queries, top-32")
    print(table(retrieval_rows(a.sizes), [("n", "keys", "{:,}"), ("backend", "backend", "{}"),
                                          ("ms", "ms / 512 queries", "{:.1f}"), ("build_s", "index build s", "{:.2f}"),
                                          ("recall", "recall@32 vs exact", "{:.3f}")]))
    print(f"\n## streaming evaluation, width {a.width}, {a.layers} layers, windows of {a.window}, batch 1")
    print(table(streaming_rows(a, cls), [("model", "model", "{}"), ("mem", "tokens in memory", "{:,}"),
                                         ("tok_s", "tokens/s", "{:,.0f}"), ("vs_peer", "vs peer (wall)", "{:.2f}x"),
                                         ("cpu_tok_s", "tokens/CPU-s", "{:,.0f}"),
                                         ("bytes_per_token", "memory bytes/token", "{:,.0f}"),
                                         ("kv_ratio", "vs keys+values fp32", "{:.2f}x")]))
    print("\n## training step, batch 8")
    print(table(train_rows(a, cls), [("model", "model", "{}"), ("tok_s", "tokens/s", "{:,.0f}"),
                                     ("cpu_tok_s", "tokens/CPU-s", "{:,.0f}")]))


if __name__ == "__main__":
    main()
