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

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

SOURCES = ("auto", "files", "file", "jsonl", "csv", "parquet", "hf")
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"), "test": ("test",)}
RECORD_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
                   ".parquet": "parquet"}


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
    with open(path, "rb") as fh:
        return b"\x00" in fh.read(8192)


def detect(path: str | None) -> str:
    if path is None:
        return "files"
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "dataset_info.json").exists()):
        return "hf"
    if p.is_file():
        return RECORD_SUFFIXES.get(p.suffix.lower(), "file")
    if p.is_dir():
        kinds = {RECORD_SUFFIXES.get(f.suffix.lower()) for f in p.iterdir() if f.is_file()}
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
            yield Document(str(rel), split, f.read_bytes)


# ---------------------------------------------------------------------------------------------- one large file
def single_file_documents(path: Path, separator: str | None, block_bytes: int | None,
                          split_bytes: list[int] | None, val_fraction: float, test_fraction: float
                          ) -> Iterator[Document]:
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


# ---------------------------------------------------------------------------------------------- records
def record_files(path: Path, kind: str) -> list[tuple[Path, str | None]]:
    files = [path] if path.is_file() else sorted(f for f in path.iterdir() if RECORD_SUFFIXES.get(f.suffix.lower())
                                                 == kind)
    named = {f: split_in_name(f.stem) for f in files}
    use_named = len(files) > 1 and "train" in named.values()
    return [(f, named[f] if use_named else None) for f in files]


def record_documents(path: Path, kind: str, text_field: str, report: Report) -> Iterator[Document]:
    for f, split in record_files(path, kind):
        for i, text in enumerate(_records(f, kind, text_field)):
            if not text:
                report.skip("empty", f"{f.name}:{i}")
                continue
            blob = text.encode("utf-8", errors="surrogatepass")
            yield Document(f"{f.name}:{i:09d}", split, lambda blob=blob: blob)


def _records(f: Path, kind: str, text_field: str) -> Iterator[str]:
    def field_of(rec, where):
        if text_field not in rec:
            raise ValueError(f"{where} has no field data.text_field={text_field!r}; its fields are {sorted(rec)}")
        value = rec[text_field]
        return "" if value is None else str(value)

    if kind == "jsonl":
        with open(f, encoding="utf-8", errors="surrogateescape") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{f}:{n} is not a JSON object ({e.msg}); data.source=jsonl needs one "
                                         "JSON object per line") from None
                    yield field_of(rec, f"{f}:{n}")
    elif kind == "csv":
        with open(f, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            text = fh.read()
        dialect = csv.excel_tab if f.suffix.lower() == ".tsv" else csv.excel
        for n, rec in enumerate(csv.DictReader(io.StringIO(text), dialect=dialect), 2):
            yield field_of(rec, f"{f}:{n}")
    else:
        pq = _optional("pyarrow.parquet", "data.source=parquet")
        table = pq.read_table(f)
        if text_field not in table.column_names:
            raise ValueError(f"{f} has no column data.text_field={text_field!r}; its columns are {table.column_names}")
        for value in table.column(text_field).to_pylist():
            yield "" if value is None else str(value)


# ---------------------------------------------------------------------------------------------- Hugging Face
def hf_documents(path: str | None, name: str | None, config: str | None, text_field: str,
                 report: Report) -> Iterator[Document]:
    datasets = _optional("datasets", "data.source=hf")
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


def _optional(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs the {module.split('.')[0]!r} package: pip install -e '.[data]' "
                          "(installs datasets and pyarrow)") from None
