"""Helpers for the recurrent ``state`` that architectures return.

A state is any nesting of dicts, lists, tuples and dataclasses whose leaves are tensors or plain
Python values. Training loops only need two operations on it: detach it between steps (truncated
back-propagation through time) and move it between devices; both are ``map_state``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: Any) -> Any:
    """Apply ``fn`` to every tensor leaf of ``state``, rebuilding the same structure."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # namedtuple
        return type(state)(*(map_state(fn, v) for v in state))
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(fn, v) for v in state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        changes = {f.name: map_state(fn, getattr(state, f.name)) for f in dataclasses.fields(state)}
        return dataclasses.replace(state, **changes)
    return state


def detach_state(state: Any) -> Any:
    """Cut the autograd graph behind every tensor of ``state`` (values are kept)."""
    return map_state(lambda t: t.detach(), state)
