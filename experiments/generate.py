"""Sample from a trained run: ``python -m experiments.generate run_dir=<dir> prompt="def " max_new_bytes=200``.

The work is ``experiments.generation.sample(cfg)``; this is its command line.
"""

from __future__ import annotations

from experiments.cli import hydra_entry
from experiments.config import register_schemas
from experiments.evaluation.generation import sample

register_schemas()
__all__ = ["main", "sample"]
main = hydra_entry("generate", sample)

if __name__ == "__main__":
    main()
