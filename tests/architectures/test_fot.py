"""Focused Transformer: memory layers, streaming with memory, CrossBatch, baseline checkpoints."""

from __future__ import annotations

import pytest
import torch

from architectures.fot import FocusedTransformer
from architectures.transformer import Transformer
from experiments.data import ByteCorpus
from experiments.data.samplers import CrossBatchWindows
from tests.conftest import assert_crossbatch_reaches_own_and_next_rows

TINY = dict(d_model=32, n_layers=3, n_heads=4, window=8, memory_k=4, memory_capacity=256)


def model(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return FocusedTransformer(**{**TINY, **kw}).to(dtype).eval()


def tokens(B=2, T=45, seed=1):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


VARIANTS = {"rope_pos0": {}, "no-pe": {"positional": "none"}, "dense": {"memory_backend": "dense"},
            "faiss-flat": {"memory_backend": "faiss"}, "token-shift": {"token_shift": 3},
            "two-memory-layers": {"memory_layers": [0, 2]}}


@pytest.mark.parametrize("kw", VARIANTS.values(), ids=VARIANTS.keys())
def test_segments_equal_one_pass(kw):
    net = model(**kw)
    x = tokens()
    full, _ = net(x)
    for cuts in [(8, 16, 24, 32, 40), (1, 2, 3, 7, 9, 17, 30, 31, 44), tuple(range(1, 45))]:
        state, outs, edges = None, [], [0, *cuts, 45]
        for a, b in zip(edges[:-1], edges[1:]):
            out, state = net(x[:, a:b], state)
            outs.append(out)
        torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-10, rtol=0)


def test_knn_with_k_at_least_the_memory_size_equals_dense():
    x = tokens(T=40)
    a, _ = model(memory_k=64)(x)  # at most 32 entries ever in memory
    b, _ = model(memory_backend="dense")(x)
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    c, _ = model(memory_k=2)(x)
    assert not torch.allclose(a[:, 16:], c[:, 16:])  # top-2 of 8+ entries is a real restriction


def test_a_window_never_retrieves_itself():
    net = model()
    x = tokens(T=24)
    sizes = []
    state = None
    for s in range(0, 24, 4):
        _, state = net(x[:, s : s + 4], state)
        sizes.append(int(state["memory"][0].size()[0]))
    # memory grows only when a window completes: during window n it holds windows < n only
    assert sizes == [0, 8, 8, 16, 16, 24]


def test_first_window_equals_the_baseline_transformer_with_its_weights():
    torch.manual_seed(0)
    base = Transformer(d_model=32, n_layers=3, n_heads=4).double().eval()
    fot = model()
    missing, unexpected = fot.load_state_dict(base.state_dict(), strict=False)
    assert not missing and not unexpected  # no new parameters with rope_pos0
    x = tokens(T=8)
    torch.testing.assert_close(fot(x)[0], base(x)[0], atol=1e-10, rtol=0)
    nope = model(positional="none")
    missing, _ = nope.load_state_dict(base.state_dict(), strict=False)
    assert all("temperature" in m for m in missing) and missing


def test_crossbatch_positive_is_own_row_negatives_are_the_next_rows_and_gradients_reach_them():
    net = model(torch.float32).train()
    b, W, d = 5, 8, 3
    assert_crossbatch_reaches_own_and_next_rows(net, net.embed, tokens(B=b, T=W, seed=3), tokens(B=b, T=W, seed=4), d)


def test_crossbatch_rows_come_from_different_documents(tiny_corpus, tmp_path):
    split = ByteCorpus.build_or_load(path=str(tiny_corpus), pattern="**/*.txt", cache_dir=tmp_path).split("train")
    s = CrossBatchWindows(split, 64, 6, seed=0)
    for step in range(5):
        batch = s.batch(step)
        docs = batch["doc_ids"].tolist()
        assert len(set(docs)) == len(docs)
        for row, doc in zip(batch["tokens"], docs):  # each row is one window of its own document
            assert bytes(row.tolist()) in bytes(split.document(doc))


