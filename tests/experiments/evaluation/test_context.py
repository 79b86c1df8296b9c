"""The context-use evaluation: the same target bytes at every context and for every architecture, and a
score at context c that depends on the last c bytes before the target and on nothing earlier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.data.corpus import Split
from experiments.evaluation.context import context_curve
from tests.conftest import TINY_MODELS, build_net, compose

C, SPAN = 96, 40


def split_of(docs: list[np.ndarray]) -> Split:
    offsets = np.cumsum([0] + [len(d) for d in docs])
    return Split(np.concatenate(docs).astype(np.uint8), offsets, [f"d{i}" for i in range(len(docs))])


def curve(net, docs, contexts):
    return context_curve(net, split_of(docs), contexts, SPAN, window=32, batch_size=2, device=torch.device("cpu"))


@pytest.mark.parametrize("model", TINY_MODELS)
def test_a_score_at_context_c_depends_on_the_last_c_bytes_and_nothing_earlier(model):
    torch.manual_seed(0)
    net = build_net(model).eval().double()  # an untrained model's use of context is below float32's resolution
    rng = np.random.default_rng(0)
    doc = rng.integers(97, 123, C + SPAN).astype(np.uint8)
    c = 24
    far, near = doc.copy(), doc.copy()
    far[C - c - 1] ^= 7  # just outside the last c bytes
    near[C - 2] ^= 7  # inside them
    contexts = [0, c, C]  # the target is doc[C + 1 : C + SPAN] at every context
    base = curve(net, [doc], contexts)["units"]
    assert curve(net, [far], contexts)["units"][str(c)]["nll"] == base[str(c)]["nll"]
    moved = curve(net, [near], contexts)["units"]
    assert abs(moved[str(c)]["nll"][0] - base[str(c)]["nll"][0]) > 1e-9
    assert moved["0"]["nll"] == base["0"]["nll"]  # at context 0 neither change is read


def test_the_target_bytes_are_the_same_at_every_context_and_for_every_architecture():
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 256, C + SPAN + extra).astype(np.uint8) for extra in (0, 5, 50)]
    short = rng.integers(0, 256, C + SPAN - 1).astype(np.uint8)
    hashes = set()
    for model in ("transformer_tiny", "megalodon_tiny"):
        r = curve(build_net(model).eval(), [docs[0], short, docs[1], docs[2]], [0, 8, C])
        assert r["docs"] == 3 and r["skipped_docs"] == 1 and r["min_doc_bytes"] == C + SPAN
        hashes |= {u["targets_sha256"] for u in r["units"].values()}
        assert all(u["bytes"] == [SPAN - 1] * 3 for u in r["units"].values())
        assert [p["context"] for p in r["curve"]] == [0, 8, C] and r["curve"][0]["gain"] == 0
    assert len(hashes) == 1


def test_documents_too_short_for_every_context_are_an_error_naming_the_fix():
    with pytest.raises(ValueError, match=r"max\(contexts\) \+ span = 136 bytes .*data=packages"):
        curve(build_net("transformer_tiny").eval(), [np.zeros(100, dtype=np.uint8)], [0, C])


def test_the_command_line_scores_a_run_and_refuses_bad_contexts(tiny_corpus, tmp_path):
    from experiments.evaluation.context import run
    from experiments.train import train

    data = [f"data.path={tiny_corpus}", "data.pattern=**/*.txt", "data.val_fraction=0.15", "data.test_fraction=0.15"]
    train(compose("train", ["debug=smoke", f"run_dir={tmp_path}", *data]))
    r = run(compose("context_eval", [f"run_dir={tmp_path}", "contexts=[0,16,64]", "span=32", "max_docs=4"]))
    assert r["docs"] == 4 and (tmp_path / "context_eval.json").exists() and len(r["curve"]) == 3
    with pytest.raises(ValueError, match=r"contexts\[1\]=-4 must be an integer >= 0"):
        run(compose("context_eval", [f"run_dir={tmp_path}", "contexts=[0,-4]"]))


def test_distractors_are_other_documents_read_before_without_a_reset():
    from experiments.evaluation.context import distractors

    rng = np.random.default_rng(2)
    docs = [rng.integers(0, 256, n).astype(np.uint8) for n in (C + SPAN, 30, 40)]  # only the first is long enough
    split = split_of(docs)
    d = distractors(split, 0, 60)
    assert np.array_equal(d, np.concatenate([docs[1], docs[2]])[-60:])  # never the document itself
    net = build_net("transformer_tiny").eval().double()
    plain, mixed = curve(net, docs[:1] + docs[1:], [0, 8]), context_curve(
        net, split, [0, 8], SPAN, window=32, batch_size=2, device=torch.device("cpu"), distract=60)
    assert mixed["distractors"] == 60 and mixed["docs"] == plain["docs"] == 1
    assert mixed["units"]["8"]["targets_sha256"] == plain["units"]["8"]["targets_sha256"]  # the same target bytes
    assert mixed["units"]["8"]["nll"] != plain["units"]["8"]["nll"]  # read after other text: a different state


def test_target_at_lets_evaluations_with_fewer_contexts_score_the_same_bytes():
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 256, C + SPAN + 9).astype(np.uint8) for _ in range(2)]
    net = build_net("transformer_tiny").eval()
    full = curve(net, docs, [0, 8, C])
    short = context_curve(net, split_of(docs), [0, 8], SPAN, window=32, batch_size=2, device=torch.device("cpu"),
                          target_at=C)
    assert short["units"]["8"]["targets_sha256"] == full["units"]["8"]["targets_sha256"]
    assert short["units"]["8"]["nll"] == pytest.approx(full["units"]["8"]["nll"])
    with pytest.raises(ValueError, match="target_at=4 is before the largest context 8"):
        context_curve(net, split_of(docs), [0, 8], SPAN, 32, 2, torch.device("cpu"), target_at=4)


@pytest.mark.parametrize("model", TINY_MODELS)
def test_distractors_read_once_per_batch_give_the_numbers_of_reading_them_for_every_context(model):
    """The multi-document evaluation reads the distractor windows once per batch and copies the state after them
    for each context (``clone_state``: a kNN memory, KV buffers, carried statistics): the same numbers, bit for
    bit, as reading them again for every context, in fewer forward calls."""
    torch.manual_seed(0)
    net = build_net(model).eval()
    calls, read = [], net.read
    net.register_forward_hook(lambda *_: calls.append(1))

    def counted_read(*args):  # a window read for its state only (``read`` calls ``forward`` without hooks)
        calls.append(1)
        return read(*args)

    net.read = counted_read
    rng = np.random.default_rng(4)
    docs = [rng.integers(0, 256, C + SPAN + extra).astype(np.uint8) for extra in (0, 7, 30)]
    runs = {}
    for share in (True, False):
        calls.clear()
        runs[share] = context_curve(net, split_of(docs), [0, 8, C], SPAN, window=32, batch_size=2,
                                    device=torch.device("cpu"), distract=64, share_prefix=share)
        runs[share]["calls"] = len(calls)
    for c in ("0", "8", str(C)):
        assert runs[True]["units"][c]["nll"] == runs[False]["units"][c]["nll"], (model, c)
    # 3 documents in 2 batches, 2 shared windows of 32 each: read once instead of 3 times per batch
    assert runs[False]["calls"] - runs[True]["calls"] == 2 * 2 * 2



def test_a_reset_of_every_part_after_the_distractors_reads_as_a_fresh_start_and_one_part_does_not():
    """``distract_reset``: Megalodon reads other documents, then resets some parts of its state where the document
    begins (on a chunk boundary). All parts: the numbers of the plain evaluation (nothing of the other text
    survives); the TimestepNorm statistics alone: neither those nor the numbers without a reset."""
    torch.manual_seed(0)
    net = build_net("megalodon_tiny").eval().double()  # chunks of 16; 64 bytes of distractors
    rng = np.random.default_rng(6)
    docs = [rng.integers(0, 256, n).astype(np.uint8) for n in (C + SPAN, 50, 60)]
    split = split_of(docs)
    args = (split, [0, 8], SPAN, 32, 2, torch.device("cpu"))
    plain = context_curve(net, *args, target_at=C)["units"]
    kept = context_curve(net, *args, target_at=C, distract=64)["units"]
    for share in (True, False):
        fresh = context_curve(net, *args, target_at=C, distract=64, distract_reset=net.state_parts,
                              share_prefix=share)
        assert fresh["distract_reset"] == list(net.state_parts)
        for c in ("0", "8"):
            assert fresh["units"][c]["nll"] == pytest.approx(plain[c]["nll"], abs=1e-9, rel=0)
    norm = context_curve(net, *args, target_at=C, distract=64, distract_reset=("norm",))["units"]
    for c in ("0", "8"):
        assert abs(norm[c]["nll"][0] - plain[c]["nll"][0]) > 1e-9 and abs(norm[c]["nll"][0] - kept[c]["nll"][0]) > 1e-9
    with pytest.raises(ValueError, match=r"distract_reset=\['norm'\] needs distractors > 0 \(got 0\)"):
        context_curve(net, *args, distract_reset=("norm",))
    with pytest.raises(ValueError, match=r"parts of Transformer's state \[\] \(\['norm'\] are not\)"):
        context_curve(build_net("transformer_tiny").eval(), *args, target_at=C, distract=64, distract_reset=("norm",))



class Stop(Exception):
    pass


def stop_after(net, n: int | None):
    """Count the forward calls of ``net``; raise ``Stop`` at call ``n + 1`` (None: never)."""
    calls = []

    def hook(*_):
        calls.append(1)
        if n is not None and len(calls) > n:
            raise Stop

    return calls, net.register_forward_pre_hook(hook)


def test_an_interrupted_evaluation_continues_from_its_last_finished_batch_with_the_same_numbers(tmp_path):
    """A context evaluation killed part way (a table's 2-hour evaluation at the end of a session) keeps the scores
    of its finished batches and continues after them: the same units and target hash as one uninterrupted run,
    in fewer forward calls; a partial file of other weights is not used; the file goes when the curve is done."""
    torch.manual_seed(0)
    net = build_net("transformer_tiny").eval()
    rng = np.random.default_rng(5)
    docs = [rng.integers(0, 256, C + SPAN + extra).astype(np.uint8) for extra in (0, 3, 9, 20, 31)]
    args = (split_of(docs), [0, 8, C], SPAN, 32, 2, torch.device("cpu"))
    partial = tmp_path / ".context.json.partial"
    calls, hook = stop_after(net, None)
    whole = context_curve(net, *args)
    hook.remove()
    full = len(calls)  # 3 batches of documents

    def interrupted(model):
        _, hook = stop_after(model, full // 2)  # during the second batch: the first is kept
        with pytest.raises(Stop):
            context_curve(model, *args, partial=partial)
        hook.remove()
        assert partial.exists()

    interrupted(net)
    calls, hook = stop_after(net, None)
    resumed = context_curve(net, *args, partial=partial)
    hook.remove()
    assert resumed["units"] == whole["units"] and resumed["curve"] == whole["curve"]
    assert 0 < len(calls) < full and not partial.exists()
    interrupted(net)
    other = build_net("transformer_tiny").eval()
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    calls, hook = stop_after(other, None)
    continued = context_curve(other, *args, partial=partial)
    hook.remove()
    assert len(calls) == full and continued["units"] == context_curve(other, *args)["units"]
    assert continued["units"] != whole["units"]
