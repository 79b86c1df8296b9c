"""Batch samplers whose batch is a pure function of (seed, step, rank).

That is what makes a resumed run see exactly the batches an uninterrupted one would: the loader
restarts at ``step = global_step`` and nothing else has to be saved.

* ``RandomWindows`` — standard LM training: windows of ``seq_len + 1`` bytes (inputs and shifted
  targets) drawn uniformly over every valid start inside a document.
* ``DocumentStreams`` — document-aware: batch row r walks its own stream of whole documents,
  window after window (window s covers bytes [s*T, s*T + T] of the stream), the next document
  following when one ends. Consecutive steps are consecutive text, so state can be carried.
* ``SegmentStreams`` — like ``DocumentStreams``, but each row jumps to a random place in a random
  document every ``segment_len`` bytes (marked as a document start, so carried state and memory
  reset there): many documents in few steps, for training that needs consecutive windows.
"""

from __future__ import annotations

import bisect

import lightning as L
import numpy as np
import torch

from experiments.data.corpus import Split


def data_rank(rank: int, world: int, size: int) -> tuple[int, int]:
    """(data-parallel rank, data-parallel world) under chunk parallelism (``parallel.sequence=size``): the
    ``size`` ranks of a sequence group read the same rows."""
    return rank // size, world // size


class RankedDataModule(L.LightningDataModule):
    """A data module whose batches depend on (rank, world) of the data: with ``parallel.sequence=N``
    (set by train) the N ranks of a sequence group read the same rows, each taking its own span."""

    sequence_parallel = 1

    def _rank(self) -> tuple[int, int]:
        t = self.trainer
        rank, world = (t.global_rank, t.world_size) if t is not None else (0, 1)
        return data_rank(rank, world, self.sequence_parallel)


