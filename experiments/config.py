"""The leaf helpers every entry point shares: config composition, the structured config schemas,
plain-container conversion and atomic JSON writes. Imports nothing else from ``experiments``.

One source of defaults. An architecture's defaults are its config dataclass; ``register_schemas``
turns each into a Hydra node (``schema/net/<arch>``) that a preset YAML pulls in with
``- /schema/net@net: <arch>`` and then lists only what differs. The optimiser's defaults are
``OptimConfig`` (the ``optim: adamw`` group), a typed structured config: a misspelt or mistyped
``optim.*`` override fails at composition.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCHEDULES = ("cosine", "polynomial", "constant")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``lr * min_lr_ratio``, one for every architecture."""

    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    # decay norms' scales and biases too; None: the architecture's recipe (decays_all_parameters:
    # Megalodon, whose norm scales are stored as w + 1, decays everything; the others only matrices)
    decay_all: bool | None = None
    warmup_steps: int = 100
    schedule: str = "cosine"  # after warm-up: cosine | polynomial ((1 - progress)^power) | constant
    power: float = 1.0  # polynomial: 1 = linear decay (MEGABYTE's recipe, to min_lr_ratio = 0)
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    max_steps: int | None = None  # schedule length; None = trainer.max_steps

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        problems = []
        if not self.lr > 0:
            problems.append(f"optim.lr={self.lr} must be > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"optim.betas={list(self.betas)} must be two numbers in [0, 1)")
        if self.weight_decay < 0:
            problems.append(f"optim.weight_decay={self.weight_decay} must be >= 0")
        if self.warmup_steps < 0:
            problems.append(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.schedule not in SCHEDULES:
            problems.append(f"optim.schedule={self.schedule!r}; use one of {SCHEDULES}")
        if self.power <= 0:
            problems.append(f"optim.power={self.power} must be > 0")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"optim.max_steps={self.max_steps} must be >= 1 or null")
        if problems:
            raise ValueError("; ".join(problems))


def _architectures() -> dict[str, tuple[str, type]]:
    from architectures.fot import FoTConfig
    from architectures.megabyte import MegabyteConfig
    from architectures.megalodon import MegalodonConfig
    from architectures.transformer import TransformerConfig

    return {
        "transformer": ("architectures.transformer.Transformer", TransformerConfig),
        "fot": ("architectures.fot.FocusedTransformer", FoTConfig),
        "megalodon": ("architectures.megalodon.Megalodon", MegalodonConfig),
        "megabyte": ("architectures.megabyte.Megabyte", MegabyteConfig),
    }


def field_defaults(cls: type) -> dict[str, Any]:
    """A config dataclass's declared defaults (before ``__post_init__`` derives anything)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def net_schema(target: str, cls: type) -> DictConfig:
    return OmegaConf.create({"_target_": target, **field_defaults(cls)})


_registered = False


def register_schemas() -> None:
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    for name, (target, cls) in _architectures().items():
        cs.store(group="schema/net", name=name, node=net_schema(target, cls))
    optim = OmegaConf.structured(OptimConfig)
    OmegaConf.set_readonly(optim, False)  # overrides must merge into it
    cs.store(group="optim", name="adamw", node=optim)
    _registered = True


def safe_name(text: str, limit: int = 100) -> str:
    """A folder name from override text: no path separators, long ones shortened with a hash."""
    import hashlib

    name = str(text).replace("/", "%2F").replace("\\", "%5C") or "defaults"
    if len(name) > limit:
        name = name[:limit] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def int_div(a: Any, b: Any) -> int:
    """``${div:a,b}``: a // b, refusing a remainder (a window of patches must tile the sequence)."""
    a, b = int(a), int(b)
    if b <= 0 or a % b:
        raise ValueError(f"${{div:{a},{b}}}: {a} is not a multiple of {b}")
    return a // b


def vocab_of(tokenizer: Any, bpe_vocab_size: Any = 4096) -> int:
    """``${vocab_of:${data.tokenizer},${data.bpe_vocab_size}}``: the model's vocabulary for a tokenizer setting
    (bytes: 256; bpe: its size; a saved tokenizer: one more than its largest id)."""
    kind = str(tokenizer)
    if kind == "bytes":
        return 256
    if kind == "bpe":
        return int(bpe_vocab_size)
    path = Path(os.path.expanduser(kind))
    path = path / "tokenizer.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"data.tokenizer={kind!r}: no readable tokenizer.json there ({e}); use bytes, bpe, or the "
                         "path of a saved Hugging Face tokenizer") from None
    ids = list((data.get("model") or {}).get("vocab", {}).values()) + [t["id"] for t in data.get("added_tokens", [])]
    if not ids:
        raise ValueError(f"data.tokenizer={kind!r}: its tokenizer.json lists no vocabulary")
    return max(ids) + 1


