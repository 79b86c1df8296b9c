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

import hashlib
import json
import os
import re
import shutil
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.data import sources
from experiments.data.sources import Document

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
DOCUMENT_MODES = ("file", "directory", "concat")
_GLOB_CHARS = set("*?[")


CORPUS_KEYS = ("path", "pattern", "exclude", "cache_dir", "name", "val_fraction", "test_fraction", "max_doc_bytes",
               "documents", "min_doc_bytes", "source", "text_field", "doc_separator", "block_bytes", "split_bytes",
               "hf_name", "hf_config")


def corpus_options(data) -> dict:
    """The ``ByteCorpus.build_or_load`` arguments in a ``data`` config (missing keys: their defaults)."""
    out = {k: data[k] for k in CORPUS_KEYS if k in data}
    for k in ("exclude", "split_bytes"):
        if out.get(k) is not None:
            out[k] = list(out[k])
    return out


def default_cache_dir() -> Path:
    env = os.environ.get("LONGLAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "longlab"


def stdlib_root() -> Path:
    """The running Python's standard library source: real, long, code-like documents on any machine."""
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(rel_path: str, val_fraction: float, test_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha1(os.fsencode(rel_path)).digest()[:8], "big") / 2.0**64
    if h < val_fraction:
        return "val"
    if h < val_fraction + test_fraction:
        return "test"
    return "train"


def glob_regex(pattern: str) -> re.Pattern:
    """A glob pattern over relative paths as a regex: ``**/`` any number of folders, ``*`` and ``?``
    within one path component."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.find("]", i)
            out, i = (out + re.escape(pattern[i]), i + 1) if j < 0 else (out + pattern[i:j + 1], j + 1)
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def walk_files(root: Path, pattern: str, exclude: list[str]) -> list[Path]:
    """Files under ``root`` whose relative path matches ``pattern``, following symbolic links once:
    a folder reached again (a symlink loop, or two links to one folder) is not walked twice. Hidden
    entries and path components named in ``exclude`` are skipped."""
    rx, seen, out = glob_regex(pattern), set(), []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in exclude)
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.startswith(".") or name in exclude:
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rx.match(rel):
                out.append(Path(dirpath) / name)
    return out


def list_sources(path: str | None, pattern: str | None, exclude: list[str] | None = None) -> tuple[Path, list[Path]]:
    """Resolve ``data.path`` (None = the standard library; a directory; a file; or a glob) to files.

    ``pattern`` (None: ``**/*.py`` for the standard library, every file of a directory) selects files.
    Returns the root used for relative paths and the sorted list of regular files (empty ones too:
    the source skips and counts them)."""
    exclude = list(exclude or [])
    if path is None:
        root = stdlib_root()
        exclude += ["site-packages", "dist-packages", "__pycache__"]
        files = walk_files(root, pattern or "**/*.py", exclude)
    elif _GLOB_CHARS & set(str(path)):
        text = os.path.expanduser(str(path))
        cut = min(text.index(c) for c in _GLOB_CHARS if c in text)
        root = Path(text[:cut].rsplit("/", 1)[0] or "/")
        files = walk_files(root, text[len(str(root)):].lstrip("/"), exclude) if root.is_dir() else []
        if not files:
            raise FileNotFoundError(
                f"data.path={path!r} matched no files; check the glob (use '**' with a directory "
                "prefix for recursion, e.g. 'corpus/**/*.txt')"
            )
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
            files = walk_files(root, pattern or "**/*", exclude)
    keep = sorted(f for f in files if f.is_file())
    if not keep:
        raise ValueError(
            f"data.path={path!r} (pattern {pattern!r}) contains no files; point data.path at a directory with "
            "text files or change data.pattern"
        )
    return root, keep


def fingerprint(root: Path, files: list[Path], val_fraction: float, test_fraction: float) -> str:
    """Cheap identity of the sources: relative path, size and mtime of every file, plus the split rule."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}|{val_fraction}|{test_fraction}".encode())
    for f in files:
        st = f.stat()
        h.update(os.fsencode(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n"))
    return h.hexdigest()


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

    @staticmethod
    def intact(folder: Path) -> bool:
        """meta.json readable and every split's files present with the sizes it states (a build that
        was truncated, or a cache damaged later, is rebuilt rather than read)."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
            for s in SPLITS:
                info = meta["splits"][s]
                if (folder / f"{s}.bin").stat().st_size != info["bytes"]:
                    return False
                if len(np.load(folder / f"{s}.idx.npy")) != info["docs"] + 1:
                    return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True

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
        pattern: str | None = None,
        exclude: list[str] | None = None,
        cache_dir: str | Path | None = None,
        name: str = "corpus",
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        max_doc_bytes: int | None = None,
        documents: str = "file",
        min_doc_bytes: int | None = None,
        source: str = "auto",
        text_field: str = "text",
        doc_separator: str | None = None,
        block_bytes: int | None = None,
        split_bytes: list[int] | None = None,
        hf_name: str | None = None,
        hf_config: str | None = None,
    ) -> ByteCorpus:
        for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= frac < 1.0:
                raise ValueError(f"data.{key}={frac} must be in [0, 1)")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction} leaves no "
                "training documents; keep their sum below 1"
            )
        kind = sources.detect(None if hf_name else path) if source == "auto" else source
        if kind not in sources.SOURCES:
            raise ValueError(f"data.source={source!r} is unknown; use one of {sources.SOURCES}")
        if hf_name:
            kind = "hf"
        report = sources.Report()
        options = {"source": kind, "text_field": text_field, "doc_separator": doc_separator, "block_bytes": block_bytes,
                   "split_bytes": None if split_bytes is None else [int(b) for b in split_bytes],
                   "hf_name": hf_name, "hf_config": hf_config}
        if kind == "hf" and hf_name:
            root, files = Path("."), []
            docs = lambda: sources.hf_documents(None, hf_name, hf_config, text_field, report)  # noqa: E731
        else:
            root, files = list_sources(path, pattern, exclude)
            if kind == "files":
                named = path is not None and sources.named_splits(root)
                options["named_splits"] = named
                docs = lambda: sources.file_documents(root, files, report, named, doc_separator)  # noqa: E731
            elif kind == "file":
                if len(files) != 1:
                    raise ValueError(f"data.source=file reads one file, but data.path={path!r} has {len(files)}; "
                                     "point data.path at the file")
                docs = lambda: sources.single_file_documents(files[0], doc_separator, block_bytes,  # noqa: E731
                                                             split_bytes, val_fraction, test_fraction)
            elif kind == "hf":
                docs = lambda: sources.hf_documents(path, None, None, text_field, report)  # noqa: E731
            else:
                docs = lambda: sources.record_documents(Path(os.path.expanduser(str(path))), kind,  # noqa: E731
                                                        text_field, report)
        fp = fingerprint(root, files, val_fraction, test_fraction)
        if max_doc_bytes:
            fp = hashlib.sha256(f"{fp}|max{max_doc_bytes}".encode()).hexdigest()
        if documents != "file":
            fp = hashlib.sha256(f"{fp}|{documents}|{min_doc_bytes}".encode()).hexdigest()
        if kind != "files" or options.get("named_splits"):  # the source and its split rule
            fp = hashlib.sha256(f"{fp}|{json.dumps(options, sort_keys=True)}".encode()).hexdigest()
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        folder = cache / f"{name}-{fp[:12]}"
        if (folder / "meta.json").exists():
            if cls.intact(folder):
                return cls(folder)
            print(f"[longlab] the cached corpus {folder} is damaged (truncated or unreadable): rebuilding it")
            shutil.rmtree(folder, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        remove_abandoned_builds(cache)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{os.getpid()}-", dir=cache))
        try:
            all_docs = group_documents(list(docs()), documents, min_doc_bytes)
            _write_corpus(tmp, root, all_docs, fp, val_fraction, test_fraction, max_doc_bytes, path, pattern,
                          options, report)
            try:
                os.rename(tmp, folder)  # atomic: a reader sees a whole corpus or none
            except OSError:
                if not (folder / "meta.json").exists():  # not a concurrent builder: a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if report.skipped_binary or report.skipped_empty:
            print(f"[longlab] corpus {name}: skipped {report.skipped_binary} binary and {report.skipped_empty} empty "
                  f"documents (e.g. {report.examples})")
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


def _write_corpus(out, root, docs, fp, val_fraction, test_fraction, max_doc_bytes, path, pattern, options, report):
    assign = {s: [] for s in SPLITS}
    for d in docs:
        assign[d.split or split_of(d.id, val_fraction, test_fraction)].append(d)
    meta_splits = {}
    for s in SPLITS:
        offsets, paths = [0], []
        with open(out / f"{s}.bin", "wb") as fh:
            for d in assign[s]:
                blob = d.read()
                if max_doc_bytes:
                    blob = blob[:max_doc_bytes]
                if not blob:
                    continue
                fh.write(blob)
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
        "skipped": {"binary": report.skipped_binary, "empty": report.skipped_empty, "examples": report.examples},
        "splits": meta_splits,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
