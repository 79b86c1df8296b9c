"""Focused Transformer: memory layers attend to local causal keys plus keys from a kNN memory.

Attention never crosses a window of ``window`` tokens (windows are aligned to stream positions):
non-memory layers see only the current window; memory layers also see extra keys — at inference the
top-k entries of a memory holding every earlier window of the row (written after the window's own
attention, so a window never retrieves itself), in training with CrossBatch the previous windows of
this row and of d-1 other rows, recomputed with the current weights.

State: {"pos": int, "kv": per-layer keys/values of the current partial window (unrotated),
"memory": a KNNMemory per memory layer}.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from architectures.common import RMSNorm, SwiGLU, run_layer
from architectures.common.memory_layer import attend, crossbatch_extra, crossbatch_rows, write_window
from architectures.common.rotary import RotaryEmbedding
from architectures.contract import Architecture, build_config
from architectures.fot import parallel
from architectures.fot.config import FoTConfig
from kernels import chunk_attention
from memory import KNNMemory, MemoryConfig


class WindowAttention(nn.Module):
    """Parameter names as in the baseline's attention (wq, wk, wv, wo)."""

    def __init__(self, cfg: FoTConfig, is_memory: bool):
        super().__init__()
        D, H = cfg.d_model, cfg.n_heads
        self.cfg, self.H, self.hd, self.is_memory = cfg, H, D // H, is_memory
        self.wq = nn.Linear(D, D, bias=False)
        self.wk = nn.Linear(D, D, bias=False)
        self.wv = nn.Linear(D, D, bias=False)
        self.wo = nn.Linear(D, D, bias=False)
        self.rotary = RotaryEmbedding(self.hd, cfg.rope_base, "rotate_half")
        self.no_pe = is_memory and cfg.positional == "none"  # memory layers without positions
        # normalised q/k with a learned per-head temperature (log-parametrised): the memory layers, or every
        # layer with qk_norm=all (the others keep RoPE, which preserves the norm)
        self.qk_norm = self.no_pe or (cfg.positional == "none" and cfg.qk_norm == "all")
        if self.qk_norm:
            init = cfg.temperature_init or math.sqrt(self.hd)
            self.temperature = nn.Parameter(torch.full((H,), math.log(init)))

    def project(self, x):
        """-> q, k (in memory form: unrotated, or normalised without PE), v; each [B, n, H, d]."""
        q, k, v = (rearrange(w(x), "b n (h d) -> b n h d", h=self.H) for w in (self.wq, self.wk, self.wv))
        if self.qk_norm:
            q = F.normalize(q, dim=-1) * self.temperature.exp()[:, None]
            k = F.normalize(k, dim=-1)
        return q, k, v

    def rotate(self, t, offset):
        """RoPE at in-window positions offset.. (memory keys stay unrotated: position 0)."""
        return t if self.no_pe else rearrange(self.rotary(rearrange(t, "b n h d -> b h n d"), offset),
                                              "b h n d -> b n h d")

    def forward(self, x, cache, m_state: dict | None, window_pos: int, return_weights: bool = False,
                cache_valid: torch.Tensor | None = None):
        """x [B, n, D] continuing the current window at position ``window_pos``; ``cache`` (k, v) of the
        window's earlier tokens (memory form); ``cache_valid`` [B, m] False where a cached token belongs
        to an earlier document of its row. ``m_state``: {"memory": KNNMemory} (inference) or
        {"k", "v", "mask"} (dense extra keys, CrossBatch). Returns out, new cache (memory form) and,
        with ``return_weights`` in a memory layer, the attention weights [B, H, n, M + m + n]."""
        B, n, _ = x.shape
        q, k, v = self.project(x)
        m = 0 if cache is None else cache[0].shape[1]
        k_all = k if not m else torch.cat([cache[0], k], 1)
        v_all = v if not m else torch.cat([cache[1], v], 1)
        qr, kr = self.rotate(q, window_pos), self.rotate(k_all, window_pos - m)
        scale = 1.0 if self.qk_norm else None
        weights = None
        if not self.is_memory or m_state is None:
            o, _ = chunk_attention(qr, kr[:, m:], v, self.cfg.window, scale=scale,
                                   cache=None if not m else (kr[:, :m], v_all[:, :m]),
                                   cache_valid=cache_valid if m else None)
        else:
            local_valid = None
            if m and cache_valid is not None:
                local_valid = torch.cat([cache_valid.to(x.device), cache_valid.new_ones(B, n).to(x.device)], 1)
            o, weights = attend(qr, kr, v_all, m, m_state, self.cfg, scale, return_weights, local_valid)
        return self.wo(rearrange(o, "b n h d -> b n (h d)")), (k_all, v_all), weights