register_schemas()
if not OmegaConf.has_resolver("vocab_of"):
    OmegaConf.register_new_resolver("vocab_of", vocab_of)
if not OmegaConf.has_resolver("safe_name"):
    OmegaConf.register_new_resolver("safe_name", safe_name)
if not OmegaConf.has_resolver("div"):
    OmegaConf.register_new_resolver("div", int_div)


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that re-raises the constructor's own error (a config value it refused,
    a missing file) instead of Hydra's wrapper around it, so the message a user reads is the one that
    names the value and the fix."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, (ValueError, TypeError, FileNotFoundError, ImportError, OSError, MemoryError)) or (
                isinstance(cause, RuntimeError) and "allocate" in str(cause)):
            raise cause from None
        raise


def compose(name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<name>.yaml`` with Hydra overrides, as the entry points do."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        return hydra_compose(config_name=name, overrides=list(overrides or []))


def to_plain(cfg: Any) -> Any:
    """Configs become plain containers (resolved), so checkpoints load with ``weights_only``."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def optim_config(optim: Any) -> OptimConfig:
    """The typed optimiser config from a composed ``optim`` node or a plain dict (checkpoints)."""
    values = dict(to_plain(optim) or {})
    known = {f.name for f in dataclasses.fields(OptimConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"optim has unknown keys {unknown}; the optimiser's keys are {sorted(known)}")
    return OptimConfig(**values)


PRECISIONS = ("32", "32-true", "bf16", "bf16-mixed", "16-mixed", "bf16-true")


def integer(value: Any, name: str, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` as an int, or a ValueError naming the field: ``eval.context=0 must be an integer >= 1``.
    ``optional``: None passes (the field's "use the default" value)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = f"an integer >= {minimum}" + (" or null" if optional else "")
        raise ValueError(f"{name}={value!r} must be {what}")
    return value


def precision(value: Any, name: str = "precision") -> str:
    if str(value) not in PRECISIONS:
        raise ValueError(f"{name}={value!r} is not a precision; use one of {list(PRECISIONS)}")
    return str(value)


def bytes_per_update(cfg: DictConfig) -> int:
    """Training tokens one optimiser step consumes on one rank: batch x window (``data.sample_len``
    when windows are drawn longer and cut into rows) x gradient accumulation."""
    d = cfg.data
    window = int(d.get("sample_len") or d.get("seq_len") or 0)
    return int(d.batch_size) * window * int(cfg.trainer.get("accumulate_grad_batches", 1) or 1)


def val_step(row: dict) -> int:
    """Completed training steps of a validation row of ``logs/metrics.csv`` (``val/step``; older runs
    without it: Lightning's ``step`` column, which lags validation inside fit by one)."""
    if row.get("val/step"):
        return int(float(row["val/step"]))
    return int(float(row["step"])) + 1


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinity replaced by None: strict JSON, which every reader accepts (a
    one-step run has no timed steps, so its throughput is undefined, not NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Write atomically (a reader sees the old file or the new one, never half of it) and strictly (null,
    never NaN); a full disk or a missing folder fails naming the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"writing {str(path)!r} failed ({e.strerror or e}); free space or choose a writable "
                      "folder") from None


__all__ = ["CONFIGS", "OptimConfig", "compose", "optim_config", "register_schemas", "to_plain", "write_json"]
