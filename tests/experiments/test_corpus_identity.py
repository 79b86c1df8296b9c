"""One run, one text: a corpus is rebuilt from its sources on each machine, and some sources are the machine's
own (data=packages reads the installed site-packages). A resume, an evaluation or a table cell on other text
than the run (or the table) trained on stops, naming both corpora, instead of mixing documents silently."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from experiments.data import ByteCorpus
from experiments.data.corpus import corpus_options
from experiments.eval import evaluate
from experiments.tables.corpora import check_table_corpus, trained_on
from experiments.train import train
from tests.conftest import compose, write_corpus


def build(cache, root):
    return ByteCorpus.build_or_load(path=str(root), pattern="**/*.txt", cache_dir=cache, val_fraction=0.15,
                                    test_fraction=0.15)


def train_cfg(run_dir, root, *extra):
    return compose("train", ["debug=smoke", f"run_dir={run_dir}", f"data.path={root}", "data.pattern=**/*.txt",
                             "data.val_fraction=0.15", "data.test_fraction=0.15", *extra])


def add_document(root):
    (root / "part0" / "zz_new.txt").write_text("a document that was not installed before " * 40)


def test_the_same_text_installed_elsewhere_has_one_content_and_other_text_another(tmp_path):
    a, b = write_corpus(tmp_path / "a", n_docs=12), write_corpus(tmp_path / "b", n_docs=12)
    for f in b.rglob("*.txt"):  # the same files, installed at another time
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    ca, cb = build(tmp_path / "cache", a), build(tmp_path / "cache", b)
    assert ca.folder != cb.folder and ca.content == cb.content
    add_document(b)
    cc = build(tmp_path / "cache", b)
    assert cc.content != ca.content
    ident = ca.identity()
    assert ident == {"folder": ca.folder.name, "content": ca.content,
                     "docs": {s: ca.meta["splits"][s]["docs"] for s in ("train", "val", "test")}}


def test_a_resume_on_other_text_stops_naming_both_corpora(tmp_path):
    root, run = write_corpus(tmp_path / "src", n_docs=30), tmp_path / "run"
    train(train_cfg(run, root, "trainer.max_steps=2", "trainer.val_check_interval=2"))
    first = json.loads((run / "corpus.json").read_text())
    assert first["content"] == build(None, root).content
    add_document(root)  # what another machine's site-packages looks like to data=packages
    with pytest.raises(ValueError, match=r"trained on .*content " + first["content"] + r".* but the corpus built "
                                         r"here .* is .*content .*its sources differ.*overwrite=true"):
        train(train_cfg(run, root, "trainer.max_steps=4", "trainer.val_check_interval=2", "ckpt_path=auto"))
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2  # nothing trained on the other text
    with pytest.raises(ValueError, match=r"its test documents are not the ones of the run's corpus"):
        evaluate(compose("eval", [f"run_dir={run}", "eval.num_batches=1", "eval.context=32"]))
    again = train(train_cfg(run, root, "trainer.max_steps=2", "trainer.val_check_interval=2", "overwrite=true"))
    assert again["steps"] == 2 and json.loads((run / "corpus.json").read_text())["content"] != first["content"]
    evaluate(compose("eval", [f"run_dir={run}", "eval.num_batches=1", "eval.context=32"]))  # the same text now


def fake_cell(results, row, seed, cfg, ident=None, legacy_folder=None):
    from omegaconf import OmegaConf

    cell = results / "cells" / "t" / "cpu" / row / "k" / f"seed={seed}"
    cell.mkdir(parents=True)
    OmegaConf.save(cfg, cell / "config.yaml")
    if ident is not None:
        (cell / "corpus.json").write_text(json.dumps(ident))
    if legacy_folder is not None:  # a cell from before corpus.json: its evaluation names the folder
        (cell / "test.json").write_text(json.dumps({"corpus": {"folder": legacy_folder, "trained_on": True}}))
    return cell


def test_a_table_cell_on_other_text_than_the_tables_cells_stops(tmp_path):
    root = write_corpus(tmp_path / "src", n_docs=30)
    cfg = train_cfg(tmp_path / "x", root)
    results = tmp_path / "results"
    here = ByteCorpus.build_or_load(**corpus_options(cfg.data)).identity()
    cell = fake_cell(results, "a", 0, cfg, ident=here)
    check_table_corpus(results, "t", "cpu", cfg, "t/cpu/a/seed=1")  # the same text: a new seed may train
    assert trained_on(cell) == here
    legacy = fake_cell(results, "b", 0, cfg, legacy_folder=here["folder"])
    assert trained_on(legacy) == {"folder": here["folder"]}
    check_table_corpus(results, "t", "cpu", cfg, "t/cpu/b/seed=1")
    add_document(root)
    with pytest.raises(ValueError, match=r"t/cpu/a/seed=1: the corpus built here is .* but .*seed=0 trained on "
                                         r".*content " + here["content"] + r".*move .* aside to start the table"):
        check_table_corpus(results, "t", "cpu", cfg, "t/cpu/a/seed=1")
    other = train_cfg(tmp_path / "x", root, "data.test_fraction=0.2")  # other data options: not compared
    shutil.rmtree(results / "cells" / "t" / "cpu" / "a")
    with pytest.raises(ValueError, match=r"trained on " + here["folder"]):  # the legacy record, by folder
        check_table_corpus(results, "t", "cpu", cfg, "t/cpu/b/seed=1")
    check_table_corpus(results, "t", "cpu", other, "t/cpu/c/seed=0")


def test_a_table_cell_to_retrain_on_other_text_is_refused_before_its_records_change(tmp_path):
    """A committed cell retrained on another machine (its checkpoint is gone, an evaluation needs it) stops
    before its metrics and evaluations are set aside."""
    from experiments.tables.runner import run_table

    cell = run_table("megabyte_bpb", "smoke", [0], str(tmp_path), rows=["megabyte"])[0]
    ident = json.loads((cell / "corpus.json").read_text())
    (cell / "corpus.json").write_text(json.dumps({**ident, "content": "0" * 16}))  # trained on other text
    shutil.rmtree(cell / "checkpoints")
    (cell / "test4096.json").unlink()
    before = {f.name: f.read_bytes() for f in cell.glob("*.json")}
    with pytest.raises(ValueError, match=r"megabyte_bpb/smoke/megabyte/seed=0: the corpus built here .* trained on "
                                         r".*content 0{16}"):
        run_table("megabyte_bpb", "smoke", [0], str(tmp_path), rows=["megabyte"])
    assert {f.name: f.read_bytes() for f in cell.glob("*.json")} == before
