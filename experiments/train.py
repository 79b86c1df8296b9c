"""Train any architecture: ``python -m experiments.train model=<arch> data=<corpus> run_dir=<dir>``.

The work is ``experiments.training.train(cfg)``; this is its command line (user errors in one line,
``--debug`` for the traceback).
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from experiments.cli import hydra_entry
from experiments.config import register_schemas
from experiments.training.run import train

register_schemas()


def task(cfg: DictConfig) -> None:
    with open_dict(cfg):
        cfg.run_dir = HydraConfig.get().runtime.output_dir
    train(cfg)


main = hydra_entry("train", task)

if __name__ == "__main__":
    main()
