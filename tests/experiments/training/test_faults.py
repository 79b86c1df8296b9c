"""Faults lose nothing and lie about nothing: NaN, pre-emption, resume with changed settings,
concurrent writers, interrupted writes, disk errors, bad sampling values."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from experiments.eval import evaluate
from experiments.evaluation.generation import generate
from experiments.train import train
from experiments.training.checkpointing import AtomicCheckpointIO, read_checkpoint
from experiments.training.faults import RunLock
from tests.conftest import REPO, compose


def _cfg(run_dir, corpus, *extra):
    return compose("train", [
        "debug=smoke", f"run_dir={run_dir}", f"data.path={corpus}", "data.pattern=**/*.txt",
        "data.val_fraction=0.15", "data.test_fraction=0.15", *extra,
    ])


def _csv(run_dir, key):
    with open(run_dir / "logs" / "metrics.csv") as fh:
        return [(int(float(r["step"])), float(r[key])) for r in csv.DictReader(fh) if r.get(key)]


def test_divergence_stops_before_the_update_and_keeps_the_last_finite_checkpoint(tiny_corpus, tmp_path):
    """lr=1e3 with a checkpoint every step: training stops with a clear message before any checkpoint
    holds non-finite weights; resuming with a lower lr (as the message advises) then works."""
    run = tmp_path / "run"
    common = ["trainer.max_steps=12", "callbacks.checkpoint.every_n_train_steps=1", "optim.warmup_steps=0",
              "trainer.gradient_clip_val=null", "trainer.log_every_n_steps=1"]
    with pytest.raises(FloatingPointError, match="lower optim.lr"):
        train(_cfg(run, tiny_corpus, "optim.lr=1e3", *common))
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")  # refuses non-finite checkpoints
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    try:  # the kept weights may be finite but already diverged: then the new lr is what the message reports
        train(_cfg(run, tiny_corpus, "optim.lr=1e-4", "ckpt_path=auto", *common))
    except FloatingPointError as e:
        assert "lr=1e+03" not in str(e) and re.search(r"lr=[0-9.]+e-0[45]", str(e))
    else:
        assert max(lr for _, lr in _csv(run, "train/lr")[ckpt["global_step"]:]) <= 1e-4 + 1e-12


def test_resume_with_a_new_learning_rate_applies_it_and_says_so(tiny_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["trainer.log_every_n_steps=1", "optim.warmup_steps=0", "optim.schedule=constant"]
    train(_cfg(run, tiny_corpus, "trainer.max_steps=3", "optim.lr=2e-3", *common))
    train(_cfg(run, tiny_corpus, "trainer.max_steps=6", "optim.lr=1e-5", "ckpt_path=auto", *common))
    assert "changed optimiser settings (lr: 0.002 -> 1e-05)" in capsys.readouterr().out
    lrs = [lr for _, lr in _csv(run, "train/lr")]
    assert lrs == pytest.approx([2e-3] * 3 + [1e-5] * 3)
    saved = (run / "config.yaml").read_text()
    assert "lr: 1.0e-05" in saved  # what config.yaml records is what was used


def test_wall_time_adds_up_over_resumed_processes(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    a = train(_cfg(run, tiny_corpus, "trainer.max_steps=3"))
    b = train(_cfg(run, tiny_corpus, "trainer.max_steps=6", "ckpt_path=auto"))
    assert b["wall_time_s"] > a["wall_time_s"]


def _losses(run):
    return [v for _, v in _csv(run, "train/loss")]


# SIGUSR1 takes the same handler as SIGTERM: the default run checks one, make test-all both
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGUSR1"])
def test_preemption_saves_a_resumable_checkpoint_and_exits_nonzero(sig, tiny_corpus, tmp_path):
    """The pre-emption signal stops after the current step, writes a checkpoint there and partial metrics,
    exits 128 + signal; the resumed run then equals an uninterrupted one."""
    common = ["trainer.max_steps=40", "optim.max_steps=40", "trainer.log_every_n_steps=1",
              "callbacks.checkpoint.every_n_train_steps=20", "trainer.val_check_interval=40"]
    data = [f"data.path={tiny_corpus}", "data.pattern=**/*.txt", "data.val_fraction=0.15", "data.test_fraction=0.15"]
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "experiments.train", "debug=smoke", f"run_dir={run}", *data, *common]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    csv_path = run / "logs" / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (csv_path.exists() and len(csv_path.read_text().splitlines()) > 4):
        time.sleep(0.2)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, out[-2000:]
    partial = json.loads((run / "metrics.json").read_text())
    assert partial["status"] == "preempted" and 0 < partial["steps"] < 40
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == partial["steps"]
    train(_cfg(run, tiny_corpus, *common, "ckpt_path=auto"))
    # the resumed run's periodic saves overwrite the pre-emption checkpoint (Lightning's version counter
    # would write last-v1.ckpt beside it, and a later ckpt_path=auto resumed from the stale one)
    assert [p.name for p in (run / "checkpoints").glob("*.ckpt")] == ["last.ckpt"]
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 40
    train(_cfg(tmp_path / "full", tiny_corpus, *common))
    assert _losses(run) == pytest.approx(_losses(tmp_path / "full"), rel=1e-6, abs=1e-7)


def test_sigusr1_is_routed_to_the_sigterm_path(tmp_path):
    """The default run's end-to-end pre-emption test sends SIGTERM; SIGUSR1 (the slow set runs it end
    to end) must reach the same stop: Lightning's received_sigterm flag, and exit status 128 + 10."""
    from types import SimpleNamespace

    from experiments.training.faults import Preemption

    trainer = SimpleNamespace(_signal_connector=SimpleNamespace(received_sigterm=False))
    p = Preemption(tmp_path / "last.ckpt")
    p.install()
    try:
        assert signal.getsignal(signal.SIGUSR1) == p._handle
        p._trainer = trainer
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
    finally:
        p.uninstall()
    assert trainer._signal_connector.received_sigterm and p.exit_code == 128 + signal.SIGUSR1


