"""Megalodon's building blocks, parameter names as in the official state dict.

Every norm stores its scale zero-initialised and applies ``weight + 1`` (so weight decay on all
parameters pulls scales towards 1, as in the paper's recipe).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from architectures.common.memory_layer import attend, write_window
from architectures.common.rotary import apply_rotary
from kernels import cema, cema_step, chunk_attention, timestep_norm
from kernels.cema import cema_step_coefficients


def init_linear_(weight: torch.Tensor, mode: str, dim: int | None = None) -> None:
    """The official init modes: he = kaiming_normal(a=sqrt 5); gaussian = truncated normal 1/sqrt(dim)."""
    if mode == "he":
        nn.init.kaiming_normal_(weight, a=math.sqrt(5.0))
    elif mode == "bert":
        nn.init.normal_(weight, 0.0, 0.02)
    elif mode == "gaussian":
        std = 1.0 if dim is None else 1.0 / math.sqrt(dim)
        nn.init.trunc_normal_(weight, 0.0, std, -3 * std, 3 * std)
    elif mode == "xavier":
        nn.init.xavier_uniform_(weight)


def linear(d_in: int, d_out: int, bias: bool, mode: str) -> nn.Linear:
    layer = nn.Linear(d_in, d_out, bias=bias)
    init_linear_(layer.weight, mode)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim)) if affine else None

    def forward(self, x):
        dt = torch.promote_types(x.dtype, torch.float32)
        xc = x.to(dt)
        y = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * (self.weight.to(dt) + 1.0)
        return y.to(x.dtype)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x, state=None):
        return F.layer_norm(x, (x.shape[-1],), self.weight + 1.0, self.bias, self.eps), None


class TimestepNorm(nn.Module):
    """Causal cumulative group norm (kernels.timestep_norm) with the official buffers."""

    def __init__(self, dim: int, groups: int, eps: float, backend: str | None = None):
        super().__init__()
        self.groups, self.eps, self.backend = groups, eps, backend
        self.register_buffer("prior_count", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("prior_mean", torch.zeros(groups))
        self.register_buffer("prior_logv", torch.zeros(groups))
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def initial_state(self, batch: int, dtype: torch.dtype):
        dt = torch.promote_types(dtype, torch.float32)
        return (self.prior_count.expand(batch).clone(), self.prior_mean.to(dt).expand(batch, -1).clone(),
                self.prior_logv.to(dt).exp().expand(batch, -1).clone())

    def forward(self, x, state=None):
        if state is None:
            state = self.initial_state(x.shape[0], x.dtype)
        return timestep_norm(x, self.weight, self.bias, self.groups, self.eps, state=state, backend=self.backend)


class CEMA(nn.Module):
    """Multi-dimensional damped EMA; complex (Megalodon) or real (MEGA, no theta, real gamma)."""

    step_recurrence = True  # decode single tokens by the O(1) step (False: the op, for comparisons)

    def __init__(self, dim: int, ndim: int, complex_: bool = True, backend: str | None = None):
        super().__init__()
        self.dim, self.ndim, self.backend = dim, ndim, backend
        self.alpha = nn.Parameter(torch.empty(dim, ndim, 1))
        self.delta = nn.Parameter(torch.empty(dim, ndim, 1))
        self.theta = nn.Parameter(torch.empty(dim, 1, 1)) if complex_ else None
        self.gamma = nn.Parameter(torch.empty(dim, ndim, 2 if complex_ else 1))
        self.omega = nn.Parameter(torch.empty(dim, 1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.alpha, 0.0, 0.2)
        nn.init.normal_(self.delta, 0.0, 0.2)
        if self.theta is not None:
            # theta = logit of a random permutation of D^(-i/D), i = 1..D
            freqs = torch.exp(-torch.arange(1, self.dim + 1, dtype=torch.float64) * math.log(self.dim) / self.dim)
            freqs = freqs[torch.randperm(self.dim)]
            self.theta.copy_(torch.log(freqs / (1 - freqs)).view(self.dim, 1, 1))
        nn.init.normal_(self.gamma, 0.0, 1.0)
        if self.gamma.shape[-1] == 2:
            self.gamma[:, :, 1] = 0.0
        nn.init.trunc_normal_(self.omega, 0.0, 0.25, -1.0, 1.0)

    def _apply(self, fn, recurse=True):
        """Casts to half precision never reach the EMA parameters: they stay float32 (as in
        megalodon-jax), since |q|^L over long streams amplifies any rounding of alpha / delta / theta.
        Device moves and casts to float64 apply."""
        keep = {n: p.detach().clone() for n, p in self.named_parameters(recurse=False)
                if p.dtype in (torch.float32, torch.float64)}
        super()._apply(fn, recurse)
        for n, p in self.named_parameters(recurse=False):
            if n in keep and p.dtype in (torch.bfloat16, torch.float16):
                p.data = keep[n].to(p.device)
        return self

    def forward(self, x, h0=None):
        """x [B, L, D] -> (y [B, L, D], h_L [B, D, N]). One token without autograd (decoding) takes the
        O(1) recurrence with coefficients computed once per set of weights; otherwise the op (FFT)."""
        if x.shape[1] == 1 and not torch.is_grad_enabled() and self.step_recurrence:
            y, h = cema_step(x[:, 0], h0, coefficients=self.step_coefficients())
            return y[:, None], h
        y, h = cema(x.transpose(1, 2), self.alpha, self.delta, self.theta, self.gamma, self.omega, h0=h0,
                    return_state=True, backend=self.backend)
        return y.transpose(1, 2), h

    def step_coefficients(self):
        """(p, q, gamma_c, omega) for decoding, cached until a parameter changes (its version counter)."""
        params = [t for t in (self.alpha, self.delta, self.theta, self.gamma, self.omega) if t is not None]
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in params)
        if getattr(self, "_step_key", None) != key:
            self._step_coef = cema_step_coefficients(self.alpha, self.delta, self.theta, self.gamma, self.omega)
            self._step_key = key
        return self._step_coef


class ChunkRotary(nn.Module):
    """RoPE in the adjacent-pair convention with positions restarting at 0 in every chunk."""

    def __init__(self, dim: int, base: float):
        super().__init__()
        self.register_buffer("freqs", 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))

    def forward(self, x, start: int, chunk: int):
        """x [B, L, H, d] at stream positions start..start+L-1."""
        pos = (torch.arange(x.shape[1], device=x.device) + start) % chunk
        ang = pos.to(self.freqs.dtype)[:, None] * self.freqs
        return apply_rotary(x, ang[:, None, :], "adjacent")


class MovingAverageGatedAttention(nn.Module):
    def __init__(self, cfg, is_memory: bool = False):
        super().__init__()
        self.is_memory = is_memory  # FoT memory attention in place of plain chunk attention
        D, Z, E, H = cfg.model_dim, cfg.z_dim, cfg.value_dim, cfg.num_heads
        self.cfg = cfg
        if cfg.norm == "timestep":
            self.timenorm = TimestepNorm(D, cfg.norm_num_groups, cfg.norm_eps, cfg.kernel_backend)
        else:
            self.layernorm = LayerNorm(D, cfg.norm_eps)
        if cfg.ema != "none":
            self.cema = CEMA(D, cfg.cema_ndim, complex_=cfg.ema == "complex", backend=cfg.kernel_backend)
        self.rmsnorm = RMSNorm(D, cfg.norm_eps)
        self.znorm = RMSNorm(cfg.z_head_dim, cfg.norm_eps, affine=False)
        self.wv = linear(D, E, True, cfg.init_mode)
        self.wz = linear(D, Z, True, cfg.init_mode)
        self.wr = linear(D, E, True, cfg.init_mode)
        self.wh1 = linear(D, D, True, cfg.init_mode)
        self.wh2 = linear(E, D, False, cfg.init_mode)
        self.gamma = nn.Parameter(torch.zeros(2, Z))
        self.beta = nn.Parameter(torch.zeros(2, Z))
        self.heads = H
        self.hidden_dropout = nn.Dropout(cfg.hidden_dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def norm(self, x, state):
        return (self.timenorm if self.cfg.norm == "timestep" else self.layernorm)(x, state)

    def forward(self, x, rope: ChunkRotary, pos: int, state: dict | None, start: torch.Tensor | None = None,
                memory=None):
        """``start`` [B] (optional): per row, the stream position where its current document began;
        cached keys before it are hidden (see ``Megalodon.reset_state``). ``memory`` (memory layers only):
        None streams with the kNN memory of the state (created when absent); "local" attends inside the
        chunk only and returns this call's keys and values (position 0) as state["keys"]; a dict
        {"k", "v"} gives dense extra keys (CrossBatch)."""
        cfg, state = self.cfg, state or {}
        xn, norm_state = self.norm(x, state.get("norm"))
        if cfg.ema != "none":
            xe, h = self.cema(xn, state.get("ema"))
        else:
            xe, h = xn, None
        mx = self.hidden_dropout(self.rmsnorm(xe))
        z = rearrange(self.wz(mx), "b l (h d) -> b l h d", h=self.heads)
        gamma = rearrange(self.gamma + 1.0, "two (h d) -> two h d", h=self.heads)
        beta = rearrange(self.beta, "two (h d) -> two h d", h=self.heads)
        if cfg.attention_norm == "normalized":
            z = self.znorm(z)
            gamma, scale = gamma / math.sqrt(cfg.z_head_dim), 1.0
        else:
            scale = 1.0 / math.sqrt(cfg.z_head_dim)
        q, k = z * gamma[0] + beta[0], z * gamma[1] + beta[1]
        v = rearrange(F.silu(self.wv(xn)), "b l (h d) -> b l h d", h=self.heads)  # from the norm output
        r = F.silu(self.wr(mx))
        new_state = {"norm": norm_state, "ema": h}
        if self.is_memory and memory != "local":
            o, new_state["kv"], new_state["memory"] = self._memory_attention(q, k, v, rope, pos, state, start, memory,
                                                                            scale)
        else:
            if self.is_memory:  # "local": the keys and values a CrossBatch step hands to other rows
                new_state["keys"] = (k, v)
            q, k = rope(q, pos, cfg.chunk_size), rope(k, pos, cfg.chunk_size)
            cache, cache_valid = state.get("kv"), None
            if start is not None and cache is not None and cache[0].shape[1]:
                S = cache[0].shape[1]
                cache_valid = torch.arange(pos - S, pos, device=x.device)[None, :] >= start.to(x.device)[:, None]
            o, new_state["kv"] = chunk_attention(q, k, v, cfg.chunk_size, scale=scale, cache=cache,
                                                 cache_valid=cache_valid, backend=cfg.kernel_backend,
                                                 dropout_p=cfg.attention_dropout if self.training else 0.0,
                                                 dropout_mode=cfg.attention_dropout_mode)
        o = self.hidden_dropout(rearrange(o, "b l h d -> b l (h d)") * r)
        out = self.dropout(self.wh1(mx) + self.wh2(o)) + x
        return out, new_state

    def _memory_attention(self, q, k, v, rope, pos, state, start, extra, scale):
        """Chunk by chunk: each query attends, in one softmax, to its chunk's earlier keys and to extra
        keys (retrieved from the memory of the row's earlier chunks, or ``extra``); a completed chunk's
        keys (unrotated) and values are then written to the memory. q, k unrotated [B, L, H, Z/H].
        Returns the output, the partial chunk's (unrotated) keys and values, and the memory."""
        cfg, C = self.cfg, self.cfg.chunk_size
        B, L, H = q.shape[:3]
        memory = state.get("memory")
        if memory is None and extra is None:
            memory = cfg.new_memories(1, B, H, q.shape[-1], q.device, value_dim=v.shape[-1], dtype=q.dtype)[0]
        cache = state.get("kv")
        outs, i, p = [], 0, pos
        while i < L:
            n = min(L - i, C - p % C)
            k_all, v_all = k[:, i : i + n], v[:, i : i + n]
            if cache is not None:
                k_all, v_all = torch.cat([cache[0], k_all], 1), torch.cat([cache[1], v_all], 1)
            m = k_all.shape[1] - n
            local_valid = None
            if start is not None and m:
                local_valid = torch.arange(p - m, p + n, device=q.device)[None, :] >= start.to(q.device)[:, None]
            m_state = extra if extra is not None else {"memory": memory}
            o, _ = attend(rope(q[:, i : i + n], p, C), rope(k_all, p - m, C), v_all, m, m_state, cfg, scale,
                          local_valid=local_valid)
            outs.append(o)
            p, i = p + n, i + n
            cache = (k_all, v_all)
            if p % C == 0:  # the chunk is complete: into the memory (never tokens before a row's document)
                if memory is not None:
                    keep = None if start is None else torch.arange(p - C, p)[None, :] >= start.cpu()[:, None]
                    write_window(memory, k_all, v_all, keep)
                cache = None
        return torch.cat(outs, 1), cache, memory


class NormalizedFeedForwardNetwork(nn.Module):
    def __init__(self, cfg, layer_id: int):
        super().__init__()
        D, F_ = cfg.model_dim, cfg.ffn_hidden_dim
        self.swiglu = cfg.swiglu
        self.norm = LayerNorm(D, cfg.norm_eps)
        self.fc1 = linear(D, F_, False, cfg.init_mode)
        self.fc2 = linear(F_, D, False, cfg.init_mode)
        if cfg.swiglu:
            self.fc3 = linear(D, F_, False, cfg.init_mode)
        if cfg.rescale_nffn:
            self.alpha = nn.Parameter(torch.full((D,), 0.1 * 0.5**layer_id))
        self.hidden_dropout = nn.Dropout(cfg.hidden_dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, residual):
        u, _ = self.norm(x)
        hidden = F.silu(self.fc1(u))
        if self.swiglu:
            hidden = hidden * self.fc3(u)
        y = self.dropout(self.fc2(self.hidden_dropout(hidden)))
        if hasattr(self, "alpha"):
            y = y * self.alpha
        return y + residual


class MegaBlock(nn.Module):
    def __init__(self, cfg, layer_id: int):
        super().__init__()
        self.two_hop = cfg.residual == "two_hop"
        self.mega = MovingAverageGatedAttention(cfg, layer_id in cfg.memory_layers)
        self.nffn = NormalizedFeedForwardNetwork(cfg, layer_id)

    def forward(self, x, rope, pos, state, start=None, memory=None):
        y, state = self.mega(x, rope, pos, state, start, memory)
        # two-hop: the FFN residual is the BLOCK input x, not the attention output y
        return self.nffn(y, x if self.two_hop else y), state
