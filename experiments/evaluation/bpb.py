"""Evaluation loops written once against the house contract (``evaluation.run.evaluate`` runs them on a run):

* ``windowed_bpb`` — bits per byte on fixed random windows of ``context`` bytes (no state).
* ``streaming_bpb`` — whole documents walked window by window with carried state; bits per byte
  overall and as a function of the position in the document (the long-context curve).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from experiments.data.corpus import Split
from experiments.data.samplers import RandomWindows
from experiments.evaluation.inference_methods import method_nll, patch_profile, target_offset, window_length
from experiments.training.progress import Progress
from kernels.bf16_matmul import use_fp32_gemm_for_bf16

LN2 = math.log(2)


class Units:
    """Per-unit (test window or document) sums of NLL in nats and scored byte counts, and a hash of the
    target bytes in order: what intervals are bootstrapped over, and the proof that two models (or two
    contexts) were scored on exactly the same bytes."""

    def __init__(self) -> None:
        self.nll: list[float] = []
        self.bytes: list[int] = []
        self._sha = hashlib.sha256()

    def add(self, nll: torch.Tensor, count: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        self.nll += [float(v) for v in nll.cpu()]
        self.bytes += [int(v) for v in count.cpu()]
        if targets is not None:
            self._sha.update(targets.to(torch.uint8).cpu().numpy().tobytes())

    def add_targets(self, targets: np.ndarray) -> None:
        self._sha.update(np.ascontiguousarray(targets, dtype=np.uint8).tobytes())

    def summary(self) -> dict:
        total, n = sum(self.nll), sum(self.bytes)
        return {"bpb": total / n / LN2, "loss": total / n, "bytes": n}

    def to_json(self, kind: str) -> dict:
        return {"kind": kind, "nll": self.nll, "bytes": self.bytes, "targets_sha256": self._sha.hexdigest()}


def autocast(device: torch.device, precision: str | int):
    if str(precision) in ("bf16", "bf16-mixed"):
        if device.type == "cpu":
            use_fp32_gemm_for_bf16()  # an AVX2-only CPU's bf16 GEMM is a scalar loop: 25-50x slower
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def strided_nll(net, u: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MEGABYTE's strided inference (paper section 5.3) on windows u [B, L + P/2 + 1].

    Pass A reads u[P/2 : P/2 + L], pass B the same bytes shifted by half a patch, u[0 : L]. Every
    target byte u[i], i in [P/2 + 1, L], is scored by the pass in which it sits in the first half of
    its patch (its paper position j = i - P/2 in pass A, j = i in pass B; slot j mod P < P/2).
    Returns (strided NLL, basic NLL = pass A alone), each [B, L - P/2], in nats.
    """
    h = patch_size // 2
    if patch_size < 2 or patch_size % 2:
        raise ValueError(f"strided inference needs an even patch size, got patch_size={patch_size}")
    L = u.shape[1] - h - 1
    la, _ = net(u[:, h : h + L])  # predicts u[h+1 : h+L+1]
    lb, _ = net(u[:, :L])  # predicts u[1 : L+1]
    i = torch.arange(h + 1, L + 1, device=u.device)
    dt = torch.promote_types(la.dtype, torch.float32)
    nll_a = F.cross_entropy(la[:, i - h - 1].to(dt).transpose(1, 2), u[:, i], reduction="none")
    nll_b = F.cross_entropy(lb[:, i - 1].to(dt).transpose(1, 2), u[:, i], reduction="none")
    use_a = ((i - h) % patch_size) < h
    return torch.where(use_a, nll_a, nll_b), nll_a


@torch.no_grad()
def windowed_bpb(net, split: Split, context: int, batch_size: int, num_batches: int, seed: int,
                 device: torch.device, precision="32", split_name: str = "test", strided: bool = False,
                 methods: list[str] | None = None, patch_size: int | None = None,
                 window_patch: int | None = None) -> dict:
    if methods:
        return _windowed_methods(net, split, context, batch_size, num_batches, seed, device, precision, split_name,
                                 list(methods), patch_size or net.patch_size, window_patch)
    if window_patch is not None:
        raise ValueError(f"eval.window_patch={window_patch} lays out the windows of eval.methods; set eval.methods or "
                         f"drop eval.window_patch")
    if strided:
        P = net.patch_size
        if P is None:
            raise ValueError(f"eval.strided=true is MEGABYTE's strided inference and needs a model with a patch_size; "
                             f"{type(net).__name__} has none: use eval.strided=false")
        return _windowed_strided(net, split, context, batch_size, num_batches, seed, device, precision, split_name, P)
    sampler = RandomWindows(split, context, batch_size, seed, split_name=split_name)
    units = Units()
    for step in range(num_batches):
        tokens = sampler.batch(step)["tokens"].to(device)
        with autocast(device, precision):
            logits, _ = net(tokens[:, :-1])
        nll = F.cross_entropy(logits.float().transpose(1, 2), tokens[:, 1:], reduction="none")
        nbytes = torch.from_numpy(split.bytes_of(tokens[:, 1:].cpu().numpy()).sum(1))
        units.add(nll.double().sum(1), nbytes, tokens[:, 1:])
    return {**units.summary(), "context": context, "units": units.to_json("window")}


