"""MEGABYTE's global model in windows with FoT's kNN memory (not in the MEGABYTE paper).

With ``global_window`` W > 0 global attention stays inside aligned windows of W patches and byte
positions are relative to the window, so a stream is unbounded; ``memory_layers`` also attend, in one
softmax, to keys retrieved from a memory of the row's earlier windows (written when a window
completes), or, in CrossBatch training, to the previous windows of d rows. ``Megabyte`` mixes this in.
"""

from __future__ import annotations

import torch
from einops import rearrange

from architectures.common.memory_layer import crossbatch_extra, crossbatch_rows, write_window


class GlobalWindows:
    @property
    def crossbatch_window(self) -> int | None:
        """With memory layers, FoT's CrossBatch trains them with one global window (W * P bytes)."""
        cfg = self.config
        return cfg.global_window * cfg.patch_size if cfg.memory_layers else None

    def _global(self, x, k_lo, g_kv, g_mem, mode):
        """The global model over patch inputs ``x`` [B, K, P*D_G] of patches k_lo, k_lo+1, ... with the cache
        ``g_kv`` of the current window. Without windows: one causal pass. With ``global_window`` W: piece by
        piece inside aligned windows of W patches; a completed window's memory-layer keys/values go into
        the kNN memories ``g_mem`` (``mode`` None: streaming) and the caches are cleared. ``mode`` = (d, w):
        CrossBatch; the first w windows attend locally and their keys/values become, for the rest, the
        dense extra keys of rows {i, ..., i+d-1} mod B. Returns outputs, cache, memories."""
        cfg = self.config
        W = cfg.global_window
        if not W:
            out, g_kv = self.global_model(x, caches=g_kv)
            return out, g_kv, None
        B, K = x.shape[:2]
        if cfg.memory_layers and mode is None and g_mem is None:
            g_mem = cfg.new_memories(len(cfg.memory_layers), B, cfg.global_heads, cfg.global_width // cfg.global_heads,
                                     x.device, dtype=x.dtype)
        collected: list[list] = [[] for _ in cfg.memory_layers]
        extras = None
        outs, i, k = [], 0, k_lo
        while i < K:
            n = min(K - i, W - k % W)
            mems = None
            if cfg.memory_layers and (mode is None or extras is not None):
                mems = [None] * cfg.global_layers
                for j, li in enumerate(cfg.memory_layers):
                    mems[li] = {"memory": g_mem[j]} if mode is None else extras[j]
            out, g_kv = self.global_model(x[:, i : i + n], caches=g_kv, memories=mems)
            outs.append(out)
            i, k = i + n, k + n
            if k % W == 0:  # the window is complete
                for j, li in enumerate(cfg.memory_layers):
                    kv = [rearrange(t, "b h n d -> b n h d") for t in g_kv[li]]
                    if mode is None:
                        write_window(g_mem[j], *kv)
                    elif extras is None:
                        collected[j].append(kv)
                if mode is not None and extras is None and k // W == mode[1]:
                    rows = crossbatch_rows(B, mode[0], x.device)
                    extras = [crossbatch_extra(torch.cat([c[0] for c in col], 1), torch.cat([c[1] for c in col], 1),
                                               rows) for col in collected]
                g_kv = None
        return torch.cat(outs, 1), g_kv, g_mem

    # ------------------------------------------------------------------ CrossBatch (memory layers)
    def forward_crossbatch(self, prev: torch.Tensor, curr: torch.Tensor, d: int, return_distraction=False,
                           score_previous: bool = False):
        """FoT's CrossBatch on the global model: ``prev`` [b, w*W*P] (w previous windows of each row's
        document, read from its start: attention inside windows, no memory) and ``curr`` [b, W*P] in one
        pass; the memory layers of the current window attend to their window plus the previous windows'
        keys and values of rows {i, ..., i+d-1} mod b (own first, then d-1 negatives), all in one graph.
        Returns the logits of ``curr`` [b, W*P, V] (with ``score_previous``, those of ``prev`` before them)."""
        Wb = self.crossbatch_window
        if Wb is None:
            raise ValueError("CrossBatch needs memory_layers (and global_window) on MEGABYTE")
        if return_distraction:
            raise ValueError("the distraction ratio is measured on FoT only (model=fot)")
        b = curr.shape[0]
        if prev.shape[1] % Wb or curr.shape[1] != Wb or not prev.shape[1]:
            raise ValueError(f"CrossBatch needs whole global windows of {Wb} bytes: got prev {tuple(prev.shape)}, "
                             f"curr {tuple(curr.shape)}")
        if not 1 <= d <= b:
            raise ValueError(f"CrossBatch d={d} must be in [1, batch size {b}]")
        logits, _ = self._forward(torch.cat([prev, curr], 1), None, (d, prev.shape[1] // Wb))
        return logits if score_previous else logits[:, prev.shape[1] :]
