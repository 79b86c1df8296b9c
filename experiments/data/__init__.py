"""Byte corpora from local files and datasets, their cached splits, the samplers that cut them into
training batches (random windows, document streams, segments, CrossBatch), and the synthetic tasks."""

from experiments.data.build import split_of
from experiments.data.corpus import ByteCorpus, Split
from experiments.data.datamodule import ByteDataModule
from experiments.data.samplers import DocumentStreams, RandomWindows, SegmentStreams, StepBatches

__all__ = ["ByteCorpus", "ByteDataModule", "DocumentStreams", "RandomWindows", "SegmentStreams", "Split", "StepBatches",
           "split_of"]
