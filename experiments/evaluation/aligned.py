"""A token-level run scored on exactly the text a byte-level run is scored on (``eval.byte_windows=true``):
the same random byte windows, the same documents truncated at the same byte, with the same bytes of
context before every scored byte.

Each window (document) of bytes ``w`` is read as ``tokens(w[:1]) + tokens(w[1:])``: the first byte is the
context a byte model also gets, and tokenizing the rest separately puts a token boundary exactly where the
scored text begins, so both models score the bytes ``w[1:]`` and nothing else. Bits per byte divide the
summed NLL of those tokens by ``len(w) - 1``. The targets' hash is the hash of those bytes, as for a byte
model: the comparison tables check it. Text that is not UTF-8 reaches the tokenizer as U+FFFD (what the
tokenized corpus holds too); the windows where that happened are counted (``edited_units``), so a
comparison can say how much of its text differed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from experiments.data.corpus import Split
from experiments.data.samplers import RandomWindows
from experiments.data.tokens import id_bytes, text_of
from experiments.evaluation.bpb import StreamDoc, Units, autocast, longest_documents, stream_documents


def encode_aligned(tok, window: np.ndarray, split_at: int = 1) -> tuple[np.ndarray, int, bool]:
    """(ids of ``window`` read as ``tokens(window[:split_at]) + tokens(window[split_at:])``, index of the first
    scored id, whether the scored text reached the tokenizer edited because it is not UTF-8). ``window``: byte
    values; the bytes before ``split_at`` are context only."""
    window = np.asarray(window)
    if window.dtype != np.uint8:  # int64 from a sampler: bytes() of it would hold 8 bytes per value
        window = window.astype(np.uint8)
    head, rest = window[:split_at].tobytes(), window[split_at:].tobytes()
    text = text_of(rest)
    a = tok.encode(text_of(head), add_special_tokens=False).ids
    b = tok.encode(text, add_special_tokens=False).ids
    if not a or not b:
        raise ValueError(f"the tokenizer turned {head!r} or a span of {len(rest)} bytes into no tokens; a byte-aligned "
                         "evaluation needs a tokenizer that covers every byte (byte-level BPE)")
    return np.asarray(a + b, dtype=np.int64), len(a), text.encode("utf-8") != rest


@torch.no_grad()
def aligned_windowed_bpb(net, byte_split: Split, tok, context: int, batch_size: int, num_batches: int, seed: int,
                         device: torch.device, precision="32", split_name: str = "test") -> dict:
    """The windows ``windowed_bpb`` samples from ``byte_split`` at ``context`` bytes, scored by a token model."""
    sampler = RandomWindows(byte_split, context, batch_size, seed, split_name=split_name)
    units, edited = Units(), 0
    for step in range(num_batches):
        windows = sampler.batch(step)["tokens"].numpy().astype(np.uint8)
        encoded = [encode_aligned(tok, w) for w in windows]
        L = max(len(ids) for ids, _, _ in encoded)
        ids = torch.zeros(len(encoded), L, dtype=torch.long)
        scored = torch.zeros(len(encoded), L - 1, dtype=torch.bool)
        for r, (x, first, was_edited) in enumerate(encoded):
            ids[r, : len(x)] = torch.from_numpy(x)
            scored[r, first - 1 : len(x) - 1] = True
            edited += was_edited
        ids, scored = ids.to(device), scored.to(device)
        with autocast(device, precision):
            logits, _ = net(ids[:, :-1])
        nll = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none") * scored
        units.add(nll.double().sum(1), torch.full((len(encoded),), context, dtype=torch.long))
        units.add_targets(windows[:, 1:])
    return {**units.summary(), "context": context, "units": units.to_json("window"), "edited_units": edited}


def aligned_streaming_bpb(net, byte_split: Split, tok, window: int, batch_size: int, device: torch.device,
                          max_docs: int | None = None, max_doc_bytes: int | None = None, curve_base: int = 256,
                          precision="32") -> dict:
    """The documents ``streaming_bpb`` walks in ``byte_split`` (longest first in bytes, the first
    ``max_doc_bytes`` bytes), read by a token model ``window`` tokens per call with its carried state."""
    sizes = np.array([len(b) for b in id_bytes(tok)], dtype=np.int64)
    docs, edited = [], 0
    for text in longest_documents(byte_split, max_docs, max_doc_bytes):
        text = np.asarray(text)
        ids, first, was_edited = encode_aligned(tok, text)
        edited += was_edited
        docs.append(StreamDoc(ids, first, sizes[ids], text[1:], len(text) - 1))
    r = stream_documents(net, docs, window, batch_size, device, curve_base, precision)
    return {**r, "edited_units": edited}


__all__ = ["aligned_streaming_bpb", "aligned_windowed_bpb", "encode_aligned"]
