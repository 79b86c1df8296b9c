"""benchmarks.fot's helpers for its tables on a trained FoT's keys: the keys it reads out of a stream, and the
large memory's table (IVF recall at several nprobe on one index, against exact search of the same entries)."""

import types

import numpy as np
import pytest
import torch

from benchmarks import fot as bench
from memory.knn import auto_nlist
from tests.conftest import build_net
from tests.memory.test_knn import D, spread_keys


def test_model_keys_are_the_keys_a_long_stream_writes_and_the_next_tokens_queries(monkeypatch):
    """Read out of a small ring chunk by chunk (with ``read``), the keys equal those a memory large enough for
    the whole stream holds after ``forward``; the queries are the memory layer's for the tokens after them."""
    torch.manual_seed(0)
    net = build_net("fot_tiny").eval()
    n, nq = 5024, 40  # whole windows of 32, not a multiple of the chunk (2,048)
    tokens = torch.randint(0, 256, (n + nq + 7,))
    data = types.SimpleNamespace(split=lambda name: types.SimpleNamespace(data=tokens.numpy().astype(np.uint8)))
    from experiments.training import runs

    def load_run(run, net_overrides):
        small = build_net("fot_tiny", [f"model.net.{k}={v}" for k, v in net_overrides.items()])
        small.load_state_dict(net.state_dict())
        return None, types.SimpleNamespace(net=small)

    monkeypatch.setattr(runs, "load_run", load_run)
    monkeypatch.setattr(runs, "corpus_of", lambda cfg: data)
    keys, queries = bench.model_keys("run", n, nq)
    with pytest.raises(ValueError, match="windows of 32"):
        bench.model_keys("run", n - 8, nq)

    big = build_net("fot_tiny", ["model.net.memory_capacity=8192"]).eval()
    big.load_state_dict(net.state_dict())
    seen = []
    with torch.no_grad():
        _, state = big(tokens[None, :n], None)
        mem = state["memory"][0]
        search = mem.search
        mem.search = lambda q, k: (seen.append(q[0].clone()), search(q, k))[1]
        big(tokens[None, n: n + nq], state)
    want = mem.keys[0][:, :n]
    assert keys.shape == want.shape and queries.shape == (want.shape[0], nq, want.shape[-1])
    assert torch.allclose(keys, want, atol=1e-5)
    assert torch.allclose(queries, torch.cat(seen, 1)[:, :nq], atol=1e-5)


def test_the_large_memory_table_on_given_keys_sweeps_nprobe_on_one_index():
    """On given keys (2 heads of 16 dims) the table's IVF rows share one build, recall rises with nprobe to 1.0
    when every list is probed (the lifted IVF is then exact), and the given tensors are released to it."""
    g = torch.Generator().manual_seed(0)
    n = 8192
    keys = torch.stack([spread_keys(n, g) for _ in range(2)])  # 2 heads
    trained = {"keys": keys, "queries": torch.randn(2, 64, D, generator=g)}
    nlist = auto_nlist(n)
    rows = bench.big_rows(n, trained, nprobes=(1, nlist), chunk=3000)
    assert trained == {}
    assert [r["backend"] for r in rows] == ["faiss ivf (nlist auto, nprobe 1)",
                                            f"faiss ivf (nlist auto, nprobe {nlist})", "exact"]
    assert rows[0]["recall"] < 0.9 and rows[1]["recall"] == 1.0 and rows[2]["recall"] == 1.0
    assert "build_s" in rows[0] and "build_s" not in rows[1]
    assert rows[0]["ring_gib"] == pytest.approx(2 * 2 * n * 16 * 4 / 2**30)


def test_streaming_rounds_alternate_and_take_the_ratio_to_the_peer_within_each_round(monkeypatch):
    """Every round streams each FoT backend and the peer (FoT first in even rounds, the peer first in odd ones);
    speeds are medians over rounds, and the ratio to the peer is the median of the rounds' own ratios."""
    order, cpu = [], {"exact": [1.0, 2.0, 4.0], "faiss ivf": [1.0, 1.0, 1.0], "peer": [4.0, 1.0, 2.0]}

    def fot(a, name, filled, cap, x, mem_tokens):
        order.append(name)
        return 1.0, cpu[name][(order.count(name) - 1) % 3], 100.0

    def peer(a, cls, cap, x, mem_tokens):
        order.append("peer")
        return 1.0, cpu["peer"][(order.count("peer") - 1) % 3], None

    monkeypatch.setattr(bench, "stream_fot", fot)
    monkeypatch.setattr(bench, "stream_peer", peer)
    a = types.SimpleNamespace(memories=[0, 256], window=128, width=64, layers=1, measure_tokens=256, rounds=3,
                              peer_max=128)
    rows = bench.streaming_rows(a, cls=object)
    assert order == ["exact", "peer", "peer", "exact", "exact", "peer",  # empty memory: exact search only
                     "exact", "faiss ivf", "faiss ivf", "exact", "exact", "faiss ivf"]  # beyond peer_max: no peer
    by = {(r["model"], r["mem"]): r for r in rows}
    exact0 = by[("FoT (longlab, exact)", 0)]
    assert exact0["cpu_tok_s"] == 256 / 2.0  # median of 256/1, 256/2, 256/4
    # the rounds' ratios are 4, 0.5, 0.5: their median, where the ratio of the two medians would read 1.0
    assert exact0["vs_peer"] == 0.5 and exact0["vs_peer_range"] == "0.50-4.00x"
    assert by[(bench.PEER, 0)]["vs_peer"] == 1.0
    assert "vs_peer" not in by[("FoT (longlab, faiss ivf)", 256)]
