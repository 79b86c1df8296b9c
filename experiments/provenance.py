"""Where a number came from besides its code and config: the git commit of the code (and whether it was
modified) and the machine that computed it (bf16 numerics differ between processors)."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from experiments.config import CONFIGS


def git_commit() -> dict[str, Any]:
    """The commit of the code and whether tracked code differs from it (``results/`` is data, not code)."""
    repo = CONFIGS.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=repo, capture_output=True, text=True, check=True)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}


def machine_info() -> dict[str, Any]:
    """What the numbers of a run depend on besides code and config: the processor (bf16 kernels differ
    between CPUs with AMX, with AVX-512 BF16 and with neither, so a cell retrained elsewhere differs in the
    last digits), the core count, the GPU if any, and torch's version."""
    import platform

    import torch

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and ":" in line:
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                if flags and cpu:
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cpus": os.cpu_count(), "bf16": [f for f in ("amx_bf16", "avx512_bf16") if f in flags],
            "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One short line for a table's header: ``AMD EPYC (2 cores, avx512_bf16), torch 2.13.0+cpu``."""
    extras = [f"{info.get('cpus')} cores", *(info.get("bf16") or ["no bf16 ISA"])]
    gpu = f", {info['gpu']}" if info.get("gpu") else ""
    return f"{info.get('cpu', 'unknown')} ({', '.join(extras)}){gpu}, torch {info.get('torch', '?')}"


__all__ = ["describe_machine", "git_commit", "machine_info"]
