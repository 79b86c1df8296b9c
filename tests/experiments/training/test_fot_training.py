"""FoT through the house loop: CrossBatch on text and on the dictionary, the memorizing variant with
its memory carried (and checkpointed) across steps, fine-tuning from a baseline, the evaluations."""

from __future__ import annotations

import contextlib
import csv
import json

import pytest
import torch

from experiments.fot_eval import dictionary_accuracy
from experiments.fot_eval import run as fot_eval_run
from experiments.train import train
from experiments.training.runs import load_run
from tests.conftest import compose


def _losses(run_dir):
    with open(run_dir / "logs" / "metrics.csv") as fh:
        return [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]


DICT = ["data=dictionary", "model=fot_tiny", "model.net.window=20", "model.net.positional=none", "debug=smoke",
        "data.batch_size=4", "trainer.log_every_n_steps=1"]


def test_crossbatch_on_the_dictionary_with_a_d_schedule(tmp_path):
    cfg = compose("train", [*DICT, f"run_dir={tmp_path}", "trainer.max_steps=4",
                            "+task.crossbatch={d: 1, w: 1, d_after: 3, switch_metric: train/loss, switch_above: 0.0}"])
    m = train(cfg)
    assert 0.0 <= m["val/acc"] <= 1.0
    rows = list(csv.DictReader(open(tmp_path / "logs" / "metrics.csv")))
    ds = [float(r["train/crossbatch_d"]) for r in rows if r.get("train/crossbatch_d")]
    assert ds[0] == 1.0 or ds[-1] == 3.0  # switched once the metric passed the threshold
    assert ds[-1] == 3.0


def test_crossbatch_on_text_needs_whole_windows(tiny_corpus, tmp_path):
    base = ["model=fot_tiny", "model.net.window=16", "debug=smoke", f"data.path={tiny_corpus}",
            "data.pattern=**/*.txt", "data.val_fraction=0.15", "data.sampler=crossbatch", "data.batch_size=3",
            "+task.crossbatch={d: 2, w: 1}"]
    train(compose("train", [*base, "data.seq_len=32", f"run_dir={tmp_path / 'ok'}"]))
    with pytest.raises(ValueError, match=r"needs data.seq_len=32, got 48"):
        train(compose("train", [*base, "data.seq_len=48", f"run_dir={tmp_path / 'bad'}"]))


def test_memorizing_variant_carries_memory_across_steps_and_resumes_exactly(tmp_path):
    common = [*DICT, "data.sampler=stream", "task.carry_state=true", "optim.max_steps=6"]
    train(compose("train", [*common, "trainer.max_steps=6", f"run_dir={tmp_path / 'full'}"]))
    train(compose("train", [*common, "trainer.max_steps=3", f"run_dir={tmp_path / 'part'}"]))
    ckpt = torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=True)
    mem = ckpt["longlab"]["carried_state"]["memory"][0]
    assert mem["__object__"] == "memory.knn:KNNMemory" and int(mem["state"]["count"].sum()) > 0
    train(compose("train", [*common, "trainer.max_steps=6", "ckpt_path=auto", f"run_dir={tmp_path / 'part'}"]))
    assert _losses(tmp_path / "full") == pytest.approx(_losses(tmp_path / "part"), rel=1e-6, abs=1e-7)


def test_fine_tuning_fot_from_a_baseline_run(tiny_corpus, tmp_path):
    data = [f"data.path={tiny_corpus}", "data.pattern=**/*.txt", "data.val_fraction=0.15", "debug=smoke"]
    train(compose("train", ["model=transformer_tiny", *data, f"run_dir={tmp_path / 'base'}"]))
    train(compose("train", ["model=fot_tiny", *data, f"run_dir={tmp_path / 'fot'}", f"init_from={tmp_path / 'base'}"]))
    _, base = load_run(tmp_path / "base")
    _, fot = load_run(tmp_path / "fot")
    w0 = base.net.layers[0].attn.wq.weight
    assert w0.shape == fot.net.layers[0].attn.wq.weight.shape
    with pytest.raises(ValueError, match="does not fit this model"):
        train(compose("train", ["model=megalodon_tiny", *data, f"run_dir={tmp_path / 'x'}",
                                f"init_from={tmp_path / 'base'}"]))


def test_fot_eval_writes_accuracy_and_distraction(tmp_path):
    train(compose("train", [*DICT, f"run_dir={tmp_path}", "+task.crossbatch={d: 1, w: 1}"]))
    out = fot_eval_run(compose("fot_eval", [f"run_dir={tmp_path}", "sizes=[40,200]", "backends=[exact,dense]",
                                            "ks=[4]", "query_windows=2", "distraction_d=[1,2]",
                                            "distraction_batch=2", "distraction_batches=1"]))
    assert len(out["dictionary"]) == 4
    assert all(0 <= r["accuracy"] <= 1 for r in out["dictionary"])
    assert out["distraction"][0]["r_d"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "fot_eval.json").read_text())["distraction"][1]["d"] == 2


