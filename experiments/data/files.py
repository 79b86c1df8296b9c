"""Finding a corpus's source files: ``data.path`` (a directory, a file, a glob, or null for the running
Python's standard library) resolved to a sorted list of files, and a cheap fingerprint of them."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import re
import sysconfig
from pathlib import Path

FORMAT_VERSION = 1  # part of every fingerprint: bump it when what a corpus holds changes for the same files
_GLOB_CHARS = set("*?[")
RECORD_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
                   ".parquet": "parquet"}


def stdlib_root() -> Path:
    """The running Python's standard library source: real, long, code-like documents on any machine."""
    return Path(sysconfig.get_paths()["stdlib"])


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


def walk_files(root: Path, pattern: str, exclude: list[str], unreadable: list[str] | None = None) -> list[Path]:
    """Files under ``root`` whose relative path matches ``pattern``, following symbolic links once:
    a folder reached again (a symlink loop, or two links to one folder) is not walked twice. Hidden
    entries and path components named in ``exclude`` are skipped. Folders that cannot be listed are
    appended to ``unreadable`` (never dropped silently)."""
    rx, seen, out = glob_regex(pattern), set(), []
    failed = unreadable if unreadable is not None else []

    def onerror(e: OSError) -> None:
        failed.append(f"{e.filename} ({e.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
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


def list_sources(path: str | None, pattern: str | None, exclude: list[str] | None = None,
                 skip_unreadable: bool = False, skipped: list[str] | None = None) -> tuple[Path, list[Path]]:
    """Resolve ``data.path`` (None = the standard library; a directory; a file; or a glob) to files.

    ``pattern`` (None: ``**/*.py`` for the standard library, every file of a directory) selects files.
    Returns the root used for relative paths and the sorted list of regular files (empty ones too:
    the source skips and counts them). A folder or file that cannot be read (permissions, a broken
    link) is an error naming it, or, with ``skip_unreadable``, left out and appended to ``skipped``."""
    exclude, unreadable = list(exclude or []), []
    if path is not None and not str(path).strip():
        raise ValueError("data.path='' is empty; point data.path at a directory, file or glob, or leave it null "
                         "(data.path=null) for the Python standard library")
    if path is None:
        root = stdlib_root()
        exclude += ["site-packages", "dist-packages", "__pycache__"]
        files = walk_files(root, pattern or "**/*.py", exclude, unreadable)
    elif _GLOB_CHARS & set(str(path)):
        text = os.path.expanduser(str(path))
        cut = min(text.index(c) for c in _GLOB_CHARS if c in text)
        root = Path(text[:cut].rsplit("/", 1)[0] or "/")
        files = walk_files(root, text[len(str(root)):].lstrip("/"), exclude, unreadable) if root.is_dir() else []
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
            files = walk_files(root, pattern or "**/*", exclude, unreadable)
    keep = sorted(f for f in files if f.is_file() and os.access(f, os.R_OK))
    unreadable += [f"{f} ({'not readable' if f.is_file() else 'a broken link or not a regular file'})"
                   for f in sorted(set(files) - set(keep))]
    if unreadable and not skip_unreadable:
        raise OSError(f"data.path={path!r}: {len(unreadable)} entries cannot be read, e.g. {unreadable[:3]}; fix "
                      "them, or leave them out with data.skip_unreadable=true (counted in the corpus summary)")
    if skipped is not None:
        skipped += unreadable
    if not keep:
        raise ValueError(
            f"data.path={path!r} (pattern {pattern!r}) contains no files; point data.path at a directory with "
            "text files or change data.pattern"
        )
    return root, keep


def package_roots() -> dict[str, Path]:
    """The running Python's standard library and its site-packages (where the installed packages live)."""
    import sysconfig

    return {"stdlib": Path(sysconfig.get_paths()["stdlib"]), "site-packages": Path(sysconfig.get_paths()["purelib"])}


def package_files(unreadable: list[str] | None = None, only: str | None = None) -> dict[str, list[Path]]:
    """Every ``*.py`` file of the standard library (without its site-packages) and of site-packages (``only``:
    of one of them, ``stdlib`` or ``site-packages``)."""
    out = {}
    for label, root in package_roots().items():
        if only is not None and label != only:
            continue
        exclude = ["__pycache__"] + (["site-packages", "dist-packages"] if label == "stdlib" else [])
        out[label] = sorted(walk_files(root, "**/*.py", exclude, unreadable))
    return out


def fingerprint(root: Path, files: list[Path], val_fraction: float, test_fraction: float) -> str:
    """Cheap identity of the sources: relative path, size and mtime of every file, plus the split rule."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}|{val_fraction}|{test_fraction}".encode())
    for f in files:
        st = f.stat()
        h.update(os.fsencode(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n"))
    return h.hexdigest()


COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma", ".zst": "zstandard", ".zstd": "zstandard"}


def strip_compression(name: str) -> str:
    for suffix in COMPRESSIONS:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def record_kind(f: Path) -> str | None:
    """jsonl | csv | parquet for a record file (compressed or not), else None."""
    return RECORD_SUFFIXES.get(Path(strip_compression(f.name)).suffix.lower())


def read_bytes(f: Path) -> bytes:
    """A file's bytes, decompressed when its name says it is compressed (.gz, .bz2, .xz, .zst): a compressed
    text file is its text, never its compressed bytes."""
    suffix = next((s for s in COMPRESSIONS if f.name.lower().endswith(s)), None)
    if suffix is None:
        return f.read_bytes()
    module = COMPRESSIONS[suffix]
    if module == "zstandard":
        zstd = optional_module("zstandard", f"the zstd-compressed file {f.name}")
        with open(f, "rb") as fh:
            return zstd.ZstdDecompressor().stream_reader(fh).read()
    lib = {"gzip": gzip, "bz2": bz2, "lzma": lzma}[module]
    try:
        return lib.decompress(f.read_bytes())
    except (OSError, EOFError, ValueError, lzma.LZMAError) as e:
        raise ValueError(f"{f} is named as {module}-compressed but does not decompress ({e}); rename or repair "
                         "it") from None


def open_text(f: Path):
    return io.TextIOWrapper(io.BytesIO(read_bytes(f)), encoding="utf-8", errors="surrogateescape")


def optional_module(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs the {module.split('.')[0]!r} package: pip install -e '.[data]' "
                          "(installs datasets and pyarrow)") from None
