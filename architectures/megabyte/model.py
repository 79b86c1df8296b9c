"""MEGABYTE: a global transformer over patches and a local transformer inside each patch.

Indexing. In the paper's coordinates byte j (patch k = j // P, slot p = j % P) is predicted from
bytes < j: the global input of patch k is the concatenated embeddings of patch k-1 (a trainable pad
patch for k = 0), and the local input of slot p adds the embedding of byte j-1 (a trainable pad for
p = 0). The house contract scores tokens[t+1] at position t, i.e. logits[:, t] is the paper's output
at j = t + 1: this is the only place the two are mapped onto each other.

State (streaming and generation): the global KV cache over completed patches and the global output
of the current patch (the global model runs once per patch), the local KV cache of the current
patch and, with cross-patch attention, the previous patch's last r local keys/values, plus the last
2P + 12 bytes (patch inputs and the receptive field of the convolutional encoder).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from architectures.common import run_layer
from architectures.common.memory_layer import attend
from architectures.common.rotary import RotaryEmbedding
from architectures.contract import Architecture, build_config
from architectures.megabyte.config import MegabyteConfig
from architectures.megabyte.windows import GlobalWindows
from kernels.sdpa import sdpa

CONV_WIDTHS = (3, 5, 7)
CONV_FIELD = sum(k - 1 for k in CONV_WIDTHS)  # bytes of history the encoder looks back


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, rope: bool, rope_base: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.rope = RotaryEmbedding(dim // heads, rope_base) if rope else None
        self.dropout = dropout

    def _rot(self, x, offset):
        return x if self.rope is None else self.rope(x, offset)

    memory_settings = None  # MemorySettings when this is a memory layer of the global model

    def forward(self, x, cache=None, prefix=None, prefix_valid=None, grid=None, memory=None):
        """x [N, L, dim]. ``cache`` (k, v) [N, H, m, d]: earlier positions of the same rows (keys kept
        unrotated). ``prefix`` (k, v) [N, H, r, d]: the previous patch's last r positions, attended by
        every query (``prefix_valid`` [N] masks rows without a previous patch). ``grid`` = (patches per
        batch row, first prefix or None): rows are consecutive patches and each row's prefix is taken
        from the previous row's keys in this same call (training-time cross-patch attention). ``memory``
        (a memory layer of the global model): extra keys for FoT's memory attention, {"memory": KNNMemory}
        or dense {"k", "v"} (see ``architectures.common.memory_layer.attend``); no attention dropout."""
        N, L, _ = x.shape
        q, k, v = rearrange(self.qkv(x), "n l (three h d) -> three n h l d", three=3, h=self.heads)
        m = 0 if cache is None else cache[0].shape[2]
        if m:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        if memory is not None:  # the global model has no rotary positions: keys are stored as they are
            o, _ = attend(*(rearrange(t, "n h l d -> n l h d") for t in (q, k, v)), m, memory, self.memory_settings)
            return self.out(rearrange(o, "n l h d -> n l (h d)")), (k, v)
        if grid is not None:
            prefix, prefix_valid = self._grid_prefix(k, v, *grid)
        qr, kr, vv = self._rot(q, m), self._rot(k, 0), v
        r = 0 if prefix is None else prefix[0].shape[2]
        p = self.dropout if self.training else 0.0
        if r == 0 and m == 0:
            o = sdpa(qr, kr, vv, is_causal=True, dropout_p=p)
        else:
            qi = torch.arange(m, m + L, device=x.device)[:, None]
            causal = (torch.arange(m + L, device=x.device)[None, :] <= qi).expand(N, 1, L, m + L)
            if r:
                kr = torch.cat([self._rot(prefix[0], -r), kr], 2)
                vv = torch.cat([prefix[1], vv], 2)
                pv = prefix_valid.view(N, 1, 1, 1).expand(N, 1, L, r)
                causal = torch.cat([pv, causal], -1)
            o = sdpa(qr, kr, vv, attn_mask=causal, dropout_p=p)
        return self.out(rearrange(o, "n h l d -> n l (h d)")), (k, v)

    @staticmethod
    def _grid_prefix(k, v, n_patches, first, r):
        kk = rearrange(k, "(b k) h l d -> b k h l d", k=n_patches)
        vv = rearrange(v, "(b k) h l d -> b k h l d", k=n_patches)
        B = kk.shape[0]
        if first is None:
            f_k, f_v = kk.new_zeros(B, 1, *kk.shape[2:3], r, kk.shape[-1]), vv.new_zeros(B, 1, *vv.shape[2:3], r,
                                                                                           vv.shape[-1])
        else:
            f_k, f_v = first[0][:, None], first[1][:, None]
        pk = torch.cat([f_k, kk[:, :-1, :, -r:]], 1)
        pv = torch.cat([f_v, vv[:, :-1, :, -r:]], 1)
        valid = torch.ones(B, n_patches, dtype=torch.bool, device=k.device)
        valid[:, 0] = first is not None
        return (rearrange(pk, "b k h r d -> (b k) h r d"), rearrange(pv, "b k h r d -> (b k) h r d")), valid.flatten()


class Block(nn.Module):
    """Pre-norm transformer block with a ReLU MLP (paper appendix A)."""

    def __init__(self, dim, heads, ffn_mult, dropout, eps, rope=False, rope_base=10000.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, dropout, rope, rope_base)
        self.ln2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, ffn_mult * dim)
        self.fc2 = nn.Linear(ffn_mult * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, **attn_kw):
        h, kv = self.attn(self.ln1(x), **attn_kw)
        x = x + self.drop(h)
        return x + self.drop(self.fc2(F.relu(self.fc1(self.ln2(x))))), kv


class Stack(nn.Module):
    def __init__(self, dim, heads, layers, ffn_mult, dropout, eps, rope=False, rope_base=10000.0, final_norm=True,
                 checkpointed=False):
        super().__init__()
        self.checkpointed = checkpointed
        self.blocks = nn.ModuleList(Block(dim, heads, ffn_mult, dropout, eps, rope, rope_base) for _ in range(layers))
        self.norm = nn.LayerNorm(dim, eps=eps) if final_norm else nn.Identity()

    def forward(self, x, caches=None, prefixes=None, prefix_valid=None, grid=None, r=0, memories=None):
        """``memories``: per block, the extra keys of a memory layer (or None)."""
        new = []
        for i, blk in enumerate(self.blocks):
            kw: dict[str, Any] = {"cache": None if caches is None else caches[i]}
            if memories is not None and memories[i] is not None:
                kw["memory"] = memories[i]
            if grid is not None:
                kw["grid"] = (grid, None if prefixes is None else prefixes[i], r)
            elif prefixes is not None:
                kw["prefix"], kw["prefix_valid"] = prefixes[i], prefix_valid
            # a streaming memory layer reads a memory that later windows change: never recomputed
            streaming = "memory" in (kw.get("memory") or {})
            x, kv = run_layer(self.checkpointed and not streaming, blk, x, **kw)
            new.append(kv)
        return self.norm(x), new


class Megabyte(GlobalWindows, Architecture):
    """``forward(tokens[B, T], state=None) -> (logits[B, T, 256], state)``."""

    # torch 2.13's inductor fails on it (a runtime view error in the compiled graph; one run of benchmarks/compile.py
    # went through with losses up to 2e-3 from eager): compile=true refuses it
    compiles = False

    def __init__(self, config: MegabyteConfig | None = None, **kwargs: Any):
        super().__init__()
        self.config = cfg = build_config(MegabyteConfig, config, kwargs)
        P, DG, DL, V = cfg.patch_size, cfg.d_global, cfg.d_local, cfg.vocab_size
        if cfg.global_model:
            self.byte_embed = nn.Embedding(V, DG)  # E_g
            self.pos_embed = nn.Embedding(cfg.max_len, DG)  # E_pos
            if cfg.patch_encoder == "conv":
                self.convs = nn.ModuleList(nn.Conv1d(DG, DG, k) for k in CONV_WIDTHS)
            self.global_pad = nn.Parameter(torch.empty(P * DG))
            # the global output enters the local model's (pre-normed) residual stream through w_GL
            # un-normalised: at init it is as small as the embeddings, so the previous byte is not
            # drowned by an O(1) global signal (a final LayerNorm here slowed early training ~2x)
            self.global_model = Stack(P * DG, cfg.global_heads, cfg.global_layers, cfg.ffn_mult, cfg.dropout,
                                      cfg.norm_eps, final_norm=cfg.global_final_norm,
                                      checkpointed=cfg.checkpoint_layers)
            self.w_gl = nn.Linear(DG, DL, bias=False)  # shared by the P slots; no bias (paper eq. 4)
            for li in cfg.memory_layers:
                self.global_model.blocks[li].attn.memory_settings = cfg
        self.local_embed = nn.Embedding(V, DL)  # E_l, tied to the output
        if cfg.local_model:
            self.local_pad = nn.Parameter(torch.empty(DL))
            if cfg.local_positions:
                self.local_pos = nn.Parameter(torch.empty(P, DL))
            self.local_model = Stack(DL, cfg.local_heads, cfg.local_layers, cfg.ffn_mult, cfg.dropout, cfg.norm_eps,
                                     rope=cfg.cross_patch_attention > 0, rope_base=cfg.rope_base,
                                     checkpointed=cfg.checkpoint_layers)
        else:
            self.out_norm = nn.LayerNorm(DL, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.embed_dropout)  # on the embedded inputs only
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated normal(0, init_std) weights, zero biases, LayerNorms at (1, 0). PyTorch's default
        U(+-1/sqrt(fan_in)) biases would add one constant vector that dominates the local model's
        input at init (the embeddings are ~init_std)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if ".ln" in name or "norm" in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.trunc_normal_(p, 0.0, std, -3 * std, 3 * std)

    @property
    def max_len(self) -> int | None:
        """Learned byte positions E_pos bound the stream (only the global model has them), unless they are
        relative to global attention windows."""
        cfg = self.config
        return cfg.max_len if cfg.global_model and not cfg.global_window else None

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    # ------------------------------------------------------------------ pieces
    def _byte_features(self, known, s0):
        """Global per-byte features (E_g[x] + E_pos[j], then the optional causal conv encoder) for the
        bytes ``known`` at stream positions s0, s0+1, ... Exact from s0 + CONV_FIELD on (all of it if s0 = 0)."""
        pos = torch.arange(s0, s0 + known.shape[1], device=known.device)
        if self.config.global_window:  # positions inside the current global window
            pos = pos % (self.config.global_window * self.config.patch_size)
        h = self.byte_embed(known) + self.pos_embed(pos)
        if self.config.patch_encoder == "conv":
            c = h.transpose(1, 2)
            for i, conv in enumerate(self.convs):
                c = conv(F.pad(c, (conv.kernel_size[0] - 1, 0)) if s0 == 0 else c)
                if i < len(self.convs) - 1:
                    c = F.relu(c)
            c = c.transpose(1, 2)
            h = h + (c if s0 == 0 else F.pad(c, (0, 0, CONV_FIELD, 0)))
        return h

    def _local_inputs(self, G, K, known, s0, k0, slots, n_slots, end):
        """Local inputs for slots p = slots..slots+n_slots-1 of the K patches k0, k0+1, ...: [B, K, n, D_L].

        ``G`` [B, K, P*D_G] global outputs of those patches (None without the global model). The byte
        before slot (k, p) is x_{kP+p-1}; slots past the known bytes (padding) get zeros (their outputs
        are dropped)."""
        cfg = self.config
        P = cfg.patch_size
        j = (torch.arange(K, device=known.device)[:, None] + k0) * P + torch.arange(slots, slots + n_slots,
                                                                                   device=known.device)
        prev = j - 1 - s0  # index of x_{j-1} in known
        ok = (prev >= 0) & (j - 1 < end)
        emb = self.local_embed(known[:, prev.clamp(0, known.shape[1] - 1)]) * ok[None, :, :, None]
        is_first = (j % P == 0)[None, :, :, None]
        x = torch.where(is_first, self.local_pad.to(emb.dtype), emb)
        if cfg.local_positions:
            x = x + self.local_pos[slots : slots + n_slots]
        if cfg.global_model:
            g = rearrange(G, "b k (p d) -> b k p d", p=P)[:, :, slots : slots + n_slots]
            x = x + self.w_gl(g)
        return x

    def _logits(self, h):
        return h @ self.local_embed.weight.T

    # ------------------------------------------------------------------ forward
    def forward(self, tokens: torch.Tensor, state: dict | None = None):
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        return self._forward(tokens, state, None)

    def _forward(self, tokens, state, mode):
        cfg = self.config
        P, r = cfg.patch_size, cfg.cross_patch_attention
        B, n = tokens.shape
        first = state is None
        s = 0 if first else int(state["pos"])
        end = s + n
        if self.max_len is not None and end > self.max_len:
            raise ValueError(
                f"MEGABYTE has learned byte positions for max_len={cfg.max_len} bytes, but this sequence "
                f"reaches position {end}; raise model.net.max_len or use a shorter context / document"
            )
        tail = tokens[:, :0] if first else state["tail"]
        known = torch.cat([tail, tokens], 1)  # bytes at stream positions s0 .. end-1
        s0 = s - tail.shape[1]
        j_lo, j_hi = (0, end) if first else (s + 1, end)  # paper output positions to compute
        k_s, k_hi = j_lo // P, j_hi // P
        new_state: dict[str, Any] = {"pos": end, "tail": known[:, -(2 * P + CONV_FIELD) :]}

        # ---- global model: once per patch, for patches not computed yet
        G = None
        if cfg.global_model:
            k_lo = 0 if first else int(state["g_done"])
            g_kv = None if first else state["g_kv"]
            g_mem = None if first else state.get("g_mem")
            parts = [] if k_s >= k_lo else [state["g_cur"][:, None]]
            if k_hi >= k_lo:
                h = self._byte_features(known, s0)
                kk0 = max(k_lo, 1)
                rows = []
                if k_lo == 0:
                    rows.append(self.global_pad.expand(B, 1, -1).to(h.dtype))
                if k_hi >= kk0:
                    seg = h[:, (kk0 - 1) * P - s0 : k_hi * P - s0]
                    rows.append(rearrange(seg, "b (k p) d -> b k (p d)", p=P))
                g_out, g_kv, g_mem = self._global(self.drop(torch.cat(rows, 1)), k_lo, g_kv, g_mem, mode)
                parts.append(g_out)
            G = torch.cat(parts, 1)  # patches k_s .. k_hi
            new_state.update(g_kv=g_kv, g_done=k_hi + 1, g_cur=G[:, -1])
            if g_mem is not None:
                new_state["g_mem"] = g_mem

        # ---- no local model: each slot is read off the global output directly
        if not cfg.local_model:
            g = rearrange(G, "b k (p d) -> b (k p) d", p=P)[:, j_lo - k_s * P : j_hi - k_s * P + 1]
            logits = self._logits(self.out_norm(self.w_gl(g)))
            return (logits[:, 1:] if first else logits), new_state

        # ---- local model: (a) the rest of the current patch, with its cache; (b) whole new patches
        p0 = j_lo - k_s * P
        outs, l_kv, l_prev = [], None, None if first else state["l_prev"]
        if p0 > 0:
            pa_end = min(P - 1, j_hi - k_s * P)
            xa = self._local_inputs(None if G is None else G[:, :1], 1, known, s0, k_s, p0, pa_end - p0 + 1, end)
            ha, l_kv = self.local_model(self.drop(xa[:, 0]), caches=state["l_kv"],
                                        prefixes=l_prev if r else None,
                                        prefix_valid=torch.full((B,), k_s > 0, device=tokens.device))
            outs.append(ha)
            if pa_end == P - 1:  # the patch is complete: its last r positions become the next prefix
                l_prev = [(k[:, :, -r:], v[:, :, -r:]) for k, v in l_kv] if r else None
                l_kv = None
        kb = k_s + (1 if p0 > 0 else 0)
        if kb <= k_hi:
            Kb = k_hi - kb + 1
            xb = self._local_inputs(None if G is None else G[:, kb - k_s :], Kb, known, s0, kb, 0, P, end)
            hb, kvs = self.local_model(self.drop(rearrange(xb, "b k p d -> (b k) p d")),
                                       prefixes=l_prev if r else None, grid=Kb if r else None, r=r)
            outs.append(rearrange(hb, "(b k) p d -> b (k p) d", k=Kb))
            c = j_hi - k_hi * P + 1  # slots computed in the last patch
            per_patch = [tuple(rearrange(t, "(b k) h l d -> b k h l d", k=Kb) for t in kv) for kv in kvs]
            last = [(k[:, -1], v[:, -1]) for k, v in per_patch]
            if r and Kb >= 2:  # the last patch's prefix: the previous patch's last r positions
                l_prev = [(k[:, -2, :, -r:], v[:, -2, :, -r:]) for k, v in per_patch]
            if c == P:
                l_prev = [(k[:, :, -r:], v[:, :, -r:]) for k, v in last] if r else None
                l_kv = None
            else:
                l_kv = [(k[:, :, :c], v[:, :, :c]) for k, v in last]
        h = torch.cat(outs, 1)[:, : j_hi - j_lo + 1]
        logits = self._logits(h)
        new_state.update(l_kv=l_kv, l_prev=l_prev)
        return (logits[:, 1:] if first else logits), new_state

    # ------------------------------------------------------------------ bookkeeping
    def flops_terms(self, context: int) -> dict[str, float]:
        """Forward FLOPs per byte (paper: 2 * (m_global / P + m_local) plus attention): the global model's
        matmuls once per patch, the local model's, the LM head and w_GL per byte, the convolutional
        patch encoder per byte; attention over context/P patches of width P*D_G (global) and over P (+r)
        positions of width D_L (local)."""
        cfg = self.config
        P = cfg.patch_size
        m_g = sum(p.numel() for n, p in self.named_parameters() if n.startswith("global_model") and p.dim() == 2)
        m_l = sum(p.numel() for n, p in self.named_parameters() if n.startswith("local_model") and p.dim() == 2)
        m_l += cfg.vocab_size * cfg.d_local + (cfg.d_global * cfg.d_local if cfg.global_model else 0)
        conv = sum(p.numel() for n, p in self.named_parameters() if n.startswith("convs") and p.dim() == 3)
        span = min(context / P, cfg.global_window) if cfg.global_window else context / P  # patches attended
        attn_g = 2 * cfg.global_layers * cfg.global_width * span / 2 / P if cfg.global_model else 0.0
        attn_l = 2 * cfg.local_layers * cfg.d_local * (P / 2 + cfg.cross_patch_attention) if cfg.local_model else 0.0
        memory = 2 * 2 * len(cfg.memory_layers) * cfg.global_width * cfg.memory_k / P  # retrieved keys, per byte
        return {"dense": 2.0 * (m_g / P + m_l), "conv": 2.0 * conv, "attention": 2.0 * (attn_g + attn_l),
                "memory": memory}

    def flops_per_token(self, context: int) -> float:
        """Training FLOPs per byte: forward + backward = 3 x the forward terms."""
        return 3.0 * sum(self.flops_terms(context).values())
