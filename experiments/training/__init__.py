"""Training any architecture: ``train(cfg)`` (the run), the LightningModule and its objective, the
optimiser and schedule, throughput and divergence bookkeeping, checkpoints, faults, parallelism, loggers."""

from experiments.training.run import build_module, train

__all__ = ["build_module", "train"]
