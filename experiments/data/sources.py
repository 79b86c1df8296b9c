"""Where a corpus's documents come from: one interface over files, single large files, JSONL / CSV /
Parquet records and Hugging Face datasets (``data.source``, or detected from ``data.path``).

Every source yields ``Document(id, split, read)``: ``split`` is the dataset's own split when it has
one (None: assigned by a hash of ``id``), ``read()`` returns the bytes. Sources:

* ``files``   — a directory or a glob; one document per file (``data.documents`` can join them, and
  ``data.doc_separator`` can cut them at matching lines). Binary
  files (a NUL byte in the first 8 KB) and empty files are skipped and counted. A directory whose top
  level names splits (``train/ validation/ test/`` as in PG-19; ``wiki.train.raw wiki.valid.raw
  wiki.test.raw`` as in WikiText-103; ``train.jsonl ...``) keeps them.
* ``file``    — one large file: documents are the pieces between ``data.doc_separator`` (a regular
  expression matched at line starts, e.g. WikiText's ``= Title =`` headers) or fixed blocks of
  ``data.block_bytes``; splits by position, ``data.split_bytes`` = [train, val, test] sizes
  (enwik8 / text8: 90M / 5M / 5M) or, by default, the last val_fraction + test_fraction of the file.
* ``jsonl`` / ``csv`` / ``parquet`` — one document per record, its ``data.text_field``; several files
  named by split keep their split.
* ``hf``      — a ``datasets.save_to_disk`` folder, or ``data.hf_name`` (``load_dataset``, needs a
  network) with its own splits (``validation`` -> val).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from experiments.data.files import optional_module, read_bytes, record_kind, strip_compression

SOURCES = ("auto", "files", "file", "jsonl", "csv", "parquet", "hf", "packages")
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"), "test": ("test",)}


@dataclass(frozen=True)
class Document:
    id: str
    split: str | None
    read: Callable[[], bytes]


@dataclass
class Report:
    """What a source skipped, for the corpus's meta.json and a one-line notice."""

    skipped_binary: int = 0
    skipped_empty: int = 0
    examples: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # left out with data.skip_unreadable=true

    def skip(self, kind: str, what: str) -> None:
        setattr(self, f"skipped_{kind}", getattr(self, f"skipped_{kind}") + 1)
        if len(self.examples) < 3:
            self.examples.append(what)


def split_in_name(name: str) -> str | None:
    """The split a file or folder name states (``wiki.valid.raw``, ``validation``, ``train-00001.parquet``)."""
    words = re.split(r"[._\-/\\ ]+", name.lower())
    for split, aliases in SPLIT_NAMES.items():
        if any(w in aliases for w in words):
            return split
    return None


def named_splits(root: Path) -> bool:
    """A folder whose top level names a train split and a val or test split keeps them."""
    if not root.is_dir():
        return False
    found = {split_in_name(p.name) for p in root.iterdir() if not p.name.startswith(".")}
    return "train" in found and bool(found & {"val", "test"})


def is_binary(path: Path) -> bool:
    """A NUL byte in the first 8 KB (of the decompressed text, for a compressed file)."""
    if strip_compression(path.name) != path.name:
        return b"\x00" in read_bytes(path)[:8192]
    with open(path, "rb") as fh:
        return b"\x00" in fh.read(8192)


def detect(path: str | None) -> str:
    if path is None:
        return "files"
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "dataset_info.json").exists()):
        return "hf"
    if p.is_file():
        return record_kind(p) or "file"
    if p.is_dir():
        kinds = {record_kind(f) for f in p.iterdir() if f.is_file()}
        if len(kinds) == 1 and None not in kinds:
            return kinds.pop()
    return "files"


# ---------------------------------------------------------------------------------------------- files
def file_documents(root: Path, files: list[Path], report: Report, keep_named_splits: bool,
                   separator: str | None = None) -> Iterator[Document]:
    """One document per file, or, with ``separator``, one per piece of each file between lines that
    match it (WikiText's article headers)."""
    for f in files:
        rel = f.relative_to(root)
        if f.stat().st_size == 0:
            report.skip("empty", str(rel))
            continue
        if is_binary(f):
            report.skip("binary", str(rel))
            continue
        split = split_in_name(rel.parts[0]) if keep_named_splits else None
        if separator:
            yield from _separated(f, split, 0, f.stat().st_size, separator, str(rel))
        else:
            yield Document(str(rel), split, lambda f=f: read_bytes(f))


# ---------------------------------------------------------------------------------------------- packages
def join_sources(blobs: Iterable[bytes]) -> bytes:
    """A package folder's files as one document: in the order given, empty and binary ones (a NUL byte in the
    first 8 KB) left out, each ending in a newline."""
    parts = []
    for blob in blobs:
        if blob and b"\x00" not in blob[:8192]:
            parts.append(blob if blob.endswith(b"\n") else blob + b"\n")
    return b"".join(parts)


