from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.data import ByteCorpus, ByteDataModule, DocumentStreams, RandomWindows, SegmentStreams, split_of
from tests.conftest import write_corpus


def _build(path, tmp_path, **kw):
    return ByteCorpus.build_or_load(path=str(path), pattern="**/*.txt", cache_dir=tmp_path / "cache", **kw)


def test_documents_round_trip_and_split_is_deterministic(tiny_corpus, tmp_path):
    c = _build(tiny_corpus, tmp_path, val_fraction=0.2, test_fraction=0.2)
    seen = 0
    for s in ("train", "val", "test"):
        sp = c.split(s)
        for i, rel in enumerate(sp.paths):
            assert split_of(rel, 0.2, 0.2) == s
            assert bytes(sp.document(i)) == (tiny_corpus / rel).read_bytes()  # exact document boundaries
        seen += sp.n_docs
    assert seen == 40
    # a second build in another cache gives byte-identical splits
    c2 = ByteCorpus.build_or_load(path=str(tiny_corpus), pattern="**/*.txt", cache_dir=tmp_path / "other",
                                  val_fraction=0.2, test_fraction=0.2)
    for s in ("train", "val", "test"):
        assert np.array_equal(c.split(s).data, c2.split(s).data)
        assert c.split(s).paths == c2.split(s).paths


def test_corpus_is_built_once_and_rebuilt_when_sources_change(tmp_path):
    src = write_corpus(tmp_path / "src", n_docs=10)
    c1 = _build(src, tmp_path)
    stamp = (c1.folder / "meta.json").stat().st_mtime_ns
    c2 = _build(src, tmp_path)
    assert c2.folder == c1.folder and (c2.folder / "meta.json").stat().st_mtime_ns == stamp
    (src / "part0" / "new.txt").write_text("a new document " * 30)
    c3 = _build(src, tmp_path)
    assert c3.folder != c1.folder
    assert c3.meta["fingerprint"] != c1.meta["fingerprint"]


def test_split_of_is_stable_for_existing_documents(tmp_path):
    # adding documents never moves an existing one to another split
    names = [f"dir/file{i}.py" for i in range(500)]
    before = [split_of(n, 0.05, 0.05) for n in names]
    assert before == [split_of(n, 0.05, 0.05) for n in names]
    frac = {s: before.count(s) / len(before) for s in ("train", "val", "test")}
    assert 0.01 < frac["val"] < 0.12 and 0.01 < frac["test"] < 0.12


def test_default_corpus_is_the_stdlib(tmp_path):
    c = ByteCorpus.build_or_load(path=None, pattern="**/*.py", cache_dir=tmp_path)
    assert c.meta["splits"]["train"]["docs"] > 500
    assert all(p.endswith(".py") and "site-packages" not in p for p in c.split("train").paths)


def test_random_windows_stay_inside_documents(tiny_corpus, tmp_path):
    sp = _build(tiny_corpus, tmp_path).split("train")
    rw = RandomWindows(sp, 64, 32, seed=5)
    docs = {bytes(sp.document(i)) for i in range(sp.n_docs)}
    b = rw.batch(0)["tokens"]
    assert b.shape == (32, 65)
    for row in b:
        assert any(bytes(row.tolist()) in d for d in docs)
    assert (rw.batch(0)["tokens"] == b).all()  # a pure function of (seed, step)
    assert not (rw.batch(1)["tokens"] == b).all()
    r0 = RandomWindows(sp, 64, 32, seed=5, rank=0, world_size=2).batch(0)["tokens"]
    r1 = RandomWindows(sp, 64, 32, seed=5, rank=1, world_size=2).batch(0)["tokens"]
    assert not (r0 == r1).all()


def test_document_streams_walk_each_document_window_after_window(tiny_corpus, tmp_path):
    sp = _build(tiny_corpus, tmp_path).split("train")
    T, B = 50, 4
    ds = DocumentStreams(sp, T, B, seed=0)
    steps = 40
    batches = [ds.batch(s) for s in range(steps)]
    for r in range(B):
        stream = np.concatenate([b["tokens"][r, :T].numpy() for b in batches] + [batches[-1]["tokens"][r, T:].numpy()])
        expected = np.concatenate([sp.document(d) for d in ds.documents(r, steps - 1)])[: len(stream)]
        assert np.array_equal(stream, expected), f"row {r} is not its documents in order"
        for s in range(1, steps):  # consecutive windows overlap by the one target byte
            assert batches[s - 1]["tokens"][r, -1] == batches[s]["tokens"][r, 0]
    # rows are bound to different documents, and ranks to different rows
    firsts = [ds.documents(r, 0)[0] for r in range(B)]
    assert len(set(firsts)) == B
    other = DocumentStreams(sp, T, B, seed=0, rank=1, world_size=2)
    assert other.documents(0, 0)[0] not in firsts
    assert bool(batches[0]["doc_start"].all())


