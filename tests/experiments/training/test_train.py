from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from experiments.eval import evaluate
from experiments.evaluation.bpb import streaming_bpb
from experiments.generate import sample
from experiments.train import train
from experiments.training.checkpointing import AtomicCheckpointIO
from experiments.training.runs import corpus_of, load_run
from tests.conftest import REPO, TINY_MODELS, compose


def _cfg(run_dir, corpus, *extra):
    return compose("train", [
        "debug=smoke", f"run_dir={run_dir}", f"data.path={corpus}", "data.pattern=**/*.txt",
        "data.val_fraction=0.15", "data.test_fraction=0.15", "logger=csv", *extra,
    ])


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "logs" / "metrics.csv") as fh:
        return [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]


@pytest.mark.parametrize("model", TINY_MODELS)
def test_smoke_train_writes_metrics(model, tiny_corpus, tmp_path):
    m = train(_cfg(tmp_path / "run", tiny_corpus, f"model={model}"))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == pytest.approx(m)
    for key in ("val/bpb", "val/loss", "train/tokens_per_s", "params", "tokens_seen", "wall_time_s"):
        assert key in saved and saved[key] == saved[key], key  # present and not NaN
    assert saved["tokens_seen"] == 3 * 2 * 64
    assert 0 < saved["val/bpb"] < 10
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "run" / "config.yaml").exists()


def test_smoke_train_on_default_stdlib_corpus(tmp_path):
    cfg = compose("train", ["debug=smoke", f"run_dir={tmp_path}"])
    assert cfg.data.path is None
    m = train(cfg)
    assert m["val/bpb"] > 0


def test_peak_memory_is_the_runs_own(tiny_corpus, tmp_path):
    """A table trains its cells one after another in one process: each run's peak memory is its own,
    not that of an earlier, larger run (on CPU the resident-set high-water mark is reset at the start)."""
    from experiments.training.bookkeeping import peak_memory_mb, reset_peak_memory

    if not reset_peak_memory():
        pytest.skip("this OS cannot reset the peak resident set size")
    big = torch.ones(96 * 2**20)  # 384 MiB, touched
    del big
    earlier = peak_memory_mb()
    m = train(_cfg(tmp_path / "run", tiny_corpus, "model=transformer_tiny"))
    assert m["train/peak_mem_mb"] < earlier - 200, (m["train/peak_mem_mb"], earlier)


def test_resume_continues_exactly(tiny_corpus, tmp_path):
    common = ["trainer.log_every_n_steps=1", "optim.max_steps=6", "optim.warmup_steps=2",
              "callbacks.checkpoint.every_n_train_steps=100"]
    full = train(_cfg(tmp_path / "full", tiny_corpus, "trainer.max_steps=6", *common))
    train(_cfg(tmp_path / "part", tiny_corpus, "trainer.max_steps=3", *common))
    resumed = train(_cfg(tmp_path / "part", tiny_corpus, "trainer.max_steps=6", "ckpt_path=auto", *common))
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert len(a) == 6 and len(b) == 6
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    assert resumed["val/bpb"] == pytest.approx(full["val/bpb"], rel=1e-6)
    assert resumed["tokens_seen"] == full["tokens_seen"]
    wa = torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "part/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-7)


def test_carried_state_training_and_resume(tiny_corpus, tmp_path):
    common = ["data.sampler=stream", "task.carry_state=true", "trainer.log_every_n_steps=1",
              "optim.max_steps=4", "data.batch_size=3"]
    train(_cfg(tmp_path / "full", tiny_corpus, "trainer.max_steps=4", *common))
    train(_cfg(tmp_path / "part", tiny_corpus, "trainer.max_steps=2", *common))
    train(_cfg(tmp_path / "part", tiny_corpus, "trainer.max_steps=4", "ckpt_path=auto", *common))
    assert _losses(tmp_path / "full") == pytest.approx(_losses(tmp_path / "part"), rel=1e-6, abs=1e-7)


def test_carry_state_needs_stream_sampler(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="set data.sampler=stream"):
        train(_cfg(tmp_path, tiny_corpus, "task.carry_state=true"))


