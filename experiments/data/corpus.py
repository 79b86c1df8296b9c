"""Byte-level corpora built once from local files and memory-mapped by every later run.

Layout of a built corpus (one folder per source fingerprint)::

    <cache_dir>/<name>-<fingerprint[:12]>/
        meta.json            sources, fingerprint, split rule, documents and bytes per split
        train.bin  val.bin  test.bin            flat uint8 bytes of the split's documents
        train.idx.npy  val.idx.npy  test.idx.npy  int64 offsets, n_docs + 1 (doc i = bin[o[i]:o[i+1]])
        train.paths.json ...                      source path of each document, in order

By default each file is one document (``documents: file``); ``documents: directory`` joins the files
of each directory into one document, and ``documents: concat`` joins consecutive files (in path
order) until a document holds at least ``min_doc_bytes`` (long documents from a corpus of small
files, e.g. for long-context evaluation). The split of a document is a pure function of its id (the
relative path of the file, directory or first file: a SHA-1 hash), so adding files never moves
existing documents between splits.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
DOCUMENT_MODES = ("file", "directory", "concat")
_GLOB_CHARS = set("*?[")


def default_cache_dir() -> Path:
    env = os.environ.get("LONGLAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "longlab"


def stdlib_root() -> Path:
    """The running Python's standard library source: real, long, code-like documents on any machine."""
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(rel_path: str, val_fraction: float, test_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha1(rel_path.encode("utf-8")).digest()[:8], "big") / 2.0**64
    if h < val_fraction:
        return "val"
    if h < val_fraction + test_fraction:
        return "test"
    return "train"


def list_sources(path: str | None, pattern: str, exclude: list[str] | None = None) -> tuple[Path, list[Path]]:
    """Resolve ``data.path`` (None = the standard library; a directory; or a glob) to files.

    Returns the root used for relative paths and the sorted list of non-empty regular files.
    """
    exclude = list(exclude or [])
    if path is None:
        root = stdlib_root()
        exclude += ["site-packages", "dist-packages", "__pycache__"]
        pattern = pattern or "**/*.py"
        files = [Path(p) for p in glob.glob(str(root / pattern), recursive=True)]
    elif _GLOB_CHARS & set(str(path)):
        files = [Path(p) for p in glob.glob(os.path.expanduser(str(path)), recursive=True)]
        if not files:
            raise FileNotFoundError(
                f"data.path={path!r} matched no files; check the glob (use '**' with a directory "
                "prefix for recursion, e.g. 'corpus/**/*.txt')"
            )
        root = Path(os.path.commonpath([str(f.parent) for f in files]))
    else:
        root = Path(os.path.expanduser(str(path)))
        if not root.exists():
            raise FileNotFoundError(
                f"data.path={path!r} does not exist; point data.path at a directory of text files, "
                "a glob such as 'corpus/**/*.txt', or leave it null for the Python standard library"
            )
        if root.is_file():
            files, root = [root], root.parent
        else:
            files = [Path(p) for p in glob.glob(str(root / (pattern or "**/*")), recursive=True)]
    keep = []
    for f in files:
        parts = f.relative_to(root).parts if f.is_relative_to(root) else f.parts
        if any(p.startswith(".") or p in exclude for p in parts):
            continue
        if f.is_file() and f.stat().st_size > 0:
            keep.append(f)
    if not keep:
        raise ValueError(
            f"data.path={path!r} (pattern {pattern!r}) contains no non-empty files; "
            "point data.path at a directory with text files or change data.pattern"
        )
    return root, sorted(keep)


def group_documents(root: Path, files: list[Path], mode: str = "file", min_doc_bytes: int | None = None
                    ) -> list[tuple[str, list[Path]]]:
    """(document id, its files in order) for the ``documents`` mode."""
    if mode not in DOCUMENT_MODES:
        raise ValueError(f"data.documents={mode!r} is unknown; use one of {DOCUMENT_MODES}")
    rel = [(str(f.relative_to(root)), f) for f in files]
    if mode == "file":
        return [(r, [f]) for r, f in rel]
    if mode == "directory":
        groups: dict[str, list[Path]] = {}
        for r, f in rel:
            groups.setdefault(str(Path(r).parent), []).append(f)
        return [(d, fs) for d, fs in sorted(groups.items())]
    if not min_doc_bytes or min_doc_bytes < 1:
        raise ValueError(f"data.documents=concat needs data.min_doc_bytes >= 1, got {min_doc_bytes!r}")
    docs, current, size = [], [], 0
    for r, f in rel:
        current.append((r, f))
        size += f.stat().st_size
        if size >= min_doc_bytes:
            docs.append((current[0][0], [f for _, f in current]))
            current, size = [], 0
    if current:
        docs.append((current[0][0], [f for _, f in current]))
    return docs


