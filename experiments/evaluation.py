"""Evaluation loops written once against the house contract.

* ``windowed_bpb`` — bits per byte on fixed random windows of ``context`` bytes (no state).
* ``streaming_bpb`` — whole documents walked window by window with carried state; bits per byte
  overall and as a function of the position in the document (the long-context curve).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from experiments.data.corpus import Split
from experiments.data.samplers import RandomWindows

LN2 = math.log(2)


def autocast(device: torch.device, precision: str | int):
    if str(precision) in ("bf16", "bf16-mixed"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def windowed_bpb(net, split: Split, context: int, batch_size: int, num_batches: int, seed: int,
                 device: torch.device, precision="32", split_name: str = "test") -> dict:
    sampler = RandomWindows(split, context, batch_size, seed, split_name=split_name)
    nll_sum, count = 0.0, 0
    for step in range(num_batches):
        tokens = sampler.batch(step)["tokens"].to(device)
        with autocast(device, precision):
            logits, _ = net(tokens[:, :-1])
        nll = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")
        nll_sum += float(nll)
        count += tokens[:, 1:].numel()
    return {"bpb": nll_sum / count / LN2, "loss": nll_sum / count, "bytes": count, "context": context}


def position_buckets(max_len: int, base: int) -> list[tuple[int, int]]:
    """[0, b), [b, 2b), [2b, 4b), ... covering positions < max_len."""
    edges = [0, base]
    while edges[-1] < max_len:
        edges.append(edges[-1] * 2)
    return list(zip(edges[:-1], edges[1:]))


@torch.no_grad()
def streaming_bpb(net, split: Split, window: int, batch_size: int, device: torch.device,
                  max_docs: int | None = None, max_doc_bytes: int | None = None, curve_base: int = 256,
                  precision="32") -> dict:
    """Score byte ``i`` (i >= 1) of every document given bytes ``0..i-1`` of the same document only.

    Documents are batched longest-first; a shorter document is padded at its end, and because the
    contract is causal the padding never influences the scored bytes. Position ``p`` in the curve is
    the index of the predicted byte in its document.
    """
    lengths = split.lengths
    order = np.argsort(-lengths, kind="stable")
    if max_docs:
        order = order[:max_docs]
    docs = [(int(i), int(min(lengths[i], max_doc_bytes or lengths[i]))) for i in order]
    docs = [(i, n) for i, n in docs if n >= 2]
    if not docs:
        raise ValueError("streaming evaluation found no document with at least 2 bytes")
    longest = max(n for _, n in docs)
    buckets = position_buckets(longest, curve_base)
    b_nll = np.zeros(len(buckets))
    b_cnt = np.zeros(len(buckets), dtype=np.int64)
    pos_nll = np.zeros(longest)
    pos_cnt = np.zeros(longest, dtype=np.int64)
    for b0 in range(0, len(docs), batch_size):
        group = docs[b0 : b0 + batch_size]
        L = max(n for _, n in group)
        tokens = torch.zeros(len(group), L, dtype=torch.long)
        valid = torch.zeros(len(group), L, dtype=torch.bool)
        for r, (i, n) in enumerate(group):
            tokens[r, :n] = torch.from_numpy(split.document(i)[:n].astype(np.int64))
            valid[r, :n] = True
        tokens, valid = tokens.to(device), valid.to(device)
        state = None
        for s in range(0, L - 1, window):
            e = min(s + window, L - 1)
            with autocast(device, precision):
                logits, state = net(tokens[:, s:e], state)
            nll = F.cross_entropy(logits.float().transpose(1, 2), tokens[:, s + 1 : e + 1], reduction="none")
            m = valid[:, s + 1 : e + 1]
            nll = (nll * m).sum(0).double().cpu().numpy()
            pos_nll[s + 1 : e + 1] += nll
            pos_cnt[s + 1 : e + 1] += m.sum(0).cpu().numpy()
    for j, (lo, hi) in enumerate(buckets):
        b_nll[j] = pos_nll[lo:hi].sum()
        b_cnt[j] = pos_cnt[lo:hi].sum()
    total = pos_cnt.sum()
    curve = [
        {"start": lo, "end": hi, "bpb": float(b_nll[j] / b_cnt[j] / LN2), "bytes": int(b_cnt[j])}
        for j, (lo, hi) in enumerate(buckets) if b_cnt[j] > 0
    ]
    return {"bpb": float(pos_nll.sum() / total / LN2), "loss": float(pos_nll.sum() / total),
            "bytes": int(total), "docs": len(docs), "window": window, "curve": curve}
