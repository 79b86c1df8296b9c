"""Record files (JSON lines, CSV / TSV, Parquet; compressed or not): one document per record, read by the
``datasets`` library's readers, each document's id (which decides its split) the record's ``id`` field
or a hash of its text."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

from experiments.data.files import open_text, optional_module, record_kind, strip_compression
from experiments.data.sources import Document, Report, split_in_name


def record_files(path: Path, kind: str) -> list[tuple[Path, str | None]]:
    files = [path] if path.is_file() else sorted(f for f in path.iterdir() if record_kind(f) == kind)
    named = {f: split_in_name(strip_compression(f.name)) for f in files}
    use_named = len(files) > 1 and "train" in named.values()
    return [(f, named[f] if use_named else None) for f in files]


def record_documents(path: Path, kind: str, text_field: str, report: Report) -> Iterator[Document]:
    """One document per record. Its id (what decides its split) is the record's ``id`` field when it has one,
    else a hash of its text: the same records split the same way whatever the file is called or where they
    sit in it (and duplicates never straddle splits)."""
    for f, split in record_files(path, kind):
        for i, (text, rid) in enumerate(_records(f, kind, text_field)):
            if not text:
                report.skip("empty", f"{f.name}:{i}")
                continue
            blob = text.encode("utf-8", errors="surrogatepass")
            doc_id = f"id:{rid}" if rid is not None else "sha1:" + hashlib.sha1(blob).hexdigest()
            yield Document(doc_id, split, lambda blob=blob: blob)


def _records(f: Path, kind: str, text_field: str) -> Iterator[tuple[str, str | None]]:
    """(text, id or None) of every record of ``f``, read by the ``datasets`` library's own readers (JSON
    lines, CSV/TSV of any field size, Parquet; .gz/.bz2/.xz/.zst compressed too)."""
    datasets = optional_module("datasets", f"data.source={kind}")
    datasets.disable_progress_bars()
    builder = {"jsonl": "json", "csv": "csv", "parquet": "parquet"}[kind]
    options = {"sep": "\t"} if strip_compression(f.name).lower().endswith(".tsv") else {}
    with tempfile.TemporaryDirectory(prefix="longlab-records-") as cache:
        try:
            ds = datasets.load_dataset(builder, data_files=str(f), split="train", cache_dir=cache, **options)
        except Exception as e:  # noqa: BLE001 - the reader's own message, with the file, and the first bad line
            raise ValueError(_unreadable_records(f, kind, e)) from None
        if text_field not in ds.column_names:
            raise ValueError(f"{f} has no field data.text_field={text_field!r}; its fields are {ds.column_names}")
        ids = ds["id"] if "id" in ds.column_names else None
        for n, value in enumerate(ds[text_field]):
            yield ("" if value is None else str(value)), (None if ids is None or ids[n] is None else str(ids[n]))


def _unreadable_records(f: Path, kind: str, error: Exception) -> str:
    """The error of a record file the reader refused, naming its first line that is not a JSON object."""
    if kind == "jsonl":
        with open_text(f) as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    ok = isinstance(json.loads(line), dict)
                except json.JSONDecodeError:
                    ok = False
                if not ok:
                    return f"{f}:{n} is not a JSON object; data.source=jsonl needs one JSON object per line"
    cause = " ".join(str(error.__cause__ or error).split())[:300]
    return f"{f} could not be read as {kind} ({type(error).__name__}: {cause}); check the file or set data.source"
