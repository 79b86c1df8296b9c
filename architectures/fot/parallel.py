"""FoT's forward from an empty state with every window at once: the same numbers as reading the windows
one after another (``FocusedTransformer`` in streaming order), with a few large operations instead of
several per window and layer.

It is exact because nothing in a window depends on a later one: non-memory layers attend inside their
window, and a memory layer's window retrieves (by exact top-k, or all of them for the dense backend) from
the memory-form keys of earlier windows at that layer, detached, as the memory holds them. So each layer
can run over the whole sequence, windows as a batch, and the memory-layer retrieval is one masked score
matrix. The returned state (memories holding every complete window, caches of the partial last one) is
the one streaming would leave.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from kernels import chunk_attention, memory_attention


def usable(net, tokens: torch.Tensor) -> bool:
    """The fast path applies: exact or dense memory that holds the whole sequence, no activation
    checkpointing (the streaming path is its reference)."""
    cfg = net.config
    return (cfg.memory_backend in ("exact", "dense") and cfg.memory_capacity >= tokens.shape[1]
            and not cfg.checkpoint_layers)


def _windows(t: torch.Tensor, W: int) -> torch.Tensor:
    """[B, T, ...] -> [B * nw, W, ...], the last window zero-padded."""
    B, T = t.shape[:2]
    pad = -T % W
    if pad:
        t = torch.cat([t, t.new_zeros(B, pad, *t.shape[2:])], 1)
    return t.reshape(B * ((T + pad) // W), W, *t.shape[2:])


def _unwindows(t: torch.Tensor, B: int, T: int) -> torch.Tensor:
    return t.reshape(B, -1, *t.shape[2:])[:, :T]


def _shift(block, x: torch.Tensor, W: int):
    """The token shift with its history reset at every window; the last window's history for the state."""
    if block.shift is None:
        return x, None
    B, T, D = x.shape
    y, _ = block.shift(_windows(x, W), None)
    n = T - (math.ceil(T / W) - 1) * W  # tokens of the last window
    width = block.shift.width
    last = torch.cat([x.new_zeros(B, width - 1, D), x[:, T - n:]], 1)[:, -(width - 1):] if width > 1 else x[:, :0]
    return _unwindows(y, B, T), last


MEMORY_DTYPE = torch.float32  # what a KNNMemory stores (FoT's memories are float32 whatever the model's dtype)


def _every(t: torch.Tensor, nw: int, dtype) -> torch.Tensor:
    """[B, T, H, d] -> [B * nw, T, H, d]: the whole sequence's keys (detached, stored as memory stores them)
    for every window."""
    return t.detach().to(MEMORY_DTYPE).to(dtype).unsqueeze(1).expand(t.shape[0], nw, *t.shape[1:]).flatten(0, 1)


def _retrieve(attn, qr, k, v, W: int, settings):
    """Extra keys of every query: the top-k memory-form keys of earlier windows, detached."""
    B, T, H, _ = qr.shape
    km, vm = k.detach().to(MEMORY_DTYPE), v.detach().to(MEMORY_DTYPE)  # as the memory stores and searches them
    win = torch.arange(T, device=qr.device) // W
    earlier = win[None, :] < win[:, None]  # [T queries, T keys]
    scores = torch.einsum("bthd,bshd->bhts", qr.to(MEMORY_DTYPE), km).masked_fill(~earlier, float("-inf"))
    kk = min(settings.memory_k, T)
    top = scores.topk(kk, dim=-1)
    valid = torch.isfinite(top.values)  # [B, H, T, kk]
    idx = top.indices.clamp(max=T - 1)
    gather = lambda t: torch.gather(t.permute(0, 2, 1, 3).unsqueeze(2).expand(B, H, T, T, t.shape[-1]),  # noqa: E731
                                    3, idx.unsqueeze(-1).expand(*idx.shape, t.shape[-1]))
    mk, mv = gather(km), gather(vm)  # [B, H, T, kk, d]
    return (rearrange(mk, "b h t k d -> b t h k d").to(qr.dtype), rearrange(mv, "b h t k d -> b t h k d").to(qr.dtype),
            rearrange(valid, "b h t k -> b t h k"))


def forward(net, tokens: torch.Tensor):
    """(logits [B, T, V], state) of ``net`` from an empty state, every window at once."""
    cfg, W = net.config, net.config.window
    B, T = tokens.shape
    x = net.embed(tokens)
    kv_keep, shift_keep = {}, {}
    for li, block in enumerate(net.layers):
        h, shift_keep[li] = _shift(block, x, W)
        attn = block.attn
        q, k, v = attn.project(block.attn_norm(h))
        qr = _unwindows(attn.rotate(_windows(q, W), 0), B, T)  # in-window positions
        kr = _unwindows(attn.rotate(_windows(k, W), 0), B, T)
        scale = 1.0 if attn.qk_norm else None
        if li in cfg.memory_layers and cfg.memory_backend == "dense":  # every earlier window's keys
            nw = math.ceil(T / W)
            earlier = (torch.arange(T, device=x.device)[None, :] // W < torch.arange(nw, device=x.device)[:, None])
            o = memory_attention(_windows(qr, W), _windows(kr, W), _windows(v, W), _every(k, nw, qr.dtype),
                                 _every(v, nw, qr.dtype), earlier.repeat(B, 1), scale=scale)
            o = _unwindows(o, B, T)
        elif li in cfg.memory_layers:
            mk, mv, mask = _retrieve(attn, qr, k, v, W, cfg)
            o = memory_attention(_windows(qr, W), _windows(kr, W), _windows(v, W), _windows(mk, W), _windows(mv, W),
                                 _windows(mask, W), scale=scale)
            o = _unwindows(o, B, T)
        else:
            o, _ = chunk_attention(qr, kr, v, W, scale=scale)
        kv_keep[li] = (k, v)
        x = h + block.drop(attn.wo(rearrange(o, "b n h d -> b n (h d)")))
        x = x + block.ffn(block.ffn_norm(x))
    logits = net.head(net.norm(x))
    # the state streaming would leave: memories with every complete window, caches of the partial last one
    memories = net.new_memory(B, tokens.device)
    full = T - T % W
    for mi, li in enumerate(cfg.memory_layers):
        if full:
            k, v = kv_keep[li]
            memories[mi].add(rearrange(k[:, :full], "b n h d -> b h n d"), rearrange(v[:, :full], "b n h d -> b h n d"))
    if T % W:
        caches = [((kv_keep[li][0][:, full:], kv_keep[li][1][:, full:]), shift_keep[li])
                  for li in range(cfg.n_layers)]
    else:
        caches = [None] * cfg.n_layers
    return logits, {"pos": T, "kv": caches, "memory": memories, "start": None}


__all__ = ["forward", "usable"]
