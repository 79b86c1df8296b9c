"""Score a run on the long-context tasks: ``python -m experiments.longeval run_dir=<run> task=passkey``.

The work is ``experiments.long_context.run(cfg)``; this is its command line.
"""

from __future__ import annotations

from experiments.cli import hydra_entry
from experiments.config import register_schemas
from experiments.evaluation.long_context import run

register_schemas()
main = hydra_entry("longeval", run)

if __name__ == "__main__":
    main()
