"""The Llama-style baseline, the control of every comparison."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from architectures.common import CausalSelfAttention, RMSNorm, SwiGLU, run_layer
from architectures.contract import Architecture, build_config
from architectures.transformer.config import TransformerConfig

# {"pos": int, "kv": [(k, v) per layer], "start": per-row first position of the current document or None}
TransformerState = dict[str, Any]


class ReluMLP(nn.Module):
    """The MEGABYTE paper's MLP: fc2(ReLU(fc1 x)), with biases."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.fc2(torch.relu(self.fc1(x))))


def make_norm(cfg: TransformerConfig) -> nn.Module:
    if cfg.block_family == "llama":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, cfg.norm_eps)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = CausalSelfAttention(
            cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.rope_base, cfg.kv_window, cfg.dropout
        )
        self.ffn_norm = make_norm(cfg)
        mlp = SwiGLU if cfg.block_family == "llama" else ReluMLP
        self.ffn = mlp(cfg.d_model, cfg.ffn_hidden, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, pos, cache, start=None):
        h, cache = self.attn(self.attn_norm(x), pos, cache, start)
        x = x + self.drop(h)
        return x + self.ffn(self.ffn_norm(x)), cache


class Transformer(Architecture):
    """``forward(tokens[B, T], state=None) -> (logits[B, T, V], state)``; state is the KV cache."""

    def __init__(self, config: TransformerConfig | None = None, **kwargs: Any):
        super().__init__()
        self.config = cfg = build_config(TransformerConfig, config, kwargs)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                # GPT-2 / Llama practice: residual output projections shrink with depth.
                out_proj = name.endswith(("wo.weight", "w2.weight", "fc2.weight"))
                scale = 1 / math.sqrt(2 * self.config.n_layers) if out_proj else 1
                nn.init.normal_(p, mean=0.0, std=std * scale)
            elif name.endswith("weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)  # biases (block_family=megabyte)

    def forward(
        self, tokens: torch.Tensor, state: TransformerState | None = None
    ) -> tuple[torch.Tensor, TransformerState]:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        pos = 0 if state is None else int(state["pos"])
        caches = [None] * len(self.layers) if state is None else state["kv"]
        start = None if state is None else state.get("start")
        x = self.embed(tokens)
        new_caches = []
        for layer, cache in zip(self.layers, caches):
            x, cache = run_layer(self.config.checkpoint_layers, layer, x, pos, cache, start)
            new_caches.append(cache)
        logits = self.head(self.norm(x))
        return logits, {"pos": pos + tokens.shape[1], "kv": new_caches, "start": start}

    def reset_state(self, state: TransformerState | None, rows: torch.Tensor) -> TransformerState | None:
        """Rows that start a new document stop seeing the cached keys (RoPE is relative, so the new
        document then reads exactly as it would from position 0)."""
        if state is None or not bool(rows.any()):
            return state
        B = rows.shape[0]
        start = state.get("start")
        start = torch.zeros(B, dtype=torch.long) if start is None else start.clone()
        start[rows.cpu().bool()] = int(state["pos"])
        return {**state, "start": start}

    def flops_terms(self, context: int) -> dict[str, float]:
        """Forward FLOPs per token: ``dense`` = 2 x the matmul parameters (layers and LM head);
        ``attention`` = scores and values of causal attention, 2 * 2 * layers * d * span / 2."""
        cfg = self.config
        n = sum(p.numel() for p in self.layers.parameters() if p.dim() >= 2) + cfg.vocab_size * cfg.d_model
        span = context if cfg.kv_window is None else min(context, cfg.kv_window)
        return {"dense": 2.0 * n, "attention": 2 * 2 * cfg.n_layers * cfg.d_model * span / 2}

    def flops_per_token(self, context: int) -> float:
        """Training FLOPs per token: forward + backward = 3 x the forward terms."""
        return 3.0 * sum(self.flops_terms(context).values())
