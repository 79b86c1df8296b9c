"""Every entry point fails in one line for a user error (exit 2, no traceback), suggests the nearest
key for a misspelt one; multirun summaries; per-setting eval files; TensorBoard; loss curves."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from experiments.eval import evaluate
from experiments.train import train
from tests.conftest import REPO, compose


def run(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # at call time: the session's cache
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, expected", [
    (("experiments.train", "optim.lrr=1"), "did you mean optim.lr"),
    (("experiments.train", "data.path=/no/such/dir", "debug=smoke", "run_dir=/tmp/longlab-cli-x"),
     "data.path='/no/such/dir' does not exist"),
    (("experiments.train", "model=nope"), "Could not find 'model/nope'"),
    (("experiments.eval", "run_dir=/no/such/run"), "has no config.yaml"),
    (("experiments.generate", "run_dir=/no/such/run"), "has no config.yaml"),
    (("experiments.fot_eval", "run_dir=/no/such/run"), "has no config.yaml"),
    (("experiments.compare", "--budget", "steps:3"), "use tokens:<N> or flops:<N>"),
    (("experiments.run_table", "nope"), "no table 'nope'"),
    (("experiments.run_table", "compare", "--rows", "gpt"), "--rows ['gpt']: table 'compare' has rows"),
    (("experiments.make_table", "nope"), "no table 'nope'"),
], ids=["train-key", "train-data", "train-model", "eval", "generate", "fot_eval", "compare", "run_table",
        "run_table-rows", "make_table"])
def test_user_errors_are_one_line(args, expected):
    out = run(*args)
    assert out.returncode == 2, out.stderr[-1500:]
    err = out.stderr.strip().splitlines()
    assert err[0].startswith("error: ") and expected in err[0] and "Traceback" not in out.stderr


@pytest.mark.parametrize("args", [("experiments.train", "optim.lrr=1"), ("experiments.eval", "run_dir=/no/such/run"),
                                  ("experiments.run_table", "nope")], ids=["hydra-compose", "hydra-task", "argparse"])
def test_debug_shows_the_traceback(args):
    """--debug: the traceback, not the one line (one case per path: Hydra's composition, a Hydra task,
    an argparse entry point; every entry point goes through one of them)."""
    debug = run(*args, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_a_multirun_names_jobs_by_their_overrides_and_summarises(tiny_corpus, tmp_path):
    out = run("experiments.train", "-m", "debug=smoke", "seed=0,1", f"hydra.sweep.dir={tmp_path}",
              f"data.path={tiny_corpus}", "data.pattern=**/*.txt", "data.val_fraction=0.15")
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert any("seed=0" in j for j in jobs) and any("seed=1" in j for j in jobs)
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("| 0_") + summary.count("| 1_") == 2


def test_eval_results_are_kept_per_setting_and_runs_plot_their_loss(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    train(compose("train", ["debug=smoke", f"run_dir={run_dir}", f"data.path={tiny_corpus}", "data.pattern=**/*.txt",
                            "data.val_fraction=0.15", "data.test_fraction=0.15"]))
    assert (run_dir / "loss_curve.png").exists()
    evaluate(compose("eval", [f"run_dir={run_dir}", "eval.num_batches=1", "eval.context=32"]))
    evaluate(compose("eval", [f"run_dir={run_dir}", "eval.streaming=true", "eval.max_docs=1"]))
    names = sorted(p.name for p in (run_dir / "eval_metrics").iterdir())
    assert names == ["stream_test_w64_docs1.json", "window_test_ctx32.json"]
    assert json.loads((run_dir / "eval_metrics" / "window_test_ctx32.json").read_text())["context"] == 32


def test_tensorboard_logging(tiny_corpus, tmp_path):
    pytest.importorskip("tensorboard")
    train(compose("train", ["debug=smoke", f"run_dir={tmp_path}", "logger=tensorboard", f"data.path={tiny_corpus}",
                            "data.pattern=**/*.txt", "data.val_fraction=0.15"]))
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_every_entry_point_runs_under_an_allocator_that_keeps_freed_memory():
    import subprocess
    import sys

    from experiments.cli import allocator_env

    env = allocator_env({"PATH": "/usr/bin"})
    assert env["LONGLAB_ALLOCATOR"] in ("jemalloc", "glibc-keep")
    assert ("GLIBC_TUNABLES" in env and "mmap_max=0" in env["GLIBC_TUNABLES"]) or "LD_PRELOAD" in env
    assert allocator_env({"LONGLAB_ALLOCATOR": "off"}) == {"LONGLAB_ALLOCATOR": "off"}
    code = ("import os; from experiments.cli import with_allocator; with_allocator(); "
            "print(os.environ['LONGLAB_ALLOCATOR'])")
    clean = {k: v for k, v in os.environ.items() if k not in ("LONGLAB_ALLOCATOR", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == env["LONGLAB_ALLOCATOR"]  # the process re-ran itself once, under the setting