@pytest.fixture(scope="module")
def trained_run(tiny_corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained")
    train(_cfg(run, tiny_corpus, "trainer.max_steps=30", "data.batch_size=4", "optim.lr=3e-3"))
    return run


def test_eval_windowed_and_streaming(trained_run):
    w = evaluate(compose("eval", [f"run_dir={trained_run}", "eval.num_batches=2", "eval.context=100"]))
    assert w["context"] == 100 and 0 < w["test/bpb"] < 9
    s = evaluate(compose("eval", [f"run_dir={trained_run}", "eval.streaming=true", "eval.max_docs=3",
                                  "eval.curve_base=64"]))
    curve = s["stream"]["curve"]
    assert curve[0]["start"] == 0 and all(c["bytes"] > 0 for c in curve)
    assert sum(c["bytes"] for c in curve) == s["stream"]["bytes"]
    on_disk = json.loads((trained_run / "eval_metrics.json").read_text())
    assert on_disk["test/stream_bpb"] == pytest.approx(s["test/stream_bpb"])


def test_streaming_eval_equals_one_forward_per_document(trained_run):
    cfg, module = load_run(trained_run, net_overrides={"kv_window": None})
    split = corpus_of(cfg).split("test")
    r = streaming_bpb(module.net, split, window=37, batch_size=2, device=torch.device("cpu"), max_docs=3)
    nll, n = 0.0, 0
    order = sorted(range(split.n_docs), key=lambda i: -split.lengths[i])[:3]
    with torch.no_grad():
        for i in order:
            x = torch.from_numpy(split.document(i).astype("int64"))[None]
            logits, _ = module.net(x[:, :-1])
            nll += torch.nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
            n += x.shape[1] - 1
    assert r["bytes"] == n
    assert r["bpb"] == pytest.approx(nll / n / math.log(2), rel=1e-5)


def test_generate_samples_bytes(trained_run):
    text = sample(compose("generate", [f"run_dir={trained_run}", "prompt=the ", "max_new_bytes=20",
                                       "temperature=0"]))
    assert text.startswith("the ")
    assert len(text.encode("utf-8", errors="surrogateescape")) >= 4


def test_cached_generation_equals_full_forward(trained_run):
    from experiments.evaluation.generation import generate

    _, module = load_run(trained_run)
    x = torch.tensor([list(b"the model ")])
    out = generate(module.net, x, 15, temperature=0)
    with torch.no_grad():
        logits, _ = module.net(out[:, :-1])
    assert torch.equal(logits[0, x.shape[1] - 1 :].argmax(-1), out[0, x.shape[1] :])


def test_non_finite_loss_fails_clearly(tiny_corpus, tmp_path):
    cfg = _cfg(tmp_path, tiny_corpus)
    from experiments.training.bookkeeping import DivergenceGuard
    from experiments.training.run import build_module

    module = build_module(cfg)
    with torch.no_grad():
        module.net.embed.weight[0, 0] = float("nan")
    nll, mask, _, _ = module.objective.nll({"tokens": torch.zeros(2, 9, dtype=torch.long)})
    loss = (nll * mask).sum() / mask.sum()
    with pytest.raises(FloatingPointError, match="non-finite training loss.*lower optim.lr"):
        DivergenceGuard().on_before_backward(SimpleNamespace(global_step=0, optimizers=[]), module, loss)


def test_corrupt_checkpoint_fails_clearly(tiny_corpus, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RuntimeError, match=r"could not be read.*corrupt"):
        train(_cfg(tmp_path / "run", tiny_corpus, f"ckpt_path={bad}"))
    with pytest.raises(FileNotFoundError, match="ckpt_path='/no/such.ckpt' does not exist"):
        train(_cfg(tmp_path / "run", tiny_corpus, "ckpt_path=/no/such.ckpt"))


def test_mismatched_checkpoint_fails_clearly(tiny_corpus, tmp_path):
    train(_cfg(tmp_path, tiny_corpus))
    with pytest.raises(ValueError, match=r"different model.net \(d_model: checkpoint 96 vs config 64"):
        train(_cfg(tmp_path, tiny_corpus, "ckpt_path=auto", "model.net.d_model=64"))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"a": torch.ones(3)}, target)

    def dies_half_way(obj, fh, *a, **k):
        fh.write(b"partial bytes")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"a": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_finished_runs_record_is_never_paired_with_another_runs_checkpoint(tiny_corpus, tmp_path):
    """A later run into a finished run's folder that stops part way leaves its checkpoint beside the finished
    run's metrics.json: evaluating it must stop, not report those weights under the finished run's record."""
    train(_cfg(tmp_path / "short", tiny_corpus, "trainer.max_steps=2"))
    train(_cfg(tmp_path / "done", tiny_corpus, "trainer.max_steps=4"))
    load_run(tmp_path / "done")  # its own final checkpoint: fine
    shutil.copy(tmp_path / "short/checkpoints/last.ckpt", tmp_path / "done/checkpoints/last.ckpt")
    with pytest.raises(ValueError, match=r"is at step 2, but .*records a finished run of 4 steps"):
        load_run(tmp_path / "done")
    with pytest.raises(ValueError, match="records a finished run of 4 steps"):
        evaluate(compose("eval", [f"run_dir={tmp_path / 'done'}", "eval.num_batches=1"]))
    load_run(tmp_path / "done", ckpt_path=str(tmp_path / "done/checkpoints/last.ckpt"))  # on purpose: allowed