def test_auto_resumes_from_the_newest_last_checkpoint(tmp_path):
    """A run dir from before the version counter was turned off can hold a stale last.ckpt (a pre-emption
    checkpoint at step 24) beside last-v1.ckpt (step 500, written later): auto takes the newer one."""
    from experiments.training.checkpointing import last_checkpoint, resolve_ckpt_path

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    assert last_checkpoint(tmp_path) is None and resolve_ckpt_path("auto", tmp_path) is None
    (folder / "last-v1.ckpt").write_bytes(b"500")
    (folder / "last.ckpt").write_bytes(b"24")
    os.utime(folder / "last.ckpt", (time.time() - 3600, time.time() - 3600))
    assert resolve_ckpt_path("auto", tmp_path) == str(folder / "last-v1.ckpt")
    (folder / "last.ckpt").touch()  # then the resumed run overwrote last.ckpt
    assert last_checkpoint(tmp_path) == folder / "last.ckpt"


def test_a_second_writer_of_a_run_dir_fails_at_once_naming_the_holder(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from experiments.training.faults import RunLock\n"
                               f"with RunLock({str(run)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"is in use by another process \(pid {holder.pid} on"):
            train(_cfg(run, tiny_corpus))
    finally:
        holder.kill()
        holder.wait()
    train(_cfg(run, tiny_corpus))  # the kernel released the dead holder's lock


def test_stale_temporary_files_are_cleaned_at_start(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = run / "checkpoints" / ".last.ckpt.tmp-99999"
    stale.write_bytes(b"x" * 1000)
    train(_cfg(run, tiny_corpus))
    assert not stale.exists()


def test_a_full_disk_during_a_checkpoint_write_says_so(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"a": torch.ones(3)}, target)

    def full(obj, fh, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"no space left on the device\); the previous checkpoint is intact"):
        io.save_checkpoint({"a": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_an_unusable_run_dir_fails_in_one_message(tiny_corpus, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"run_dir=.*a_file/run.* cannot be used.*choose another run_dir"):
        train(_cfg(blocker / "run", tiny_corpus))


def test_a_lock_is_reentrant_in_one_process(tmp_path):
    with RunLock(tmp_path), RunLock(tmp_path):
        pass
    with RunLock(tmp_path):
        pass


def test_a_diverged_checkpoint_is_refused_by_eval(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    train(_cfg(run, tiny_corpus))
    path = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    next(v for v in ckpt["state_dict"].values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(ckpt, path)
    with pytest.raises(RuntimeError, match="has non-finite values in .* tensors .* written after training diverged"):
        evaluate(compose("eval", [f"run_dir={run}", "eval.num_batches=1"]))


@pytest.mark.parametrize("kwargs, match", [({"top_k": -1}, "top_k=-1 must be >= 1"),
                                           ({"temperature": -0.5}, "temperature=-0.5 must be >= 0"),
                                           ({"max_new": -3}, "max_new_bytes=-3 must be >= 0")])
def test_bad_sampling_values_fail_clearly(kwargs, match):
    from architectures.transformer import Transformer

    net = Transformer(d_model=16, n_layers=1, n_heads=2).eval()
    args = {"max_new": 4, "temperature": 1.0, "top_k": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate(net, torch.zeros(1, 3, dtype=torch.long), args["max_new"], args["temperature"], args["top_k"])


def test_generation_past_max_len_returns_what_it_made(capsys):
    from architectures.megabyte import Megabyte

    net = Megabyte(patch_size=4, d_global=8, d_local=16, global_layers=1, global_heads=2, local_layers=1,
                   local_heads=2, max_len=32).eval()
    out = generate(net, torch.zeros(1, 5, dtype=torch.long), 100, temperature=0)
    assert out.shape == (1, 32) and "stopping after 27 of 100 new bytes" in capsys.readouterr().out


def test_megabyte_with_carried_state_is_refused_at_the_start(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match=r"max_len=4096 positions \(learned positions\)"):
        train(_cfg(tmp_path, tiny_corpus, "model=megabyte_tiny", "data.sampler=stream", "task.carry_state=true"))


def test_a_corrupt_cell_json_names_the_file(tmp_path):
    from experiments.tables.report import make_table
    from tests.experiments.tables.test_tables import fabricate

    cell = fabricate(tmp_path, "megalodon_ablation", "megalodon", 0, 2.0)
    (cell / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"metrics.json is not valid JSON .* delete it"):
        make_table("megalodon_ablation", str(tmp_path), "tiny")


def test_a_corpus_build_killed_half_way_is_cleaned_up(tiny_corpus, tmp_path):
    from experiments.data import ByteCorpus

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".corpus-{int(dead.stdout)}-abc123"
    leftover.mkdir()
    (leftover / "train.bin").write_bytes(b"x" * 100)
    live = tmp_path / f".corpus-{os.getpid()}-def456"
    live.mkdir()
    ByteCorpus.build_or_load(path=str(tiny_corpus), pattern="**/*.txt", cache_dir=tmp_path)
    assert not leftover.exists() and live.exists()
