"""The Lightning data module for byte-level corpora."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from experiments.config import vocab_of
from experiments.data.corpus import CORPUS_KEYS, ByteCorpus, corpus_options
from experiments.data.samplers import SAMPLERS, RandomWindows, RankedDataModule, StepBatches


class ByteDataModule(RankedDataModule):
    """Train batches come from ``sampler`` (random windows or document streams) starting at the
    trainer's current step, so that resuming continues the exact data order. Validation uses a
    fixed set of random windows (``eval_seed``), identical across architectures and seeds."""

    def __init__(
        self,
        seq_len: int = 256,
        sample_len: int | None = None,
        batch_size: int = 16,
        sampler: str = "random",
        segment_len: int | None = None,
        seed: int = 0,
        val_batches: int = 8,
        eval_seed: int = 1234,
        vocab_size: int = 256,
        **corpus: Any,
    ):
        """``corpus``: the ``ByteCorpus.build_or_load`` arguments (path, pattern, source, ...)."""
        super().__init__()
        unknown = sorted(set(corpus) - set(CORPUS_KEYS))
        if unknown:
            raise ValueError(f"data has unknown keys {unknown}; a byte corpus takes {sorted(CORPUS_KEYS)} and seq_len, "
                             "sample_len, batch_size, sampler, segment_len, seed, val_batches, eval_seed, vocab_size")
        tokens = vocab_of(corpus.get("tokenizer", "bytes"), corpus.get("bpe_vocab_size", 4096))
        if not isinstance(vocab_size, int) or vocab_size < tokens:
            raise ValueError(f"data.vocab_size={vocab_size}: data.tokenizer={corpus.get('tokenizer', 'bytes')!r} has "
                             f"{tokens} symbols; leave data.vocab_size at its default (it follows the tokenizer) or "
                             "make it larger (a checkpoint with padded embeddings)")
        if sampler not in SAMPLERS:
            raise ValueError(f"data.sampler={sampler!r} is unknown; use one of {sorted(SAMPLERS)}")
        for key, value in (("seq_len", seq_len), ("batch_size", batch_size), ("val_batches", val_batches)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{key}={value!r} must be an integer >= 1")
        self.corpus_kwargs = corpus_options(corpus)
        if sample_len is not None and sampler != "random":
            raise ValueError(f"data.sample_len={sample_len} needs data.sampler=random (got {sampler!r})")
        if (segment_len is not None) != (sampler == "segments"):
            raise ValueError(f"data.segment_len={segment_len!r} with data.sampler={sampler!r}: the segments sampler "
                             "needs data.segment_len (bytes per document visit) and no other sampler takes it")
        self.seq_len, self.batch_size, self.sampler_name = seq_len, batch_size, sampler
        self.sample_len, self.segment_len = sample_len, segment_len
        self.seed, self.val_batches, self.eval_seed = seed, val_batches, eval_seed
        self.corpus: ByteCorpus | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is None:
            self.corpus = ByteCorpus.build_or_load(**self.corpus_kwargs)
            # fail now, with the message, rather than at the first batch
            RandomWindows(self.corpus.split("train"), self.seq_len, self.batch_size, self.seed,
                          sample_len=self.sample_len)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        kwargs = {"sample_len": self.sample_len} if self.sample_len else {}
        if self.segment_len is not None:
            kwargs["segment_len"] = self.segment_len
        sampler = SAMPLERS[self.sampler_name](
            self.corpus.split("train"), self.seq_len, self.batch_size, self.seed, rank, world, **kwargs
        )
        start = 0
        if self.trainer is not None:
            start = self.trainer.global_step * self.trainer.accumulate_grad_batches
        return DataLoader(StepBatches(sampler, start=start, token_bytes=self.corpus.split("train").token_bytes),
                          batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        sampler = RandomWindows(self.corpus.split("val"), self.seq_len, self.batch_size, self.eval_seed,
                                split_name="val", sample_len=self.sample_len)
        # the same windows whatever the world size: rank r takes batches r, r + world, ...
        count = len(range(rank, self.val_batches, world))
        return DataLoader(StepBatches(sampler, count=count, stride=world, offset=rank,
                                      token_bytes=self.corpus.split("val").token_bytes), batch_size=None)
