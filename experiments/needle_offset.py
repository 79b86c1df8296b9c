"""Pass-key accuracy by the needle's offset in the model's window:
``python -m experiments.needle_offset "run_dirs=['<run>']" length=4096 'anchors=[0.25,0.5]' out=<file>.json``.

The work is ``experiments.evaluation.needle_offset.run(cfg)``; this is its command line.
"""

from __future__ import annotations

from experiments.cli import hydra_entry
from experiments.config import register_schemas
from experiments.evaluation.needle_offset import run

register_schemas()
main = hydra_entry("needle_offset", run)

if __name__ == "__main__":
    main()
