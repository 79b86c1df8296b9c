"""Evaluate a training run: ``python -m experiments.eval run_dir=<dir> [eval.streaming=true]``.

The work is ``experiments.evaluation.evaluate(cfg)``; this is its command line.
"""

from __future__ import annotations

from experiments.cli import hydra_entry
from experiments.config import register_schemas
from experiments.evaluation.run import evaluate

register_schemas()
main = hydra_entry("eval", evaluate)

if __name__ == "__main__":
    main()
