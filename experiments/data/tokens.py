"""Tokens as well as bytes: ``data.tokenizer=bytes`` (the default: one token per byte) | ``bpe`` (a byte-level
BPE of ``data.bpe_vocab_size`` tokens, trained with the ``tokenizers`` library on the training split) | a path
to a saved Hugging Face tokenizer (a ``tokenizer.json`` or the folder holding one).

A tokenized corpus is built once from the byte corpus and cached beside it, keyed by the byte corpus's
fingerprint and the tokenizer's settings: per split, token ids (uint16, or uint32 past 65,536 tokens) and
document offsets in tokens, the tokenizer itself, and the number of UTF-8 bytes every token stands for
(``token_bytes``). Bits per byte always divide a span's summed NLL by the bytes of its text, counted with
``token_bytes``: a token model and a byte model are measured on the same scale.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from experiments.data.build import SPLITS
from experiments.data.files import optional_module

KINDS = ("bytes", "bpe")


@lru_cache(maxsize=1)
def byte_of_char() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode table, which byte-level BPE vocabularies are written in."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def tokenizer_file(spec: str) -> Path:
    path = Path(os.path.expanduser(str(spec)))
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"data.tokenizer={spec!r}: no tokenizer.json there; use bytes, bpe, or the path of a "
                                "saved Hugging Face tokenizer (tokenizer.json or its folder)")
    return path


def load(spec: str):
    tokenizers = optional_module("tokenizers", f"data.tokenizer={spec}")
    return tokenizers.Tokenizer.from_file(str(tokenizer_file(spec)))


def vocab_size_of(kind: str, bpe_vocab_size: int = 4096) -> int:
    """The model's vocabulary for a tokenizer setting (the ``${vocab_of:...}`` resolver of the data configs)."""
    if kind == "bytes":
        return 256
    if kind == "bpe":
        if not isinstance(bpe_vocab_size, int) or bpe_vocab_size <= 256:
            raise ValueError(f"data.bpe_vocab_size={bpe_vocab_size!r} must be an integer > 256 (256 byte tokens "
                             "plus merges)")
        return bpe_vocab_size
    return load(kind).get_vocab_size()


def is_byte_level(tok) -> bool:
    """Whether the tokenizer writes its pieces in GPT-2's byte-to-unicode alphabet (its decoder says so)."""
    decoder = json.loads(tok.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(p.get("type") == "ByteLevel" for p in parts)


def id_bytes(tok) -> list[bytes]:
    """The text bytes each id stands for (generation writes these): a byte-level vocabulary's pieces through
    GPT-2's table; otherwise ``<0xNN>`` byte pieces as that byte and the rest as their UTF-8 (``▁`` a space);
    special tokens as nothing."""
    table, byte_level = byte_of_char(), is_byte_level(tok)
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    out = [b""] * tok.get_vocab_size(with_added_tokens=True)
    for piece, i in tok.get_vocab(with_added_tokens=True).items():
        if piece in special:
            continue
        if byte_level and all(c in table for c in piece):
            out[i] = bytes(table[c] for c in piece)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out[i] = bytes([int(piece[3:5], 16)])
        else:
            out[i] = piece.replace("▁", " ").encode("utf-8")
    return out


def token_bytes(tok) -> np.ndarray:
    """UTF-8 bytes each id stands for (``len`` of ``id_bytes``): what bits per byte divide by."""
    return np.array([len(b) for b in id_bytes(tok)], dtype=np.int64)


def train_bpe(texts, vocab_size: int):
    tokenizers = optional_module("tokenizers", "data.tokenizer=bpe")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(texts, trainer)
    return tok


def text_of(doc: np.ndarray) -> str:
    """A document's text for a tokenizer (bytes that are not UTF-8 become U+FFFD, whose 3 bytes are then the
    ones counted)."""
    return bytes(doc).decode("utf-8", errors="replace")


def tokenize_corpus(corpus, kind: str, bpe_vocab_size: int = 4096) -> Path:
    """The folder of ``corpus`` (a built ByteCorpus) tokenized by ``kind`` (built once, then reused)."""
    if kind == "bpe":
        vocab_size_of(kind, bpe_vocab_size)
        setting = f"bpe{bpe_vocab_size}"
    else:
        setting = "file-" + hashlib.sha256(tokenizer_file(kind).read_bytes()).hexdigest()[:16]
    key = hashlib.sha256(f"{corpus.meta['fingerprint']}|{setting}".encode()).hexdigest()[:12]
    folder = corpus.folder.parent / f"{corpus.folder.name}-tok-{key}"
    if (folder / "meta.json").exists():
        return folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-{os.getpid()}-", dir=corpus.folder.parent))
    try:
        train = corpus.split("train")
        if kind == "bpe":
            texts = (text_of(train.document(i)) for i in range(train.n_docs))
            tok = train_bpe(texts, bpe_vocab_size)
        else:
            tok = load(kind)
        tok.save(str(tmp / "tokenizer.json"))
        sizes = token_bytes(tok)
        np.save(tmp / "token_bytes.npy", sizes)
        vocab = max(tok.get_vocab_size(with_added_tokens=True), bpe_vocab_size if kind == "bpe" else 0)
        dtype = np.uint16 if vocab <= 2**16 else np.uint32
        splits = {}
        for s in SPLITS:
            split = corpus.split(s)
            ids = [np.asarray(e.ids, dtype=dtype) for e in
                   tok.encode_batch([text_of(split.document(i)) for i in range(split.n_docs)])]
            offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
            np.concatenate(ids or [np.zeros(0, dtype)]).tofile(tmp / f"{s}.bin")
            np.save(tmp / f"{s}.idx.npy", offsets)
            (tmp / f"{s}.paths.json").write_text(json.dumps(split.paths))
            splits[s] = {"docs": split.n_docs, "tokens": int(offsets[-1]),
                         "bytes": int(sum(int(sizes[x].sum()) for x in ids))}
        meta = {"tokenizer": kind if kind == "bpe" else str(tokenizer_file(kind)), "bpe_vocab_size": bpe_vocab_size,
                "vocab_size": vocab, "dtype": np.dtype(dtype).name, "byte_corpus": corpus.folder.name,
                "fingerprint": f"{corpus.meta['fingerprint']}|{setting}", "splits": splits,
                "source": corpus.meta["source"], "split_rule": corpus.meta["split_rule"]}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m = json.loads((folder / "meta.json").read_text())
    print(f"[longlab] tokenized with {m['tokenizer']} ({m['vocab_size']:,} tokens): " + ", ".join(
        f"{s} {m['splits'][s]['tokens']:,} tokens for {m['splits'][s]['bytes']:,} bytes" for s in SPLITS), flush=True)
    return folder


__all__ = ["KINDS", "id_bytes", "load", "token_bytes", "tokenize_corpus", "train_bpe", "vocab_size_of"]
