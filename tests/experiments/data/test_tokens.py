"""Tokens as well as bytes: a byte-level BPE trained on the training split (or a saved tokenizer), the model's
vocabulary following it, and bits per byte that always divide by the text's bytes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from experiments.data import ByteCorpus
from experiments.data.tokens import id_bytes, load
from experiments.eval import evaluate
from experiments.generate import sample
from experiments.train import train
from experiments.training.runs import corpus_of, load_run
from tests.conftest import compose

pytest.importorskip("tokenizers")
DATA = ["data.pattern=**/*.txt", "data.val_fraction=0.15", "data.test_fraction=0.15", "data.tokenizer=bpe",
        "data.bpe_vocab_size=300"]


@pytest.fixture(scope="module")
def bpe_run(tiny_corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("bpe_run")
    m = train(compose("train", ["model=transformer_tiny", "debug=smoke", f"run_dir={run}", f"data.path={tiny_corpus}",
                                "data.seq_len=32", *DATA]))
    return run, m


def test_a_bpe_model_trains_with_the_tokenizers_vocabulary_and_keeps_its_tokenizer(bpe_run):
    run, m = bpe_run
    cfg, module = load_run(run)
    assert module.net.config.vocab_size == cfg.data.vocab_size == 300 and (run / "tokenizer.json").exists()
    assert math.isfinite(m["val/bpb"]) and m["val/bpb"] > 0


def test_a_token_models_bits_per_byte_is_its_summed_nll_over_the_texts_bytes(bpe_run):
    run, _ = bpe_run
    cfg, module = load_run(run)
    r = evaluate(compose("eval", [f"run_dir={run}", "eval.num_batches=1", "eval.batch_size=2"]))
    split = corpus_of(cfg).split("test")
    ib = id_bytes(load(split.tokenizer))
    # the same two windows scored by hand
    from experiments.data.samplers import RandomWindows

    tokens = RandomWindows(split, 32, 2, 1234, split_name="test").batch(0)["tokens"]
    with torch.no_grad():
        logits, _ = module.net(tokens[:, :-1])
    nll = F.cross_entropy(logits.float().transpose(1, 2), tokens[:, 1:], reduction="sum").item()
    text_bytes = sum(len(b"".join(ib[int(t)] for t in row)) for row in tokens[:, 1:])
    assert text_bytes > tokens[:, 1:].numel()  # tokens stand for several bytes each
    assert r["bytes"] == text_bytes == sum(r["units"]["bytes"])
    assert r["test/bpb"] == pytest.approx(nll / text_bytes / math.log(2), rel=1e-5)
    s = evaluate(compose("eval", [f"run_dir={run}", "eval.streaming=true", "eval.max_docs=2", "out=s.json"]))
    docs = [bytes(b"".join(ib[int(t)] for t in split.document(i)[1:])) for i in np.argsort(-split.lengths)[:2]]
    assert s["stream"]["bytes"] == sum(len(d) for d in docs)


def test_a_token_model_generates_text(bpe_run):
    run, _ = bpe_run
    text = sample(compose("generate", [f"run_dir={run}", "prompt=the quick", "max_new_bytes=8", "stream=false"]))
    assert text.startswith("the quick") and len(text) > len("the quick")


def test_a_saved_tokenizer_by_path_sets_the_vocabulary(bpe_run, tiny_corpus, tmp_path):
    run, _ = bpe_run
    c = ByteCorpus.build_or_load(path=str(tiny_corpus), pattern="**/*.txt", val_fraction=0.15, test_fraction=0.15,
                                 tokenizer=str(run))  # the folder holding tokenizer.json
    assert c.split("train").data.dtype == np.uint16
    cfg = compose("train", [f"data.path={tiny_corpus}", f"data.tokenizer={run}"])
    assert cfg.data.vocab_size == 300


def test_megabyte_and_byte_level_evaluations_refuse_tokens(bpe_run, tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match=r"Megabyte reads bytes .* data.tokenizer=bytes"):
        train(compose("train", ["model=megabyte_tiny", "debug=smoke", f"run_dir={tmp_path}",
                                f"data.path={tiny_corpus}", *DATA]))
    from experiments.evaluation.long_context import run as longeval_run

    with pytest.raises(ValueError, match="token-level run .* defined on bytes"):
        longeval_run(compose("longeval", [f"run_dir={bpe_run[0]}"]))


def test_context_use_of_a_token_model_scores_the_byte_targets_after_the_last_c_bytes(bpe_run):
    """context_eval on a token run: the byte targets a byte model is scored on (the same hash and counts),
    read after tokens(last c bytes + the byte before the target); a byte changed before those c bytes leaves
    the score at c unchanged, one inside them moves it."""
    from experiments.evaluation.context import context_curve, run
    from tests.conftest import build_net

    run_dir, _ = bpe_run
    r = run(compose("context_eval", [f"run_dir={run_dir}", "contexts=[0,16,64]", "span=32", "max_docs=3",
                                     "window=8", "out=ctx.json"]))
    cfg, module = load_run(run_dir)
    corpus = corpus_of(cfg)
    split = corpus.byte_corpus().split("test")
    b = context_curve(build_net("transformer_tiny").eval(), split, [0, 16, 64], 32, 16, 2, torch.device("cpu"),
                      max_docs=3)
    assert r["docs"] == b["docs"] == 3 and r["skipped_docs"] == b["skipped_docs"]
    for c in ("0", "16", "64"):
        assert r["units"][c]["targets_sha256"] == b["units"][c]["targets_sha256"]
        assert r["units"][c]["bytes"] == [31] * 3
    tok = load(corpus.split("test").tokenizer)
    doc = np.array(split.document(int(next(i for i in range(split.n_docs) if split.lengths[i] >= 96))))[:96]
    docs = {}
    for name, pos in (("base", None), ("far", 64 - 16 - 1), ("near", 64 - 2)):
        d = doc.copy()
        if pos is not None:
            d[pos] = ord("#") if d[pos] != ord("#") else ord("%")
        one = dataclasses.replace(split, data=d, offsets=np.array([0, 96]), paths=["d"])
        docs[name] = context_curve(module.net.double(), one, [0, 16], 32, 8, 1, torch.device("cpu"), target_at=64,
                                   tok=tok)["units"]
    assert docs["far"]["16"]["nll"] == docs["base"]["16"]["nll"]
    assert abs(docs["near"]["16"]["nll"][0] - docs["base"]["16"]["nll"][0]) > 1e-9
    assert docs["near"]["0"]["nll"] == docs["base"]["0"]["nll"]


def test_byte_windows_score_a_token_model_on_exactly_a_byte_models_text(bpe_run):
    """eval.byte_windows=true: the byte windows (documents) a byte run is scored on, the same targets' hash, the
    bytes w[1:] divided by their count, and the NLL of the tokens of w[1:] read after the tokens of w[:1]."""
    from experiments.evaluation.aligned import encode_aligned
    from experiments.evaluation.bpb import streaming_bpb, windowed_bpb
    from tests.conftest import build_net

    run, _ = bpe_run
    cfg, module = load_run(run)
    corpus = corpus_of(cfg)
    byte_split = corpus.byte_corpus().split("test")
    r = evaluate(compose("eval", [f"run_dir={run}", "eval.num_batches=2", "eval.batch_size=3", "eval.context=40",
                                  "eval.byte_windows=true", "out=w.json"]))
    byte_net = build_net("transformer_tiny").eval()
    b = windowed_bpb(byte_net, byte_split, 40, 3, 2, 1234, torch.device("cpu"))
    assert r["units"]["targets_sha256"] == b["units"]["targets_sha256"]
    assert r["units"]["bytes"] == b["units"]["bytes"] == [40] * 6 and r["byte_windows"] is True
    # one window by hand: the tokens of w[1:] after those of w[:1], over the window's 40 bytes
    from experiments.data.samplers import RandomWindows

    w = RandomWindows(byte_split, 40, 3, 1234, split_name="test").batch(1)["tokens"][2].numpy()
    ids, first, _ = encode_aligned(load(corpus.split("test").tokenizer), w)
    text = b"".join(id_bytes(load(corpus.split("test").tokenizer))[int(t)] for t in ids[first:])
    assert len(text) == 40 and text == w[1:].astype(np.uint8).tobytes()
    with torch.no_grad():
        logits, _ = module.net(torch.from_numpy(ids[None, :-1]))
    nll = F.cross_entropy(logits[0, first - 1 :].float(), torch.from_numpy(ids[first:]), reduction="sum").item()
    assert r["units"]["nll"][5] == pytest.approx(nll, rel=1e-5)
    assert r["test/bpb"] == pytest.approx(sum(r["units"]["nll"]) / 240 / math.log(2), rel=1e-9)
    # documents: the byte split's longest, truncated at the same byte, streamed by the token model's own window
    s = evaluate(compose("eval", [f"run_dir={run}", "eval.streaming=true", "eval.max_docs=2", "eval.max_doc_bytes=150",
                                  "eval.window=8", "eval.byte_windows=true", "out=s.json"]))
    bs = streaming_bpb(byte_net, byte_split, 16, 2, torch.device("cpu"), max_docs=2, max_doc_bytes=150)
    assert s["units"]["targets_sha256"] == bs["units"]["targets_sha256"] and s["units"]["bytes"] == bs["units"]["bytes"]
    assert s["stream"]["bytes"] == sum(bs["units"]["bytes"]) and s["stream"]["window"] == 8
    assert sum(c["bytes"] for c in s["stream"]["curve"]) == s["stream"]["bytes"]  # curve positions are byte offsets
    assert max(c["end"] for c in s["stream"]["curve"]) >= 149 > 150 // 2


def test_a_token_models_byte_window_score_reads_only_the_window(bpe_run):
    """The text before a byte window never reaches its score; a changed byte inside the window moves it."""
    from experiments.evaluation.aligned import aligned_windowed_bpb

    run, _ = bpe_run
    cfg, module = load_run(run)
    corpus = corpus_of(cfg)
    tok = load(corpus.split("test").tokenizer)
    split = corpus.byte_corpus().split("test")
    base = aligned_windowed_bpb(module.net, split, tok, 30, 2, 1, 7, torch.device("cpu"))
    from experiments.data.samplers import RandomWindows

    w = RandomWindows(split, 30, 2, 7, split_name="test").batch(0)["tokens"][0].numpy()
    start = next(j for j in range(len(split.data) - 30) if (split.data[j : j + 31] == w).all())
    data = np.array(split.data)
    outside, inside = data.copy(), data.copy()
    assert start > 0
    outside[start - 1] = ord("#") if outside[start - 1] != ord("#") else ord("%")
    inside[start + 15] = ord("#") if inside[start + 15] != ord("#") else ord("%")
    for edited, same in ((outside, True), (inside, False)):
        r = aligned_windowed_bpb(module.net, dataclasses.replace(split, data=edited), tok, 30, 2, 1, 7,
                                 torch.device("cpu"))
        assert (r["units"]["nll"][0] == pytest.approx(base["units"]["nll"][0], rel=1e-6)) is same
