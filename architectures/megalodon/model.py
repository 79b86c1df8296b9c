"""Megalodon: embedding -> MEGA blocks (CEMA + chunked attention + normalized FFN) -> TimestepNorm -> head.

State for streaming (any segmentation gives the same logits as one pass)::

    {"pos": int,                                   # tokens seen; pos % chunk_size = KV cache length
     "layers": [{"kv": (k, v), "norm": (count, mean, var), "ema": h [B, D, N] complex,
                 "memory": KNNMemory (memory layers only; their kv unrotated)}, ...],
     "final": (count, mean, var),                  # the output TimestepNorm
     "start": per-row document start position [B] or None (set by reset_state),
     "history": tokens [B, <= window]}             # only with the TimestepNorm statistics window
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from architectures.common import run_layer
from architectures.common.memory_layer import crossbatch_extra, crossbatch_rows
from architectures.contract import Architecture, build_config
from architectures.megalodon.config import MegalodonConfig
from architectures.megalodon.layers import ChunkRotary, LayerNorm, MegaBlock, TimestepNorm, init_linear_


class OutputLayer(nn.Module):
    def __init__(self, cfg: MegalodonConfig):
        super().__init__()
        if cfg.norm == "timestep":
            self.final_norm = TimestepNorm(cfg.model_dim, cfg.norm_num_groups, cfg.norm_eps, cfg.kernel_backend)
        else:
            self.final_norm = LayerNorm(cfg.model_dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.model_dim, cfg.vocab_size, bias=False)
        init_linear_(self.output.weight, "gaussian", cfg.model_dim)

    def forward(self, x, state):
        x, state = self.final_norm(x, state)
        # logits in float32 (float64 models: float64) whatever the model's dtype or autocast (as
        # megalodon-jax keeps them)
        dt = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            logits = torch.nn.functional.linear(x.to(dt), self.output.weight.to(dt))
        return logits, state


class Megalodon(Architecture):
    decays_all_parameters = True  # the official recipe: weight decay 0.1 on all parameters (w+1 storage)

    def __init__(self, config: MegalodonConfig | None = None, **kwargs: Any):
        super().__init__()
        self.config = cfg = build_config(MegalodonConfig, config, kwargs)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        init_linear_(self.embed.weight, "gaussian", cfg.model_dim)
        self.rope = ChunkRotary(cfg.z_head_dim, cfg.rope_base)
        self.layers = nn.ModuleList(MegaBlock(cfg, i) for i in range(cfg.num_layers))
        self.output = OutputLayer(cfg)
        if cfg.share_emb:
            self.output.output.weight = self.embed.weight
        self.emb_dropout = nn.Dropout(cfg.dropout)

    # ------------------------------------------------------------------ forward
    def _run(self, tokens, state, memory=None):
        """``memory``: per layer, what a memory layer attends to besides its chunk (None: the state's kNN
        memory; see ``MovingAverageGatedAttention.forward``)."""
        cfg = self.config
        memory = memory or [None] * cfg.num_layers
        pos = 0 if state is None else int(state["pos"])
        layer_states = [None] * cfg.num_layers if state is None else state["layers"]
        start = None if state is None else state.get("start")
        x = self.embed(tokens)
        if cfg.scale_emb:
            x = x * math.sqrt(cfg.model_dim)
        x = self.emb_dropout(x)
        new_states = []
        for layer, st, mem in zip(self.layers, layer_states, memory):
            # a streaming memory layer reads a memory that later chunks change: never recomputed
            ckpt = cfg.checkpoint_layers and not (layer.mega.is_memory and mem is None)
            x, st = run_layer(ckpt, layer, x, self.rope, pos, st, start, mem)
            new_states.append(st)
        logits, final = self.output(x, None if state is None else state["final"])
        return logits, {"pos": pos + tokens.shape[1], "layers": new_states, "final": final, "start": start}

    def forward(self, tokens: torch.Tensor, state: dict | None = None):
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        if not self.config.tsn_window_chunks:
            return self._run(tokens, state)
        return self._forward_with_stat_window(tokens, state)

    # ------------------------------------------------------------------ official long-context evaluation
    def _forward_with_stat_window(self, tokens, state):
        """The official ``inference`` procedure: chunks are read ``tsn_refresh_every`` at a time and,
        once ``tsn_window_start`` chunks are done, every TimestepNorm state is replaced after each such
        group by statistics recomputed from a fresh state on the last ``tsn_window_chunks`` chunks; when
        the input ends in a partial chunk after an odd number of chunks, the official loop's last group
        is a single chunk and is refreshed too. Identical to the official loop for any length when the
        whole input is one call, or is streamed in calls that are multiples of the refresh group
        (``tsn_refresh_every * chunk_size`` bytes). A state made with the window off has no history:
        the window then starts from the next token."""
        cfg = self.config
        C, every, start = cfg.chunk_size, cfg.tsn_refresh_every * cfg.chunk_size, cfg.tsn_window_start * cfg.chunk_size
        window = cfg.tsn_window_chunks * C
        pos = 0 if state is None else int(state["pos"])
        history = tokens[:, :0] if state is None or state.get("history") is None else state["history"]
        end = pos + tokens.shape[1]
        last_full = end // C * C  # a refresh point of the official loop when a remainder follows
        odd_tail = end % C != 0 and last_full % every != 0 and last_full > pos
        outs, i = [], 0
        while i < tokens.shape[1]:
            nxt = (pos // every + 1) * every  # the next refresh boundary
            if odd_tail and pos < last_full < nxt:
                nxt = last_full
            piece = tokens[:, i : i + (nxt - pos)]
            inner_in = None if state is None else {k: state.get(k) for k in ("pos", "layers", "final", "start")}
            logits, inner = self._run(piece, inner_in)
            outs.append(logits)
            history = torch.cat([history, piece], 1)[:, -window:]
            pos += piece.shape[1]
            i += piece.shape[1]
            if (pos % every == 0 or (odd_tail and pos == last_full)) and pos >= start:
                _, fresh = self._run(history, None)
                for st, fr in zip(inner["layers"], fresh["layers"]):
                    st["norm"] = fr["norm"]
                inner["final"] = fresh["final"]
            state = {**inner, "history": history}
        return torch.cat(outs, 1), state

    # ------------------------------------------------------------------ document boundaries
    @property
    def state_parts(self) -> tuple[str, ...]:
        """``norm``: every TimestepNorm's running statistics (the output norm's too); ``ema``: the CEMA hidden
        states; ``attention``: the cached keys of the current chunk; ``memory``: the kNN memories."""
        return ("norm", "ema", "attention", "memory")

    def reset_state(self, state: dict | None, rows: torch.Tensor) -> dict | None:
        """Rows that start a new document get a fresh CEMA state (zero), fresh TimestepNorm statistics
        (the priors) and stop seeing the cached keys of the current chunk. Chunks stay aligned to the
        stream, so a document that starts inside a chunk meets its first chunk boundary early; one that
        starts on a chunk boundary reads exactly as with a fresh model."""
        return self.reset_parts(state, rows, self.state_parts)

    def reset_parts(self, state: dict | None, rows: torch.Tensor, parts: tuple[str, ...]) -> dict | None:
        """``reset_state`` of some ``parts`` only (``state_parts``); the others carry on as without a reset."""
        self.check_parts(parts)
        if state is None or not bool(rows.any()) or not parts:
            return state
        if self.config.tsn_window_chunks:
            raise NotImplementedError("reset_state with the TimestepNorm statistics window (tsn_window_chunks > 0) "
                                      "is not supported: evaluate one document per row from a fresh state")
        rows = rows.bool()

        def fresh_norm(norm: nn.Module, st):
            if st is None or not isinstance(norm, TimestepNorm) or "norm" not in parts:
                return st
            init = norm.initial_state(rows.shape[0], st[1].dtype)
            r = rows.to(st[0].device)
            return tuple(torch.where(r.view(-1, *[1] * (a.dim() - 1)), i.to(a.device, a.dtype), a)
                         for a, i in zip(st, init))

        layers = []
        for layer, st in zip(self.layers, state["layers"]):
            st = dict(st)
            mega = layer.mega
            st["norm"] = fresh_norm(mega.timenorm if self.config.norm == "timestep" else mega.layernorm, st["norm"])
            if st.get("ema") is not None and "ema" in parts:
                st["ema"] = st["ema"].masked_fill(rows.to(st["ema"].device)[:, None, None], 0)
            if st.get("memory") is not None and "memory" in parts:  # the memory forgets the old document
                st["memory"].reset(rows.cpu())
            layers.append(st)
        start = state.get("start")
        if "attention" in parts:
            start = torch.zeros(rows.shape[0], dtype=torch.long) if start is None else start.clone()
            start[rows.cpu()] = int(state["pos"])
        return {**state, "layers": layers, "final": fresh_norm(self.output.final_norm, state["final"]),
                "start": start}

    # ------------------------------------------------------------------ CrossBatch (memory layers)
    @property
    def crossbatch_window(self) -> int | None:
        """With memory layers, FoT's CrossBatch trains them with one chunk as the window."""
        return self.config.chunk_size if self.config.memory_layers else None

    def forward_crossbatch(self, prev: torch.Tensor, curr: torch.Tensor, d: int, return_distraction=False,
                           score_previous: bool = False):
        """FoT's CrossBatch on this backbone: ``prev`` [b, w*C] (the w previous chunks of each row's
        document) runs as usual, its memory layers attending inside their chunks; ``curr`` [b, C]
        continues each row's state, and its memory layers attend, in one softmax, to their chunk plus the
        previous chunks' keys and values of rows {i, ..., i+d-1} mod b (own document first, then d-1
        negatives), all in one graph so gradients reach them. Returns the logits of ``curr`` [b, C, V], with
        ``score_previous`` those of ``prev`` before them ([b, (w+1)C, V])."""
        cfg, C = self.config, self.config.chunk_size
        b = curr.shape[0]
        if return_distraction:
            raise ValueError("the distraction ratio is measured on FoT only (model=fot)")
        if prev.shape[1] % C or curr.shape[1] != C:
            raise ValueError(f"CrossBatch needs whole chunks of {C} tokens: got prev {tuple(prev.shape)}, "
                             f"curr {tuple(curr.shape)}")
        if not 1 <= d <= b:
            raise ValueError(f"CrossBatch d={d} must be in [1, batch size {b}]")
        local = ["local" if li in cfg.memory_layers else None for li in range(cfg.num_layers)]
        prev_logits, state = self._run(prev, None, local)
        rows = crossbatch_rows(b, d, curr.device)
        extra = [crossbatch_extra(*st.pop("keys"), rows) if li in cfg.memory_layers else None
                 for li, st in enumerate(state["layers"])]
        logits, _ = self._run(curr, state, extra)
        return torch.cat([prev_logits, logits], 1) if score_previous else logits

    # ------------------------------------------------------------------ bookkeeping
    def flops_terms(self, context: int) -> dict[str, float]:
        """Forward FLOPs per token: dense matmuls (2 x the 2-D parameters of the layers and the head),
        attention inside chunks (span = min(context, C), causal: half), and the CEMA FFT convolution
        (~ 5 * D * log2(2L) per token per layer)."""
        cfg = self.config
        n = sum(m.weight.numel() for m in self.layers.modules() if isinstance(m, nn.Linear))
        n += cfg.vocab_size * cfg.model_dim
        span = min(context, cfg.chunk_size)
        attn = 2 * cfg.num_layers * (cfg.z_dim + cfg.value_dim) * span / 2
        fft = cfg.num_layers * 5 * cfg.model_dim * math.log2(max(2, 2 * context)) if cfg.ema != "none" else 0.0
        memory = 2 * len(cfg.memory_layers) * (cfg.z_dim + cfg.value_dim) * cfg.memory_k  # retrieved keys
        return {"dense": 2.0 * n, "attention": attn, "ema": fft, "memory": memory}

    def flops_per_token(self, context: int) -> float:
        """Training FLOPs per token: forward + backward = 3 x the forward terms."""
        return 3.0 * sum(self.flops_terms(context).values())