def package_documents(files: dict[str, list[Path]], roots: dict[str, Path], report: Report) -> Iterator[Document]:
    """One document per package folder: its ``*.py`` files joined in name order, from the standard library and
    from site-packages (the setting of FoT's and the Memorizing Transformer's code data: a name defined in
    one file is used in the next). Ids are relative to their root (``stdlib/email``,
    ``site-packages/torch/nn``), so a document's split does not depend on where Python is installed."""
    for label, paths in files.items():
        by_dir: dict[Path, list[Path]] = {}
        for f in paths:
            by_dir.setdefault(f.parent, []).append(f)
        for folder, group in sorted(by_dir.items()):
            rel = folder.relative_to(roots[label]).as_posix()
            doc_id = f"{label}/{rel}" if rel != "." else label

            yield Document(doc_id, None, lambda group=group: join_sources(f.read_bytes() for f in group))


# ---------------------------------------------------------------------------------------------- one large file
def single_file_documents(path: Path, separator: str | None, block_bytes: int | None,
                          split_bytes: list[int] | None, val_fraction: float, test_fraction: float
                          ) -> Iterator[Document]:
    if strip_compression(path.name) != path.name:  # a compressed text file: its text, split by position
        data = read_bytes(path)
        with tempfile.NamedTemporaryFile(prefix="longlab-", suffix=".txt", delete=False) as tmp:
            tmp.write(data)
        try:
            pieces = [(d.id.replace(Path(tmp.name).name, path.name), d.split, d.read())
                      for d in single_file_documents(Path(tmp.name), separator, block_bytes, split_bytes,
                                                     val_fraction, test_fraction)]
            yield from [Document(i, split, lambda blob=blob: blob) for i, split, blob in pieces]
        finally:
            os.unlink(tmp.name)
        return
    size = path.stat().st_size
    if split_bytes:
        if len(split_bytes) != 3 or any(int(b) < 0 for b in split_bytes):
            raise ValueError(f"data.split_bytes={list(split_bytes)} must be three sizes [train, val, test] in bytes")
        train_n, val_n, test_n = (int(b) for b in split_bytes)
        if train_n + val_n + test_n > size:
            raise ValueError(f"data.split_bytes={list(split_bytes)} add up to {train_n + val_n + test_n:,} bytes but "
                             f"{path} has {size:,}; use the file the recipe expects or adjust data.split_bytes")
    else:
        val_n, test_n = int(size * val_fraction), int(size * test_fraction)
        train_n = size - val_n - test_n
    regions = [("train", 0, train_n), ("val", train_n, train_n + val_n), ("test", train_n + val_n,
                                                                          train_n + val_n + test_n)]
    for split, lo, hi in regions:
        if hi <= lo:
            continue
        if separator:
            yield from _separated(path, split, lo, hi, separator)
        else:
            step = int(block_bytes or (hi - lo))
            for i, start in enumerate(range(lo, hi, step)):
                yield Document(f"{path.name}:{split}:{i:06d}", split, _reader(path, start, min(start + step, hi)))


def _reader(path: Path, lo: int, hi: int) -> Callable[[], bytes]:
    def read() -> bytes:
        with open(path, "rb") as fh:
            fh.seek(lo)
            return fh.read(hi - lo)

    return read


def _separated(path: Path, split: str | None, lo: int, hi: int, separator: str, name: str | None = None
               ) -> Iterator[Document]:
    """Documents start at each line matching ``separator`` (a regular expression)."""
    pattern = re.compile(separator.encode(), re.MULTILINE)
    name = name or f"{path.name}:{split}"
    with open(path, "rb") as fh:
        fh.seek(lo)
        data = fh.read(hi - lo)
    starts = [0] + [m.start() for m in pattern.finditer(data)
                    if m.start() > 0 and data[m.start() - 1 : m.start()] == b"\n"]
    for i, (a, b) in enumerate(zip(starts, starts[1:] + [len(data)])):
        piece = data[a:b]
        if piece.strip():
            yield Document(f"{name}:{i:06d}", split, lambda piece=piece: piece)


# ---------------------------------------------------------------------------------------------- Hugging Face
def hf_documents(path: str | None, name: str | None, config: str | None, text_field: str,
                 report: Report) -> Iterator[Document]:
    datasets = optional_module("datasets", "data.source=hf")
    if name:
        ds = datasets.load_dataset(name, config)
    else:
        ds = datasets.load_from_disk(os.path.expanduser(str(path)))
    splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for split_name, part in splits:
        split = None if split_name is None else split_in_name(split_name)
        if split_name is not None and split is None:
            raise ValueError(f"the dataset has a split {split_name!r} that is none of train / validation / test; "
                             "save the splits you want under those names")
        if text_field not in part.column_names:
            raise ValueError(f"the dataset has no column data.text_field={text_field!r}; its columns are "
                             f"{part.column_names}")
        for i, text in enumerate(part[text_field]):
            if not text:
                report.skip("empty", f"{split_name}:{i}")
                continue
            blob = str(text).encode("utf-8", errors="surrogatepass")
            yield Document(f"{split_name}:{i:09d}", split, lambda blob=blob: blob)
