"""FoT's synthetic dictionary look-up task (paper section 5.2).

Vocabulary: 64 symbols (ids 0..63) plus <k>=64, <v>=65, <q>=66. Keys and values are 4 symbols.
Definition record ``<k> k1 k2 k3 k4 <v> v1 v2 v3 v4``; query record ``<q> k1 k2 k3 k4 <v> v1 v2 v3 v4``.
A training document is two windows: the first defines window/10 keys, the second asks each of them
once, in a shuffled order, so answering needs the memory layer. Loss and accuracy count only the
v1..v4 targets of query records (``loss_mask``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from experiments.data.samplers import RankedDataModule, StepBatches

SYMBOLS, K_TOK, V_TOK, Q_TOK = 64, 64, 65, 66
VOCAB = 67
RECORD = 10


def check_window(window: int) -> None:
    if window < RECORD or window % RECORD:
        raise ValueError(f"the dictionary task packs 10-token records: window={window} must be a positive "
                         "multiple of 10 (e.g. model.net.window=120)")


def records(keys: np.ndarray, values: np.ndarray, marker: int) -> np.ndarray:
    """[n, 4] keys and values -> flat [n * 10] records."""
    n = len(keys)
    rec = np.empty((n, RECORD), dtype=np.int64)
    rec[:, 0], rec[:, 1:5], rec[:, 5], rec[:, 6:10] = marker, keys, V_TOK, values
    return rec.reshape(-1)


def query_value_mask(n_records: int) -> np.ndarray:
    """True at the v1..v4 positions of each record."""
    m = np.zeros((n_records, RECORD), dtype=bool)
    m[:, 6:10] = True
    return m.reshape(-1)


def random_entries(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n distinct keys and n values, each 4 symbols."""
    codes = rng.choice(SYMBOLS**4, size=n, replace=False)
    keys = np.stack([(codes // SYMBOLS**i) % SYMBOLS for i in range(4)], 1)
    return keys, rng.integers(0, SYMBOLS, size=(n, 4))


def training_document(rng: np.random.Generator, window: int) -> tuple[np.ndarray, np.ndarray]:
    """tokens [2W] and is-scored [2W] (True at query values)."""
    n = window // RECORD
    keys, values = random_entries(rng, n)
    order = rng.permutation(n)
    tokens = np.concatenate([records(keys, values, K_TOK), records(keys[order], values[order], Q_TOK)])
    scored = np.concatenate([np.zeros(window, dtype=bool), query_value_mask(n)])
    return tokens, scored


class DictionaryBatches:
    """Batches as a pure function of (seed, step, rank).

    ``crossbatch``: each row one whole document, tokens [B, 2W + 1], loss_mask [B, 2W] (targets).
    ``stream``: each row walks its own documents window by window (tokens [B, W + 1], loss_mask
    [B, W], doc_start [B]), for models that carry state (the memorizing variant)."""

    def __init__(self, window: int, batch_size: int, seed: int, mode: str = "crossbatch", rank: int = 0,
                 world_size: int = 1):
        check_window(window)
        if mode not in ("crossbatch", "stream"):
            raise ValueError(f"dictionary sampler={mode!r}; use crossbatch or stream")
        self.W, self.B, self.seed, self.mode, self.rank, self.world = window, batch_size, seed, mode, rank, world_size

    def _doc(self, row: int, doc: int):
        rng = np.random.default_rng([self.seed, self.rank * self.B + row, doc, 5])
        return training_document(rng, self.W)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        toks, masks, starts = [], [], []
        for r in range(self.B):
            if self.mode == "crossbatch":
                t, sc = self._doc(r, step)
                t = np.append(t, Q_TOK)
                masks.append(sc)  # sc[t] = token t scored; targets are tokens[1:]
                toks.append(t)
                masks[-1] = np.append(sc[1:], False)
            else:
                doc, half = divmod(step, 2)
                t, sc = self._doc(r, doc)
                nxt = t[self.W] if half == 0 else self._doc(r, doc + 1)[0][0]
                piece = t[half * self.W : (half + 1) * self.W]
                sc_piece = sc[half * self.W : (half + 1) * self.W]
                toks.append(np.append(piece, nxt))
                masks.append(np.append(sc_piece[1:], False if half else sc[self.W]))
                starts.append(half == 0)
        out = {"tokens": torch.from_numpy(np.stack(toks)), "loss_mask": torch.from_numpy(np.stack(masks))}
        if self.mode == "stream":
            out["doc_start"] = torch.tensor(starts)
        return out


class DictionaryDataModule(RankedDataModule):
    def __init__(self, window: int = 120, batch_size: int = 32, seed: int = 0, sampler: str = "crossbatch",
                 val_batches: int = 4, eval_seed: int = 1234, vocab_size: int = VOCAB, seq_len: int | None = None):
        super().__init__()
        check_window(window)
        if vocab_size != VOCAB:
            raise ValueError(f"data.vocab_size={vocab_size}: the dictionary task has {VOCAB} tokens")
        self.window, self.batch_size, self.seed, self.sampler = window, batch_size, seed, sampler
        self.val_batches, self.eval_seed = val_batches, eval_seed
        self.seq_len = seq_len or (2 * window if sampler == "crossbatch" else window)

    def train_dataloader(self):
        rank, world = self._rank()
        start = self.trainer.global_step * self.trainer.accumulate_grad_batches if self.trainer else 0
        b = DictionaryBatches(self.window, self.batch_size, self.seed, self.sampler, rank, world)
        return DataLoader(StepBatches(b, start=start), batch_size=None)

    def val_dataloader(self):
        rank, world = self._rank()
        # validation always asks whole documents (definitions, then queries) of a fixed seed
        b = DictionaryBatches(self.window, self.batch_size, self.eval_seed, "crossbatch", rank, world)
        return DataLoader(StepBatches(b, count=len(range(rank, self.val_batches, world)), stride=world,
                                      offset=rank), batch_size=None)
