"""Evaluate a training run: ``python -m experiments.eval run_dir=<dir> [eval.streaming=true]``.

The work is ``experiments.evaluation.evaluate(cfg)``; this is its command line.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from experiments.config import register_schemas
from experiments.evaluation import evaluate

register_schemas()


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
