"""The evaluations a table runs on its cells, by kind: ``EVALUATIONS[kind](cell, spec, out) -> dict``
(the dict is written to ``<cell>/<out>``, a path relative to the cell; ``spec`` is the table's
``tables.spec.EvalSpec``). A new kind is one function and one entry here."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from experiments.config import compose


def _entry_overrides(cell: Path, spec, out: str) -> list[str]:
    return [f"run_dir='{cell}'", f"out='{out}'", *spec.overrides]


def window(cell: Path, spec, out: str) -> dict:
    from experiments.evaluation.run import evaluate

    return evaluate(compose("eval", _entry_overrides(cell, spec, out)))


def stream(cell: Path, spec, out: str) -> dict:
    from experiments.evaluation.run import evaluate

    return evaluate(compose("eval", [*_entry_overrides(cell, spec, out), "eval.streaming=true"]))


def fot(cell: Path, spec, out: str) -> dict:
    from experiments.evaluation.fot import run

    return run(compose("fot_eval", _entry_overrides(cell, spec, out)))


def context(cell: Path, spec, out: str) -> dict:
    from experiments.evaluation.context import run

    return run(compose("context_eval", _entry_overrides(cell, spec, out)))


def longeval(cell: Path, spec, out: str) -> dict:
    from experiments.evaluation.long_context import run

    return run(compose("longeval", [f"run_dir='{cell}'", f"out='{out}'", *spec.overrides]))


@torch.no_grad()
def generation(cell: Path, spec, out: str) -> dict:
    """Bytes per second of sampling ``spec.bytes`` bytes after a fixed prompt, batch 1."""
    from experiments.evaluation.generation import generate
    from experiments.training.runs import load_run

    n_bytes = int(spec.bytes or 2048)
    _, module = load_run(cell)
    prompt = torch.tensor([list(b"def main():\n    ")])
    t0, c0 = time.perf_counter(), time.process_time()
    generate(module.net, prompt, n_bytes, temperature=1.0, generator=torch.Generator().manual_seed(0))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"bytes": n_bytes, "bytes_per_s": n_bytes / wall, "bytes_per_cpu_s": n_bytes / cpu}


EVALUATIONS: dict[str, Callable[[Path, object, str], dict]] = {
    "window": window,
    "stream": stream,
    "fot": fot,
    "generation": generation,
    "longeval": longeval,
    "context": context,
}
