"""Loading weights in the official Megalodon format (XuezheMax/megalodon).

A consolidated official checkpoint is a folder with ``config.json`` (the training config; its
"model" entry is the ``ModelConf``), ``consolidate_config.json`` and ``consolidated.pth`` (a plain
state dict whose keys are those of this implementation: ``embed.weight``, ``rope.freqs``,
``layers.{i}.mega.cema.alpha``, ..., ``output.final_norm.weight``, ``output.output.weight``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from architectures.megalodon.config import MegalodonConfig
from architectures.megalodon.model import Megalodon

_FIELDS = {f.name for f in dataclasses.fields(MegalodonConfig)}


def config_from_official(model_conf: dict[str, Any], **overrides: Any) -> MegalodonConfig:
    """Map an official ``ModelConf`` dict onto ``MegalodonConfig`` (unknown official fields ignored)."""
    kw = {k: v for k, v in model_conf.items() if k in _FIELDS and v is not None}
    if kw.get("vocab_size", 0) in (-1, 0):
        raise ValueError("the official config has vocab_size=-1 (taken from its tokenizer); pass vocab_size=...")
    kw.pop("init_mode", None)
    kw.update(overrides)
    return MegalodonConfig(**kw)


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_fsdp_wrapped_module.", "model."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k.replace("._fsdp_wrapped_module", "").replace("._checkpoint_wrapped_module", "")] = v
    return out


def load_official(ckpt_dir: str | Path, map_location: str = "cpu", **overrides: Any) -> Megalodon:
    """Build a ``Megalodon`` from an official consolidated checkpoint folder and load it strictly."""
    ckpt_dir = Path(ckpt_dir)
    cfg_path = ckpt_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} is missing: not an official Megalodon checkpoint folder")
    consolidate = ckpt_dir / "consolidate_config.json"
    if consolidate.exists() and json.loads(consolidate.read_text()).get("model_parallel_size", 1) != 1:
        raise ValueError(f"{ckpt_dir} was consolidated with model parallelism > 1; consolidate it to one shard")
    weights = ckpt_dir / "consolidated.pth"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing: expected a consolidated (single-shard) checkpoint")
    model = Megalodon(config_from_official(json.loads(cfg_path.read_text())["model"], **overrides))
    state = torch.load(weights, map_location=map_location, weights_only=True)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model.load_state_dict(strip_prefixes(state), strict=True)
    return model
