"""Finding a corpus's source files: ``data.path`` (a directory, a file, a glob, or null for the running
Python's standard library) resolved to a sorted list of files, and a cheap fingerprint of them."""

from __future__ import annotations

import hashlib
import os
import re
import sysconfig
from pathlib import Path

FORMAT_VERSION = 1  # part of every fingerprint: bump it when what a corpus holds changes for the same files
_GLOB_CHARS = set("*?[")


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
