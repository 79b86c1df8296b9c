"""Matched by construction: the sizing rule that sets an architecture's width (then depth, where width
alone cannot get there) so that its training FLOPs per byte, or its parameters, equal a reference
model's within a tolerance, keeping the architecture's own ratios.

Each architecture's config says how it grows: ``config.resized(width, extra_layers)`` (head size or head
count, FFN expansion, patch and chunk sizes are the architecture's business). The rule searches a fine
log grid of widths at the original depth first, then at one layer less or more, and so on, and takes
the first depth at which some width lands within the tolerance (the closest such width). The models are
built on the meta device: counting costs no memory and no initialisation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from architectures.contract import check
from experiments.config import build
from experiments.data.corpus import ByteCorpus, corpus_options

RULES = ("flops", "params", "none")
WIDTHS = tuple(math.exp(math.log(0.2) + i * (math.log(6.0) - math.log(0.2)) / 400) for i in range(401))
EXTRA_LAYERS = (0, -1, 1, -2, 2, -3, 3, 4, 5, 6)


@dataclass(frozen=True)
class Size:
    flops_per_byte: float  # training FLOPs per input byte at the context the model trains on
    params: int

    def value(self, rule: str) -> float:
        return self.flops_per_byte if rule == "flops" else float(self.params)


def measure_net(net: Any, context: int) -> Size:
    params = sum(p.numel() for p in {id(p): p for p in net.parameters()}.values())
    return Size(float(net.flops_per_token(context)), int(params))


def bytes_per_token(data_cfg: dict) -> float:
    """Text bytes per token of a ``data`` config's training split: 1 for bytes; a tokenizer's corpus is built
    (and tokenized) once to count them."""
    if str(data_cfg.get("tokenizer", "bytes")) == "bytes":
        return 1.0
    return _bytes_per_token(json.dumps(corpus_options(data_cfg), sort_keys=True, default=str))


@functools.lru_cache(maxsize=64)
def _bytes_per_token(blob: str) -> float:
    return ByteCorpus.build_or_load(**json.loads(blob)).bytes_per_token


def measure(net_cfg: dict, context: int) -> Size:
    """FLOPs per byte and parameters of the model a ``model.net`` config builds (on the meta device)."""
    return _measure(json.dumps(net_cfg, sort_keys=True, default=str), int(context))


@functools.lru_cache(maxsize=4096)
def _measure(blob: str, context: int) -> Size:
    with torch.device("meta"):
        return measure_net(check(build(json.loads(blob))), context)


@functools.lru_cache(maxsize=4096)  # the same widths are scanned for every target (a scaling table's sizes)
def _measure_config(cls: type, config: Any, context: int) -> Size:
    with torch.device("meta"):
        return measure_net(cls(config=config), context)


def match(net_cfg: dict, context: int, target: float, rule: str = "flops", tolerance: float = 0.03,
          what: str = "model") -> tuple[dict[str, Any], Size]:
    """The ``model.net`` fields to change so that the model's ``rule`` value (FLOPs per byte at
    ``context``, or parameters) is within ``tolerance`` of ``target``, and the size it then has."""
    changed, size = _match(json.dumps(net_cfg, sort_keys=True, default=str), int(context), float(target), rule,
                           float(tolerance), what)
    return dict(changed), size


@functools.lru_cache(maxsize=256)
def _match(blob: str, context: int, target: float, rule: str, tolerance: float, what: str):
    net_cfg = json.loads(blob)
    if rule not in RULES or rule == "none":
        raise ValueError(f"match rule {rule!r}: sizing needs flops or params (rules: {RULES})")
    with torch.device("meta"):
        net = check(build(net_cfg))
    base, cls = net.config, type(net)
    if not callable(getattr(type(base), "resized", None)):
        raise ValueError(f"{what}: {type(base).__name__} has no resized(width, extra_layers), so it cannot be sized "
                         "to match another model; add one (README 'Adding an architecture') or use match: none")
    best: tuple[float, Any, Size] | None = None
    for extra in EXTRA_LAYERS:
        seen: dict[Any, Size] = {}
        for width in WIDTHS:
            try:
                cfg = base.resized(width, extra)
            except ValueError:  # a size the architecture cannot take (e.g. too few layers)
                continue
            if cfg not in seen:
                seen[cfg] = _measure_config(cls, cfg, context)
        for cfg, size in seen.items():
            err = abs(size.value(rule) / target - 1)
            if best is None or err < best[0]:
                best = (err, cfg, size)
        if best is not None and best[0] <= tolerance:
            break
    if best is None or best[0] > tolerance:
        got = "nothing" if best is None else f"{best[2].value(rule):.4g} ({best[2].value(rule) / target - 1:+.2%})"
        raise ValueError(f"{what}: no width and depth of {type(base).__name__} gets within {tolerance:.0%} of the "
                         f"reference's {rule} {target:.4g} (closest: {got}); change the reference or use match: none")
    _, cfg, size = best
    changed = tuple((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                    if getattr(cfg, f.name) != getattr(base, f.name))
    return changed, size


__all__ = ["RULES", "Size", "bytes_per_token", "match", "measure"]
