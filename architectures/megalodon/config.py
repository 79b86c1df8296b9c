from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from architectures.common.memory_layer import MemorySettings

EMA_MODES = ("complex", "real", "none")
NORM_MODES = ("timestep", "layer")
RESIDUAL_MODES = ("two_hop", "standard")
ATTENTION_NORMS = ("normalized", "softmax_scaled")


@dataclass(frozen=True)
class MegalodonConfig(MemorySettings):
    """Megalodon (arXiv 2404.08801), field names as in the official ``ModelConf``. The defaults are
the ``model=megalodon`` preset (~11M parameters); preset YAMLs list only what differs.

    Ablation switches (each one key): ``ema`` complex | real (MEGA's damped EMA, phase 0) | none;
    ``norm`` timestep | layer (the norm before CEMA and the final norm); ``residual`` two_hop (the FFN
    adds the block input X, official) | standard (adds its own input); ``attention_norm`` normalized
    (per-head RMS-normalised shared Z, no 1/sqrt(d), official) | softmax_scaled (un-normalised Q/K,
    1/sqrt(d) softmax).

    kNN memory (FoT's memory attention on this backbone, not in the paper): ``memory_layers`` lists the
    layers whose chunk attention also attends, in one softmax, to keys retrieved from a memory of the
    row's earlier chunks (memory_k, memory_capacity, memory_backend, ...: ``MemorySettings``); with
    ``task.crossbatch`` those layers train on CrossBatch, one chunk being FoT's window.
    """

    vocab_size: int = 256
    model_dim: int = 384
    num_layers: int = 6
    num_heads: int = 1
    z_dim: int = 128
    value_dim: int = 768
    ffn_hidden_dim: int = 1024
    chunk_size: int = 128
    norm_num_groups: int = 32
    cema_ndim: int = 16
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    swiglu: bool = False
    share_emb: bool = False
    scale_emb: bool = False
    rescale_nffn: bool = False
    init_mode: str = "he"
    dropout: float = 0.0
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0  # on the attention weights after the softmax (official), or DropKey
    attention_dropout_mode: str = "post_softmax"  # post_softmax | dropkey (keys dropped before the softmax)
    ema: str = "complex"
    norm: str = "timestep"
    residual: str = "two_hop"
    attention_norm: str = "normalized"
    # official long-context evaluation: every `tsn_refresh_every` chunks once `tsn_window_start`
    # chunks are done, replace TimestepNorm statistics by those of the last `tsn_window_chunks` chunks
    tsn_window_chunks: int = 0  # 0 = off (unbounded statistics); the official evaluation uses 6
    tsn_window_start: int = 8
    tsn_refresh_every: int = 2
    kernel_backend: str | None = None  # auto | reference | torch | triton (None: env or auto)
    checkpoint_layers: bool = False  # activation checkpointing per layer (the official layerwise_ckpt)
    memory_layers: tuple[int, ...] = ()  # layers with FoT memory attention (none: the official model)

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"MegalodonConfig: {msg}")

        for name in ("vocab_size", "model_dim", "num_layers", "num_heads", "z_dim", "value_dim",
                     "ffn_hidden_dim", "chunk_size", "norm_num_groups", "cema_ndim"):
            v = getattr(self, name)
            need(isinstance(v, int) and v > 0, f"{name}={v!r} must be a positive integer")
        need(self.z_dim % self.num_heads == 0, f"z_dim={self.z_dim} must be divisible by num_heads={self.num_heads}")
        need(self.value_dim % self.num_heads == 0,
             f"value_dim={self.value_dim} must be divisible by num_heads={self.num_heads}")
        need((self.z_dim // self.num_heads) % 2 == 0,
             f"z head dim z_dim/num_heads={self.z_dim // self.num_heads} must be even for RoPE")
        need(self.model_dim % self.norm_num_groups == 0,
             f"norm_num_groups={self.norm_num_groups} must divide model_dim={self.model_dim}")
        need(self.ema in EMA_MODES, f"ema={self.ema!r}; use one of {EMA_MODES}")
        need(self.norm in NORM_MODES, f"norm={self.norm!r}; use one of {NORM_MODES}")
        need(self.residual in RESIDUAL_MODES, f"residual={self.residual!r}; use one of {RESIDUAL_MODES}")
        need(self.attention_norm in ATTENTION_NORMS,
             f"attention_norm={self.attention_norm!r}; use one of {ATTENTION_NORMS}")
        need(self.init_mode in ("he", "bert", "gaussian", "xavier"), f"init_mode={self.init_mode!r} is unknown")
        for name in ("dropout", "hidden_dropout"):
            need(0.0 <= getattr(self, name) < 1.0, f"{name}={getattr(self, name)} must be in [0, 1)")
        need(0.0 <= self.attention_dropout < 1.0, f"attention_dropout={self.attention_dropout} must be in [0, 1)")
        need(self.attention_dropout_mode in ("post_softmax", "dropkey"),
             f"attention_dropout_mode={self.attention_dropout_mode!r}; use post_softmax (official) or dropkey")
        need(self.norm_eps > 0, f"norm_eps={self.norm_eps} must be > 0")
        need(self.tsn_window_chunks >= 0, f"tsn_window_chunks={self.tsn_window_chunks} must be >= 0")
        object.__setattr__(self, "memory_layers", tuple(sorted(int(i) for i in self.memory_layers or ())))
        need(all(0 <= i < self.num_layers for i in self.memory_layers),
             f"memory_layers={list(self.memory_layers)} must be layer indices in [0, {self.num_layers})")
        self.check_memory_settings()
        if self.memory_layers:
            need(self.attention_dropout == 0.0, f"attention_dropout={self.attention_dropout}: memory layers attend "
                 "without attention dropout; set attention_dropout=0 or memory_layers=[]")
            need(self.tsn_window_chunks == 0, "memory_layers with the TimestepNorm statistics window "
                 "(tsn_window_chunks > 0) is not supported")
        if self.tsn_window_chunks:
            need(self.norm == "timestep", "tsn_window_chunks needs norm=timestep")
            need(self.tsn_refresh_every >= 1 and self.tsn_window_start >= self.tsn_window_chunks,
                 "need tsn_refresh_every >= 1 and tsn_window_start >= tsn_window_chunks")

    @property
    def z_head_dim(self) -> int:
        return self.z_dim // self.num_heads

    @property
    def v_head_dim(self) -> int:
        return self.value_dim // self.num_heads

    def resized(self, width: float, extra_layers: int = 0) -> MegalodonConfig:
        """This architecture ``width`` times as wide and ``extra_layers`` deeper, its own ratios kept (z, value
        and FFN widths per model width, heads, chunk size, CEMA dimension, norm groups); each width rounded
        to what it must divide into. ``experiments.tables.sizing`` searches these to match compute."""
        def scale(v: int, multiple: int) -> int:
            return max(multiple, multiple * round(v * width / multiple))

        return dataclasses.replace(
            self, model_dim=scale(self.model_dim, self.norm_num_groups), z_dim=scale(self.z_dim, 2 * self.num_heads),
            value_dim=scale(self.value_dim, self.num_heads), ffn_hidden_dim=scale(self.ffn_hidden_dim, 1),
            num_layers=max(1, self.num_layers + extra_layers))
