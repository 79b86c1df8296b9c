"""The main job: ``python -m experiments.compare [--archs ...] [--budget tokens:N|flops:N] [--set k=v]``.

The work is ``experiments.comparison.main(argv)``; this is its command line (user errors in one line).
"""

from experiments.cli import run_cli
from experiments.tables.compare import main, steps_for

__all__ = ["main", "steps_for"]

if __name__ == "__main__":
    run_cli(main)
