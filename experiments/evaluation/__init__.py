"""Evaluating a trained run: windowed and streaming bits per byte, inference methods, long-context
tasks, FoT's evaluations and generation, all written once against the architecture contract."""

from experiments.evaluation.bpb import evaluate, streaming_bpb, windowed_bpb

__all__ = ["evaluate", "streaming_bpb", "windowed_bpb"]
