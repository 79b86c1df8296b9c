"""Chunk (sequence) parallelism: ``parallel.sequence=N`` splits every sequence into N spans on N ranks,
the state passed forward from rank to rank and its gradient backward; loss and gradients equal one
process's."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from experiments.data.samplers import data_rank
from experiments.train import train
from experiments.training.parallel import group_total, receive_state, send_state, sequence_group, span
from tests.conftest import REPO, build_net, compose

T = 96  # three Megalodon tiny chunks of 32 (spans of 48 cross a chunk boundary)
# Megalodon (the backbone) in the default run; the other contract states in the slow set
MODELS = ["megalodon_tiny", pytest.param("transformer_tiny", marks=pytest.mark.slow),
          pytest.param("megabyte_tiny", marks=pytest.mark.slow)]


def test_a_batch_is_cut_into_spans_with_its_masks_and_starts():
    from experiments.training.parallel import span_batch

    batch = {"tokens": torch.arange(18).view(2, 9), "loss_mask": torch.arange(16).view(2, 8) % 3 == 0,
             "starts": torch.zeros(2, 9, dtype=torch.bool), "doc_start": torch.tensor([True, False])}
    first, second = (span_batch(batch, sequence_group(r, 2, 2)) for r in range(2))
    assert first["tokens"].tolist() == [[0, 1, 2, 3, 4], [9, 10, 11, 12, 13]]
    assert torch.equal(first["loss_mask"], batch["loss_mask"][:, :4])
    assert torch.equal(second["loss_mask"], batch["loss_mask"][:, 4:])
    assert second["starts"].shape == (2, 5)
    assert first["doc_start"].tolist() == [True, False] and second["doc_start"].tolist() == [False, False]


def test_groups_spans_and_data_ranks():
    g = sequence_group(rank=3, world=4, size=2)  # group {2, 3}, this rank the second span
    assert (g.index, g.first_rank, g.prev, g.next) == (1, 2, 2, None)
    assert sequence_group(rank=2, world=4, size=2).next == 3
    assert data_rank(3, 4, 2) == (1, 2) and data_rank(3, 4, 1) == (3, 4)
    tokens = torch.arange(2 * 9).view(2, 9)  # T = 8 inputs + 1 target
    assert span(tokens, sequence_group(0, 2, 2)).tolist() == [[0, 1, 2, 3, 4], [9, 10, 11, 12, 13]]
    assert span(tokens, sequence_group(1, 2, 2)).tolist() == [[4, 5, 6, 7, 8], [13, 14, 15, 16, 17]]
    with pytest.raises(ValueError, match=r"parallel.sequence=3 must divide the number of processes \(4\)"):
        sequence_group(0, 4, 3)
    with pytest.raises(ValueError, match=r"data.seq_len=8 must be a multiple of parallel.sequence=3"):
        span(tokens, sequence_group(0, 3, 3))


def _loss_and_grads(model: str, tokens: torch.Tensor, rank: int | None, size: int):
    """The mean next-byte loss over the scored targets of ``tokens`` (a span of it on ``rank``; targets
    of value 0 are not scored, more of them in the first half) and the parameters' gradients."""
    torch.manual_seed(0)
    net = build_net(model, ["model.net.dropout=0.0"] if model == "megabyte_tiny" else []).double()
    state = None
    if rank is not None:  # what the LightningModule does: the span, the group's scored targets, the state
        group = sequence_group(rank, size, size)
        tokens = span(tokens, group)
        total = group_total((tokens[:, 1:] != 0).sum().double(), group)
        state, link = receive_state(group, torch.device("cpu"))
    logits, state = net(tokens[:, :-1], state)
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    mask = (tokens[:, 1:] != 0).flatten().double()
    loss = (nll * mask).sum() / mask.sum()
    if rank is not None:  # DDP's average of the ranks' losses is the whole sequence's mean
        loss = (nll * mask).sum() / total * size + link + send_state(state, group)
    loss.backward()
    # a later span may not use every parameter (MEGABYTE's pad patch starts a sequence only): zeros there
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}
    return float(loss.detach()), grads


