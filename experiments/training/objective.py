"""The training objective: next-byte cross-entropy over the bytes a batch scores, respecting document
boundaries (rows reset where a document starts) and, for FoT, the CrossBatch objective."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from architectures.contract import LanguageModel
from experiments.training.crossbatch import CrossBatch


def forward_documents(net: LanguageModel, inputs: torch.Tensor, state: Any, starts: torch.Tensor | None):
    """``net(inputs, state)`` that respects document boundaries: ``starts`` [B, T] marks the inputs that
    begin a document; the window is cut at every such position (of any row) and the rows that start
    there get ``net.reset_state`` first. Segment by segment equals one forward for the other rows
    (the contract), so the cuts change nothing else. Returns (logits, state, number of resets)."""
    if starts is None or not bool(starts.any()):
        logits, state = net(inputs, state)
        return logits, state, 0
    cols = starts.any(0).nonzero().flatten().tolist()
    edges = sorted({0, *cols, inputs.shape[1]})
    outs, resets = [], 0
    for a, b in zip(edges[:-1], edges[1:]):
        rows = starts[:, a]
        if state is not None and bool(rows.any()):
            state = net.reset_state(state, rows)
            resets += int(rows.sum())
        out, state = net(inputs[:, a:b], state)
        outs.append(out)
    return torch.cat(outs, 1), state, resets


class Objective:
    """Per-byte NLL of ``net`` on a batch ``{"tokens": [B, T + 1], "loss_mask"?: [B, T], "starts"?: [B, T + 1]
    | "doc_start"?: [B]}``. The first byte of a document is not scored (nothing precedes it); neither is
    ``ignore_index``. ``crossbatch`` (a ``task.crossbatch`` dict) selects FoT's CrossBatch objective."""

    def __init__(self, net: LanguageModel, crossbatch: dict | None = None, ignore_index: int = -100):
        self.net, self.ignore_index = net, ignore_index
        self.crossbatch = CrossBatch(net, crossbatch) if crossbatch else None
        self.resets = 0  # document starts inside carried or streamed windows, where reset_state ran

    def scored(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The targets a batch scores (bool [B, T]: its loss mask, no byte that starts a document, no
        ignore_index) and the document starts [B, T + 1] (None when the sampler gives none)."""
        tokens = batch["tokens"]
        targets = tokens[:, 1:]
        mask = batch.get("loss_mask")
        mask = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask.bool()
        starts = batch.get("starts")
        if starts is None and "doc_start" in batch:  # samplers that only mark a start at the window's beginning
            starts = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
            starts[:, 0] = batch["doc_start"].to(tokens.device)
        if starts is not None:
            mask = mask & ~starts[:, 1:].to(mask.device)
        return mask & (targets != self.ignore_index), starts

    def target_bytes(self, batch: dict[str, torch.Tensor], crossbatch: bool = True) -> torch.Tensor | None:
        """The text bytes of each scored target [B, T'] aligned with ``nll``'s output (None: one byte each)."""
        w = batch.get("target_bytes")
        if w is None or not (crossbatch and self.crossbatch is not None):
            return w
        return w[:, self.crossbatch.scored_slice(w.shape[1])]

    def nll(self, batch: dict[str, torch.Tensor], state=None, crossbatch: bool = True):
        """Per-byte NLL [B, T] in nats, the mask of scored bytes, the new state, and top-1 hits."""
        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        mask, starts = self.scored(batch)
        if crossbatch and self.crossbatch is not None:
            logits, scored = self.crossbatch.logits(inputs)
            targets, mask = targets[:, scored], mask[:, scored]
        else:
            logits, state, resets = forward_documents(
                self.net, inputs, state, None if starts is None else starts[:, :-1].to(inputs.device))
            self.resets += resets
        nll = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=self.ignore_index, reduction="none"
        ).view_as(targets)
        hits = logits.argmax(-1) == targets
        return nll, mask, state, hits
