from __future__ import annotations

import dataclasses
from dataclasses import dataclass

BLOCK_FAMILIES = ("llama", "megabyte")


def require(owner: str, cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"{owner}: {msg}")


@dataclass(frozen=True)
class TransformerConfig:
    """Llama-style decoder: RMSNorm pre-norm, RoPE (rotate-half), SwiGLU, causal SDPA.

    The defaults are the ``model=transformer`` preset (~10.6M parameters); every preset YAML lists
    only what differs from them.

    ``kv_window`` bounds attention to the last ``kv_window`` positions (the query included) and the
    KV cache to ``kv_window - 1`` entries. ``None`` means full causal attention with an unbounded
    cache. Setting it to the training length changes nothing in training and keeps streaming
    evaluation of long documents in bounded memory (a sliding-window Transformer).
    """

    vocab_size: int = 256
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 6
    n_kv_heads: int | None = None  # None: n_heads (no grouped-query attention)
    ffn_hidden: int | None = None  # None: 8/3 * d_model rounded up to ffn_multiple_of
    ffn_multiple_of: int = 32
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    dropout: float = 0.0
    kv_window: int | None = None
    init_std: float = 0.02
    # llama: RMSNorm + SwiGLU (no biases) | megabyte: LayerNorm + ReLU MLP of 4 d_model with biases, the
    # block family of the MEGABYTE paper, so a comparison can hold the block fixed (RoPE either way)
    block_family: str = "llama"
    checkpoint_layers: bool = False  # activation checkpointing per block (recompute in the backward)

    def __post_init__(self) -> None:
        need = lambda cond, msg: require(type(self).__name__, cond, msg)  # noqa: E731
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_multiple_of"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, f"{name}={value!r} must be a positive integer")
        need(self.vocab_size >= 2, f"vocab_size={self.vocab_size} must be at least 2")
        need(self.d_model % self.n_heads == 0, f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        need((self.d_model // self.n_heads) % 2 == 0,
             f"head dim d_model/n_heads={self.d_model // self.n_heads} must be even for RoPE")
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        need(self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0,
             f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        need(self.block_family in BLOCK_FAMILIES, f"block_family={self.block_family!r}; use one of {BLOCK_FAMILIES}")
        if self.ffn_hidden is None:
            m = self.ffn_multiple_of
            llama = m * ((int(8 * self.d_model / 3) + m - 1) // m)
            object.__setattr__(self, "ffn_hidden", llama if self.block_family == "llama" else 4 * self.d_model)
        need(self.ffn_hidden > 0, f"ffn_hidden={self.ffn_hidden} must be positive")
        need(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)")
        need(self.rope_base > 1.0, f"rope_base={self.rope_base} must be > 1")
        need(self.norm_eps > 0, f"norm_eps={self.norm_eps} must be > 0")
        need(self.init_std > 0, f"init_std={self.init_std} must be > 0 (and finite)")
        need(self.kv_window is None or (isinstance(self.kv_window, int) and self.kv_window >= 1),
             f"kv_window={self.kv_window!r} must be null (unbounded) or an integer >= 1")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def resized(self, width: float, extra_layers: int = 0) -> TransformerConfig:
        """This architecture ``width`` times as wide and ``extra_layers`` deeper, its own ratios kept: the
        head count and KV grouping, the FFN expansion (d_ff / d_model); the head size rounded to an even
        number (RoPE). ``experiments.tables.sizing`` searches these to match compute or parameters."""
        head = max(2, 2 * round(self.head_dim * width / 2))
        d = head * self.n_heads
        derived = dataclasses.replace(self, ffn_hidden=None).ffn_hidden == self.ffn_hidden
        ffn = None if derived else max(1, round(self.ffn_hidden * d / self.d_model))
        return dataclasses.replace(self, d_model=d, ffn_hidden=ffn, n_layers=max(1, self.n_layers + extra_layers))
