"""FoT's CrossBatch training objective (arXiv 2307.03170 section 3), chosen by ``task.crossbatch``.

Each batch row holds ``w`` previous windows and the current window of one document; the model's
memory layers attend, in one softmax, to the previous windows of ``d`` rows (its own first, then
d-1 negatives). ``d`` starts at ``d`` and switches once to ``d_after`` when ``switch_metric``
reaches ``switch_above`` (the paper: d=1 until 98% training accuracy, then larger).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from architectures.contract import LanguageModel


@dataclass(frozen=True)
class CrossBatchConfig:
    d: int = 1
    w: int = 1
    d_after: int | None = None
    switch_metric: str = "train/acc"
    switch_above: float = 0.98
    # score the previous windows too, as the official training code does (every window it computes is a
    # training example); false: only the current window is scored (the previous ones are memory only)
    score_previous: bool = True
    # the previous windows' keys and values enter memory without gradients (FoT only): fresh memory, no key
    # gradients, to separate stale memory from missing key gradients (fot_dictionary's controls)
    detach_previous: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CrossBatchConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"task.crossbatch has unknown keys {unknown}; its keys are {sorted(known)}")
        cfg = cls(**values)
        if cfg.d < 1 or cfg.w < 1 or (cfg.d_after is not None and cfg.d_after < 1):
            raise ValueError(f"task.crossbatch: d={cfg.d}, w={cfg.w} and d_after={cfg.d_after} must be >= 1")
        return cfg


class CrossBatch:
    """The objective's state (the current d) and its forward; the LightningModule delegates to it."""

    def __init__(self, net: LanguageModel, config: dict[str, Any]):
        if net.crossbatch_window is None:
            raise ValueError(
                f"task.crossbatch is set but {type(net).__name__} has no CrossBatch training "
                "(its crossbatch_window is None); use a model with memory layers (e.g. model=fot) "
                "or task.crossbatch=null"
            )
        self.net, self.cfg = net, CrossBatchConfig.from_dict(config)
        self.d = self.cfg.d

    def logits(self, inputs: torch.Tensor) -> tuple[torch.Tensor, slice]:
        """Logits of the scored windows (the current one; with ``score_previous`` every window) and the slice
        of the targets they score."""
        W, w = self.net.crossbatch_window, self.cfg.w
        if inputs.shape[1] != (w + 1) * W:
            raise ValueError(
                f"CrossBatch with w={w} previous windows of window={W} needs data.seq_len={(w + 1) * W}, "
                f"got {inputs.shape[1]}; set data.seq_len=(w+1)*window"
            )
        options = {"score_previous": True} if self.cfg.score_previous else {}
        if self.cfg.detach_previous:
            options["detach_previous"] = True
        logits = self.net.forward_crossbatch(inputs[:, : w * W], inputs[:, w * W :], self.d, **options)
        return logits, self.scored_slice(inputs.shape[1])

    def scored_slice(self, targets: int) -> slice:
        """The targets (of ``targets`` per row) that ``logits`` scores."""
        return slice(0, None) if self.cfg.score_previous else slice(targets - self.net.crossbatch_window, None)

    def maybe_switch(self, metrics: dict[str, float], batch_size: int) -> None:
        cfg = self.cfg
        if cfg.d_after is None or self.d == cfg.d_after:
            return
        value = metrics.get(cfg.switch_metric)
        if value is not None and value >= cfg.switch_above:
            self.d = min(cfg.d_after, batch_size)
