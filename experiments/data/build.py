"""Writing a corpus: documents grouped (``data.documents``), assigned to splits by a hash of their id
(unless the dataset has its own splits), written as flat byte files with offsets and ``meta.json``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from experiments.data.files import FORMAT_VERSION
from experiments.data.sources import Document

SPLITS = ("train", "val", "test")
DOCUMENT_MODES = ("file", "directory", "concat")


def split_of(rel_path: str, val_fraction: float, test_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha1(os.fsencode(rel_path)).digest()[:8], "big") / 2.0**64
    if h < val_fraction:
        return "val"
    if h < val_fraction + test_fraction:
        return "test"
    return "train"


def group_documents(docs: list[Document], mode: str = "file", min_doc_bytes: int | None = None) -> list[Document]:
    """``documents: file`` keeps them; ``directory`` joins those of one folder; ``concat`` joins consecutive
    ones (in order) until a document holds ``min_doc_bytes``. A joined document keeps its first part's
    id and split."""
    if mode not in DOCUMENT_MODES:
        raise ValueError(f"data.documents={mode!r} is unknown; use one of {DOCUMENT_MODES}")
    if mode == "file":
        return docs
    groups: list[list[Document]] = []
    if mode == "directory":
        by_dir: dict[str, list[Document]] = {}
        for d in docs:
            by_dir.setdefault(str(Path(d.id).parent), []).append(d)
        groups = [g for _, g in sorted(by_dir.items())]
        ids = [str(Path(g[0].id).parent) for g in groups]
    else:
        if not min_doc_bytes or min_doc_bytes < 1:
            raise ValueError(f"data.documents=concat needs data.min_doc_bytes >= 1, got {min_doc_bytes!r}")
        current, size = [], 0
        for d in docs:
            current.append(d)
            size += len(d.read())
            if size >= min_doc_bytes:
                groups.append(current)
                current, size = [], 0
        if current:
            groups.append(current)
        ids = [g[0].id for g in groups]
    return [Document(i, g[0].split, lambda g=g: b"".join(d.read() for d in g)) for i, g in zip(ids, groups)]


def file_digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def describe_source(meta: dict) -> str:
    """Where a corpus's text comes from, in words."""
    source = meta["source"]
    if source.get("source") == "packages":
        pins = source.get("distributions")
        return (f"the standard library and {len(pins)} pinned wheel{'s' * (len(pins) != 1)}" if pins else
                "the standard library and the installed site-packages")
    return source.get("path") or "the Python standard library"


def summary(meta: dict, name: str) -> str:
    """One screen: documents, bytes and the document-length distribution per split, and the split rule."""
    where = describe_source(meta)
    lines = [f"[longlab] corpus {name}: {where} "
             f"({meta['source'].get('source')}); split rule: {meta['split_rule']}",
             f"  {'split':<6} {'docs':>8} {'bytes':>14} {'min':>9} {'median':>9} {'p90':>9} {'max':>10}"]
    for s in SPLITS:
        i = meta["splits"][s]
        lines.append(f"  {s:<6} {i['docs']:>8,} {i['bytes']:>14,} {i.get('min_doc_bytes', 0):>9,} "
                     f"{i['median_doc_bytes']:>9,} {i.get('p90_doc_bytes', 0):>9,} {i['max_doc_bytes']:>10,}")
    sk = meta["skipped"]
    if sk["binary"] or sk["empty"] or sk.get("unreadable"):
        unreadable = list(sk.get("unreadable") or [])
        lines.append(f"  skipped {sk['binary']} binary and {sk['empty']} empty documents"
                     + (f" and {len(unreadable)} unreadable entries" if unreadable else "")
                     + f" (e.g. {(sk['examples'] + unreadable)[:3]})")
    if meta.get("carved_val"):
        lines.append(f"  {meta['carved_val']}")
    return "\n".join(lines)


