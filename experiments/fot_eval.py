"""FoT evaluations of a run: dictionary accuracy vs tokens in memory, and r_d.

    python -m experiments.fot_eval run_dir=<dir> 'sizes=[1200,12000,120000]' 'ks=[32]' 'backends=[exact,dense]'

The work is ``experiments.fot_evaluation.run(cfg)``; this is its command line.
"""

from __future__ import annotations

from experiments.cli import hydra_entry
from experiments.config import register_schemas
from experiments.evaluation.fot import dictionary_accuracy, distraction_ratio, run

register_schemas()
__all__ = ["dictionary_accuracy", "distraction_ratio", "main", "run"]
main = hydra_entry("fot_eval", run)

if __name__ == "__main__":
    main()
