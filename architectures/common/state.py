"""Helpers for the recurrent ``state`` that architectures return.

A state is any nesting of dicts, lists, tuples and dataclasses whose leaves are tensors or plain
Python values. Training loops only need two operations on it: detach it between steps (truncated
back-propagation through time) and move it between devices; both are ``map_state``. Evaluations that continue
one read prefix several ways copy it (``clone_state``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: Any,
              on_object: Callable[[Any], Any] | None = None) -> Any:
    """Apply ``fn`` to every tensor leaf of ``state``, rebuilding the same structure. Stateful objects (anything
    with ``map_tensors``, such as a kNN memory) go to ``on_object`` when given, else to their ``map_tensors(fn)``."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if hasattr(state, "map_tensors"):
        return on_object(state) if on_object is not None else state.map_tensors(fn)
    if isinstance(state, dict):
        return {k: map_state(fn, v, on_object) for k, v in state.items()}
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # namedtuple
        return type(state)(*(map_state(fn, v, on_object) for v in state))
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(fn, v, on_object) for v in state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        changes = {f.name: map_state(fn, getattr(state, f.name), on_object) for f in dataclasses.fields(state)}
        return dataclasses.replace(state, **changes)
    return state


def _copy_object(obj: Any) -> Any:
    return obj.clone() if callable(getattr(obj, "clone", None)) else obj.map_tensors(torch.clone)


def clone_state(state: Any) -> Any:
    """An independent copy of ``state``: continuing one copy leaves the other as it was (one read prefix, several
    continuations). Tensors are cloned; stateful objects copy themselves (``clone``, else ``map_tensors``)."""
    return map_state(torch.clone, state, _copy_object)


def detach_state(state: Any) -> Any:
    """Cut the autograd graph behind every tensor of ``state`` (values are kept)."""
    return map_state(lambda t: t.detach(), state)


def to_serializable(state: Any) -> Any:
    """Replace stateful objects (anything with ``state_dict`` and ``from_state_dict``) by plain dicts,
    so a carried state can be saved in a checkpoint that loads with ``weights_only=True``."""
    if hasattr(state, "state_dict") and hasattr(type(state), "from_state_dict"):
        cls = type(state)
        return {"__object__": f"{cls.__module__}:{cls.__qualname__}", "state": to_serializable(state.state_dict())}
    if isinstance(state, dict):
        return {k: to_serializable(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)) and not hasattr(state, "_fields"):
        return type(state)(to_serializable(v) for v in state)
    return state


def from_serializable(state: Any) -> Any:
    """Inverse of ``to_serializable``."""
    if isinstance(state, dict) and "__object__" in state:
        import importlib

        module, _, name = state["__object__"].partition(":")
        return getattr(importlib.import_module(module), name).from_state_dict(from_serializable(state["state"]))
    if isinstance(state, dict):
        return {k: from_serializable(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)) and not hasattr(state, "_fields"):
        return type(state)(from_serializable(v) for v in state)
    return state