def test_eval_of_missing_run_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.yaml"):
        evaluate(compose("eval", [f"run_dir={tmp_path}"]))


def test_cli_entry_point(tiny_corpus, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", "debug=smoke", f"run_dir={tmp_path}",
         f"data.path={tiny_corpus}", "data.pattern=**/*.txt", "data.val_fraction=0.15"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "val bits/byte" in out.stdout
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 3


def test_ddp_two_cpu_processes(tiny_corpus, tmp_path):
    """trainer=ddp: two gloo processes, each on its own rows; metrics count both ranks' tokens."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train", "trainer=ddp", "debug=smoke", f"run_dir={tmp_path}",
         f"data.path={tiny_corpus}", "data.pattern=**/*.txt", "data.val_fraction=0.15"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["world_size"] == 2
    assert m["tokens_seen"] == 2 * 3 * 2 * 64


def test_megabyte_trains_and_evaluates_basic_and_strided(tiny_corpus, tmp_path):
    train(_cfg(tmp_path, tiny_corpus, "model=megabyte_tiny"))
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["flops_per_token"] > 0
    basic = evaluate(compose("eval", [f"run_dir={tmp_path}", "eval.num_batches=1", "eval.context=64"]))
    strided = evaluate(compose("eval", [f"run_dir={tmp_path}", "eval.num_batches=1", "eval.context=64",
                                        "eval.strided=true"]))
    assert strided["test/bpb"] > 0 and strided["test/bpb_basic"] > 0
    assert strided["bytes"] == 8 * (64 - 2)  # one NLL per scored byte: context - P/2 per window
    assert basic["test/bpb"] > 0


def test_strided_eval_needs_a_patch_model(trained_run):
    with pytest.raises(ValueError, match="needs a model with a patch_size"):
        evaluate(compose("eval", [f"run_dir={trained_run}", "eval.strided=true", "eval.num_batches=1"]))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["transformer_tiny", "megalodon_tiny", "fot_tiny"])
def test_a_compiled_network_trains_to_the_same_losses_and_checkpoint_names(tiny_corpus, tmp_path, model):
    """compile=true (torch.compile in place): the same loss curve as eager to float32 rounding, and a
    checkpoint an eager run loads. Megalodon's complex EMA runs eagerly inside the compiled network (inductor
    compiled it to NaN losses)."""
    eager = train(_cfg(tmp_path / "eager", tiny_corpus, "trainer.log_every_n_steps=1", f"model={model}"))
    compiled = train(_cfg(tmp_path / "compiled", tiny_corpus, "trainer.log_every_n_steps=1", f"model={model}",
                          "compile=true"))
    assert _losses(tmp_path / "eager") == pytest.approx(_losses(tmp_path / "compiled"), rel=1e-4, abs=1e-5)
    assert compiled["val/bpb"] == pytest.approx(eager["val/bpb"], rel=1e-4)
    load_run(tmp_path / "compiled")  # names unchanged: loads into an eager module


def test_compile_refuses_an_architecture_that_does_not_compile_to_the_same_numbers(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="compile=true: Megabyte does not compile to the same numbers"):
        train(_cfg(tmp_path / "run", tiny_corpus, "model=megabyte_tiny", "compile=true"))
    assert not (tmp_path / "run" / "checkpoints").exists()
