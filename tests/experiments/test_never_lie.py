"""Runs that never lie: each case here was a silent wrong number, a silent loss of data or a format that
failed, reproduced as a new user would; each now does what was asked or stops naming the value and the fix."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os

import numpy as np
import pytest

from experiments.data import ByteCorpus
from experiments.eval import evaluate
from experiments.train import train
from tests.conftest import compose, write_corpus

TEXT = "the quick brown fox jumps over the lazy dog. "


def build(tmp_path, **kw):
    return ByteCorpus.build_or_load(cache_dir=tmp_path / "cache", val_fraction=0.2, test_fraction=0.2, **kw)


def all_bytes(corpus) -> bytes:
    return b"".join(bytes(corpus.split(s).data) for s in ("train", "val", "test"))


def records(n=30):
    return [{"text": f"{TEXT * (1 + i % 5)} record {i}"} for i in range(n)]


def train_cfg(run_dir, corpus, *extra):
    return compose("train", ["debug=smoke", f"run_dir={run_dir}", f"data.path={corpus}", "data.pattern=**/*.txt",
                             "data.val_fraction=0.15", "data.test_fraction=0.15", *extra])


# ---------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("opener,suffix", [(gzip.open, ".gz"), (bz2.open, ".bz2"), (lzma.open, ".xz")],
                         ids=["gz", "bz2", "xz"])
def test_compressed_records_are_read_as_their_records_not_their_compressed_bytes(tmp_path, opener, suffix):
    lines = "".join(json.dumps(r) + "\n" for r in records())
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "data.jsonl").write_text(lines)
    (tmp_path / "packed").mkdir()
    with opener(tmp_path / "packed" / f"data.jsonl{suffix}", "wt") as fh:
        fh.write(lines)
    plain = build(tmp_path / "a", path=str(tmp_path / "plain" / "data.jsonl"))
    packed = build(tmp_path / "b", path=str(tmp_path / "packed" / f"data.jsonl{suffix}"))
    assert packed.meta["source"]["source"] == "jsonl"
    assert all_bytes(packed) == all_bytes(plain) and b"record 7" in all_bytes(packed)


def test_a_compressed_text_file_in_a_folder_is_its_text(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(TEXT * 20)
    with gzip.open(tmp_path / "docs" / "b.txt.gz", "wt") as fh:
        fh.write("zebra " * 200)
    c = ByteCorpus.build_or_load(cache_dir=tmp_path / "cache", path=str(tmp_path / "docs"), val_fraction=0.0,
                                 test_fraction=0.0)
    data = bytes(c.split("train").data)
    assert b"zebra zebra" in data and b"\x1f\x8b" not in data and c.meta["skipped"]["binary"] == 0


def test_records_split_by_their_id_or_their_content_not_by_file_name_and_row(tmp_path):
    rows = records(60)
    for name in ("data.jsonl", "data_body.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in (rows if name == "data.jsonl" else
                                                                              rows[::-1])))
    a = build(tmp_path / "a", path=str(tmp_path / "data.jsonl"))
    b = build(tmp_path / "b", path=str(tmp_path / "data_body.jsonl"))
    for split in ("train", "val", "test"):
        docs = lambda c: sorted(bytes(c.split(split).document(i)) for i in range(c.split(split).n_docs))  # noqa: E731
        assert docs(a) == docs(b)
    with_ids = [{"id": f"r{i}", **r} for i, r in enumerate(rows)]
    (tmp_path / "ids.jsonl").write_text("".join(json.dumps(r) + "\n" for r in with_ids))
    c = build(tmp_path / "c", path=str(tmp_path / "ids.jsonl"))
    assert all(p.startswith("id:r") for s in ("train", "val", "test") for p in c.split(s).paths)


def test_a_csv_document_over_128_kb_is_read(tmp_path):
    import csv

    with open(tmp_path / "big.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["text"])
        w.writeheader()
        for i in range(6):
            w.writerow({"text": TEXT * (4000 if i == 0 else 3) + str(i)})
    c = build(tmp_path, path=str(tmp_path / "big.csv"))
    assert max(c.meta["splits"][s]["max_doc_bytes"] for s in ("train", "val", "test")) > 128 * 1024


def test_a_dataset_with_train_and_test_only_gets_validation_carved_from_train(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    make = lambda n, tag: datasets.Dataset.from_dict({"text": [f"{TEXT * 3}{tag} {i}" for i in range(n)]})  # noqa: E731
    datasets.DatasetDict({"train": make(200, "train"), "test": make(20, "test")}).save_to_disk(tmp_path / "ds")
    c = build(tmp_path, path=str(tmp_path / "ds"))
    val = [bytes(c.split("val").document(i)) for i in range(c.split("val").n_docs)]
    assert val and all(b"train" in v for v in val)
    assert c.split("test").n_docs == 20
    assert "no validation split" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- paths and caches
def test_an_empty_data_path_is_an_error_not_the_current_directory(tmp_path):
    with pytest.raises(ValueError, match=r"data.path='' is empty"):
        build(tmp_path, path="")


def test_a_folder_that_cannot_be_read_is_named_or_skipped_and_counted(tmp_path, monkeypatch):
    root = write_corpus(tmp_path / "docs", n_docs=9)
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("part1"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(OSError, match=r"1 entries cannot be read.*part1 \(Permission denied\).*skip_unreadable=true"):
        build(tmp_path, path=str(root))
    c = build(tmp_path, path=str(root), skip_unreadable=True)
    assert len(c.meta["skipped"]["unreadable"]) == 1
    assert sum(c.split(s).n_docs for s in ("train", "val", "test")) == 6


def test_a_broken_link_under_data_path_is_named(tmp_path):
    root = write_corpus(tmp_path / "docs", n_docs=3)
    os.symlink(tmp_path / "nowhere.txt", root / "gone.txt")
    with pytest.raises(OSError, match=r"gone.txt \(a broken link"):
        build(tmp_path, path=str(root))


def test_a_cache_overwritten_with_zeros_at_the_same_size_is_rebuilt(tmp_path, capsys):
    root = write_corpus(tmp_path / "docs", n_docs=9)
    c = build(tmp_path, path=str(root))
    good = bytes(c.split("train").data)
    (c.folder / "train.bin").write_bytes(b"\0" * len(good))
    again = build(tmp_path, path=str(root))
    assert bytes(again.split("train").data) == good
    assert "damaged" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- runs and results
def test_a_finished_run_is_never_replaced_without_overwrite(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    first = train(train_cfg(run, tiny_corpus, "trainer.max_steps=4", "trainer.val_check_interval=4"))
    with pytest.raises(ValueError, match=r"already holds a finished run of 4 steps.*ckpt_path=auto.*overwrite=true"):
        train(train_cfg(run, tiny_corpus, "trainer.max_steps=2", "trainer.val_check_interval=2"))
    assert json.loads((run / "metrics.json").read_text())["steps"] == first["steps"] == 4
    again = train(train_cfg(run, tiny_corpus, "trainer.max_steps=2", "trainer.val_check_interval=2",
                            "overwrite=true"))
    assert again["steps"] == 2


def test_an_empty_run_dir_is_refused(tiny_corpus):
    with pytest.raises(ValueError, match=r"run_dir='' is empty"):
        train(train_cfg("''", tiny_corpus))


def test_metrics_json_is_strict_json_even_for_a_one_step_run(tiny_corpus, tmp_path):
    def no_nan(text):
        raise AssertionError(f"{text} in metrics.json")

    m = train(train_cfg(tmp_path / "run", tiny_corpus, "trainer.max_steps=1", "trainer.val_check_interval=1"))
    data = json.loads((tmp_path / "run" / "metrics.json").read_text(), parse_constant=no_nan)
    assert data["train/tokens_per_s"] is None and np.isnan(m["train/tokens_per_s"])


def test_a_warm_up_longer_than_the_run_warns_and_runs(tiny_corpus, tmp_path, capsys):
    m = train(train_cfg(tmp_path / "run", tiny_corpus, "trainer.max_steps=3", "optim.warmup_steps=100"))
    assert m["steps"] == 3 and "optim.warmup_steps=100 is longer than the run" in capsys.readouterr().out


def test_a_run_is_evaluated_on_another_corpus_when_asked(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    train(train_cfg(run, tiny_corpus, "trainer.max_steps=3"))
    other = tmp_path / "other"
    other.mkdir()
    for i in range(12):
        (other / f"{i}.txt").write_text("0123456789" * (50 + i))
    own = evaluate(compose("eval", [f"run_dir={run}", "eval.num_batches=1", "eval.context=32"]))
    moved = evaluate(compose("eval", [f"run_dir={run}", "eval.num_batches=1", "eval.context=32",
                                      f"data.path={other}", "data.pattern=**/*.txt", "+data.test_fraction=0.5"]))
    assert own["corpus"]["trained_on"] and not moved["corpus"]["trained_on"]
    assert moved["corpus"]["path"] == str(other) and moved["test/bpb"] != own["test/bpb"]
    assert moved["units"]["targets_sha256"] != own["units"]["targets_sha256"]


@pytest.mark.parametrize("override,message", [
    ("eval.context=0", r"eval.context=0 must be an integer >= 1"),
    ("eval.window=0", r"eval.window=0 must be an integer >= 1"),
    ("eval.curve_base=0", r"eval.curve_base=0 must be an integer >= 2"),
    ("eval.num_batches=0", r"eval.num_batches=0 must be an integer >= 1"),
    ("precision=fp8", r"precision='fp8' is not a precision"),
], ids=["context", "window", "curve_base", "num_batches", "precision"])
def test_evaluation_values_that_would_score_something_else_are_refused(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        evaluate(compose("eval", [f"run_dir={tmp_path}", override, "eval.streaming=true"]))


@pytest.mark.parametrize("override,message", [
    ("window=-8", r"window=-8 must be an integer >= 1"),
    ("depths=[2]", r"depths=\[2\] must be a non-empty list of relative depths in \[0, 1\]"),
    ("lengths=[]", r"lengths=\[\] must be a non-empty list"),
    ("lengths=[1000000000000]", r"lengths up to 1,000,000,000,000 bytes x samples=4 need about .* GiB"),
    ("batch_size=0", r"batch_size=0 must be an integer >= 1 or null"),
], ids=["window", "depth", "lengths", "lengths-beyond-memory", "batch_size"])
def test_long_context_values_that_would_score_nothing_are_refused(tmp_path, override, message):
    from experiments.evaluation.long_context import run

    with pytest.raises(ValueError, match=message):
        run(compose("longeval", [f"run_dir={tmp_path}", override]))


@pytest.mark.parametrize("field", ["memory_nprobe", "memory_nlist", "memory_hnsw_m", "memory_ef_search",
                                   "memory_threads", "memory_k", "memory_capacity"])
def test_every_memory_knob_is_checked_whether_or_not_memory_is_used(field):
    from experiments.config import build

    for model in ("fot_tiny", "megalodon_tiny"):
        with pytest.raises(ValueError, match=f"{field}=0 must be an integer >= 1"):
            build(compose("train", [f"model={model}", f"model.net.{field}=0"]).model.net)


def test_ivf_lists_can_be_chosen_by_the_memory_size():
    from experiments.config import build

    net = build(compose("train", ["model=fot_tiny", "model.net.memory_backend=faiss", "model.net.memory_index=ivf",
                                  "model.net.memory_nlist=auto"]).model.net)
    assert net.memory_config().nlist == "auto"
    with pytest.raises(ValueError, match="memory_nlist='many' must be an integer >= 1 or 'auto'"):
        build(compose("train", ["model=fot_tiny", "model.net.memory_nlist=many"]).model.net)


def test_compare_publish_refuses_a_quick_run():
    from experiments.compare import main

    with pytest.raises(ValueError, match="--publish .* cannot be combined with --quick"):
        main(["--publish", "--quick"])


def test_several_loggers_at_once_and_the_csv_log_is_always_kept(tiny_corpus, tmp_path):
    pytest.importorskip("tensorboard")
    for i, choice in enumerate(("logger=[csv,tensorboard]", "logger=tensorboard")):
        run = tmp_path / str(i)
        train(train_cfg(run, tiny_corpus, choice))
        assert list((run / "tb").rglob("events.out.tfevents.*"))
        assert "val/bpb" in (run / "logs" / "metrics.csv").read_text()


def test_the_prompt_is_unescaped_as_stop_strings_are():
    from experiments.evaluation.generation import unescape

    assert unescape("def f():\\n\\treturn 'é'") == "def f():\n\treturn 'é'".encode()


@pytest.mark.parametrize("override,message", [
    ("trainer.val_check_interval=0", r"trainer.val_check_interval=0 must be a number of steps >= 1"),
    ("trainer.accumulate_grad_batches=0", r"trainer.accumulate_grad_batches=0 must be an integer >= 1"),
    ("trainer.gradient_clip_val=-1", r"trainer.gradient_clip_val=-1 must be a number >= 0"),
    ("seed=-1", r"seed=-1 must be an integer >= 0"),
    ("data.batch_size=abc", r"data.batch_size='abc' must be an integer >= 1"),
], ids=["val_check_interval", "accumulate", "clip", "seed", "batch_size"])
def test_training_values_that_would_mean_nothing_are_refused_naming_the_field(tiny_corpus, tmp_path, override,
                                                                               message):
    with pytest.raises(ValueError, match=message):
        train(train_cfg(tmp_path / "run", tiny_corpus, override))
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_damaged_config_yaml_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match=r"config.yaml cannot be read .* damaged"):
        evaluate(compose("eval", [f"run_dir={tmp_path}"]))


@pytest.mark.parametrize("args,message", [
    (("experiments.eval",), "run_dir is required"),
    (("experiments.train", "run_dir=/proc/version", "debug=smoke"), "run_dir='/proc/version' is a file"),
], ids=["eval-without-run_dir", "run_dir-is-a-file"])
def test_what_hydra_would_fail_on_first_is_one_line(args, message):
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_a_model_too_large_for_memory_names_its_sizes(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match=r"does not fit in memory .* 'd_model': 4000000"):
        train(train_cfg(tmp_path / "run", tiny_corpus, "model.net.d_model=4000000", "model.net.n_heads=1"))


def test_the_progress_line_says_which_step_its_validation_value_is_from():
    from types import SimpleNamespace

    import torch

    from experiments.training.progress import LineProgress

    lines = []
    progress = LineProgress(every_s=0.0)
    trainer = SimpleNamespace(max_steps=10, global_step=10, is_global_zero=True, callbacks=[],
                              callback_metrics={"train/loss": torch.tensor(1.5), "val/bpb": torch.tensor(2.25),
                                                "val/step": torch.tensor(8.0)})
    progress.on_train_start(trainer, None)
    progress.progress.update = lambda done, extra="", force=False: lines.append(extra)
    progress.on_train_batch_end(trainer, None, None, None, 0)
    assert "val bpb 2.25 @ step 8" in lines[0]
