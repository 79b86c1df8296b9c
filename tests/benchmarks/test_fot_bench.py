"""benchmarks.fot's helpers for its tables on a trained FoT's keys: the keys it reads out of a stream, and the
large memory's table (IVF recall at several nprobe on one index, against exact search of the same entries)."""

import types

import numpy as np
import pytest
import torch

from benchmarks import fot as bench
from tests.conftest import build_net


def clustered(heads, n, d, g, clusters=16):
    centres = torch.randn(clusters, d, generator=g)
    x = centres[torch.randint(0, clusters, (heads, n), generator=g)] + 0.5 * torch.randn(heads, n, d, generator=g)
    return x * torch.exp(torch.randn(heads, n, 1, generator=g) * 0.3)


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
    trained = {"keys": clustered(2, n, 16, g), "queries": torch.randn(2, 64, 16, generator=g)}
    from memory.knn import auto_nlist

    nlist = auto_nlist(n)
    rows = bench.big_rows(n, trained, nprobes=(1, nlist), chunk=3000)
    assert trained == {}
    assert [r["backend"] for r in rows] == ["faiss ivf (nlist auto, nprobe 1)",
                                            f"faiss ivf (nlist auto, nprobe {nlist})", "exact"]
    assert rows[0]["recall"] < 0.9 and rows[1]["recall"] == 1.0 and rows[2]["recall"] == 1.0
    assert "build_s" in rows[0] and "build_s" not in rows[1]
    assert rows[0]["ring_gib"] == pytest.approx(2 * 2 * n * 16 * 4 / 2**30)