def test_segment_streams_read_consecutive_windows_then_jump_to_another_document(tiny_corpus, tmp_path):
    """data.sampler=segments: W = segment_len / seq_len consecutive windows of one document per row,
    then a fresh random place; the segment's first window is a document start (state resets), the
    others are not; a pure function of (seed, step, rank); many documents in few steps."""
    sp = _build(tiny_corpus, tmp_path).split("train")
    T, B, W = 16, 4, 3
    ss = SegmentStreams(sp, T, B, seed=0, segment_len=W * T)
    steps = 8 * W
    batches = [ss.batch(s) for s in range(steps)]
    visited = set()
    for k in range(steps // W):
        seg = batches[k * W : (k + 1) * W]
        assert bool(seg[0]["doc_start"].all()) and bool(seg[0]["starts"][:, 0].all())
        assert not any(b["starts"].any() for b in seg[1:])
        assert not seg[0]["starts"][:, 1:].any()
        for r in range(B):
            for a, b in zip(seg, seg[1:]):  # consecutive windows overlap by the one target byte
                assert a["tokens"][r, -1] == b["tokens"][r, 0]
            parts = [seg[0]["tokens"][r].numpy()] + [b["tokens"][r, 1:].numpy() for b in seg[1:]]
            text = bytes(np.concatenate(parts).tolist())
            owner = [i for i in range(sp.n_docs) if text in bytes(sp.document(i))]
            assert owner, f"segment {k} of row {r} is not inside one document"
            visited.add(owner[0])
    assert len(visited) > B  # rows move on to other documents (a document stream would stay on B)
    again = SegmentStreams(sp, T, B, seed=0, segment_len=W * T)
    assert torch.equal(again.batch(W + 1)["tokens"], batches[W + 1]["tokens"])
    assert not torch.equal(SegmentStreams(sp, T, B, seed=1, segment_len=W * T).batch(0)["tokens"], batches[0]["tokens"])
    r0, r1 = (SegmentStreams(sp, T, B, 0, r, world_size=2, segment_len=W * T).batch(0)["tokens"] for r in (0, 1))
    assert not torch.equal(r0, r1)


def test_segment_length_errors_name_the_value_and_the_fix(tiny_corpus, tmp_path):
    sp = _build(tiny_corpus, tmp_path).split("train")
    with pytest.raises(ValueError, match=r"data.segment_len=40 must be a multiple of data.seq_len=16"):
        SegmentStreams(sp, 16, 2, seed=0, segment_len=40)
    with pytest.raises(ValueError, match=r"data.segment_len=4800 is longer than every train document"):
        SegmentStreams(sp, 16, 2, seed=0, segment_len=4800)
    with pytest.raises(ValueError, match=r"the segments sampler needs data.segment_len"):
        ByteDataModule(sampler="segments", path=str(tiny_corpus))
    with pytest.raises(ValueError, match=r"data.segment_len=64 with data.sampler='random'"):
        ByteDataModule(segment_len=64, path=str(tiny_corpus))


def test_missing_and_empty_data_paths_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.path='/no/such/dir' does not exist"):
        ByteCorpus.build_or_load(path="/no/such/dir", cache_dir=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "zero.txt").write_text("")
    with pytest.raises(ValueError, match="contains no non-empty files"):
        ByteCorpus.build_or_load(path=str(empty), cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="matched no files"):
        ByteCorpus.build_or_load(path=str(tmp_path / "nothing" / "*.txt"), cache_dir=tmp_path)


def test_window_longer_than_every_document_fails_clearly(tiny_corpus, tmp_path):
    sp = _build(tiny_corpus, tmp_path).split("train")
    with pytest.raises(ValueError, match=r"data.seq_len=5000 is longer than every train document"):
        RandomWindows(sp, 5000, 2, seed=0)


def test_too_few_documents_for_streams_fails_clearly(tiny_corpus, tmp_path):
    sp = _build(tiny_corpus, tmp_path).split("train")
    with pytest.raises(ValueError, match="lower data.batch_size"):
        DocumentStreams(sp, 32, sp.n_docs + 1, seed=0)


def test_long_windows_cut_into_rows_give_every_context_the_same_bytes(tiny_corpus):
    """data.sample_len: a model at 1/4 of the context trains on exactly the same bytes, in the same
    order, as rows of a quarter window (consecutive rows share the byte at each cut)."""
    corpus = ByteCorpus.build_or_load(path=str(tiny_corpus), pattern="**/*.txt")
    split = corpus.split("train")
    long = RandomWindows(split, 256, 3, seed=5).batch(7)["tokens"]
    cut = RandomWindows(split, 64, 3, seed=5, sample_len=256).batch(7)["tokens"]
    assert cut.shape == (12, 65)
    rows = cut.view(3, 4, 65)
    for b in range(3):
        joined = torch.cat([rows[b, 0], *[r[1:] for r in rows[b, 1:]]])
        assert torch.equal(joined, long[b])
