"""Causal multi-head self-attention with an optional sliding window and a KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from architectures.common.rotary import RotaryEmbedding

KVCache = tuple[torch.Tensor, torch.Tensor]  # keys (after RoPE) and values, each [B, H_kv, S, d]


def causal_window_mask(
    q_len: int, k_len: int, window: int | None, device: torch.device
) -> torch.Tensor:
    """Boolean [q_len, k_len] mask (True = may attend) for queries that are the last ``q_len`` of
    ``k_len`` consecutive positions; with ``window`` a query sees at most ``window`` keys (itself
    included)."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= (q_pos - k_pos) < window
    return allowed


class CausalSelfAttention(nn.Module):
    """Llama-style attention: RoPE on Q/K (rotate-half), optional grouped KV heads, SDPA.

    ``window`` bounds both the attention span and the cache, so a bounded-cache stream and one long
    forward compute the same function.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        rope_base: float = 10000.0,
        window: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = dim // n_heads
        self.window = window
        self.dropout = dropout
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, base=rope_base, convention="rotate_half")

    def forward(
        self, x: torch.Tensor, pos: int = 0, cache: KVCache | None = None, start: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """``start`` [B] (optional): per row, the stream position of its current document's first token;
        keys before it are invisible (a row that began a new document mid-stream)."""
        T = x.shape[1]
        q = rearrange(self.wq(x), "b t (h d) -> b h t d", h=self.n_heads)
        k = rearrange(self.wk(x), "b t (h d) -> b h t d", h=self.n_kv_heads)
        v = rearrange(self.wv(x), "b t (h d) -> b h t d", h=self.n_kv_heads)
        q, k = self.rotary(q, offset=pos), self.rotary(k, offset=pos)
        if cache is not None and cache[0].shape[2] > 0:
            k = torch.cat((cache[0].to(k.dtype), k), dim=2)
            v = torch.cat((cache[1].to(v.dtype), v), dim=2)
        S = k.shape[2]
        keep = S if self.window is None else min(S, self.window - 1)  # the next query needs window-1 keys
        new_cache = (k[:, :, S - keep :], v[:, :, S - keep :])
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        p = self.dropout if self.training else 0.0
        hidden = start is not None and bool((start > pos + T - S).any())  # some cached keys are out of bounds
        if S == T and (self.window is None or T <= self.window) and not hidden:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            mask = causal_window_mask(T, S, self.window, x.device)
            if hidden:
                key_pos = torch.arange(pos + T - S, pos + T, device=x.device)
                mask = mask & (key_pos[None, :] >= start.to(x.device)[:, None])[:, None, None, :]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.wo(rearrange(o, "b h t d -> b t (h d)")), new_cache
