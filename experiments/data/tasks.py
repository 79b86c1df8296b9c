"""Synthetic long-context tasks as byte-level data sources, for training and for evaluation.

Each task builds a document of ``length`` bytes whose answer depends on information placed at a
``depth`` in [0, 1] of it (0: the start, 1: just before the question), as a pure function of a seed:

* ``passkey``    — a five-digit pass key hidden in repetitive filler text; the document ends with the
  question and the answer (LongLLaMA's passkey retrieval, in bytes).
* ``dictionary`` — FoT's dictionary look-up in bytes: records ``[abcd:wxyz]`` of four-letter keys and
  values fill the context; the question asks the key defined at the depth: ``?abcd:wxyz``.
* ``recall``     — multi-query associative recall: four-letter keys with two-digit values ``abcd=12,``;
  eight queries at the end ask, in shuffled order, the keys defined around the depth: ``abcd=12;``.

``copy`` (random bytes, then the same bytes again) is a training aid, not one of the three tasks.

``Sample.tokens`` is the document, ``Sample.answer`` the mask of the answer bytes (what is scored).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from experiments.data.samplers import RankedDataModule, StepBatches

TASKS = ("passkey", "dictionary", "recall")
FILLER = (b"The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")
LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)


@dataclass
class Sample:
    tokens: np.ndarray  # uint8 [length]
    answer: np.ndarray  # bool [length]: True at the answer bytes
    needle: int  # where the queried information starts

    @property
    def answer_text(self) -> bytes:
        return bytes(self.tokens[self.answer])


def _filler(n: int, offset: int = 0) -> np.ndarray:
    reps = (n + offset) // len(FILLER) + 2
    return np.frombuffer(FILLER * reps, dtype=np.uint8)[offset : offset + n]


def _place(length: int, tail: int, block: int, depth: float) -> int:
    room = length - tail - block
    if room < 0:
        raise ValueError(f"length={length} is too short for this task (needs at least {tail + block} bytes)")
    return int(round(min(max(depth, 0.0), 1.0) * room))


# the pass key's needle: HEAD key MID key TAIL (the key, of KEY_DIGITS digits, written twice); then the question
NEEDLE_HEAD, NEEDLE_MID, NEEDLE_TAIL = b"The pass key is ", b". Remember it. ", b" is the pass key. "
QUESTION, KEY_DIGITS = b"What is the pass key? The pass key is ", 5


def passkey(length: int, depth: float, rng: np.random.Generator) -> Sample:
    key = bytes(rng.choice(DIGITS, KEY_DIGITS))
    needle = NEEDLE_HEAD + key + NEEDLE_MID + key + NEEDLE_TAIL
    question = QUESTION
    tail = len(question) + len(key)
    at = _place(length, tail, len(needle), depth)
    body = np.concatenate([_filler(at), np.frombuffer(needle, np.uint8),
                           _filler(length - tail - at - len(needle), at + len(needle))])
    tokens = np.concatenate([body, np.frombuffer(question + key, np.uint8)])
    answer = np.zeros(length, dtype=bool)
    answer[-len(key):] = True
    return Sample(tokens, answer, at)


def _distinct_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct four-letter keys [n, 4] (26^4 = 456,976 of them: distinct up to multi-MB contexts)."""
    codes = rng.choice(26**4, size=n, replace=False)
    return np.stack([LETTERS[(codes // 26**i) % 26] for i in range(4)], 1)


def dictionary(length: int, depth: float, rng: np.random.Generator) -> Sample:
    rec = 11  # [abcd:wxyz]
    n = (length - rec) // rec
    if n < 1:
        raise ValueError(f"length={length} is too short for the dictionary task (needs at least {2 * rec} bytes)")
    keys = _distinct_keys(rng, n)
    values = rng.choice(LETTERS, (n, 4))
    target = int(round(min(max(depth, 0.0), 1.0) * (n - 1)))
    recs = np.concatenate([np.full((n, 1), ord("[")), keys, np.full((n, 1), ord(":")), values,
                           np.full((n, 1), ord("]"))], 1).astype(np.uint8).reshape(-1)
    pad = _filler(length - rec - len(recs))
    q = np.concatenate([[ord("?")], keys[target], [ord(":")], values[target], [ord("]")]]).astype(np.uint8)
    tokens = np.concatenate([pad, recs, q])
    answer = np.zeros(length, dtype=bool)
    answer[length - 5 : length - 1] = True
    return Sample(tokens, answer, len(pad) + target * rec)


def recall(length: int, depth: float, rng: np.random.Generator, queries: int = 8) -> Sample:
    rec = 8  # abcd=12,
    tail = queries * rec
    n = (length - tail) // rec
    if n < queries:
        raise ValueError(f"length={length} is too short for the recall task (needs at least {2 * tail} bytes)")
    keys = _distinct_keys(rng, n)
    values = rng.choice(DIGITS, (n, 2))
    pairs = np.concatenate([keys, np.full((n, 1), ord("=")), values, np.full((n, 1), ord(","))], 1)
    pairs = pairs.astype(np.uint8).reshape(-1)
    centre = int(round(min(max(depth, 0.0), 1.0) * (n - 1)))
    lo = min(max(0, centre - queries // 2), n - queries)
    ask = rng.permutation(np.arange(lo, lo + queries))
    q = np.concatenate([np.concatenate([keys[i], [ord("=")], values[i], [ord(";")]]) for i in ask]).astype(np.uint8)
    pad = _filler(length - len(pairs) - len(q))
    tokens = np.concatenate([pad, pairs, q])
    answer = np.zeros(length, dtype=bool)
    base = length - len(q)
    for j in range(queries):
        answer[base + j * rec + 5 : base + j * rec + 7] = True
    return Sample(tokens, answer, len(pad) + lo * rec)


def copy(length: int, depth: float, rng: np.random.Generator) -> Sample:
    """A training aid, not a long-context task: random letters and digits, ``|``, the same bytes again
    (every copied byte scored). Dense copying forms the match-and-copy circuit that the three tasks
    use but reward only at their few answer bytes. ``depth`` is unused."""
    n = (length - 1) // 2
    src = rng.choice(np.concatenate([LETTERS, DIGITS]), n).astype(np.uint8)
    tokens = np.concatenate([src, [ord("|")], src, _filler(length - 2 * n - 1)]).astype(np.uint8)
    answer = np.zeros(length, dtype=bool)
    answer[n + 1 : 2 * n + 1] = True
    return Sample(tokens, answer, 0)


GENERATORS = {"passkey": passkey, "dictionary": dictionary, "recall": recall, "copy": copy}


def make(task: str, length: int, depth: float, seed: int) -> Sample:
    if task not in GENERATORS:
        raise ValueError(f"task={task!r} is unknown; use one of {list(GENERATORS)}")
    return GENERATORS[task](int(length), float(depth), np.random.default_rng([seed, int(length),
                                                                            int(round(depth * 1e6))]))


def check_tasks(tasks: list[str], key: str = "data.tasks", hint: str = "") -> None:
    if not tasks or set(tasks) - set(GENERATORS):
        raise ValueError(f"{key}={list(tasks)}: use some of {list(GENERATORS)}{hint}")


class TaskBatches:
    """Training batches of task documents as a pure function of (seed, step, rank): each row one
    document of ``seq_len + 1`` bytes, its task drawn from ``tasks`` and its depth uniformly;
    ``loss_on`` = ``answers`` scores the answer bytes only, ``all`` every byte (plain language
    modelling of the documents: the repeated pass key and the records teach copying). With
    ``min_len`` a row packs documents of log-uniform lengths in [min_len, seq_len + 1] one after
    another (short documents, where a retrieval is found quickly, beside long ones)."""

    def __init__(self, tasks: list[str], seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, loss_on: str = "all", min_len: int | None = None):
        check_tasks(tasks)
        if loss_on not in ("all", "answers"):
            raise ValueError(f"data.loss_on={loss_on!r}; use all or answers")
        if min_len is not None and not 0 < min_len <= seq_len + 1:
            raise ValueError(f"data.min_len={min_len} must be in [1, seq_len + 1 = {seq_len + 1}] (or null: "
                             "one document per row)")
        self.loss_on, self.min_len = loss_on, min_len
        self.tasks, self.seq_len, self.batch_size = list(tasks), seq_len, batch_size
        self.seed, self.rank, self.world = seed, rank, world_size

    def _lengths(self, rng: np.random.Generator) -> list[int]:
        left, out = self.seq_len + 1, []
        while left:
            n = left
            if self.min_len is not None and left >= 2 * self.min_len:
                n = int(np.exp(rng.uniform(np.log(self.min_len), np.log(left))))
                n = left if left - n < self.min_len else n  # no remainder too short for a document
            out.append(n)
            left -= n
        return out

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        toks, masks = [], []
        for r in range(self.batch_size):
            rng = np.random.default_rng([self.seed, step, self.rank * self.batch_size + r, 13])
            parts = []
            for n in self._lengths(rng):
                task = self.tasks[int(rng.integers(len(self.tasks)))]
                parts.append(GENERATORS[task](n, float(rng.random()), rng))
            toks.append(np.concatenate([p.tokens for p in parts]).astype(np.int64))
            masks.append(np.concatenate([p.answer for p in parts])[1:])
        out = {"tokens": torch.from_numpy(np.stack(toks))}
        if self.loss_on == "answers":
            out["loss_mask"] = torch.from_numpy(np.stack(masks))
        return out


class TaskDataModule(RankedDataModule):
    """Training on ``loss_on`` bytes; validation always on the answer bytes (val/acc: answer accuracy)."""

    def __init__(self, tasks: list[str] = TASKS, seq_len: int = 1024, batch_size: int = 16, seed: int = 0,
                 val_batches: int = 4, eval_seed: int = 1234, vocab_size: int = 256, loss_on: str = "all",
                 min_len: int | None = None, val_tasks: list[str] | None = None):
        super().__init__()
        if vocab_size != 256:
            raise ValueError(f"data.vocab_size={vocab_size}: the long-context tasks are byte-level (256)")
        self.tasks, self.seq_len, self.batch_size, self.loss_on = list(tasks), seq_len, batch_size, loss_on
        self.seed, self.val_batches, self.eval_seed, self.min_len = seed, val_batches, eval_seed, min_len
        if val_tasks is not None:  # e.g. training aids left out
            check_tasks(val_tasks, "data.val_tasks", " (or null: data.tasks)")
        self.val_tasks = list(val_tasks) if val_tasks is not None else self.tasks
        TaskBatches(self.tasks, seq_len, batch_size, seed, loss_on=loss_on, min_len=min_len).batch(0)  # fail now

    def train_dataloader(self):
        rank, world = self._rank()
        start = self.trainer.global_step * self.trainer.accumulate_grad_batches if self.trainer else 0
        b = TaskBatches(self.tasks, self.seq_len, self.batch_size, self.seed, rank, world, self.loss_on, self.min_len)
        return DataLoader(StepBatches(b, start=start), batch_size=None)

    def val_dataloader(self):
        rank, world = self._rank()
        b = TaskBatches(self.val_tasks, self.seq_len, self.batch_size, self.eval_seed, loss_on="answers")
        return DataLoader(StepBatches(b, count=len(range(rank, self.val_batches, world)), stride=world, offset=rank),
                          batch_size=None)
