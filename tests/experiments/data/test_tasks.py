"""The long-context tasks: generators (answers recoverable, depths honoured, seeds reproducible), the
evaluator (an oracle scores 1, a random model chance, lengths past max_len are n/a), training on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments.data.tasks import TASKS, TaskBatches, make
from experiments.evaluation.long_context import run, score
from experiments.train import train
from tests.conftest import compose


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [300, 4096])
def test_answers_are_recoverable_from_the_context_and_depths_honoured(task, length):
    needles = []
    for depth in (0.0, 0.5, 1.0):
        s = make(task, length, depth, seed=3)
        assert len(s.tokens) == length and s.answer.sum() > 0
        context = bytes(s.tokens[: int(np.argmax(s.answer))])
        answer = s.answer_text
        if task == "passkey":
            assert context.count(answer) == 2  # written twice in the needle, asked once
        elif task == "dictionary":
            key = context[-5:-1]  # "?abcd:" -> the record "[abcd:" holds the answer
            assert context.count(b"[" + key + b":" + answer + b"]") == 1
        else:
            queries = bytes(s.tokens[-64:])
            for j in range(8):
                q = queries[j * 8 : j * 8 + 8]
                assert q[:5] + q[5:7] + b"," in bytes(s.tokens[:-64])
        needles.append(s.needle)
    assert needles[0] < needles[1] < needles[2] and needles[2] >= 0.5 * length  # the needle sits at the depth
    assert needles[0] <= 0.1 * length or task != "passkey"
    assert np.array_equal(make(task, length, 0.3, 7).tokens, make(task, length, 0.3, 7).tokens)
    assert not np.array_equal(make(task, length, 0.3, 7).tokens, make(task, length, 0.3, 8).tokens)


class Oracle(torch.nn.Module):
    """Knows every document: predicts the true next byte (a model that is given the answer)."""

    max_len = None

    def __init__(self, docs):
        super().__init__()
        self.docs, self.next = docs, 0

    def forward(self, tokens, state=None):
        if state is None:  # a new batch of documents: the next rows of docs
            state, self.next = (self.next, 0), self.next + tokens.shape[0]
        row, pos = state
        nxt = self.docs[row: row + tokens.shape[0], pos + 1 : pos + 1 + tokens.shape[1]]
        nxt = torch.cat([nxt, nxt.new_zeros(nxt.shape[0], tokens.shape[1] - nxt.shape[1])], 1)
        return torch.nn.functional.one_hot(nxt, 256).float(), (row, pos + tokens.shape[1])

    def read(self, tokens, state=None):  # the contract's hook: windows without answer bytes
        return self.forward(tokens, state)[1]


def test_the_evaluator_scores_an_oracle_1_and_a_random_model_at_chance():
    depths, samples, L = [0.0, 1.0], 2, 512
    docs = torch.from_numpy(np.stack([make("passkey", L, d, s).tokens for d in depths for s in range(samples)]))
    r = score(Oracle(docs.long()), "passkey", [L], depths, samples, window=100, device=torch.device("cpu"))
    assert r["accuracy"]["512"] == {"0.0": 1.0, "1.0": 1.0}
    from architectures.transformer import Transformer

    torch.manual_seed(0)
    rand = Transformer(d_model=32, n_layers=1, n_heads=2, kv_window=128).eval()
    r = score(rand, "passkey", [L], depths, samples, window=128, device=torch.device("cpu"))
    assert all(v == 0.0 for v in r["accuracy"]["512"].values())
    assert all(v < 0.3 for v in r["byte_accuracy"]["512"].values())  # ten digits: chance 0.1 per byte


def test_windows_without_answer_bytes_are_read_for_the_state_only_with_the_same_scores():
    """Windows with no answer byte to predict take ``read`` (FoT: no retrieval or layers above its memory layer):
    the scores equal those of running ``forward`` on every window."""
    from architectures.fot import FocusedTransformer

    torch.manual_seed(0)
    net = FocusedTransformer(d_model=32, n_layers=3, n_heads=4, window=32, memory_k=4, memory_capacity=4096).eval()
    reads = []
    fast = score(net, "passkey", [600], [0.0, 1.0], 2, window=64, device=torch.device("cpu"))

    def forward_only(tokens, state=None):
        reads.append(tokens.shape[1])
        return net.forward(tokens, state)[1]

    net.read = forward_only
    slow = score(net, "passkey", [600], [0.0, 1.0], 2, window=64, device=torch.device("cpu"))
    assert reads and fast["units"] == slow["units"] and fast["byte_accuracy"] == slow["byte_accuracy"]


def test_each_document_answered_right_is_a_unit_for_intervals_over_documents_x_seeds():
    """A task's accuracy keeps which documents were answered right, so that a table pools documents x seeds
    with a bootstrap interval (the long_context_tasks columns)."""
    from experiments.tables.intervals import collect, interval, paired

    depths, samples, L = [0.0, 1.0], 3, 512
    docs = torch.from_numpy(np.stack([make("passkey", L, d, s).tokens for d in depths for s in range(samples)]))
    wrong = docs.clone()
    wrong[1] = docs[0]  # the oracle of document 1 reads document 0: another key, a wrong answer
    right = score(Oracle(docs.long()), "passkey", [L], depths, samples, window=100, device=torch.device("cpu"))
    half = score(Oracle(wrong.long()), "passkey", [L], depths, samples, window=100, device=torch.device("cpu"))
    u = half["units"]["512"]
    assert u["sum"] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0] and u["count"] == [1] * 6
    assert half["mean_by_length"]["512"] == pytest.approx(5 / 6)
    assert u["targets_sha256"] == right["units"]["512"]["targets_sha256"]  # the same documents
    pooled = collect({0: u, 1: right["units"]["512"]})
    iv = interval(pooled)
    assert iv.value == pytest.approx(11 / 12) and iv.lo < iv.value <= iv.hi <= 1.0
    d = paired(pooled, collect({0: right["units"]["512"], 1: right["units"]["512"]}))
    assert d.value == pytest.approx(-1 / 12) and d.lo < 0 and not d.separated  # one document in twelve
    # streamed a few documents at a time (a memory's size bounded): the same units and hash
    small = score(Oracle(wrong.long()), "passkey", [L], depths, samples, window=100, device=torch.device("cpu"),
                  batch_size=4)
    assert small["units"] == half["units"] and small["accuracy"] == half["accuracy"]


def test_lengths_past_a_models_max_len_are_not_applicable():
    from architectures.megabyte import Megabyte

    net = Megabyte(patch_size=4, d_global=8, d_local=16, global_layers=1, global_heads=2, local_layers=1,
                   local_heads=2, max_len=600).eval()
    r = score(net, "recall", [512, 2048], [0.5], 1, window=256, device=torch.device("cpu"))
    assert r["accuracy"]["2048"] == {"0.5": None} and r["accuracy"]["512"]["0.5"] is not None


def test_task_batches_score_the_answer_bytes_only():
    b = TaskBatches(list(TASKS), 255, 6, seed=1, loss_on="answers").batch(3)
    assert b["tokens"].shape == (6, 256) and b["loss_mask"].shape == (6, 255)
    assert 4 <= int(b["loss_mask"].sum(1).min()) and int(b["loss_mask"].sum(1).max()) <= 16
    assert torch.equal(b["tokens"], TaskBatches(list(TASKS), 255, 6, seed=1).batch(3)["tokens"])


def test_any_run_is_scored_with_one_command(tmp_path):
    run_dir = tmp_path / "run"
    train(compose("train", ["data=tasks", "debug=smoke", "data.seq_len=256", f"run_dir={run_dir}"]))
    out = run(compose("longeval", [f"run_dir={run_dir}", "lengths=[300,600]", "depths=[0,1]", "samples=1"]))
    assert sorted(out["tasks"]) == sorted(TASKS) and all(out[t]["lengths"] == [300, 600] for t in TASKS)
    # the long_context_tasks table draws its figure from this curve (one point per task and length)
    assert sorted((c["task"], c["length"]) for c in out["curve"]) == sorted((t, n) for t in TASKS for n in (300, 600))
    saved = json.loads((run_dir / "longeval" / "passkey.json").read_text())
    assert set(saved["accuracy"]) == {"300", "600"} and (run_dir / "longeval" / "passkey.png").exists()
    # a result scored with other settings is not replaced unasked (a table cell's files stay its evaluation's)
    other = [f"run_dir={run_dir}", "task=passkey", "lengths=[300]", "depths=[0,1]", "samples=1"]
    with pytest.raises(ValueError, match="lengths=.*out_dir=.*overwrite=true"):
        run(compose("longeval", other))
    run(compose("longeval", [*other, "out_dir=longeval_300"]))
    assert set(json.loads((run_dir / "longeval_300" / "passkey.json").read_text())["accuracy"]) == {"300"}
    assert json.loads((run_dir / "longeval" / "passkey.json").read_text()) == saved
    run(compose("longeval", [*other[:2], "lengths=[300,600]", "depths=[0,1]", "samples=1"]))  # the same: rescored
    run(compose("longeval", [*other, "overwrite=true"]))
    assert set(json.loads((run_dir / "longeval" / "passkey.json").read_text())["accuracy"]) == {"300"}


def test_packed_rows_hold_whole_documents_of_lengths_in_range():
    b = TaskBatches(list(TASKS), 1023, 8, seed=2, min_len=128, loss_on="answers")
    rows = [b._lengths(np.random.default_rng([2, 5, r, 13])) for r in range(8)]
    assert all(sum(n) == 1024 and min(n) >= 128 for n in rows) and max(len(n) for n in rows) > 1
    batch = b.batch(5)
    assert batch["tokens"].shape == (8, 1024) and torch.equal(batch["tokens"], b.batch(5)["tokens"])
    # every packed document ends with its answer: the answer bytes are as many as the documents' answers
    assert int(batch["loss_mask"].sum()) >= sum(len(n) for n in rows) * 4
    one = TaskBatches(list(TASKS), 1023, 8, seed=2, loss_on="answers").batch(5)
    assert int(one["loss_mask"].sum()) < int(batch["loss_mask"].sum())
    with pytest.raises(ValueError, match="min_len=2000"):
        TaskBatches(list(TASKS), 1023, 8, seed=2, min_len=2000)


@pytest.mark.parametrize("length", [101, 256])
def test_the_copy_aid_scores_an_exact_copy_of_its_source(length):
    s = make("copy", length, 0.5, seed=4)
    n = (length - 1) // 2
    assert len(s.tokens) == length and int(s.answer.sum()) == n and s.tokens[n] == ord("|")
    assert np.array_equal(s.tokens[s.answer], s.tokens[:n])


def test_training_aids_stay_out_of_validation():
    from experiments.data.tasks import TaskDataModule

    dm = TaskDataModule(tasks=[*TASKS, "copy"], val_tasks=list(TASKS), seq_len=255, batch_size=8, val_batches=2)
    val = next(iter(dm.val_dataloader()))
    assert not any(bytes(row[:128].tolist()).count(b"|") for row in val["tokens"])  # no copy documents
    train = TaskBatches([*TASKS, "copy"], 255, 32, seed=0).batch(0)["tokens"]
    assert any(bytes(row.tolist()).count(b"|") == 1 for row in train)
    with pytest.raises(ValueError, match=r"data.val_tasks=\['passkee'\]"):
        TaskDataModule(val_tasks=["passkee"])
    with pytest.raises(ValueError, match=r"data.tasks=\['passkee'\]"):
        TaskDataModule(tasks=["passkee"])


@pytest.mark.parametrize("arch", ["transformer", "megalodon", "megabyte", "fot", "fot_finetuned", "megalodon_memory"])
def test_every_long_context_tasks_experiment_trains_on_the_answers_with_the_copy_aid(arch):
    """The table's recipe (data=tasks_answers): loss on the answer bytes, copy as a training aid only,
    validation on the three tasks. With loss on every byte no model left chance (see the table's note)."""
    cfg = compose("train", [f"experiment=long_context_tasks/{arch}"])
    assert cfg.data.loss_on == "answers"
    assert list(cfg.data.tasks) == [*TASKS, "copy"] and list(cfg.data.val_tasks) == list(TASKS)
    batch = TaskBatches(list(cfg.data.tasks), 128, 4, seed=0, loss_on=cfg.data.loss_on).batch(0)
    assert 0 < batch["loss_mask"].float().mean() < 0.6  # answers only, not every byte
