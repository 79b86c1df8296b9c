"""``data=packages`` with the same text on every machine: the standard library and a pinned list of pure-Python
wheels (``data.distributions``, each ``name==version``), downloaded once into ``<cache>/wheels`` with pip and
read from the wheel files, never from what happens to be installed.

Without ``data.distributions`` the source reads the running Python's site-packages, which differ between
machines and virtual environments (another package installed, another release): a table trained on it
cannot be extended elsewhere (``experiments.tables.corpora`` stops it). A wheel tagged ``none-any`` holds
the same files on every platform, and PyPI never replaces a released file, so a pinned list is the same
text everywhere (the corpus's ``content`` hash proves it, per run)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from experiments.data.files import package_files, package_roots
from experiments.data.sources import Document, Report, join_sources, package_documents

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")


def normalize(name: str) -> str:
    """A distribution's name as wheel files spell it (PEP 427: runs of ``-_.`` become ``_``, lower case)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def parse_pins(distributions) -> list[tuple[str, str]]:
    """``["Django==5.1.4", ...]`` -> ``[("django", "5.1.4"), ...]``; anything but an exact pin is refused (a
    range would read another release next month)."""
    out = []
    for spec in distributions:
        m = PIN.match(str(spec).strip())
        if not m:
            raise ValueError(f"data.distributions: {spec!r} is not an exact pin; write name==version (a range "
                             "would give another corpus when a new release comes out)")
        out.append((normalize(m.group(1)), m.group(2)))
    if len({n for n, _ in out}) != len(out):
        raise ValueError(f"data.distributions names a distribution twice: {list(distributions)}")
    return out


def cached_wheel(folder: Path, name: str, version: str) -> Path | None:
    for f in sorted(folder.glob("*.whl")) if folder.is_dir() else []:
        parts = f.name[:-4].split("-")
        if len(parts) >= 5 and normalize(parts[0]) == name and parts[1] == version:
            return f
    return None


def pure(wheel: Path) -> bool:
    """Tagged ``<python>-none-any``: the same files on every platform."""
    parts = wheel.name[:-4].split("-")
    return parts[-2] == "none" and parts[-1] == "any"


def fetch(distributions, cache: Path) -> list[Path]:
    """The pinned wheels, from ``<cache>/wheels`` or downloaded there (``pip download --no-deps``, pure-Python
    wheels only); one line naming the distribution and the fix when one cannot be had."""
    folder = cache / "wheels"
    wheels = []
    for name, version in parse_pins(distributions):
        wheel = cached_wheel(folder, name, version)
        if wheel is None:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                                       "--only-binary=:all:", "--platform", "any", "--implementation", "py",
                                       "--abi", "none", "--dest", tmp, f"{name}=={version}"],
                                      capture_output=True, text=True)
                got = sorted(Path(tmp).glob("*.whl"))
                if done.returncode or len(got) != 1:
                    last = (done.stderr.strip().splitlines() or ["no wheel"])[-1][:200]
                    raise RuntimeError(f"data.distributions: pip could not download {name}=={version} ({last}); "
                                       f"with no network, put its wheel in {folder}")
                wheel = folder / got[0].name
                shutil.move(str(got[0]), wheel)  # whole or not at all: the download went to a temporary folder
        if not pure(wheel):
            raise ValueError(f"data.distributions: {wheel.name} is built for one platform (not none-any), so its "
                             f"files may differ elsewhere; pin a distribution that ships a pure-Python wheel")
        wheels.append(wheel)
    return wheels


def wheel_documents(wheels: list[Path], report: Report) -> Iterator[Document]:
    """One document per package folder of the wheels (their ``*.py`` files joined in name order), with the ids
    an installed copy would have (``site-packages/django/db/models``), in id order across wheels."""
    by_dir: dict[str, list[tuple[Path, str]]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for member in z.namelist():
                top = member.split("/", 1)[0]
                if member.endswith(".py") and not top.endswith((".dist-info", ".data")):
                    folder = member.rsplit("/", 1)[0] if "/" in member else "."
                    by_dir.setdefault(folder, []).append((wheel, member))
    for folder, members in sorted(by_dir.items()):
        members.sort(key=lambda m: m[1])

        def read(members=members) -> bytes:
            opened: dict[Path, zipfile.ZipFile] = {}
            try:
                blobs = []
                for wheel, member in members:
                    if wheel not in opened:
                        opened[wheel] = zipfile.ZipFile(wheel)
                    blobs.append(opened[wheel].read(member))
                return join_sources(blobs)
            finally:
                for z in opened.values():
                    z.close()

        yield Document("site-packages" if folder == "." else f"site-packages/{folder}", None, read)


def packages_source(distributions, cache: Path, report: Report):
    """``(root, files, documents)`` of ``data=packages``: files name the sources for the corpus fingerprint
    (with pinned wheels only the standard library's: the pins are in the options, and a cached corpus needs no
    download); documents are built on demand."""
    if distributions is None:  # what is installed here
        by_root = package_files(report.unreadable)
        files = sorted(f for fs in by_root.values() for f in fs)
        return Path("/"), files, lambda: package_documents(by_root, package_roots(), report)
    parse_pins(distributions)  # refused before anything is built
    stdlib = package_files(report.unreadable, only="stdlib")

    def documents() -> Iterator[Document]:
        wheels = fetch(distributions, cache)
        yield from package_documents(stdlib, package_roots(), report)
        yield from wheel_documents(wheels, report)

    return Path("/"), sorted(stdlib["stdlib"]), documents


__all__ = ["fetch", "packages_source", "parse_pins", "wheel_documents"]