class TokenShift(nn.Module):
    """Residual causal depthwise convolution (not in the paper; helps small models form n-grams)."""

    def __init__(self, dim, width):
        super().__init__()
        self.width = width
        self.conv = nn.Conv1d(dim, dim, width, groups=dim, bias=False)
        nn.init.zeros_(self.conv.weight)

    def forward(self, x, history):
        """x [B, n, D]; history: the previous width-1 inputs of this window (or None)."""
        B, n, D = x.shape
        h = x.new_zeros(B, self.width - 1, D) if history is None else history
        full = torch.cat([h, x], 1)
        y = self.conv(full.transpose(1, 2)).transpose(1, 2)
        return x + y, full[:, -(self.width - 1):] if self.width > 1 else full[:, :0]


class Block(nn.Module):
    def __init__(self, cfg: FoTConfig, is_memory: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = WindowAttention(cfg, is_memory)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg.d_model, cfg.ffn_hidden, cfg.dropout)
        self.shift = TokenShift(cfg.d_model, cfg.token_shift) if cfg.token_shift and not is_memory else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cache, m_state, window_pos, return_weights=False, cache_valid=None):
        """-> x, (kv cache, token-shift history), memory-attention weights (or None)."""
        kv_cache, sh = (None, None) if cache is None else cache
        if self.shift is not None:
            x, sh = self.shift(x, sh)
        h, kv, weights = self.attn(self.attn_norm(x), kv_cache, m_state, window_pos, return_weights, cache_valid)
        x = x + self.drop(h)
        return x + self.ffn(self.ffn_norm(x)), (kv, sh), weights