def _rank_main(rank: int, size: int, port: int, model: str, tokens: torch.Tensor, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        loss, grads = _loss_and_grads(model, tokens, rank, size)
        for g in grads.values():  # DDP's gradient average over the ranks
            dist.all_reduce(g)
            g /= size
        torch.save({"loss": loss, "grads": grads}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("model", MODELS)
def test_two_ranks_give_one_process_loss_and_gradients(model, tmp_path):
    """Two gloo processes, each with half of every sequence and the state of the half before: the
    average of their losses and their DDP-averaged gradients equal one process's on the whole sequence
    (float64 here; the contract's segments-equal-one-forward makes this exact up to rounding)."""
    tokens = torch.randint(0, 256, (2, T + 1), generator=torch.Generator().manual_seed(3))
    tokens[:, 1:T // 2:3] = 0  # unscored targets, unevenly spread over the two spans
    loss, grads = _loss_and_grads(model, tokens, None, 1)
    mp.spawn(_rank_main, args=(2, _free_port(), model, tokens, str(tmp_path / "r")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"r.{r}") for r in range(2)]
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(loss, rel=1e-10)
    assert all(g.abs().sum() > 0 for g in grads.values())  # every parameter reached
    for n, g in grads.items():
        torch.testing.assert_close(ranks[0]["grads"][n], g, atol=1e-10, rtol=1e-8, msg=n)
        torch.testing.assert_close(ranks[1]["grads"][n], g, atol=1e-10, rtol=1e-8, msg=n)


def test_bad_parallel_settings_fail_before_training(tiny_corpus, tmp_path):
    base = ["debug=smoke", f"data.path={tiny_corpus}", "data.pattern=**/*.txt", "data.val_fraction=0.15",
            "model=megalodon_tiny", f"run_dir={tmp_path}"]
    with pytest.raises(ValueError, match=r"data.seq_len=64 must be a multiple of parallel.sequence=3"):
        train(compose("train", [*base, "parallel.sequence=3"]))
    with pytest.raises(ValueError, match=r"parallel.sequence=2 must divide the number of processes \(1\)"):
        train(compose("train", [*base, "parallel.sequence=2"]))
    with pytest.raises(ValueError, match="cannot be combined with task.carry_state"):
        train(compose("train", [*base, "parallel.sequence=2", "trainer=ddp",
                                "task.carry_state=true", "data.sampler=stream"]))


def _val_curve(run_dir) -> list[float]:
    with open(run_dir / "logs" / "metrics.csv") as fh:
        return [float(r["val/loss"]) for r in csv.DictReader(fh) if r.get("val/loss")]


@pytest.mark.slow
def test_two_process_run_trains_the_one_process_curve(tiny_corpus, tmp_path):
    """End to end through Lightning's DDP strategy: trainer=ddp parallel.sequence=2 (float32) trains the
    same validation curve as one process, and counts the bytes of one data-parallel replica."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    common = ["model=megalodon_tiny", "debug=smoke", "trainer.max_steps=4", "trainer.val_check_interval=2",
              "data.seq_len=128", f"data.path={tiny_corpus}", "data.pattern=**/*.txt", "data.val_fraction=0.15"]
    runs = {"one": [], "two": ["trainer=ddp", "parallel.sequence=2"]}
    for name, extra in runs.items():
        out = subprocess.run([sys.executable, "-m", "experiments.train", *common, *extra,
                              f"run_dir={tmp_path / name}"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    one, two = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in runs)
    assert two["world_size"] == 2 and two["tokens_per_step"] == one["tokens_per_step"] == 2 * 128
    assert two["tokens_seen"] == one["tokens_seen"]
    assert two["val/loss"] == pytest.approx(one["val/loss"], abs=1e-5)
    curve_one, curve_two = _val_curve(tmp_path / "one"), _val_curve(tmp_path / "two")
    assert len(curve_one) == len(curve_two) >= 2
    assert curve_two == pytest.approx(curve_one, abs=1e-5)