def test_distraction_ratio_is_one_at_d1_and_about_one_over_d_untrained():
    net = model(torch.float32)
    prev, curr = tokens(B=8, T=8, seed=5), tokens(B=8, T=8, seed=6)
    _, s1 = net.forward_crossbatch(prev, curr, 1, return_distraction=True)
    _, s4 = net.forward_crossbatch(prev, curr, 4, return_distraction=True)
    assert abs(float(s1[0]) - 1.0) < 1e-6
    assert 0.1 < float(s4[0]) < 0.5  # an untrained model spreads its attention: ~1/d


def test_reset_state_erases_rows():
    net = model()
    _, state = net(tokens(T=16))
    net.reset_state(state, torch.tensor([True, False]))
    assert state["memory"][0].size().tolist() == [0, 16]


def test_bad_config_values_fail_clearly():
    with pytest.raises(ValueError, match=r"memory_layers=\[5\] must be layer indices"):
        FocusedTransformer(**{**TINY, "memory_layers": [5]})
    with pytest.raises(ValueError, match="positional='alibi'"):
        FocusedTransformer(**{**TINY, "positional": "alibi"})
    with pytest.raises(ValueError, match=r"CrossBatch d=9 must be in \[1, batch size 2\]"):
        model().forward_crossbatch(tokens(T=8), tokens(T=8), 9)


def test_positional_none_with_qk_norm_everywhere_normalises_every_layer_and_keeps_rope_outside_memory():
    net = model(positional="none", qk_norm="all")
    attn = [blk.attn for blk in net.layers]
    assert all(a.qk_norm for a in attn) and all(hasattr(a, "temperature") for a in attn)
    assert [a.no_pe for a in attn] == [i in net.config.memory_layers for i in range(len(attn))]
    only = model(positional="none")
    assert [hasattr(a, "temperature") for a in (b.attn for b in only.layers)] == \
        [i in only.config.memory_layers for i in range(len(attn))]
    x = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    full, _ = net(x)
    a, state = net(x[:, :17])
    b, _ = net(x[:, 17:], state)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="qk_norm='some'"):
        model(qk_norm="some")


def test_crossbatch_with_detached_previous_windows_sends_no_gradient_to_them():
    from tests.conftest import build_net

    net = build_net("fot_tiny", ["model.net.window=8", "model.net.memory_k=4"]).train()
    outputs = []
    def keep(module, inputs, output):
        output.retain_grad()
        outputs.append(output)

    net.embed.register_forward_hook(keep)
    prev = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    curr = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    for detach, reaches in ((False, True), (True, False)):
        outputs.clear()
        net.forward_crossbatch(prev, curr, 2, detach_previous=detach).sum().backward()
        prev_embedding = outputs[0]  # the previous windows are embedded first
        assert (prev_embedding.grad is not None and prev_embedding.grad.abs().sum() > 0) == reaches


def _streamed(net, x):
    """The reference: the windows read one after another (an explicit empty state takes that path)."""
    return net(x, {"pos": 0, "kv": [None] * net.config.n_layers, "memory": net.new_memory(x.shape[0], x.device)})


@pytest.mark.parametrize("over", [[], ["model.net.positional=none", "model.net.qk_norm=all"],
                                  ["model.net.token_shift=4"], ["model.net.memory_backend=dense"],
                                  ["model.net.memory_layers=[0,2]"]],
                         ids=["rope", "no-pe", "token-shift", "dense", "two-memory-layers"])
@pytest.mark.parametrize("T", [64, 70], ids=["whole-windows", "partial-window"])
def test_every_window_at_once_equals_reading_them_in_order(over, T):
    """The fast path from an empty state: the same logits, gradients and state (the next segment continues
    identically) as the windows read one after another."""
    from tests.conftest import build_net

    torch.manual_seed(0)
    net = build_net("fot_tiny", ["model.net.window=16", "model.net.memory_k=4", *over])
    x = torch.randint(0, 256, (2, T), generator=torch.Generator().manual_seed(1))
    fast, fast_state = net(x)
    slow, slow_state = _streamed(net, x)
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-5)
    g_fast = torch.autograd.grad(fast.square().mean(), list(net.parameters()), allow_unused=True)
    g_slow = torch.autograd.grad(slow.square().mean(), list(net.parameters()), allow_unused=True)
    for a, b in zip(g_fast, g_slow):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    y = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(net(y, fast_state)[0], net(y, slow_state)[0], atol=2e-5, rtol=1e-5)


