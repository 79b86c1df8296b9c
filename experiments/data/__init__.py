from experiments.data.corpus import ByteCorpus, Split, split_of
from experiments.data.datamodule import ByteDataModule
from experiments.data.samplers import DocumentStreams, RandomWindows, StepBatches

__all__ = ["ByteCorpus", "ByteDataModule", "DocumentStreams", "RandomWindows", "Split", "StepBatches", "split_of"]
