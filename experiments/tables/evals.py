"""The evaluations a table runs on its cells, by kind: ``EVALUATIONS[kind](cell, spec, out) -> dict``
(the dict is written to ``<cell>/<out>``, a path relative to the cell; ``spec`` is the table's
``tables.spec.EvalSpec``). A new kind is one function and one entry in ``EVALUATIONS``, and in ``ENTRY`` the
config of its entry point, if it has one (``check_overrides`` composes those before a table trains)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from experiments.config import compose

# kind -> (its entry point's config, overrides it always adds); the generation kind has no config; a table
# replaces its cells' stale results itself (longeval's per-task files: overwrite=true)
ENTRY = {"window": ("eval", []), "stream": ("eval", ["eval.streaming=true"]), "fot": ("fot_eval", []),
         "context": ("context_eval", []), "longeval": ("longeval", ["overwrite=true"])}


def entry_config(cell: Path, spec, out: str):
    """The composed config of ``spec``'s entry point on ``cell``, as ``python -m experiments.<entry>`` would."""
    name, always = ENTRY[spec.kind]
    return compose(name, [f"run_dir='{cell}'", f"out='{out}'", *spec.overrides, *always])


def check_overrides(table, scale: str) -> None:
    """Compose every evaluation of every row of ``table`` at ``scale`` before anything trains, so that an
    override that cannot apply stops the run at once, in one line, not after hours of training."""
    seen = set()
    for row in table.rows_at(scale):
        for ev in table.evals_for(row, scale):
            if ev.kind not in ENTRY or (ev.kind, ev.overrides) in seen:
                continue
            seen.add((ev.kind, ev.overrides))
            try:
                entry_config(Path("cell"), ev, f"{ev.name}.json")
            except Exception as err:  # Hydra's override and config errors, each its own class
                raise ValueError(f"table {table.name}, row {row.name}, evaluation {ev.name} at scale {scale}: its "
                                 f"overrides {list(ev.overrides)} do not compose: {str(err).splitlines()[0]}") from err


def bits_per_byte(cell: Path, spec, out: str) -> dict:
    """The window and stream kinds (``experiments.eval``; ENTRY turns streaming on for stream)."""
    from experiments.evaluation.run import evaluate

    return evaluate(entry_config(cell, spec, out))


def fot(cell: Path, spec, out: str) -> dict:
    from experiments.evaluation.fot import run

    return run(entry_config(cell, spec, out))


def context(cell: Path, spec, out: str) -> dict:
    from experiments.evaluation.context import run

    return run(entry_config(cell, spec, out))


def longeval(cell: Path, spec, out: str) -> dict:
    from experiments.evaluation.long_context import run

    return run(entry_config(cell, spec, out))


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
    "window": bits_per_byte,
    "stream": bits_per_byte,
    "fot": fot,
    "generation": generation,
    "longeval": longeval,
    "context": context,
}
