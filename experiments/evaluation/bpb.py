"""Evaluation loops written once against the house contract (``evaluation.run.evaluate`` runs them on a run):

* ``windowed_bpb`` — bits per byte on fixed random windows of ``context`` bytes (no state).
* ``streaming_bpb`` — whole documents walked window by window with carried state; bits per byte
  overall and as a function of the position in the document (the long-context curve).
"""

from __future__ import annotations

import contextlib
import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from experiments.data.corpus import Split
from experiments.data.samplers import RandomWindows
from experiments.evaluation.inference_methods import method_nll, patch_profile, window_length
from experiments.training.progress import Progress

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
                 methods: list[str] | None = None, patch_size: int | None = None) -> dict:
    if methods:
        return _windowed_methods(net, split, context, batch_size, num_batches, seed, device, precision, split_name,
                                 list(methods), patch_size or net.patch_size)
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


def _windowed_methods(net, split, T, batch_size, num_batches, seed, device, precision, split_name, methods, P):
    """Several inference methods (and the within-patch loss profile) on exactly the same target bytes."""
    if P is None and any("strided" in m for m in methods):
        raise ValueError(f"eval.methods={methods} includes strided inference, which needs a patch model; "
                         f"{type(net).__name__} has no patch_size (set eval.patch_size to profile by slot only)")
    P = P or 2
    sampler = RandomWindows(split, window_length(T, P) - 1, batch_size, seed, split_name=split_name)
    sums = {m: 0.0 for m in methods}
    profile = torch.zeros(P, 2, dtype=torch.float64)
    count = 0
    for step in range(num_batches):
        u = sampler.batch(step)["tokens"].to(device)
        with autocast(device, precision):
            nll = method_nll(net, u, T, P, methods)
        for m in methods:
            sums[m] += float(nll[m].double().sum())
        if "basic" in nll:
            profile += patch_profile(nll["basic"], T, P)
        count += u.shape[0] * T
    out = {"bytes": count, "context": T, "methods": {m: sums[m] / count / LN2 for m in methods}}
    if profile[:, 1].sum() > 0:
        out["patch_profile"] = [{"slot": p, "bpb": float(profile[p, 0] / profile[p, 1] / LN2)} for p in range(P)]
    first = methods[0]
    out.update(bpb=out["methods"][first], loss=sums[first] / count)
    return out


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
    the index of the predicted byte (a token model: token) in its document; bits per byte always divide
    by the text bytes scored.
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
    pos_cnt = np.zeros(longest, dtype=np.int64)  # scored text bytes by position (a token model: its tokens' bytes)
    progress = Progress("stream", sum(n for _, n in docs), unit=" bytes")
    done = 0
    doc_nll = np.zeros(len(docs))
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
            nll = (nll * m).double()
            doc_nll[b0 : b0 + len(group)] += nll.sum(1).cpu().numpy()
            nll = nll.sum(0).cpu().numpy()
            pos_nll[s + 1 : e + 1] += nll
            pos_cnt[s + 1 : e + 1] += (split.bytes_of(tokens[:, s + 1 : e + 1].cpu().numpy()) * m.cpu().numpy()).sum(0)
            progress.update(done + int(valid[:, : e + 1].sum()), f"docs {b0 + 1}-{b0 + len(group)} of {len(docs)}")
        done += sum(n for _, n in group)
    for j, (lo, hi) in enumerate(buckets):
        b_nll[j] = pos_nll[lo:hi].sum()
        b_cnt[j] = pos_cnt[lo:hi].sum()
    total = pos_cnt.sum()
    curve = [
        {"start": lo, "end": hi, "bpb": float(b_nll[j] / b_cnt[j] / LN2), "bytes": int(b_cnt[j])}
        for j, (lo, hi) in enumerate(buckets) if b_cnt[j] > 0
    ]
    units = Units()
    for (i, n), v in zip(docs, doc_nll):
        units.nll.append(float(v))
        units.bytes.append(int(split.bytes_of(split.document(i)[1:n]).sum()))
        units.add_targets(split.document(i)[1:n])
    return {"bpb": float(pos_nll.sum() / total / LN2), "loss": float(pos_nll.sum() / total),
            "bytes": int(total), "docs": len(docs), "window": window, "curve": curve,
            "units": units.to_json("document")}
