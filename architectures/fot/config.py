from __future__ import annotations

from dataclasses import dataclass, field

POSITIONAL = ("none", "rope_pos0")


@dataclass
class FoTConfig:
    """Focused Transformer (arXiv 2307.03170): the baseline Transformer whose ``memory_layers`` also
    attend, in one softmax, to keys retrieved from a memory of earlier windows.

    Field names shared with ``TransformerConfig`` keep the parameter names, so a trained baseline
    checkpoint loads into FoT (``positional: none`` adds one temperature per head and memory layer;
    ``token_shift`` > 0 adds a depthwise convolution per non-memory layer: an option for the
    dictionary task, not in the paper, off by default).
    """

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    ffn_hidden: int | None = None
    ffn_multiple_of: int = 32
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    window: int = 256  # local context: attention never crosses a window boundary
    memory_layers: list[int] | None = None  # default: one layer at two thirds of the depth
    positional: str = "rope_pos0"  # rope_pos0 (LongLLaMA) | none (paper's small models)
    memory_backend: str = "exact"  # exact | faiss | dense
    memory_index: str = "flat"  # faiss: flat | ivf | hnsw
    memory_capacity: int = 65536  # entries (tokens) per row and memory layer; oldest evicted first
    memory_k: int = 32  # retrieved keys per query and head (kNN mode)
    memory_nlist: int = 64
    memory_nprobe: int = 8
    memory_hnsw_m: int = 32
    memory_ef_search: int = 64
    memory_threads: int = 1
    token_shift: int = 0
    temperature_init: float | None = None  # positional=none: initial per-head scale (None: sqrt(head_dim))
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from architectures.transformer.config import TransformerConfig

        base = TransformerConfig(**{k: getattr(self, k) for k in (
            "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "ffn_multiple_of", "rope_base",
            "norm_eps", "tie_embeddings", "dropout", "init_std")})
        self.n_kv_heads, self.ffn_hidden = base.n_kv_heads, base.ffn_hidden
        if self.memory_layers is None:
            self.memory_layers = [max(0, round(2 * self.n_layers / 3) - 1)]
        self.memory_layers = sorted(int(i) for i in self.memory_layers)

        def need(cond, msg):
            if not cond:
                raise ValueError(f"FoTConfig: {msg}")

        need(all(0 <= i < self.n_layers for i in self.memory_layers),
             f"memory_layers={self.memory_layers} must be layer indices in [0, {self.n_layers})")
        need(self.window >= 1, f"window={self.window} must be >= 1")
        need(self.positional in POSITIONAL, f"positional={self.positional!r}; use one of {POSITIONAL}")
        need(self.memory_backend in ("exact", "faiss", "dense"),
             f"memory_backend={self.memory_backend!r}; use exact, faiss or dense")
        need(self.memory_k >= 1 and self.memory_capacity >= 1, "memory_k and memory_capacity must be >= 1")
        need(self.token_shift >= 0, f"token_shift={self.token_shift} must be >= 0")
        need(self.n_kv_heads == self.n_heads, "FoT memory layers need n_kv_heads == n_heads (one memory per head)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads
