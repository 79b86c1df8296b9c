"""Sample from a trained run: ``python -m experiments.generate run_dir=<dir> prompt="def " max_new_bytes=200``.

The work is ``experiments.generation.sample(cfg)``; this is its command line.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from experiments.config import register_schemas
from experiments.generation import sample

register_schemas()
__all__ = ["sample"]


@hydra.main(version_base="1.3", config_path="../configs", config_name="generate")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
