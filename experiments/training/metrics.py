"""torchmetrics for byte-level language modelling.

They read the same two sums — total negative log-likelihood in nats and the number of scored targets
(or, for bits per byte, of the text bytes they stand for) — so they agree exactly and reduce correctly
across DDP ranks (sums, not means of means). For a token model, loss and perplexity are per token.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class _NLLSum(Metric):
    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, nll: torch.Tensor, mask: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> None:
        """``nll``: per-target negative log-likelihood in nats; ``mask``: True where the target counts;
        ``weight``: what each target counts for in the denominator (the text bytes of a token; None: 1)."""
        nll = nll.detach().to(torch.float64)
        weight = None if weight is None else weight.to(nll.device)
        if mask is not None:
            nll = nll[mask]
            weight = None if weight is None else weight[mask]
        self.nll_sum += nll.sum()
        self.count += nll.numel() if weight is None else int(weight.sum())

    def _mean(self) -> torch.Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.nll_sum / self.count


class MeanNLL(_NLLSum):
    """Cross-entropy per byte, in nats."""

    def compute(self) -> torch.Tensor:
        return self._mean()


class BitsPerByte(_NLLSum):
    """Sum of NLL over the scored targets / (their text bytes * ln 2): one scale for byte and token models
    (fed each target token's byte count as ``weight``; bytes: 1 each)."""

    def compute(self) -> torch.Tensor:
        return self._mean() / math.log(2)


class Perplexity(_NLLSum):
    """exp(mean NLL) per byte."""

    def compute(self) -> torch.Tensor:
        return torch.exp(self._mean())


class Accuracy(_NLLSum):
    """Top-1 accuracy over the scored positions (fed the 0/1 hits instead of NLL)."""

    higher_is_better = True

    def compute(self) -> torch.Tensor:
        return self._mean()
