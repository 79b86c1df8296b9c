"""Train any architecture: ``python -m experiments.train model=<arch> data=<corpus> run_dir=<dir>``.

The work is ``experiments.training.train(cfg)``; this is its command line.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from experiments.config import register_schemas
from experiments.training import train

register_schemas()


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    with open_dict(cfg):
        cfg.run_dir = HydraConfig.get().runtime.output_dir
    train(cfg)


if __name__ == "__main__":
    main()
