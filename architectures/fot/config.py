from __future__ import annotations

from dataclasses import dataclass

from architectures.common.memory_layer import MemorySettings
from architectures.transformer.config import TransformerConfig, require

POSITIONAL = ("none", "rope_pos0")


@dataclass(frozen=True)
class FoTConfig(TransformerConfig, MemorySettings):
    """Focused Transformer (arXiv 2307.03170): the baseline Transformer whose ``memory_layers`` also
    attend, in one softmax, to keys retrieved from a memory of earlier windows.

    It extends ``TransformerConfig``, so a trained baseline checkpoint loads into FoT: the parameter
    names are the baseline's (``positional: none`` adds one temperature per head and memory layer;
    ``token_shift`` > 0 adds a depthwise convolution per non-memory layer: an option for the
    dictionary task, not in the paper, off by default). Attention never crosses a window of
    ``window`` tokens, so the baseline's ``kv_window`` must stay null. The memory's fields
    (``memory_backend``, ``memory_k``, ``memory_capacity``, ...) are ``MemorySettings``'.
    """

    window: int = 256  # local context: attention never crosses a window boundary
    memory_layers: tuple[int, ...] | None = None  # default: one layer at two thirds of the depth
    positional: str = "rope_pos0"  # rope_pos0 (LongLLaMA) | none (paper's small models)
    token_shift: int = 0
    temperature_init: float | None = None  # positional=none: initial per-head scale (None: sqrt(head_dim))
    # positional=none: where queries and keys are normalised with a learned per-head temperature: memory (the
    # memory layers only, as longlab had it) | all (every layer, the paper's small models; other layers keep RoPE)
    qk_norm: str = "memory"

    def __post_init__(self) -> None:
        super().__post_init__()
        need = lambda cond, msg: require(type(self).__name__, cond, msg)  # noqa: E731
        layers = self.memory_layers
        if layers is None:
            layers = [max(0, round(2 * self.n_layers / 3) - 1)]
        object.__setattr__(self, "memory_layers", tuple(sorted(int(i) for i in layers)))
        need(all(0 <= i < self.n_layers for i in self.memory_layers),
             f"memory_layers={list(self.memory_layers)} must be layer indices in [0, {self.n_layers})")
        need(self.kv_window is None, f"kv_window={self.kv_window}: FoT attends inside aligned windows; "
             "set model.net.window instead")
        need(self.window >= 1, f"window={self.window} must be >= 1")
        need(self.positional in POSITIONAL, f"positional={self.positional!r}; use one of {POSITIONAL}")
        need(self.qk_norm in ("memory", "all"), f"qk_norm={self.qk_norm!r}; use memory or all")
        self.check_memory_settings()
        need(self.token_shift >= 0, f"token_shift={self.token_shift} must be >= 0")
        need(self.n_kv_heads == self.n_heads, "FoT memory layers need n_kv_heads == n_heads (one memory per head)")
