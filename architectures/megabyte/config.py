from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from architectures.common.memory_layer import MemorySettings

PATCH_ENCODERS = ("concat", "conv")


@dataclass(frozen=True)
class MegabyteConfig(MemorySettings):
    """MEGABYTE (arXiv 2305.07185), equations 1-6: a global transformer over patches of P bytes (width
    P * d_global) and a local transformer inside each patch (width d_local).

    Switches (each one key): ``local_model`` / ``global_model`` (the paper's "w/o local" and "w/o
    global" ablations), ``cross_patch_attention`` r (local layers also attend to the previous patch's
    last r positions, rotary relative positions; 0 = off), ``patch_encoder`` concat | conv (causal
    convolutions of widths 3, 5, 7 over byte embeddings before patching), ``patch_size``.

    The defaults are the ``model=megabyte`` preset (compute-matched to ``model=transformer``).

    kNN memory in the global model (FoT's memory attention, not in the MEGABYTE paper):
    ``global_window`` W > 0 keeps global attention inside aligned windows of W patches and makes the
    learned byte positions window-relative (so streams are unbounded); ``memory_layers`` lists global
    layers that also attend, in one softmax, to keys retrieved from a memory of the row's earlier
    windows (``MemorySettings``); with ``task.crossbatch`` they train on CrossBatch, a window of W * P
    bytes being FoT's window.
    """

    vocab_size: int = 256
    patch_size: int = 8
    d_global: int = 96
    d_local: int = 256
    global_layers: int = 8
    global_heads: int = 12
    local_layers: int = 5
    local_heads: int = 4
    max_len: int = 8192  # learned byte positions E_pos cover stream positions < max_len
    ffn_mult: int = 4
    dropout: float = 0.0  # inside the transformer blocks (attention weights, residual branches)
    embed_dropout: float = 0.0  # on the global and local inputs (the paper: none on embeddings)
    init_std: float = 0.02
    norm_eps: float = 1e-5
    local_positions: bool = True
    global_final_norm: bool = False  # LayerNorm on the global output before w_GL
    local_model: bool = True
    global_model: bool = True
    cross_patch_attention: int = 0
    patch_encoder: str = "concat"
    rope_base: float = 10000.0
    checkpoint_layers: bool = False  # activation checkpointing per block of both models
    global_window: int = 0  # patches per global attention window (0: full causal attention, the paper)
    memory_layers: tuple[int, ...] = ()  # global layers with FoT memory attention (needs global_window)

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"MegabyteConfig: {msg}")

        for name in ("vocab_size", "patch_size", "d_global", "d_local", "global_heads", "local_heads", "max_len",
                     "ffn_mult"):
            v = getattr(self, name)
            need(isinstance(v, int) and v > 0, f"{name}={v!r} must be a positive integer")
        need(self.global_layers >= 0 and self.local_layers >= 0, "layer counts must be >= 0")
        need(self.local_model or self.global_model, "local_model and global_model cannot both be false")
        need(self.global_width % self.global_heads == 0,
             f"global width patch_size*d_global={self.global_width} must be divisible by "
             f"global_heads={self.global_heads}")
        need(self.d_local % self.local_heads == 0,
             f"d_local={self.d_local} must be divisible by local_heads={self.local_heads}")
        need(0 <= self.cross_patch_attention <= self.patch_size,
             f"cross_patch_attention={self.cross_patch_attention} must be in [0, patch_size={self.patch_size}]")
        if self.cross_patch_attention:
            need(self.local_model, "cross_patch_attention needs local_model=true")
            need((self.d_local // self.local_heads) % 2 == 0, "the local head dim must be even for rotary positions")
        need(self.patch_encoder in PATCH_ENCODERS, f"patch_encoder={self.patch_encoder!r}; use one of {PATCH_ENCODERS}")
        need(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)")
        need(0.0 <= self.embed_dropout < 1.0, f"embed_dropout={self.embed_dropout} must be in [0, 1)")
        need(self.init_std > 0, f"init_std={self.init_std} must be > 0")
        need(self.global_window >= 0, f"global_window={self.global_window} must be >= 0 (0: no windows)")
        object.__setattr__(self, "memory_layers", tuple(sorted(int(i) for i in self.memory_layers or ())))
        need(all(0 <= i < self.global_layers for i in self.memory_layers),
             f"memory_layers={list(self.memory_layers)} must be global layer indices in [0, {self.global_layers})")
        if self.global_window:
            need(self.global_model, "global_window needs global_model=true")
            need(self.max_len >= self.global_window * self.patch_size,
                 f"global_window={self.global_window} patches of {self.patch_size} bytes need max_len >= "
                 f"{self.global_window * self.patch_size} (window-relative positions)")
        self.check_memory_settings()
        if self.memory_layers:
            need(self.global_window > 0, f"memory_layers={list(self.memory_layers)} needs global_window > 0: "
                 "memory holds the earlier windows of the global model")

    @property
    def global_width(self) -> int:
        return self.patch_size * self.d_global

    def resized(self, width: float, extra_layers: int = 0) -> MegabyteConfig:
        """This architecture ``width`` times as wide and ``extra_layers`` deeper in its global model, its own
        ratios kept (patch size, d_local / d_global, heads, FFN multiplier); the global width stays
        divisible by its heads and the local head size even. ``experiments.tables.sizing`` searches these."""
        g = self.global_heads // math.gcd(self.global_heads, self.patch_size)
        lo = 2 * self.local_heads
        return dataclasses.replace(
            self, d_global=max(g, g * round(self.d_global * width / g)),
            d_local=max(lo, lo * round(self.d_local * width / lo)),
            global_layers=max(1, self.global_layers + extra_layers) if self.global_model else self.global_layers)