def fingerprint(root: Path, files: list[Path], val_fraction: float, test_fraction: float) -> str:
    """Cheap identity of the sources: relative path, size and mtime of every file, plus the split rule."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}|{val_fraction}|{test_fraction}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass
class Split:
    """One split of a built corpus: bytes and document offsets, memory-mapped."""

    data: np.ndarray  # uint8 [n_bytes]
    offsets: np.ndarray  # int64 [n_docs + 1]
    paths: list[str]

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def document(self, i: int) -> np.ndarray:
        return self.data[self.offsets[i] : self.offsets[i + 1]]


class ByteCorpus:
    """A built corpus folder; ``ByteCorpus.build_or_load(...)`` is the usual entry point."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.folder} is not a built corpus (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        self._splits: dict[str, Split] = {}

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {SPLITS}")
        if name not in self._splits:
            n = self.meta["splits"][name]["bytes"]
            if n == 0:
                raise ValueError(
                    f"the {name!r} split of corpus {self.folder} is empty "
                    f"({self.meta['splits'][name]['docs']} documents); add more files to data.path "
                    "or change data.val_fraction / data.test_fraction"
                )
            data = np.memmap(self.folder / f"{name}.bin", dtype=np.uint8, mode="r", shape=(n,))
            offsets = np.load(self.folder / f"{name}.idx.npy")
            paths = json.loads((self.folder / f"{name}.paths.json").read_text())
            self._splits[name] = Split(data, offsets, paths)
        return self._splits[name]

    @classmethod
    def build_or_load(
        cls,
        path: str | None = None,
        pattern: str = "**/*",
        exclude: list[str] | None = None,
        cache_dir: str | Path | None = None,
        name: str = "corpus",
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        max_doc_bytes: int | None = None,
        documents: str = "file",
        min_doc_bytes: int | None = None,
    ) -> ByteCorpus:
        for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= frac < 1.0:
                raise ValueError(f"data.{key}={frac} must be in [0, 1)")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction} leaves no "
                "training documents; keep their sum below 1"
            )
        root, files = list_sources(path, pattern, exclude)
        docs = group_documents(root, files, documents, min_doc_bytes)
        fp = fingerprint(root, files, val_fraction, test_fraction)
        if max_doc_bytes:
            fp = hashlib.sha256(f"{fp}|max{max_doc_bytes}".encode()).hexdigest()
        if documents != "file":
            fp = hashlib.sha256(f"{fp}|{documents}|{min_doc_bytes}".encode()).hexdigest()
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        folder = cache / f"{name}-{fp[:12]}"
        if (folder / "meta.json").exists():
            return cls(folder)
        cache.mkdir(parents=True, exist_ok=True)
        remove_abandoned_builds(cache)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{os.getpid()}-", dir=cache))
        try:
            _write_corpus(tmp, root, docs, fp, val_fraction, test_fraction, max_doc_bytes, path, pattern)
            try:
                os.rename(tmp, folder)  # atomic: a reader sees a whole corpus or none
            except OSError:
                if not (folder / "meta.json").exists():  # not a concurrent builder: a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(folder)


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


def _write_corpus(out, root, docs, fp, val_fraction, test_fraction, max_doc_bytes, path, pattern):
    assign = {s: [] for s in SPLITS}
    for doc_id, fs in docs:
        assign[split_of(doc_id, val_fraction, test_fraction)].append((doc_id, fs))
    meta_splits = {}
    for s in SPLITS:
        offsets, paths = [0], []
        with open(out / f"{s}.bin", "wb") as fh:
            for rel, fs in assign[s]:
                blob = b"".join(f.read_bytes() for f in fs)
                if max_doc_bytes:
                    blob = blob[:max_doc_bytes]
                if not blob:
                    continue
                fh.write(blob)
                offsets.append(offsets[-1] + len(blob))
                paths.append(rel)
        np.save(out / f"{s}.idx.npy", np.asarray(offsets, dtype=np.int64))
        (out / f"{s}.paths.json").write_text(json.dumps(paths))
        lengths = np.diff(offsets) if len(offsets) > 1 else np.zeros(0, dtype=np.int64)
        meta_splits[s] = {
            "docs": len(paths),
            "bytes": int(offsets[-1]),
            "max_doc_bytes": int(lengths.max()) if len(lengths) else 0,
            "median_doc_bytes": int(np.median(lengths)) if len(lengths) else 0,
        }
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fp,
        "source": {"path": None if path is None else str(path), "root": str(root), "pattern": pattern},
        "split_rule": f"sha1(relative path) / 2^64 < {val_fraction} -> val, < {val_fraction + test_fraction} -> test",
        "splits": meta_splits,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
