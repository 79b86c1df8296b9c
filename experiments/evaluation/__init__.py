"""Evaluating a trained run: windowed and streaming bits per byte, inference methods, long-context
tasks, FoT's evaluations and generation, all written once against the architecture contract."""

from experiments.evaluation.bpb import streaming_bpb, windowed_bpb
from experiments.evaluation.run import evaluate

__all__ = ["evaluate", "streaming_bpb", "windowed_bpb"]