def _windowed_strided(net, split, context, batch_size, num_batches, seed, device, precision, split_name, P):
    sampler = RandomWindows(split, context + P // 2, batch_size, seed, split_name=split_name)
    sums = {"strided": 0.0, "basic": 0.0}
    count = 0
    for step in range(num_batches):
        u = sampler.batch(step)["tokens"].to(device)
        with autocast(device, precision):
            st, basic = strided_nll(net, u, P)
        sums["strided"] += float(st.sum())
        sums["basic"] += float(basic.sum())
        count += st.numel()
    return {"bpb": sums["strided"] / count / LN2, "loss": sums["strided"] / count,
            "bpb_basic": sums["basic"] / count / LN2, "bytes": count, "context": context, "strided": True}


def _windowed_methods(net, split, T, batch_size, num_batches, seed, device, precision, split_name, methods, P, W=None):
    """Several inference methods (and the within-patch loss profile) on exactly the same target bytes."""
    if P is None and any("strided" in m for m in methods):
        raise ValueError(f"eval.methods={methods} includes strided inference, which needs a patch model; "
                         f"{type(net).__name__} has no patch_size (set eval.patch_size to profile by slot only)")
    P = P or 2
    W = W or P
    sampler = RandomWindows(split, window_length(T, W) - 1, batch_size, seed, split_name=split_name)
    units = {m: Units() for m in methods}  # per window: the totals, intervals, paired differences between methods
    profile = torch.zeros(P, 2, dtype=torch.float64)
    o = target_offset(T, W)
    for step in range(num_batches):
        u = sampler.batch(step)["tokens"].to(device)
        with autocast(device, precision):
            nll = method_nll(net, u, T, P, methods, W)
        for m in methods:
            units[m].add(nll[m].double().sum(1), torch.full((u.shape[0],), T), u[:, o + 1 : o + T + 1])
        if "basic" in nll:
            profile += patch_profile(nll["basic"], T, P, W)
    totals = {m: units[m].summary() for m in methods}
    first = methods[0]
    out = {"bytes": totals[first]["bytes"], "context": T, "methods": {m: totals[m]["bpb"] for m in methods},
           "method_units": {m: units[m].to_json("window") for m in methods}}
    if profile[:, 1].sum() > 0:
        out["patch_profile"] = [{"slot": p, "bpb": float(profile[p, 0] / profile[p, 1] / LN2)} for p in range(P)]
    out.update(bpb=totals[first]["bpb"], loss=totals[first]["loss"])
    return out


def position_buckets(max_len: int, base: int) -> list[tuple[int, int]]:
    """[0, b), [b, 2b), [2b, 4b), ... covering positions < max_len."""
    edges = [0, base]
    while edges[-1] < max_len:
        edges.append(edges[-1] * 2)
    return list(zip(edges[:-1], edges[1:]))


@dataclass
class StreamDoc:
    """One document as a model reads it: ``ids`` (int64), scored from index ``first`` on; ``nbytes`` the text
    bytes each id stands for (the curve's positions are the byte offsets where the predicted ids start);
    ``targets`` the scored text bytes (hashed: the proof of identical text) and ``scored_bytes`` their count."""

    ids: np.ndarray
    first: int
    nbytes: np.ndarray
    targets: np.ndarray
    scored_bytes: int


@torch.no_grad()
def streaming_bpb(net, split: Split, window: int, batch_size: int, device: torch.device,
                  max_docs: int | None = None, max_doc_bytes: int | None = None, curve_base: int = 256,
                  precision="32") -> dict:
    """Score byte ``i`` (i >= 1) of every document given bytes ``0..i-1`` of the same document only (a token
    split: token ``i`` given the tokens before it; documents ordered and truncated in tokens)."""
    docs = []
    for doc in longest_documents(split, max_docs, max_doc_bytes):
        ids = doc.astype(np.int64)
        nbytes = split.bytes_of(ids)
        docs.append(StreamDoc(ids, 1, nbytes, ids[1:], int(nbytes[1:].sum())))
    return stream_documents(net, docs, window, batch_size, device, curve_base, precision)


def longest_documents(split: Split, max_docs: int | None, max_len: int | None) -> list[np.ndarray]:
    """The documents streaming evaluation walks: longest first (stable), at most ``max_docs``, each cut to its
    first ``max_len`` units, those with fewer than 2 left out (nothing to score)."""
    order = np.argsort(-split.lengths, kind="stable")
    docs = (split.document(int(i))[:max_len] if max_len else split.document(int(i))
            for i in (order[:max_docs] if max_docs else order))
    return [d for d in docs if len(d) >= 2]


@torch.no_grad()
def stream_documents(net, docs: list[StreamDoc], window: int, batch_size: int, device: torch.device,
                     curve_base: int = 256, precision="32") -> dict:
    """Walk each document window by window (``window`` ids per forward call) with carried state, scoring the
    ids from ``first`` on. Documents are batched longest-first as given; a shorter one is padded at its end,
    and because the contract is causal the padding never influences the scored ids. The curve buckets the
    NLL by the byte offset where each predicted id starts; bits per byte divide by the text bytes scored."""
    if not docs:
        raise ValueError("streaming evaluation found no document with at least 2 bytes")
    starts = [np.cumsum(d.nbytes) - d.nbytes for d in docs]  # byte offset of every id in its document
    longest = max(int(s[-1]) + 1 for s in starts)
    buckets = position_buckets(longest, curve_base)
    pos_nll = np.zeros(longest)
    pos_cnt = np.zeros(longest, dtype=np.int64)  # scored text bytes by the offset of the id they belong to
    progress = Progress("stream", sum(len(d.ids) for d in docs), unit=" ids")
    done = 0
    doc_nll = np.zeros(len(docs))
    for b0 in range(0, len(docs), batch_size):
        group = docs[b0 : b0 + batch_size]
        L = max(len(d.ids) for d in group)
        tokens = torch.zeros(len(group), L, dtype=torch.long)
        scored = torch.zeros(len(group), L, dtype=torch.bool)
        for r, d in enumerate(group):
            tokens[r, : len(d.ids)] = torch.from_numpy(d.ids)
            scored[r, d.first : len(d.ids)] = True
        tokens, scored = tokens.to(device), scored.to(device)
        state = None
        for s in range(0, L - 1, window):
            e = min(s + window, L - 1)
            with autocast(device, precision):
                logits, state = net(tokens[:, s:e], state)
            nll = F.cross_entropy(logits.float().transpose(1, 2), tokens[:, s + 1 : e + 1], reduction="none")
            nll = (nll * scored[:, s + 1 : e + 1]).double().cpu().numpy()
            doc_nll[b0 : b0 + len(group)] += nll.sum(1)
            for r, d in enumerate(group):
                hi = min(e + 1, len(d.ids))
                lo = max(s + 1, d.first)
                if lo < hi:
                    np.add.at(pos_nll, starts[b0 + r][lo:hi], nll[r, lo - s - 1 : hi - s - 1])
                    np.add.at(pos_cnt, starts[b0 + r][lo:hi], d.nbytes[lo:hi])
            progress.update(done + min(e + 1, L) * len(group), f"docs {b0 + 1}-{b0 + len(group)} of {len(docs)}")
        done += sum(len(d.ids) for d in group)
    b_nll = np.array([pos_nll[lo:hi].sum() for lo, hi in buckets])
    b_cnt = np.array([pos_cnt[lo:hi].sum() for lo, hi in buckets])
    curve = [{"start": lo, "end": hi, "bpb": float(b_nll[j] / b_cnt[j] / LN2), "bytes": int(b_cnt[j])}
             for j, (lo, hi) in enumerate(buckets) if b_cnt[j] > 0]
    units = Units()
    for d, v in zip(docs, doc_nll):
        units.nll.append(float(v))
        units.bytes.append(int(d.scored_bytes))
        units.add_targets(d.targets)
    total = sum(units.bytes)
    return {"bpb": float(doc_nll.sum() / total / LN2), "loss": float(doc_nll.sum() / total), "bytes": int(total),
            "docs": len(docs), "window": window, "curve": curve, "units": units.to_json("document")}
