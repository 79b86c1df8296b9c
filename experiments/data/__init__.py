from experiments.data.corpus import ByteCorpus, Split, split_of
from experiments.data.datamodule import ByteDataModule
from experiments.data.samplers import DocumentStreams, RandomWindows, SegmentStreams, StepBatches

__all__ = ["ByteCorpus", "ByteDataModule", "DocumentStreams", "RandomWindows", "SegmentStreams", "Split", "StepBatches",
           "split_of"]
