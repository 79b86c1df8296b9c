"""Per-layer activation checkpointing, the switch every architecture shares (``checkpoint_layers``)."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def run_layer(checkpointed: bool, layer, *args, **kwargs):
    """``layer(*args, **kwargs)``, under activation checkpointing when asked and autograd is on: the
    layer's activations are recomputed in the backward instead of stored (memory for compute;
    the RNG state is replayed, so dropout matches)."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False, **kwargs)
    return layer(*args, **kwargs)