def remove_abandoned_builds(cache: Path) -> list[Path]:
    """Remove hidden build folders (``.<name>-<pid>-*``) whose builder process no longer exists: a
    build killed half way. A live builder's folder is left alone."""
    removed = []
    for d in cache.glob(".*-*-*"):
        parts = d.name.rsplit("-", 2)
        if not d.is_dir() or len(parts) != 3 or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        except PermissionError:  # alive, another user's
            pass
    return removed


def write_corpus(out, root, docs, fp, val_fraction, test_fraction, max_doc_bytes, path, pattern, options, report):
    assign = {s: [] for s in SPLITS}
    named = {d.split for d in docs if d.split}
    carve = "train" in named and "val" not in named  # a dataset with train (and test) only: val from train
    for d in docs:
        if carve and d.split == "train":
            assign["val" if split_of(d.id, val_fraction, 0.0) == "val" else "train"].append(d)
        else:
            assign[d.split or split_of(d.id, val_fraction, test_fraction)].append(d)
    meta_splits = {}
    for s in SPLITS:
        offsets, paths, digest = [0], [], hashlib.blake2b(digest_size=16)
        with open(out / f"{s}.bin", "wb") as fh:
            for d in assign[s]:
                blob = d.read()
                if max_doc_bytes:
                    blob = blob[:max_doc_bytes]
                if not blob:
                    continue
                fh.write(blob)
                digest.update(blob)
                offsets.append(offsets[-1] + len(blob))
                paths.append(d.id)
        np.save(out / f"{s}.idx.npy", np.asarray(offsets, dtype=np.int64))
        (out / f"{s}.paths.json").write_text(json.dumps(paths))
        lengths = np.diff(offsets) if len(offsets) > 1 else np.zeros(0, dtype=np.int64)
        meta_splits[s] = {
            "docs": len(paths),
            "bytes": int(offsets[-1]),
            "max_doc_bytes": int(lengths.max()) if len(lengths) else 0,
            "median_doc_bytes": int(np.median(lengths)) if len(lengths) else 0,
            "min_doc_bytes": int(lengths.min()) if len(lengths) else 0,
            "p90_doc_bytes": int(np.percentile(lengths, 90)) if len(lengths) else 0,
            "blake2b": digest.hexdigest(),  # of the split's bytes: a cache damaged later is detected and rebuilt
        }
    if not any(meta_splits[s]["bytes"] for s in SPLITS):
        raise ValueError(f"data.path={path!r} contains no non-empty files or records (skipped "
                         f"{report.skipped_binary} binary and {report.skipped_empty} empty ones, e.g. "
                         f"{report.examples}); point data.path at text, or set data.source / data.pattern / "
                         "data.text_field")
    named = options.get("named_splits") or options["source"] != "files"
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fp,
        "source": {"path": None if path is None else str(path), "root": str(root), "pattern": pattern, **options},
        "split_rule": ("the dataset's own splits where it has them, else " if named else "")
        + f"sha1(document id) / 2^64 < {val_fraction} -> val, < {val_fraction + test_fraction} -> test",
        "skipped": {"binary": report.skipped_binary, "empty": report.skipped_empty, "examples": report.examples,
                    "unreadable": report.unreadable},
        "splits": meta_splits,
    }
    if carve:
        meta["carved_val"] = (f"the dataset has no validation split: {meta_splits['val']['docs']} of its train "
                              f"documents became val (sha1(id) / 2^64 < data.val_fraction={val_fraction})")
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def intact(folder: Path) -> bool:
    """meta.json readable and every split's files present with the sizes and checksums it states (a build
    that was truncated, or a cache damaged later, even at the same size, is rebuilt rather than read;
    a cache from before checksums is rebuilt once)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        for s in SPLITS:
            info = meta["splits"][s]
            if (folder / f"{s}.bin").stat().st_size != info["bytes"]:
                return False
            if file_digest(folder / f"{s}.bin") != info["blake2b"]:  # damaged in place (same size)
                return False
            if len(np.load(folder / f"{s}.idx.npy")) != info["docs"] + 1:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True