def test_the_fast_path_steps_aside_where_it_would_differ():
    from architectures.fot import parallel
    from tests.conftest import build_net

    x = torch.zeros(1, 64, dtype=torch.long)
    assert parallel.usable(build_net("fot_tiny"), x)
    assert not parallel.usable(build_net("fot_tiny", ["model.net.memory_backend=faiss"]), x)  # approximate
    assert not parallel.usable(build_net("fot_tiny", ["model.net.memory_capacity=32"]), x)  # evicts
    assert not parallel.usable(build_net("fot_tiny", ["model.net.checkpoint_layers=true"]), x)


def _same(a, b) -> None:
    """Nested tuples / lists of tensors and Nones, equal leaf by leaf."""
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert (a is None and b is None) or torch.equal(a, b)


def _same_state(a: dict, b: dict) -> None:
    assert a["pos"] == b["pos"]
    for ma, mb in zip(a["memory"], b["memory"], strict=True):
        assert torch.equal(ma.count, mb.count)
        assert torch.equal(ma.keys, mb.keys) and torch.equal(ma.values, mb.values)
    _same(a["kv"], b["kv"])
    sa, sb = a.get("start"), b.get("start")
    assert (sa is None) == (sb is None) and (sa is None or torch.equal(sa, sb))


@pytest.mark.parametrize("kw", [{}, {"positional": "none"}, {"token_shift": 3}, {"memory_layers": [0, 2]},
                                {"memory_backend": "dense"}], ids=["rope", "no-pe", "token-shift", "two-memory-layers",
                                                                   "dense"])
@pytest.mark.parametrize("cuts", [(16, 40), (3, 21, 40), (5, 45)], ids=["aligned", "unaligned", "mid-window-end"])
def test_read_leaves_the_state_forward_leaves(kw, cuts):
    """``read`` skips the layers above the last memory layer on whole windows: the memory, caches and position
    are exactly forward's, and the next segment's logits are the same, from any cut (aligned or not), with a
    row reset between segments."""
    net = model(**kw)
    x = tokens(T=64)
    edges = [0, *cuts, 64]
    s_read, s_fwd = None, {"pos": 0, "kv": [None] * net.config.n_layers, "memory": net.new_memory(2, x.device)}
    for n, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        if n == 1:  # row 1 starts a new document here
            rows = torch.tensor([False, True])
            s_read, s_fwd = net.reset_state(s_read, rows), net.reset_state(s_fwd, rows)
        s_read, s_fwd = net.read(x[:, a:b], s_read), net(x[:, a:b], s_fwd)[1]  # forward: streamed windows
        _same_state(s_read, s_fwd)
    y = tokens(T=21, seed=3)
    assert torch.equal(net(y, s_read)[0], net(y, s_fwd)[0])


def test_read_skips_the_layers_above_the_last_memory_layer():
    """The work read saves is real: on whole windows the head and the layers above the memory layer never run
    (a module that raised there would stop forward, not read)."""
    net = model(memory_layers=[1])
    x = tokens(T=32)

    def boom(*_):
        raise AssertionError("read ran a layer above the last memory layer")

    handles = [net.layers[2].register_forward_pre_hook(boom), net.head.register_forward_pre_hook(boom)]
    state = net.read(x)
    assert state["pos"] == 32 and int(state["memory"][0].count.min()) == 32
    with pytest.raises(AssertionError):
        net.read(tokens(T=5), state)  # a partial window takes forward: every layer
    for h in handles:
        h.remove()
