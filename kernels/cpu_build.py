"""C++ CPU kernels (``<op>/cpu_kernel.cpp``), compiled on first use with ``torch.utils.cpp_extension`` (g++ and
OpenMP, ``-O3 -march=native``, about half a minute per kernel, once per machine). A build is cached under a name
that includes the CPU's instruction-set flags and the source's hash, so a shared cache never runs code built for
another processor or an older source. Where a kernel cannot be built its op's PyTorch path runs, and the reason
is printed once; ``LONGLAB_CPU_KERNELS=0`` never builds or uses any."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from pathlib import Path

ENV_VAR = "LONGLAB_CPU_KERNELS"
STALE_LOCK_S = 600.0  # a build takes about 30 s: a lock this old was left by a process that died building


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "1") != "0"


def cpu_tag() -> str:
    """A short hash of this processor's instruction-set flags (``-march=native`` code is only valid on them)."""
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags += line
                break
    except OSError:
        flags += platform.processor()
    return hashlib.sha256(flags.encode()).hexdigest()[:10]


def build_root() -> Path:
    """Where compiled kernels are kept: ``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions``."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")


def clear_stale_lock(op: str, build: Path) -> None:
    """torch's build lock (``build/lock``) is removed only by the process that made it: one killed while building
    leaves it, and every later load waits on it forever, silently. Wait for a lock while it is younger than
    ``STALE_LOCK_S`` (another process is building: it says so once), then remove it, saying so."""
    lock, said = build / "lock", False
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age >= STALE_LOCK_S:
            print(f"[longlab] {op}: removing a build lock left {age / 60:.0f} min ago in {build} (a build takes "
                  "about 30 s: the process that took it is gone)", file=sys.stderr, flush=True)
            lock.unlink(missing_ok=True)
            return
        if not said:
            print(f"[longlab] {op}: waiting for another process's build in {build} (its lock is {age:.0f} s old; "
                  f"one older than {STALE_LOCK_S:.0f} s is removed)", file=sys.stderr, flush=True)
            said = True
        time.sleep(min(1.0, STALE_LOCK_S - age))


def load(op: str, prefix: str, source: Path):
    """The compiled module of ``source`` (named ``{prefix}_{cpu tag}_{source hash}``), or None, the reason printed
    once per call (callers cache the result), where it is switched off or cannot be built."""
    if not enabled():
        return None
    try:
        from torch.utils.cpp_extension import load as cpp_load

        venv_bin = str(Path(sys.executable).parent)  # pip's ninja lives beside the interpreter, maybe not on PATH
        if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join(x for x in (os.environ.get("PATH"), venv_bin) if x)

        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
        name = f"{prefix}_{cpu_tag()}_{digest}"
        build = build_root() / name
        build.mkdir(parents=True, exist_ok=True)
        clear_stale_lock(op, build)
        if not (build / f"{name}.so").exists():
            print(f"[longlab] {op}: building the C++ CPU kernel in {build} (once per machine, ~30 s)",
                  file=sys.stderr, flush=True)
        return cpp_load(name, [str(source)], extra_cflags=["-O3", "-march=native", "-fopenmp"],
                        extra_ldflags=["-fopenmp"], build_directory=str(build), verbose=False)
    except Exception as e:  # a missing compiler or headers: the PyTorch path is the same computation
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(f"[longlab] {op}: the C++ CPU kernel could not be built ({first}); the PyTorch path runs "
              f"instead ({ENV_VAR}=0 skips the attempt)", flush=True)
        return None


__all__ = ["ENV_VAR", "STALE_LOCK_S", "build_root", "clear_stale_lock", "cpu_tag", "enabled", "load"]
