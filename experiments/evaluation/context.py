"""What context buys: the same target bytes scored after the model has read only the last ``c`` bytes before
them, for every ``c`` of a list, from a fresh state, through the model's own streaming path (a
Transformer's KV window, Megalodon's carried state, a kNN memory, MEGABYTE's window).

For each test document of at least ``max(contexts) + span`` bytes, the target is the fixed span
``doc[C + 1 : C + span]`` with ``C = max(contexts)``; at context ``c`` the model reads
``doc[C - c : C + span - 1]`` window by window and only its predictions of the target bytes are scored. So
the target bytes are identical at every ``c`` (and for every model on the same corpus): a difference
between two contexts is what those extra bytes bought, not easier or harder text. Documents that are too
short are counted as skipped, never used partially. A token-level run reads the same bytes through its
tokenizer, as ``tokens(context) + tokens(target)`` (``evaluation.aligned``): contexts, targets and bits per
byte stay in bytes, ``window`` counts tokens.

    python -m experiments.context_eval run_dir=<run> 'contexts=[0,256,1024,4096,16384]' span=4096
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from architectures.common import clone_state
from experiments.config import integer, precision, to_plain, write_json
from experiments.data.corpus import Split
from experiments.data.tokens import load as load_tokenizer
from experiments.evaluation.aligned import encode_aligned
from experiments.evaluation.bpb import Units, autocast
from experiments.evaluation.run import eval_corpus
from experiments.training.checks import read_json_quietly
from experiments.training.progress import Progress
from experiments.training.runs import load_run, pick_device


def eligible(split: Split, need: int, max_docs: int | None) -> tuple[list[int], int]:
    """Documents of at least ``need`` bytes in split order (at most ``max_docs``), and how many were too short."""
    long = [i for i in range(split.n_docs) if split.lengths[i] >= need]
    return (long[:max_docs] if max_docs else long), split.n_docs - len(long)


def distractors(split: Split, i: int, n: int) -> np.ndarray:
    """The last ``n`` bytes of the documents that follow document ``i`` in the split (wrapping, never ``i``):
    unrelated text read, without any reset, before a document (FoT paper section 5.4's multi-document
    setting: the memory is kept across documents)."""
    parts, total, j = [], 0, i
    while total < n:
        j = (j + 1) % split.n_docs
        if j == i:
            if not parts:
                raise ValueError("distractors need a split with at least two documents")
            continue
        parts.append(split.document(j))
        total += len(parts[-1])
    return np.concatenate(parts)[-n:] if n else np.zeros(0, dtype=split.data.dtype)


def read_ids(text: np.ndarray, first: int, tok) -> tuple[np.ndarray, int]:
    """What the model reads for ``text`` (bytes, scored from ``text[first]`` on) and the index of its first
    scored id: the bytes themselves, or a token model's ``tokens(text[:first]) + tokens(text[first:])`` (a
    token boundary where the target begins, so it is scored on exactly the target bytes)."""
    if tok is None:
        return text.astype(np.int64), first
    ids, start, _ = encode_aligned(tok, text, first)
    return ids, start


def _batch(split: Split, group: list[int], before: list[np.ndarray], c: int, top: int, span: int, tok, device):
    """One context's inputs for a group of documents, each read after its ``before`` bytes (distractors):
    (inputs, targets, first, stop)."""
    texts = [np.concatenate([b, split.document(i)[top - c: top + span]]) for i, b in zip(group, before)]
    read = [read_ids(t, len(b) + c + 1, tok) for t, b in zip(texts, before)]
    x = torch.zeros(len(group), max(len(ids) for ids, _ in read), dtype=torch.long)
    first = torch.zeros(len(group), 1, dtype=torch.long)  # index of each row's first scored target
    for r, (ids, start) in enumerate(read):
        x[r, : len(ids)] = torch.from_numpy(ids)
        first[r] = start - 1
    stop = torch.tensor([[len(ids) - 1] for ids, _ in read])  # padding is never scored
    x = x.to(device)
    return x[:, :-1], x[:, 1:], first.to(device), stop.to(device)


def shared_prefix(inputs: list[torch.Tensor], firsts: list[torch.Tensor], window: int) -> int:
    """How many leading positions every context of a batch reads identically and scores none of, in whole windows:
    read once, its state copied for each context (the same numbers as reading it again; the multi-document
    evaluation's distractors)."""
    n = min(min(int(f.min()) for f in firsts), min(x.shape[1] for x in inputs))
    for x in inputs[1:]:
        differ = (x[:, :n] != inputs[0][:, :n]).any(0).nonzero()
        n = int(differ[0]) if len(differ) else n
    return n // window * window


def fingerprint(net, settings: dict) -> str:
    """What a partial evaluation must share to be continued: the settings and every weight, bit for bit."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _resume(partial: Path | None, key: str, us: dict[int, Units]) -> int:
    """Documents already scored by an interrupted evaluation with this ``key`` (their units restored), else 0."""
    if partial is None or not partial.exists():
        return 0
    saved = read_json_quietly(partial)
    if not isinstance(saved, dict) or saved.get("key") != key:
        print(f"[longlab] {partial} was written for other weights or settings: scoring from the first document")
        return 0
    for c, u in us.items():
        u.add(torch.tensor(saved["units"][str(c)]["nll"], dtype=torch.float64),
              torch.tensor(saved["units"][str(c)]["bytes"]))
    print(f"[longlab] continuing from {partial}: {saved['docs']} documents already scored")
    return int(saved["docs"])


@torch.no_grad()
def context_curve(net, split: Split, contexts: list[int], span: int, window: int, batch_size: int,
                  device: torch.device, max_docs: int | None = None, precision: str = "32",
                  distract: int = 0, target_at: int | None = None, tok=None, share_prefix: bool = True,
                  partial: Path | None = None, distract_reset: tuple[str, ...] = ()) -> dict[str, Any]:
    """Bits per byte of each document's target span at every context; per-document units for intervals.
    ``distract`` > 0: that many bytes of other documents are read first, without a reset. ``target_at``: where
    the target starts (default: the largest context), so that evaluations with other contexts share it.
    ``tok``: a token model's tokenizer (``split`` is then the byte split; ``window`` counts tokens).
    ``share_prefix``: windows that every context reads identically before any target (the distractors) are read
    once per batch and the state after them copied (``clone_state``); False reads them again for each context.
    ``partial``: a file where the scores of finished batches are kept, so that an interrupted evaluation continues
    from its last finished batch (only with the same weights and settings); removed when the curve is done.
    ``distract_reset``: parts of the state (``net.state_parts``) reset where the document begins, after the
    distractors: which part of what the model carries out of other text makes a difference (a byte model only)."""
    contexts = sorted({int(c) for c in contexts})
    distract_reset = tuple(distract_reset)
    if distract_reset:
        unknown = sorted(set(distract_reset) - set(net.state_parts))
        if unknown or not distract or tok is not None:
            raise ValueError(f"distract_reset={list(distract_reset)} needs distractors > 0 (got {distract}), a byte "
                             f"model, and parts of {type(net).__name__}'s state {list(net.state_parts)}"
                             + (f" ({unknown} are not)" if unknown else ""))
    top = contexts[-1] if target_at is None else int(target_at)
    if top < contexts[-1]:
        raise ValueError(f"target_at={top} is before the largest context {contexts[-1]}: the context would start "
                         "before the document; raise target_at or lower the contexts")
    docs, skipped = eligible(split, top + span, max_docs)
    if not docs:
        raise ValueError(f"no document of the split has max(contexts) + span = {top + span:,} bytes (the longest "
                         f"has {int(split.lengths.max()):,}); use smaller contexts or span, or a corpus of longer "
                         "documents (data=packages)")
    progress = Progress("context", len(contexts) * len(docs), unit=" docs")
    us = {c: Units() for c in contexts}
    key = fingerprint(net, {"contexts": contexts, "span": span, "window": window, "batch_size": batch_size,
                            "docs": docs, "precision": str(precision), "distract": distract, "top": top,
                            "tokens": tok is not None, "share_prefix": share_prefix,
                            **({"distract_reset": sorted(distract_reset)} if distract_reset else {})})
    done = _resume(partial, key, us)

    def read(inputs, lo_to, state, targets=None, first=None, stop=None):
        """Windows of ``inputs`` from ``lo_to[0]`` to ``lo_to[1]``; scored when ``targets`` is given."""
        nll = torch.zeros(inputs.shape[0], dtype=torch.float64, device=device)
        lo_all = None if first is None else int(first.min())
        for s in range(lo_to[0], lo_to[1], window):
            e = min(s + window, lo_to[1])
            scored = targets is not None and max(s, lo_all) < e
            with autocast(device, precision):  # unscored windows: the state only (``read`` may skip work)
                logits, state = net(inputs[:, s:e], state) if scored else (None, net.read(inputs[:, s:e], state))
            if not scored:
                continue
            lo = max(s, lo_all)  # only predictions of target bytes count
            dt = torch.promote_types(logits.dtype, torch.float32)
            part = F.cross_entropy(logits[:, lo - s:].to(dt).transpose(1, 2), targets[:, lo:e], reduction="none")
            pos = torch.arange(lo, e, device=device)
            nll += (part.double() * ((pos >= first) & (pos < stop))).sum(1)
        return nll, state

    def after(inputs, n):
        """The state after the first ``n`` inputs, with ``distract_reset`` applied."""
        _, state = read(inputs, (0, n), None)
        if distract_reset:
            state = net.reset_parts(state, torch.ones(inputs.shape[0], dtype=torch.bool), distract_reset)
        return state

    def add_targets(group):  # the scored bytes, the same at every context: doc[top + 1 : top + span]
        for i in group:
            for c in contexts:
                us[c].add_targets(split.document(i)[top + 1: top + span])

    add_targets(docs[:done])  # the resumed documents', into the hash in the same order
    for b0 in range(done, len(docs), batch_size):
        group = docs[b0: b0 + batch_size]
        before = [distractors(split, i, distract) for i in group]  # built once, read before every context
        batches = [_batch(split, group, before, c, top, span, tok, device) for c in contexts]
        if distract_reset:  # the distractors, then the reset where the document begins
            shared = distract
        else:
            shared = shared_prefix([b[0] for b in batches], [b[2] for b in batches], window) if share_prefix else 0
        prefix = after(batches[0][0], shared) if share_prefix else None
        for n, (c, (inputs, targets, first, stop)) in enumerate(zip(contexts, batches)):
            if prefix is None:  # read again for each context
                state = after(inputs, shared)
            else:
                state = clone_state(prefix) if n < len(contexts) - 1 else prefix
            nll, _ = read(inputs, (shared, inputs.shape[1]), state, targets, first, stop)
            us[c].add(nll, torch.full((len(group),), span - 1))
        add_targets(group)
        progress.update(len(contexts) * (b0 + len(group)), f"contexts {contexts[0]:,}-{contexts[-1]:,}")
        if partial is not None and b0 + len(group) < len(docs):
            write_json(partial, {"key": key, "docs": b0 + len(group),
                                 "units": {str(c): {"nll": u.nll, "bytes": u.bytes} for c, u in us.items()}})
    if partial is not None:
        partial.unlink(missing_ok=True)
    units = {str(c): us[c].to_json("document") for c in contexts}
    curve = [{"context": c, **us[c].summary()} for c in contexts]
    first = curve[0]["bpb"]
    for point in curve:
        point["gain"] = first - point["bpb"]
    return {"contexts": contexts, "span": span, "docs": len(docs), "skipped_docs": skipped, "distractors": distract,
            "distract_reset": list(distract_reset), "min_doc_bytes": top + span, "window": window, "curve": curve,
            "units": units}


def check_context_config(cfg: DictConfig) -> list[int]:
    precision(cfg.precision)
    contexts = to_plain(cfg.contexts)
    if not isinstance(contexts, list) or not contexts:
        raise ValueError(f"contexts={contexts!r} must be a non-empty list of context lengths in bytes, "
                         "e.g. [0,256,1024]")
    for i, c in enumerate(contexts):
        integer(c, f"contexts[{i}]", 0)
    integer(cfg.span, "span", 2)
    integer(cfg.batch_size, "batch_size")
    integer(cfg.window, "window", optional=True)
    integer(cfg.max_docs, "max_docs", optional=True)
    integer(cfg.get("distractors", 0), "distractors", 0)
    integer(cfg.get("target_at"), "target_at", 0, optional=True)
    parts = to_plain(cfg.get("distract_reset", []))
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        raise ValueError(f"distract_reset={parts!r} must be a list of state parts, e.g. [ema,attention]")
    return [int(c) for c in contexts]


def run(cfg: DictConfig) -> dict[str, Any]:
    """``configs/context_eval.yaml``: the context-use curve of a run; writes ``<run_dir>/<out>``."""
    contexts = check_context_config(cfg)
    device = pick_device(cfg.device)
    train_cfg, module = load_run(cfg.run_dir, cfg.ckpt_path, to_plain(cfg.net_overrides), device)
    corpus, other = eval_corpus(cfg, train_cfg)
    split, tok = corpus.split(cfg.split), None
    if split.tokenizer is not None:  # a token run reads the byte text through its tokenizer: contexts stay bytes
        tok, split = load_tokenizer(split.tokenizer), corpus.byte_corpus().split(cfg.split)
    window = int(cfg.window or train_cfg.data.seq_len)
    limit = module.net.max_len
    distract = int(cfg.get("distractors", 0))
    if limit is not None and distract + max(contexts) + int(cfg.span) > limit:
        need = distract + max(contexts) + int(cfg.span)  # what one stream reads
        raise ValueError(f"{type(module.net).__name__} represents at most max_len={limit} bytes but the distractors, "
                         f"the largest context and the span take {need}; lower them, or give the model a sliding "
                         "window (MEGABYTE: model.net.global_window)")
    r = context_curve(module.net, split, contexts, int(cfg.span), window, int(cfg.batch_size), device,
                      cfg.max_docs, cfg.precision, distract, cfg.get("target_at"), tok,
                      partial=Path(cfg.run_dir) / f".{cfg.out}.partial",
                      distract_reset=tuple(to_plain(cfg.get("distract_reset", []))))
    r.update({"run_dir": str(cfg.run_dir), "model": train_cfg.model.get("name"), "split": cfg.split,
              "net_overrides": to_plain(cfg.net_overrides),
              "corpus": {"path": corpus.meta["source"].get("path"), "folder": corpus.folder.name,
                         "trained_on": not other}})
    print(f"[longlab] context use: {r['docs']} documents of >= {r['min_doc_bytes']:,} bytes ({r['skipped_docs']} "
          f"shorter ones skipped), the same {r['span'] - 1:,} target bytes each"
          + (f", after {distract:,} bytes of other documents ({reset_text(r['distract_reset'])})" if distract else ""))
    for p in r["curve"]:
        print(f"  context {p['context']:>9,}: {p['bpb']:.4f} bits/byte (gain over {contexts[0]:,}: {p['gain']:+.4f})")
    write_json(Path(cfg.run_dir) / cfg.out, r)
    return r


def reset_text(parts: list[str]) -> str:
    """How the document's start after the distractors is read: words for reports."""
    return f"then a reset of the state's {', '.join(parts)}" if parts else "no reset"


__all__ = ["context_curve", "eligible", "reset_text", "run"]