def test_dictionary_accuracy_of_a_model_that_cannot_see_the_definitions_is_chance():
    torch.manual_seed(0)
    from architectures.transformer import Transformer

    net = Transformer(vocab_size=67, d_model=32, n_layers=1, n_heads=2, kv_window=20).eval()
    r = dictionary_accuracy(net, 400, 20, query_windows=8)
    assert r["tokens_in_memory"] == 400 and r["accuracy"] < 0.2


@pytest.mark.slow
def test_tiny_fot_learns_the_dictionary_beyond_chance(tmp_path):
    """The curriculum of table fot_dictionary: windows of 20, then 120. Queries whose definitions are
    only in memory (streamed window by window) beat chance (1/64) by far."""
    train(compose("train", ["experiment=fot_dictionary/fot_stage1", f"run_dir={tmp_path / 's1'}",
                            "trainer.enable_progress_bar=false"]))
    train(compose("train", ["experiment=fot_dictionary/fot", f"run_dir={tmp_path / 's2'}", "trainer.max_steps=200",
                            f"init_from={tmp_path / 's1'}", "trainer.enable_progress_bar=false"]))
    _, module = load_run(tmp_path / "s2")
    r = dictionary_accuracy(module.net, 2400, 120, query_windows=8, seed=3)
    assert r["accuracy"] > 0.5, r


@contextlib.contextmanager
def counted_memory_resets():
    """The rows reset per KNNMemory.reset call while the block runs (a list, filled as it goes)."""
    from memory import KNNMemory

    calls, real = [], KNNMemory.reset

    def spy(self, rows=None):
        calls.append(int(torch.as_tensor(rows).sum()))
        return real(self, rows)

    KNNMemory.reset = spy
    try:
        yield calls
    finally:
        KNNMemory.reset = real


def test_carried_state_training_resets_at_every_document_start_inside_a_window(tiny_corpus, tmp_path):
    """The memorizing variant on text streams: every document start (not only those on a window's
    first byte; once 0 resets over ~50 boundaries) resets that row's memory, its window and history."""
    from experiments.data import ByteCorpus
    from experiments.data.samplers import DocumentStreams
    from experiments.training.run import build_module

    cfg = compose("train", ["model=fot_tiny", "debug=smoke", f"data.path={tiny_corpus}", "data.pattern=**/*.txt",
                            "data.val_fraction=0.15", "data.test_fraction=0.15", "data.sampler=stream",
                            "task.carry_state=true", "data.seq_len=256", "data.batch_size=3",
                            "trainer.max_steps=12", f"run_dir={tmp_path}"])
    with counted_memory_resets() as calls:
        m = train(cfg)
    corpus = ByteCorpus.build_or_load(path=str(tiny_corpus), pattern="**/*.txt", val_fraction=0.15,
                                      test_fraction=0.15)
    streams = DocumentStreams(corpus.split("train"), 256, 3, seed=0)
    starts = [streams.batch(s)["starts"][:, :-1] for s in range(12)]
    inside = sum(int(s[:, 1:].sum()) for s in starts)
    expected = inside + sum(int(s[:, 0].sum()) for s in starts[1:])  # step 0 starts from an empty state
    assert inside >= 5 and m["steps"] == 12
    n_memory_layers = len(build_module(cfg).net.config.memory_layers)
    assert sum(calls) == expected * n_memory_layers


def test_memorizing_on_segments_resets_its_memory_where_each_segment_starts(tiny_corpus, tmp_path):
    """data.sampler=segments with carried state: every row's memory is reset at each new segment (the
    first window of segments 1, 2, ...; segment 0 starts from an empty state) and nowhere else."""
    from experiments.training.run import build_module

    steps, windows, rows = 6, 2, 3
    cfg = compose("train", ["model=fot_tiny", "debug=smoke", f"data.path={tiny_corpus}", "data.pattern=**/*.txt",
                            "data.val_fraction=0.15", "data.test_fraction=0.15", "data.sampler=segments",
                            f"data.segment_len={windows * 64}", "task.carry_state=true", "data.seq_len=64",
                            f"data.batch_size={rows}", f"trainer.max_steps={steps}", f"run_dir={tmp_path}"])
    with counted_memory_resets() as calls:
        assert train(cfg)["steps"] == steps
    n_memory_layers = len(build_module(cfg).net.config.memory_layers)
    assert sum(calls) == (steps // windows - 1) * rows * n_memory_layers
