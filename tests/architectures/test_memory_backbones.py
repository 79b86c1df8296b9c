"""FoT's memory attention on another backbone: Megalodon with ``memory_layers`` (a kNN memory of the
row's earlier chunks). The contract tests (causality, segments = one pass, document resets, gradients,
overfitting) run on ``megalodon_memory_tiny`` with every other tiny preset."""

from __future__ import annotations

import json

import pytest
import torch

from architectures.megabyte import Megabyte
from architectures.megalodon import Megalodon
from experiments.train import train
from tests.conftest import assert_crossbatch_reaches_own_and_next_rows, compose

TINY = dict(model_dim=32, num_layers=2, num_heads=2, z_dim=16, value_dim=64, ffn_hidden_dim=64, chunk_size=8,
            norm_num_groups=4, cema_ndim=4)


def model(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return Megalodon(**{**TINY, "memory_layers": [1], "memory_k": 4, **kw}).to(dtype).eval()


def tokens(B=2, T=40, seed=1):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def test_the_first_chunk_is_the_official_megalodon_and_later_chunks_use_the_memory():
    """An empty memory adds nothing: the first chunk equals the model without memory layers (same
    weights: memory layers add no parameters); from the second chunk on the memory is read."""
    x = tokens()
    with_memory, plain = model(), model(memory_layers=[])
    assert plain.load_state_dict(with_memory.state_dict()) is not None  # strict: the same parameters
    a, b = with_memory(x)[0], plain(x)[0]
    torch.testing.assert_close(a[:, :8], b[:, :8], atol=1e-10, rtol=0)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_knn_with_k_at_least_the_memory_size_equals_dense_and_a_small_k_restricts():
    x = tokens()
    a = model(memory_k=64)(x)[0]  # at most 32 entries per row and head ever in memory
    b = model(memory_backend="dense")(x)[0]
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    c = model(memory_k=2)(x)[0]
    assert not torch.allclose(a[:, 16:], c[:, 16:])


def test_faiss_flat_retrieves_what_exact_search_does():
    x = tokens()
    torch.testing.assert_close(model(memory_backend="faiss")(x)[0], model()(x)[0], atol=1e-8, rtol=0)


def test_a_chunk_never_retrieves_itself():
    net, x, state, sizes = model(), tokens(T=24), None, []
    for s in range(0, 24, 4):
        _, state = net(x[:, s : s + 4], state)
        sizes.append(int(state["layers"][1]["memory"].size()[0]))
    assert sizes == [0, 8, 8, 16, 16, 24]  # a chunk enters the memory once complete


def test_crossbatch_positive_is_own_row_negatives_are_the_next_rows_and_gradients_reach_them():
    net = model(torch.float32).train()
    b, C, d = 5, 8, 3
    logits = assert_crossbatch_reaches_own_and_next_rows(net, net.embed, tokens(B=b, T=2 * C, seed=3),
                                                         tokens(B=b, T=C, seed=4), d)
    assert logits.shape == (b, C, 256)


def test_crossbatch_with_only_the_own_row_is_streaming_with_the_previous_chunk_in_memory():
    """d=1 and one previous chunk (which streaming reads with an empty memory too) equals streaming the
    same bytes with a memory that holds that chunk (memory_backend=dense: all of it)."""
    net = model(memory_backend="dense")
    x = tokens(T=16)
    crossbatch = net.forward_crossbatch(x[:, :8], x[:, 8:], 1)
    streamed = net(x)[0][:, 8:]
    torch.testing.assert_close(crossbatch, streamed, atol=1e-10, rtol=0)


def test_bad_memory_settings_fail_clearly():
    with pytest.raises(ValueError, match=r"memory_layers=\[2\] must be layer indices in \[0, 2\)"):
        model(memory_layers=[2])
    with pytest.raises(ValueError, match="memory layers attend without attention dropout"):
        model(attention_dropout=0.1)
    with pytest.raises(ValueError, match="memory_backend='knn'"):
        model(memory_backend="knn")
    with pytest.raises(ValueError, match=r"whole chunks of 8 tokens"):
        model().forward_crossbatch(tokens(T=12), tokens(T=8), 1)
    assert model(memory_layers=[]).crossbatch_window is None and model().crossbatch_window == 8


def test_crossbatch_training_runs_through_the_shared_objective(tiny_corpus, tmp_path):
    """task.crossbatch with Megalodon: the window is a chunk (16 bytes for megalodon_memory_tiny)."""
    cfg = compose("train", ["debug=smoke", f"run_dir={tmp_path}", f"data.path={tiny_corpus}", "data.pattern=**/*.txt",
                            "data.val_fraction=0.15", "model=megalodon_memory_tiny", "data.sampler=crossbatch",
                            "data.seq_len=32", "task.crossbatch={d: 2, w: 1}"])
    metrics = train(cfg)
    assert metrics["steps"] == 3 and json.loads((tmp_path / "metrics.json").read_text())["val/bpb"] > 0


# ---------------------------------------------------------------------------------------------- MEGABYTE
MB = dict(patch_size=4, d_global=8, d_local=16, global_layers=2, global_heads=2, local_layers=2, local_heads=2,
          max_len=64, global_window=4)


def megabyte(**kw):
    torch.manual_seed(0)
    return Megabyte(**{**MB, "memory_layers": [1], "memory_k": 4, **kw}).double().eval()


def test_megabyte_first_window_is_the_paper_model_and_streams_pass_the_learned_positions():
    """The first window equals MEGABYTE without windows or memory (same weights: none added); a
    windowed model has window-relative positions, so it streams past max_len (100 > 64 bytes)."""
    x = tokens(T=100)
    net, plain = megabyte(), megabyte(memory_layers=[], global_window=0)
    plain.load_state_dict(net.state_dict())
    y, state = net(x)
    torch.testing.assert_close(y[:, :15], plain(x[:, :15])[0], atol=1e-10, rtol=0)
    assert net.max_len is None and plain.max_len == 64
    assert int(state["g_mem"][0].size()[0]) == 24  # patches 0..25 computed: 6 windows of 4 complete


def test_megabyte_knn_with_k_at_least_the_memory_size_equals_dense():
    x = tokens(T=64)
    a = megabyte(memory_k=64)(x)[0]
    torch.testing.assert_close(a, megabyte(memory_backend="dense")(x)[0], atol=1e-10, rtol=0)
    assert not torch.allclose(a[:, 32:], megabyte(memory_k=1)(x)[0][:, 32:])


def test_megabyte_crossbatch_rows_and_gradients():
    """The global byte embeddings of the previous windows (all but their last patch, which is also the
    current window's first global input) reach own and next rows; the last byte is scored by the next
    window."""
    net = megabyte().float().train()
    b, Wb, d = 4, 16, 2
    logits = assert_crossbatch_reaches_own_and_next_rows(net, net.byte_embed, tokens(B=b, T=Wb, seed=3),
                                                         tokens(B=b, T=Wb, seed=4), d, prev_bytes=Wb - 4,
                                                         drop_last=True)
    assert logits.shape == (b, Wb, 256)


def test_megabyte_crossbatch_with_the_own_row_is_streaming_with_that_window_in_memory():
    net = megabyte(memory_backend="dense")
    x = tokens(T=32)
    crossbatch, streamed = net.forward_crossbatch(x[:, :16], x[:, 16:], 1), net(x)[0][:, 16:]
    # all but the last byte, which the next window scores (its memory then also holds this window)
    torch.testing.assert_close(crossbatch[:, :-1], streamed[:, :-1], atol=1e-10, rtol=0)


def test_megabyte_bad_memory_settings_fail_clearly():
    with pytest.raises(ValueError, match=r"memory_layers=\[1\] needs global_window > 0"):
        megabyte(global_window=0)
    with pytest.raises(ValueError, match=r"global_window=32 patches of 4 bytes need max_len >= 128"):
        megabyte(global_window=32)
    with pytest.raises(ValueError, match=r"whole global windows of 16 bytes"):
        megabyte().forward_crossbatch(tokens(T=8), tokens(T=16), 1)
    assert megabyte(memory_layers=[]).crossbatch_window is None and megabyte().crossbatch_window == 16


def test_carried_state_training_of_a_model_without_reset_state_fails_at_start(tiny_corpus, tmp_path):
    """MEGABYTE with windows streams past max_len but cannot reset single rows at a document start."""
    cfg = compose("train", ["debug=smoke", f"run_dir={tmp_path}", f"data.path={tiny_corpus}", "data.pattern=**/*.txt",
                            "data.val_fraction=0.15", "model=megabyte_memory_tiny", "data.sampler=stream",
                            "task.carry_state=true"])
    with pytest.raises(ValueError, match="Megabyte does not implement reset_state"):
        train(cfg)


@pytest.mark.parametrize("arch", ["fot", "megalodon", "megabyte"])
def test_crossbatch_scoring_the_previous_windows_gives_their_plain_logits_before_the_current_ones(arch):
    """score_previous (the official training code's choice): the previous windows' logits are those of reading
    them on their own (the first window of a document), the current window's are unchanged."""
    from tests.conftest import build_net

    if arch == "fot":
        torch.manual_seed(0)
        net = build_net("fot_tiny", ["model.net.window=8", "model.net.memory_k=4"]).double().eval()
        W = 8
    else:
        net = model() if arch == "megalodon" else megabyte()
        W = net.crossbatch_window
    prev, curr = tokens(B=3, T=W, seed=5), tokens(B=3, T=W, seed=6)
    both = net.forward_crossbatch(prev, curr, 2, score_previous=True)
    assert both.shape[1] == 2 * W
    torch.testing.assert_close(both[:, W:], net.forward_crossbatch(prev, curr, 2), atol=1e-10, rtol=0)
    # MEGABYTE: the previous window's last byte predicts the current window's first, which the joint pass
    # reads from the current window's global model (as in streaming): compared on the others
    last = W - 1 if arch == "megabyte" else W
    torch.testing.assert_close(both[:, :last], net(prev)[0][:, :last], atol=1e-10, rtol=0)


def test_the_crossbatch_objective_scores_every_window_by_default_and_the_current_one_when_asked():
    from experiments.training.crossbatch import CrossBatch
    from tests.conftest import build_net

    net = build_net("fot_tiny", ["model.net.window=8"]).eval()
    x = tokens(B=2, T=16)
    logits, scored = CrossBatch(net, {"d": 1, "w": 1}).logits(x)
    assert logits.shape[1] == 16 and scored == slice(0, None)
    logits, scored = CrossBatch(net, {"d": 1, "w": 1, "score_previous": False}).logits(x)
    assert logits.shape[1] == 8 and scored == slice(8, None)
