"""Data sources on small data the tests make: folders of text, one large file, JSONL / CSV / Parquet,
saved Hugging Face datasets, the benchmark layouts with their official splits, and bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from experiments.data import ByteCorpus
from experiments.training.run import train
from tests.conftest import compose

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def build(tmp_path, **kw):
    return ByteCorpus.build_or_load(cache_dir=tmp_path / "cache", **kw)


def docs(corpus, split):
    s = corpus.split(split)
    return [bytes(s.document(i)) for i in range(s.n_docs)]


def test_a_folder_of_txt_files_trains_with_no_extra_flags(tmp_path):
    root = tmp_path / "mytexts"
    root.mkdir()
    for i in range(30):
        (root / f"note{i:02d}.txt").write_text(f"{i} " + TEXT)
    m = train(compose("train", ["debug=smoke", f"run_dir={tmp_path / 'run'}", f"data.path={root}",
                                "data.val_fraction=0.2", "data.test_fraction=0.2"]))
    assert m["steps"] == 3


def test_binary_and_empty_files_are_skipped_and_counted(tmp_path, capsys):
    root = tmp_path / "mixed"
    root.mkdir()
    for i in range(6):
        (root / f"ok{i}.md").write_text(TEXT)
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (root / "empty.txt").write_text("")
    c = build(tmp_path, path=str(root), val_fraction=0.0, test_fraction=0.0)
    assert c.meta["skipped"]["binary"] == 1 and c.meta["skipped"]["empty"] == 1
    assert c.split("train").n_docs == 6
    assert "skipped 1 binary and 1 empty" in capsys.readouterr().out


def test_non_utf8_bytes_and_file_names(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    name = os.fsdecode(b"caf\xe9.txt")  # not valid UTF-8
    with open(os.path.join(os.fsencode(root), b"caf\xe9.txt"), "wb") as fh:
        fh.write(b"latin-1 bytes: \xe9\xe8\xff " * 50)
    (root / "plain.txt").write_text(TEXT)
    c = build(tmp_path, path=str(root), val_fraction=0.0, test_fraction=0.0)
    assert name in c.split("train").paths and c.split("train").n_docs == 2


def test_a_symlink_loop_does_not_hang_the_walk(tmp_path):
    root = tmp_path / "loop"
    (root / "a").mkdir(parents=True)
    (root / "a" / "doc.txt").write_text(TEXT)
    os.symlink(root, root / "a" / "back")  # a -> back -> root -> a ...
    os.symlink(root / "a", root / "again")  # a second way into a
    c = build(tmp_path, path=str(root), val_fraction=0.0, test_fraction=0.0)
    assert c.split("train").n_docs == 1


def test_a_damaged_cache_is_detected_and_rebuilt(tmp_path, tiny_corpus):
    c = build(tmp_path, path=str(tiny_corpus), pattern="**/*.txt")
    with open(c.folder / "train.bin", "r+b") as fh:
        fh.truncate(10)  # "mmap length is greater than file size" before
    again = build(tmp_path, path=str(tiny_corpus), pattern="**/*.txt")
    assert again.split("train").data.shape[0] == again.meta["splits"]["train"]["bytes"]
    (again.folder / "meta.json").write_text("{not json")
    third = build(tmp_path, path=str(tiny_corpus), pattern="**/*.txt")
    assert third.meta["splits"]["train"]["bytes"] > 0


def test_a_file_changed_after_the_build_rebuilds(tmp_path):
    root = tmp_path / "grow"
    root.mkdir()
    (root / "a.txt").write_text(TEXT)
    first = build(tmp_path, path=str(root), val_fraction=0.0, test_fraction=0.0)
    (root / "a.txt").write_text(TEXT + "more")
    second = build(tmp_path, path=str(root), val_fraction=0.0, test_fraction=0.0)
    assert first.folder != second.folder and docs(second, "train")[0].endswith(b"more")


def test_one_large_file_splits_by_position_into_blocks(tmp_path):
    f = tmp_path / "enwik_like"
    data = bytes(np.random.default_rng(0).integers(32, 127, size=10_000, dtype=np.uint8))
    f.write_bytes(data)
    c = build(tmp_path, path=str(f), split_bytes=[8000, 1000, 1000], block_bytes=3000)
    assert [len(d) for d in docs(c, "train")] == [3000, 3000, 2000]
    assert docs(c, "val") == [data[8000:9000]] and docs(c, "test") == [data[9000:]]
    d = build(tmp_path, path=str(f), val_fraction=0.1, test_fraction=0.1)  # default: the file's last 10% + 10%
    assert docs(d, "train") == [data[:8000]] and docs(d, "test") == [data[9000:]]
    with pytest.raises(ValueError, match=r"data.split_bytes=\[9000, 1000, 1000\] add up to 11,000 bytes"):
        build(tmp_path, path=str(f), split_bytes=[9000, 1000, 1000])


def test_the_enwik8_recipe_composes_with_the_official_split():
    cfg = compose("train", ["data=enwik8", "data.path=/data/enwik8"])
    assert cfg.data.source == "file" and list(cfg.data.split_bytes) == [90_000_000, 5_000_000, 5_000_000]


def test_wikitext_layout_keeps_its_files_splits_and_cuts_articles(tmp_path):
    root = tmp_path / "wikitext-103-raw"
    root.mkdir()
    for split, n in (("train", 5), ("valid", 2), ("test", 2)):
        text = "".join(f" = Article {split} {i} = \n\n Body of {split} {i}. {TEXT}\n = = Section = = \n more.\n"
                       for i in range(n))
        (root / f"wiki.{split}.raw").write_text(text)
    cfg = compose("train", ["data=wikitext103", f"data.path={root}", f"data.cache_dir={tmp_path / 'cache'}"])
    from experiments.training.runs import corpus_of

    c = corpus_of(cfg)
    assert [c.split(s).n_docs for s in ("train", "val", "test")] == [5, 2, 2]
    assert docs(c, "val")[0].startswith(b" = Article valid 0 = ") and b"= = Section = =" in docs(c, "val")[0]


def test_pg19_layout_keeps_its_folders_splits(tmp_path):
    root = tmp_path / "pg19"
    for split, n in (("train", 6), ("validation", 2), ("test", 3)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            (root / split / f"{1000 * len(split) + i}.txt").write_text(f"{split} book {i}. " + TEXT)
    cfg = compose("train", ["data=pg19", f"data.path={root}", f"data.cache_dir={tmp_path / 'cache'}"])
    from experiments.training.runs import corpus_of

    c = corpus_of(cfg)
    assert [c.split(s).n_docs for s in ("train", "val", "test")] == [6, 2, 3]
    assert all(d.startswith(b"test book") for d in docs(c, "test"))


def test_a_code_folder_with_a_tests_directory_is_hash_split(tmp_path):
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "tests").mkdir()
    for i in range(20):
        (root / "src" / f"m{i}.py").write_text(f"x = {i}\n" + TEXT)
        (root / "tests" / f"test_m{i}.py").write_text(f"y = {i}\n" + TEXT)
    c = build(tmp_path, path=str(root), val_fraction=0.2, test_fraction=0.2)
    assert not c.meta["source"]["named_splits"]
    assert any(p.startswith("tests/") for p in c.split("train").paths)


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_record_files_one_document_per_record_with_their_named_splits(kind, tmp_path):
    root = tmp_path / kind
    root.mkdir()
    for split, n in (("train", 8), ("validation", 2), ("test", 3)):
        rows = [{"id": i, "text": f"{split} record {i}: {TEXT}"} for i in range(n)]
        path = root / f"{split}.{kind}"
        if kind == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif kind == "csv":
            import csv

            with open(path, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=["id", "text"])
                w.writeheader()
                w.writerows(rows)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]}), path)
    c = build(tmp_path, path=str(root))
    assert [c.split(s).n_docs for s in ("train", "val", "test")] == [8, 2, 3]
    assert docs(c, "val")[1].startswith(b"validation record 1: ")
    with pytest.raises(ValueError, match="no (field|column) data.text_field='body'"):
        build(tmp_path, path=str(root), text_field="body", name="other")


def test_a_single_jsonl_file_is_hash_split_by_record(tmp_path):
    f = tmp_path / "all.jsonl"
    f.write_text("".join(json.dumps({"text": f"{i} {TEXT}"}) + "\n" for i in range(40)))
    c = build(tmp_path, path=str(f), val_fraction=0.2, test_fraction=0.2)
    assert sum(c.split(s).n_docs for s in ("train", "val", "test")) == 40 and c.split("val").n_docs > 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not a JSON object"):
        build(tmp_path, path=str(bad))


def test_a_saved_hugging_face_dataset_keeps_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": [f"train {i} {TEXT}" for i in range(7)]}),
        "validation": datasets.Dataset.from_dict({"text": [f"val {i} {TEXT}" for i in range(2)]}),
        "test": datasets.Dataset.from_dict({"text": [f"test {i} {TEXT}" for i in range(3)]}),
    })
    dd.save_to_disk(str(tmp_path / "saved"))
    c = build(tmp_path, path=str(tmp_path / "saved"))
    assert c.meta["source"]["source"] == "hf"
    assert [c.split(s).n_docs for s in ("train", "val", "test")] == [7, 2, 3]
    assert docs(c, "test")[2].startswith(b"test 2 ")


def test_val_batches_zero_fails_at_once(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match=r"data.val_batches=0 must be an integer >= 1"):
        train(compose("train", ["debug=smoke", f"run_dir={tmp_path}", f"data.path={tiny_corpus}",
                                "data.val_batches=0"]))
