"""Sampling with the state API: prefill the prompt once, then one byte per forward call (every
architecture's cached path); and ``sample(cfg)`` for a run (``configs/generate.yaml``, command line
``experiments.generate``): temperature, top-k, top-p, repetition penalty, stop strings, several samples,
bytes printed as they are generated."""

from __future__ import annotations

import codecs
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig

from experiments.config import to_plain
from experiments.data import tokens
from experiments.training.runs import load_run, pick_device


def check_sampling(max_new: int, temperature: float, top_k: int | None, top_p: float | None = None,
                   repetition_penalty: float = 1.0) -> None:
    if max_new < 0:
        raise ValueError(f"max_new_bytes={max_new} must be >= 0")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1, or null for no top-k filter")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1], or null for no nucleus filter")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty={repetition_penalty} must be > 0 (1 = none)")


def next_token(logits: torch.Tensor, seen: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
               repetition_penalty: float, generator: torch.Generator | None) -> torch.Tensor:
    """One byte per row from logits [B, V]; ``seen`` [B, V] marks bytes already in the row's context."""
    last = logits.float()
    if repetition_penalty != 1.0:  # CTRL's penalty: shrink the logits of bytes already seen
        last = torch.where(seen, torch.where(last > 0, last / repetition_penalty, last * repetition_penalty), last)
    if temperature <= 0:
        return last.argmax(-1, keepdim=True)
    last = last / temperature
    if top_k:
        kth = torch.topk(last, min(top_k, last.shape[-1])).values[:, -1:]
        last = last.masked_fill(last < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        probs, order = torch.softmax(last, -1).sort(-1, descending=True)
        drop = probs.cumsum(-1) - probs >= top_p  # keep the smallest set whose mass reaches top_p
        last = last.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(torch.softmax(last, -1), 1, generator=generator)


@torch.no_grad()
def generate(net, prompt: torch.Tensor, max_new: int, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             stop: list[bytes] | None = None, on_byte: Callable[[int], None] | None = None,
             id_bytes: list[bytes] | None = None) -> torch.Tensor:
    """``prompt`` [B, T0] (T0 >= 1) -> [B, T0 + n], n <= max_new; temperature 0 is greedy. Generation
    ends early once every row has produced one of the ``stop`` byte strings (rows are cut there by
    ``decode``). ``on_byte`` receives row 0's ids as they are made. ``id_bytes``: a token model's text bytes
    for each id (None: ids are bytes). A model with a ``max_len`` stops there (with a message) and returns
    what it generated."""
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be a non-empty [B, T] tensor, got shape {tuple(prompt.shape)}")
    check_sampling(max_new, temperature, top_k, top_p, repetition_penalty)
    limit = net.max_len
    if limit is not None and prompt.shape[1] > limit:
        raise ValueError(f"the prompt has {prompt.shape[1]} bytes but {type(net).__name__} represents at most "
                         f"max_len={limit}; shorten the prompt")
    if limit is not None and prompt.shape[1] + max_new > limit:
        print(f"[longlab] {type(net).__name__} has max_len={limit}: stopping after {limit - prompt.shape[1]} of "
              f"{max_new} new bytes", flush=True)
        max_new = limit - prompt.shape[1]
    stops = [s for s in (stop or []) if s]
    B = prompt.shape[0]
    seen = torch.zeros(B, net.config.vocab_size, dtype=torch.bool, device=prompt.device)
    seen.scatter_(1, prompt, True)
    done = torch.zeros(B, dtype=torch.bool)
    tails = [bytearray() for _ in range(B)]
    logits, state = net(prompt)
    out = [prompt]
    for i in range(max_new):
        nxt = next_token(logits[:, -1], seen, temperature, top_k, top_p, repetition_penalty, generator)
        out.append(nxt)
        seen.scatter_(1, nxt, True)
        if on_byte is not None:
            on_byte(int(nxt[0, 0]))
        if stops:
            for b in range(B):
                tails[b] += id_bytes[int(nxt[b, 0])] if id_bytes else bytes([int(nxt[b, 0])])
                if any(tails[b].endswith(s) for s in stops):
                    done[b] = True
            if bool(done.all()):
                break
        if i + 1 < max_new:
            logits, state = net(nxt, state)
    return torch.cat(out, dim=1)


def decode(row: torch.Tensor, prompt_len: int, stop: list[bytes], id_bytes: list[bytes] | None = None) -> str:
    """The prompt and the generated bytes up to (and including) the first stop string, as text."""
    ids = row.tolist()
    as_bytes = (lambda xs: b"".join(id_bytes[i] for i in xs)) if id_bytes else bytes  # noqa: E731
    prompt, new = as_bytes(ids[:prompt_len]), as_bytes(ids[prompt_len:])
    data = prompt + new
    prompt_len = len(prompt)
    ends = [new.find(s) + len(s) for s in stop if s and new.find(s) >= 0]
    if ends:
        new = new[: min(ends)]
    return (data[:prompt_len] + new).decode("utf-8", errors="replace")


def run_tokenizer(run_dir):
    """The tokenizer a run trained with (``<run_dir>/tokenizer.json``), None for a byte-level run."""
    path = Path(run_dir) / "tokenizer.json"
    return tokens.load(str(path)) if path.exists() else None


def unescape(text: str) -> bytes:
    """The UTF-8 bytes of ``text`` with backslash escapes (``\\n``, ``\\t``, ``\\x41``) turned into what they name."""
    return text.encode("utf-8").decode("unicode_escape").encode("latin-1")


def sample(cfg: DictConfig) -> list[str]:
    """``configs/generate.yaml``: ``num_samples`` continuations of ``prompt``; the first is printed byte
    by byte as it is made (``stream``), the others after it."""
    device = pick_device(cfg.device)
    _, module = load_run(cfg.run_dir, cfg.ckpt_path, device=device)
    text = unescape(str(cfg.prompt))  # prompt="def f():\n    " means a newline, as stop strings do
    tok = run_tokenizer(cfg.run_dir)
    id_bytes = None if tok is None else tokens.id_bytes(tok)
    prompt = list(text) if tok is None else tok.encode(text.decode("utf-8", errors="replace")).ids
    if not prompt:
        raise ValueError('prompt="" is empty; give at least one byte, e.g. prompt="def "')
    vocab = module.net.config.vocab_size
    if max(prompt) >= vocab:
        raise ValueError(f"prompt has byte values >= the model's vocab_size={vocab}")
    n = int(cfg.get("num_samples", 1))
    if n < 1:
        raise ValueError(f"num_samples={n} must be >= 1")
    stop = [unescape(str(s)) for s in to_plain(cfg.get("stop")) or []]
    g = torch.Generator(device=device).manual_seed(int(cfg.seed))
    x = torch.tensor([list(prompt)] * n, dtype=torch.long, device=device)
    streaming = bool(cfg.get("stream", True))
    printer = codecs.getincrementaldecoder("utf-8")(errors="replace")
    if streaming:
        sys.stdout.write(text.decode("utf-8", errors="replace"))

    def show(i: int) -> None:
        sys.stdout.write(printer.decode(id_bytes[i] if id_bytes else bytes([i])))
        sys.stdout.flush()

    out = generate(module.net, x, int(cfg.max_new_bytes), float(cfg.temperature), cfg.top_k, g,
                   top_p=cfg.get("top_p"), repetition_penalty=float(cfg.get("repetition_penalty", 1.0)),
                   stop=stop, on_byte=show if streaming else None, id_bytes=id_bytes)
    texts = [decode(row, len(prompt), stop, id_bytes) for row in out]
    if streaming:
        sys.stdout.write(printer.decode(b"", final=True) + "\n")
    for i, text in enumerate(texts[1:] if streaming else texts, 2 if streaming else 1):
        print(f"--- sample {i} ---\n{text}" if n > 1 else text)
    return texts if n > 1 else texts[0]