class FocusedTransformer(Architecture):
    # what FoT may add to a baseline Transformer checkpoint it is fine-tuned from
    added_parameters = ("temperature", "shift.")

    def __init__(self, config: FoTConfig | None = None, **kwargs: Any):
        super().__init__()
        self.config = cfg = build_config(FoTConfig, config, kwargs)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i in cfg.memory_layers) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        std = cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() >= 2 and "shift" not in name:
                scale = 1 / math.sqrt(2 * cfg.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 1
                nn.init.normal_(p, 0.0, std * scale)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def memory_config(self) -> MemoryConfig:
        return self.config.memory_config()

    def new_memory(self, batch: int, device) -> list[KNNMemory]:
        c = self.config
        return c.new_memories(len(c.memory_layers), batch, c.n_heads, c.head_dim, device)

    # ------------------------------------------------------------------ streaming forward
    def forward(self, tokens: torch.Tensor, state: dict | None = None):
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        cfg, W = self.config, self.config.window
        B, T = tokens.shape
        if state is None and parallel.usable(self, tokens):  # every window at once: the same numbers, faster
            return parallel.forward(self, tokens)
        if state is None:
            state = {"pos": 0, "kv": [None] * cfg.n_layers, "memory": self.new_memory(B, tokens.device)}
        pos, caches, memories = int(state["pos"]), list(state["kv"]), state["memory"]
        start = state.get("start")  # per row: where its current document began (after reset_state)
        outs, i = [], 0
        while i < T:
            n = min(T - i, W - pos % W)
            x = self.embed(tokens[:, i : i + n])
            window_start = pos - pos % W
            valid = None
            if start is not None and pos % W:  # cached tokens of this window that precede a row's document
                valid = torch.arange(window_start, pos)[None, :] >= start[:, None]
            mi = 0
            for li, layer in enumerate(self.layers):
                m_state = None
                if li in cfg.memory_layers:
                    m_state = {"memory": memories[mi]}
                    mi += 1
                # a memory layer's retrieval reads a memory that later windows change: never recomputed
                x, caches[li], _ = run_layer(cfg.checkpoint_layers and m_state is None, layer, x, caches[li], m_state,
                                             pos % W, cache_valid=valid)
            outs.append(self.head(self.norm(x)))
            pos, i = pos + n, i + n
            if pos % W == 0:  # the window is complete: write it to memory, clear the local caches
                self._remember(memories, [caches[li][0] for li in cfg.memory_layers], window_start, start)
                caches = [None] * cfg.n_layers
        return torch.cat(outs, 1), {"pos": pos, "kv": caches, "memory": memories, "start": start}

    def _remember(self, memories, kvs, window_start: int, start) -> None:
        """Write a completed window's keys and values ``kvs`` (one (k, v) per memory layer) to the memories; a
        row's tokens before its document ``start`` are never stored."""
        W = self.config.window
        keep = None if start is None else torch.arange(window_start, window_start + W)[None, :] >= start[:, None]
        for memory, (k, v) in zip(memories, kvs, strict=True):
            write_window(memory, k, v, keep)

    @torch.no_grad()
    def read(self, tokens: torch.Tensor, state: dict | None = None) -> dict:
        """The state ``forward(tokens, state)`` leaves, without its logits (the same numbers: each window takes the
        same operations). A complete window clears every cache and leaves only what the memory layers write, so
        a whole window runs only up to the last memory layer's keys and values: the layers above it, its
        retrieval and the head feed nothing but the logits. A partial window (every layer's cache is kept for
        the window's next tokens) takes ``forward``."""
        cfg, W = self.config, self.config.window
        if not cfg.memory_layers:
            return super().read(tokens, state)
        top = max(cfg.memory_layers)
        B, T = tokens.shape
        if state is None:
            state = {"pos": 0, "kv": [None] * cfg.n_layers, "memory": self.new_memory(B, tokens.device), "start": None}
        i = 0
        while i < T:
            pos = int(state["pos"])
            n = min(T - i, W - pos % W)
            if n < W:
                _, state = self.forward(tokens[:, i: i + n], state)
                i += n
                continue
            start, memories = state.get("start"), state["memory"]
            x, kv, mi = self.embed(tokens[:, i: i + W]), {}, 0
            for li, layer in enumerate(self.layers[: top + 1]):
                if li == top:  # only its keys and values: what the memory stores
                    _, k, v = layer.attn.project(layer.attn_norm(x))
                    kv[li] = (k, v)
                    break
                m_state = None
                if li in cfg.memory_layers:
                    m_state = {"memory": memories[mi]}
                    mi += 1
                x, (kv[li], _), _ = layer(x, None, m_state, 0)
            self._remember(memories, [kv[li] for li in cfg.memory_layers], pos, start)
            state = {"pos": pos + W, "kv": [None] * cfg.n_layers, "memory": memories, "start": start}
            i += W
        return state

    @property
    def crossbatch_window(self) -> int:
        return self.config.window

    def reset_state(self, state: dict | None, rows: torch.Tensor) -> dict | None:
        """Rows where a new document starts: their memory is erased, the current window's earlier
        tokens are hidden from them (and never written to their memory), and their token-shift history
        cleared. Windows stay aligned to the stream."""
        if state is None or not bool(rows.any()):
            return state
        rows = rows.bool().cpu()
        for mem in state["memory"]:
            mem.reset(rows)
        kv = []
        for cache in state["kv"]:
            if cache is not None and cache[1] is not None:
                cache = (cache[0], cache[1].masked_fill(rows.to(cache[1].device)[:, None, None], 0.0))
            kv.append(cache)
        start = state.get("start")
        start = torch.zeros(rows.shape[0], dtype=torch.long) if start is None else start.clone()
        start[rows] = int(state["pos"])
        return {**state, "kv": kv, "start": start}

    # ------------------------------------------------------------------ CrossBatch training
    def forward_crossbatch(self, prev: torch.Tensor, curr: torch.Tensor, d: int, return_distraction=False,
                           score_previous: bool = False, detach_previous: bool = False):
        """``prev`` [b, w*W]: the w previous windows of each row's document; ``curr`` [b, W].

        Memory layers of the current window attend to local keys plus the previous windows' keys and
        values of rows {i, i+1, ..., i+d-1} mod b (own document first: the positive, then d-1
        negatives), computed in this same pass so gradients reach them. Returns logits [b, W, V]
        (and the distraction ratio r_d per memory layer when asked); with ``score_previous`` the logits of
        the previous windows too (each read on its own, local attention only), [b, (w+1)W, V]: the official
        training code scores every window it computes. ``detach_previous``: the previous windows' keys and values
        reach the memory layers without gradients (memory written in the same step, as a memorizing
        Transformer's would be if it were fresh: separates stale memory from missing key gradients)."""
        cfg, W = self.config, self.config.window
        b = curr.shape[0]
        if prev.shape[1] % W or curr.shape[1] != W:
            raise ValueError(f"CrossBatch needs whole windows of {W} tokens: got prev {tuple(prev.shape)}, "
                             f"curr {tuple(curr.shape)}")
        if not 1 <= d <= b:
            raise ValueError(f"CrossBatch d={d} must be in [1, batch size {b}]")
        w = prev.shape[1] // W
        # previous windows: each on its own (local attention only), keeping memory-layer keys/values
        x = self.embed(rearrange(prev, "b (w n) -> (b w) n", n=W))
        mem_kv = []
        for li, layer in enumerate(self.layers):
            x, (kv, _), _ = run_layer(cfg.checkpoint_layers, layer, x, None, None, 0)
            if li in cfg.memory_layers:
                mem_kv.append(tuple(rearrange(t.detach() if detach_previous else t, "(b w) n h d -> b (w n) h d", w=w)
                                    for t in kv))
        prev_logits = self.head(self.norm(rearrange(x, "(b w) n e -> b (w n) e", w=w))) if score_previous else None
        # the current window with CrossBatch extra keys
        x = self.embed(curr)
        mi, stats = 0, []
        rows = crossbatch_rows(b, d, curr.device)
        for li, layer in enumerate(self.layers):
            m_state = None
            if li in cfg.memory_layers:
                m_state = crossbatch_extra(*mem_kv[mi], rows)
                mi += 1
            x, _, wts = run_layer(cfg.checkpoint_layers, layer, x, None, m_state, 0, return_weights=return_distraction)
            if wts is not None:  # [b, H, W, d*w*W + W]
                ctx = wts[..., : d * w * W].reshape(*wts.shape[:3], d, w * W).sum(-1)  # mass per context
                stats.append((ctx[..., 0] / ctx.sum(-1).clamp_min(1e-30)).mean())
        logits = self.head(self.norm(x))
        if prev_logits is not None:
            logits = torch.cat([prev_logits, logits], 1)
        return (logits, stats) if return_distraction else logits

    def flops_terms(self, context: int) -> dict[str, float]:
        """Forward FLOPs per token: dense matmuls, local attention inside the window, and memory layers'
        attention over their extra keys (k retrieved, or the whole memory in dense mode, not counted)."""
        cfg = self.config
        n = sum(p.numel() for p in self.layers.parameters() if p.dim() >= 2) + cfg.vocab_size * cfg.d_model
        span = min(context, cfg.window)
        attn = 2 * 2 * cfg.n_layers * cfg.d_model * span / 2
        memory = 2 * 2 * len(cfg.memory_layers) * cfg.d_model * cfg.memory_k
        return {"dense": 2.0 * n, "attention": attn, "memory": memory}

    def flops_per_token(self, context: int) -> float:
        return 3.0 * sum(self.flops_terms(context).values())
