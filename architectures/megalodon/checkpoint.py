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
    """Map an official ``ModelConf`` dict onto ``MegalodonConfig`` (unknown official fields ignored); the
    overrides apply first, so ``vocab_size=`` fills the official default of -1 (taken from the tokenizer)."""
    kw = {k: v for k, v in model_conf.items() if k in _FIELDS and v is not None}
    kw.pop("init_mode", None)
    kw.update(overrides)
    if kw.get("vocab_size") in (-1, 0, None):
        raise ValueError("the official config has vocab_size=-1 or none (taken from its tokenizer) and no "
                         "vocab_size= was passed; pass vocab_size=<the tokenizer's size>")
    return MegalodonConfig(**kw)


def is_official(folder: str | Path) -> bool:
    """A folder in the official consolidated format (config.json with a "model" entry, consolidated.pth)."""
    folder = Path(folder)
    if not ((folder / "config.json").is_file() and (folder / "consolidated.pth").is_file()):
        return False
    try:
        return isinstance(json.loads((folder / "config.json").read_text()).get("model"), dict)
    except (OSError, ValueError):
        return False


def official_state_dict(ckpt_dir: str | Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    """The weights of an official consolidated checkpoint, with this implementation's parameter names."""
    state = torch.load(Path(ckpt_dir) / "consolidated.pth", map_location=map_location, weights_only=True)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return strip_prefixes(state)


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
    state = official_state_dict(ckpt_dir, map_location)
    conf = json.loads(cfg_path.read_text())["model"]
    if conf.get("vocab_size") in (-1, 0, None) and "vocab_size" not in overrides and "embed.weight" in state:
        overrides = {**overrides, "vocab_size": int(state["embed.weight"].shape[0])}  # the tokenizer's, as trained
    model = Megalodon(config_from_official(conf, **overrides))
    model.load_state_dict(state, strict=True)
    return model
