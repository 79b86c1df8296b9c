"""The architecture contract: everything ``experiments/`` may rely on, written down once.

An architecture is an ``nn.Module`` whose constructor takes ``config=`` (a frozen dataclass with at
least ``vocab_size``) or that config's fields as keywords, and which offers:

``forward(tokens[B, T], state=None) -> (logits[B, T, V], state)``
    ``logits[:, t]`` scores ``tokens[:, t + 1]`` from ``tokens[:, : t + 1]`` only; ``state`` carries
    what the next segment of the same rows needs, so that segment by segment equals one forward.
``flops_per_token(context) -> float``
    training FLOPs (forward + backward) per input token at this context, counted from the config.
``read(tokens[B, T], state=None) -> state``
    the state ``forward`` leaves, for tokens whose logits nobody reads (a context before the scored bytes, a
    memory filled before its queries): a model may skip work that only the logits need (FoT: the layers
    above its last memory layer). By default ``forward(tokens, state)[1]``.
``reset_state(state, rows) -> state``
    the same state where batch rows ``rows`` (bool [B]) start a new document: the next forward of
    those rows sees nothing of what came before. Called between forward calls.
``state_parts`` and ``reset_parts(state, rows, parts) -> state``
    the named parts of the carried state (Megalodon: ``norm``, ``ema``, ``attention``, ``memory``) and a
    reset of some of them only: ablations of what the state carries (the context evaluation's
    ``distract_reset``). ``reset_parts`` with every part is ``reset_state``; by default there are none.
``max_len``
    the longest stream (in tokens) the model can represent, ``None`` when unbounded (learned
    absolute positions bound it; relative positions and recurrences do not).
``added_parameters``
    name fragments of parameters this model may add on top of a checkpoint of the architecture it
    fine-tunes from (FoT's temperatures on a baseline Transformer); nothing else may be missing.
``crossbatch_window``
    the window of FoT's CrossBatch training if the model supports it (then it also has
    ``forward_crossbatch(prev, curr, d, return_distraction=False, score_previous=False)``: the logits of
    ``curr``, or of ``prev`` and ``curr`` with ``score_previous``), else ``None``.
``patch_size``
    the patch length of a patch-based model (MEGABYTE: enables strided inference), else ``None``.
``decays_all_parameters``
    the architecture's optimiser recipe: weight decay on every parameter (Megalodon, whose norm
    scales are stored as w + 1) rather than on matrices only. ``optim.decay_all`` overrides it.

A config may also define ``resized(width, extra_layers=0)`` (the same architecture ``width`` times as wide,
its own ratios kept, and deeper): the tables' sizing rule uses it to match compute or parameters.

``Architecture`` is a base class with the optional hooks' defaults; subclassing it is the short way
to honour the contract. ``check(net)`` verifies any object and names what is missing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class LanguageModel(Protocol):
    config: Any
    max_len: int | None
    added_parameters: tuple[str, ...]
    crossbatch_window: int | None
    patch_size: int | None
    decays_all_parameters: bool

    def forward(self, tokens: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]: ...

    def flops_per_token(self, context: int) -> float: ...

    def reset_state(self, state: Any, rows: torch.Tensor) -> Any: ...


class Architecture(nn.Module):
    """Base class of every longlab architecture: required members raise, optional hooks default to
    "unbounded length, adds no parameters, no CrossBatch, no patches, state cannot be reset per row"."""

    config: Any
    added_parameters: tuple[str, ...] = ()
    decays_all_parameters: bool = False
    compiles: bool = True  # compile=true may torch.compile it (benchmarks/compile.py checks it computes the same)

    @property
    def max_len(self) -> int | None:
        return None

    @property
    def crossbatch_window(self) -> int | None:
        return None

    @property
    def patch_size(self) -> int | None:
        return None

    def flops_per_token(self, context: int) -> float:
        raise NotImplementedError(f"{type(self).__name__} must define flops_per_token(context)")

    def read(self, tokens: torch.Tensor, state: Any = None) -> Any:
        return self.forward(tokens, state)[1]

    def reset_state(self, state: Any, rows: torch.Tensor) -> Any:
        if state is None or not bool(torch.as_tensor(rows).any()):
            return state
        raise NotImplementedError(
            f"{type(self).__name__} cannot reset the carried state of single batch rows at a document start; "
            "implement reset_state(state, rows), or train without task.carry_state"
        )

    @property
    def state_parts(self) -> tuple[str, ...]:
        return ()

    def check_parts(self, parts: tuple[str, ...]) -> None:
        """A ValueError naming any of ``parts`` that is not one of ``state_parts``."""
        unknown = sorted(set(parts) - set(self.state_parts))
        if unknown:
            raise ValueError(f"{type(self).__name__} has no state parts {unknown}; its parts are "
                             f"{list(self.state_parts) or 'none (it can only reset its whole state)'}")

    def reset_parts(self, state: Any, rows: torch.Tensor, parts: tuple[str, ...]) -> Any:
        """``reset_state`` of the named ``parts`` of the state only (see ``state_parts``)."""
        self.check_parts(parts)
        raise NotImplementedError(f"{type(self).__name__} names state parts but does not define reset_parts")

    def forward_crossbatch(self, prev: torch.Tensor, curr: torch.Tensor, d: int, return_distraction: bool = False,
                           score_previous: bool = False, detach_previous: bool = False):
        raise NotImplementedError(f"{type(self).__name__} has no CrossBatch training (crossbatch_window is None)")


def build_config(cls: type, config: Any, kwargs: dict[str, Any]) -> Any:
    """The shared constructor rule: a config object or its fields as keywords, not both."""
    if config is not None and kwargs:
        raise TypeError(f"pass either a {cls.__name__} or keyword fields, not both")
    return config if config is not None else cls(**kwargs)


REQUIRED = ("config", "forward", "flops_per_token", "reset_state", "max_len", "added_parameters",
            "crossbatch_window", "patch_size", "decays_all_parameters", "state_parts", "reset_parts", "read")


def check(net: Any) -> LanguageModel:
    """Return ``net`` if it honours the contract, else raise a TypeError naming what is missing."""
    missing = [name for name in REQUIRED if not _has(net, name)]
    if missing:
        raise TypeError(
            f"{type(net).__module__}.{type(net).__qualname__} does not honour the longlab architecture contract: "
            f"missing {missing}. Subclass architectures.contract.Architecture (it supplies the optional hooks) "
            "and define config, forward and flops_per_token; see README 'Adding an architecture'"
        )
    cfg = net.config
    if not dataclasses.is_dataclass(cfg) or not isinstance(getattr(cfg, "vocab_size", None), int):
        raise TypeError(f"{type(net).__qualname__}.config must be a dataclass with an integer vocab_size, "
                        f"got {type(cfg).__name__}")
    if net.crossbatch_window is not None and type(net).forward_crossbatch is Architecture.forward_crossbatch:
        raise TypeError(f"{type(net).__qualname__} sets crossbatch_window but does not define forward_crossbatch")
    return net


def _has(obj: Any, name: str) -> bool:
    try:
        getattr(obj, name)
    except AttributeError:
        return False
    return True