def start_offsets(split: Split, cum_valid: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Corpus offsets of starts numbered ``u`` in [0, cum_valid[-1]), where document d owns the numbers
    [cum_valid[d], cum_valid[d + 1]) (one per valid start): uniform ``u`` is uniform over every valid start."""
    doc = np.searchsorted(cum_valid, u, side="right") - 1
    return split.offsets[doc] + (u - cum_valid[doc])


class RandomWindows:
    """``batch_size`` windows of ``sample_len`` (default ``seq_len``) bytes per step, each cut into
    ``sample_len / seq_len`` consecutive rows of ``seq_len`` (+1) bytes: models trained at different
    contexts on the same ``sample_len`` then see exactly the same bytes in the same order."""

    def __init__(self, split: Split, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, split_name: str = "train", sample_len: int | None = None):
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"data.seq_len={seq_len} and data.batch_size={batch_size} must be >= 1")
        sample_len = sample_len or seq_len
        if sample_len % seq_len:
            raise ValueError(f"data.sample_len={sample_len} must be a multiple of data.seq_len={seq_len}")
        self.rows_per_sample = sample_len // seq_len
        lengths = split.lengths
        valid = np.maximum(lengths - sample_len, 0)  # starts s with s + sample_len + 1 <= len
        if valid.sum() == 0:
            raise ValueError(
                f"data.seq_len={sample_len} is longer than every {split_name} document (a window needs "
                f"{sample_len + 1} bytes; the longest document has {int(lengths.max())}); "
                "lower data.seq_len (or data.sample_len) or use a corpus with longer documents"
            )
        self.split, self.seq_len, self.batch_size, self.sample_len = split, seq_len, batch_size, sample_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.cum_valid = np.concatenate([[0], np.cumsum(valid)])
        self.eligible_bytes = int(lengths[valid > 0].sum())

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, self.rank, self.world_size])
        starts = start_offsets(self.split, self.cum_valid, rng.integers(0, self.cum_valid[-1], size=self.batch_size))
        if self.rows_per_sample > 1:  # each window -> consecutive rows sharing one byte at the cuts
            starts = (starts[:, None] + np.arange(self.rows_per_sample) * self.seq_len).reshape(-1)
        idx = starts[:, None] + np.arange(self.seq_len + 1)
        return {"tokens": torch.from_numpy(self.split.data[idx].astype(np.int64))}


class CrossBatchWindows(RandomWindows):
    """Random windows from ``batch_size`` DIFFERENT documents per step (FoT CrossBatch: the other
    rows of a batch are the negatives, so they must come from other documents)."""

    def __init__(self, split: Split, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, split_name: str = "train"):
        super().__init__(split, seq_len, batch_size, seed, rank, world_size, split_name)
        valid = np.diff(self.cum_valid)
        self.eligible = np.nonzero(valid)[0]
        if len(self.eligible) < batch_size:
            raise ValueError(
                f"CrossBatch needs {batch_size} different documents of at least seq_len + 1 = {seq_len + 1} bytes "
                f"per batch, but the {split_name} split has {len(self.eligible)}; lower data.batch_size or data.seq_len"
            )
        self.p = valid[self.eligible] / valid[self.eligible].sum()

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, self.rank, self.world_size, 11])
        docs = rng.choice(self.eligible, size=self.batch_size, replace=False, p=self.p)
        valid = self.cum_valid[docs + 1] - self.cum_valid[docs]
        starts = self.split.offsets[docs] + rng.integers(0, valid)
        idx = starts[:, None] + np.arange(self.seq_len + 1)
        return {"tokens": torch.from_numpy(self.split.data[idx].astype(np.int64)), "doc_ids": torch.from_numpy(docs)}


class DocumentStreams:
    def __init__(self, split: Split, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, split_name: str = "train"):
        rows = batch_size * world_size
        if split.n_docs < rows:
            raise ValueError(
                f"the document-stream sampler binds one document stream to each of the "
                f"{rows} batch rows (data.batch_size x world size) but the {split_name} split has only "
                f"{split.n_docs} documents; lower data.batch_size or add documents"
            )
        self.split, self.seq_len, self.batch_size = split, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.rows = [rank * batch_size + r for r in range(batch_size)]
        # per row: document ids in stream order and their cumulative end offsets in the stream
        self._docs: list[list[int]] = [[] for _ in self.rows]
        self._ends: list[list[int]] = [[] for _ in self.rows]
        self._epochs = 0

    def _extend(self) -> None:
        perm = np.random.default_rng([self.seed, self._epochs, 7]).permutation(self.split.n_docs)
        n_rows = self.batch_size * self.world_size
        lengths = self.split.lengths
        for i, g in enumerate(self.rows):
            for d in perm[g::n_rows]:
                end = (self._ends[i][-1] if self._ends[i] else 0) + int(lengths[d])
                self._docs[i].append(int(d))
                self._ends[i].append(end)
        self._epochs += 1

    def _read(self, i: int, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Stream bytes [start, start + n) of row i, and True where a document begins."""
        while not self._ends[i] or self._ends[i][-1] < start + n:
            self._extend()
        out = np.empty(n, dtype=np.int64)
        begins = np.zeros(n, dtype=bool)
        j = bisect.bisect_right(self._ends[i], start)
        pos, filled = start, 0
        while filled < n:
            d = self._docs[i][j]
            d_begin = self._ends[i][j] - int(self.split.lengths[d])
            begins[filled] = pos == d_begin
            take = min(n - filled, self._ends[i][j] - pos)
            lo = self.split.offsets[d] + (pos - d_begin)
            out[filled : filled + take] = self.split.data[lo : lo + take]
            filled, pos, j = filled + take, pos + take, j + 1
        return out, begins

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """tokens [B, T+1]; starts [B, T+1] True where a document begins; doc_start = starts[:, 0]."""
        start = step * self.seq_len
        rows, begins = zip(*(self._read(i, start, self.seq_len + 1) for i in range(self.batch_size)))
        starts = torch.from_numpy(np.stack(begins))
        return {"tokens": torch.from_numpy(np.stack(rows)), "starts": starts, "doc_start": starts[:, 0].clone()}

    def documents(self, row: int, up_to_step: int) -> list[int]:
        """Document ids row ``row`` has entered by the end of window ``up_to_step`` (for tests)."""
        end = (up_to_step + 1) * self.seq_len + 1
        while not self._ends[row] or self._ends[row][-1] < end:
            self._extend()
        return self._docs[row][: bisect.bisect_left(self._ends[row], end) + 1]


class SegmentStreams:
    """Row r reads segments of ``segment_len`` bytes (a multiple of ``seq_len``), window after window;
    segment k of every row starts at a random place of a random document (uniform over valid starts,
    like ``RandomWindows``). A stream of whole documents binds each row to a few documents for a
    whole run (500 steps of 256 bytes is half of one 256 KB document); segments see a fresh document
    every ``segment_len / seq_len`` steps. A segment's first window is marked as a document start."""

    def __init__(self, split: Split, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, split_name: str = "train", segment_len: int | None = None):
        if not isinstance(segment_len, int) or segment_len < seq_len or segment_len % seq_len:
            raise ValueError(f"data.segment_len={segment_len!r} must be a multiple of data.seq_len={seq_len} "
                             "(the bytes a row reads before it jumps to another document)")
        lengths = split.lengths
        valid = np.maximum(lengths - segment_len, 0)  # a segment's windows read segment_len + 1 bytes
        if valid.sum() == 0:
            raise ValueError(
                f"data.segment_len={segment_len} is longer than every {split_name} document (the longest has "
                f"{int(lengths.max())} bytes); lower data.segment_len"
            )
        self.split, self.seq_len, self.batch_size, self.seed = split, seq_len, batch_size, seed
        self.windows = segment_len // seq_len
        self.rows = slice(rank * batch_size, (rank + 1) * batch_size)
        self.n_rows = batch_size * world_size
        self.cum_valid = np.concatenate([[0], np.cumsum(valid)])

    def segment_starts(self, segment: int) -> np.ndarray:
        """Corpus offsets where this rank's rows begin ``segment``."""
        rng = np.random.default_rng([self.seed, segment, self.n_rows, 13])
        u = rng.integers(0, self.cum_valid[-1], size=self.n_rows)[self.rows]
        return start_offsets(self.split, self.cum_valid, u)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """tokens [B, T+1]; starts [B, T+1] (a segment's first byte only); doc_start = starts[:, 0]."""
        segment, window = divmod(step, self.windows)
        first = self.segment_starts(segment) + window * self.seq_len
        idx = first[:, None] + np.arange(self.seq_len + 1)
        starts = torch.zeros(idx.shape, dtype=torch.bool)
        starts[:, 0] = window == 0
        return {"tokens": torch.from_numpy(self.split.data[idx].astype(np.int64)), "starts": starts,
                "doc_start": starts[:, 0].clone()}


SAMPLERS = {"random": RandomWindows, "stream": DocumentStreams, "segments": SegmentStreams,
            "crossbatch": CrossBatchWindows}
STREAMS = ("stream", "segments")  # samplers whose consecutive steps are consecutive text


class StepBatches(torch.utils.data.IterableDataset):
    """Yields ``sampler.batch(step)`` for step = start, start + 1, ... (optionally a fixed count). A tokenized
    split (``token_bytes``) adds ``target_bytes`` [B, T]: the text bytes each target token stands for, what
    bits per byte divide by."""

    def __init__(self, sampler, start: int = 0, count: int | None = None, stride: int = 1, offset: int = 0,
                 token_bytes: np.ndarray | None = None):
        super().__init__()
        self.sampler, self.start, self.count, self.stride, self.offset = sampler, start, count, stride, offset
        self.token_bytes = None if token_bytes is None else torch.from_numpy(np.asarray(token_bytes, np.int64))

    def __iter__(self):
        step = self.start
        while self.count is None or step < self.start + self.count:
            batch = self.sampler.batch(step * self.stride + self.offset)
            if self.token_bytes is not None:
                batch["target_bytes"] = self.token_bytes[batch["tokens"][:, 1:]]
            yield batch
            step += 1
