"""What context buys a run: ``python -m experiments.context_eval run_dir=<dir> 'contexts=[0,256,1024,4096]'``.

The work is ``experiments.evaluation.context.run(cfg)``; this is its command line.
"""

from __future__ import annotations

from experiments.cli import hydra_entry
from experiments.config import register_schemas
from experiments.evaluation.context import run

register_schemas()
main = hydra_entry("context_eval", run)

if __name__ == "__main__":
    main()
