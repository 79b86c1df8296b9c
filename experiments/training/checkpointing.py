"""Checkpoints: atomic writes, clear errors for corrupt or mismatched files, ``ckpt_path=auto``."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the same folder, fsyncs, then renames over the target, so a
    kill at any moment leaves either the previous checkpoint or the new one, never half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as e:
            why = "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise OSError(e.errno, f"writing the checkpoint {str(path)!r} failed ({why}); the previous checkpoint "
                          "is intact: free space or choose a run_dir on a disk with room and write access, then "
                          "resume with ckpt_path=auto") from None
        finally:
            if tmp.exists():
                tmp.unlink()


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The run dir's latest ``last*.ckpt``, or None. One ``last.ckpt`` normally; run dirs written before
    the version counter was turned off may also hold ``last-v1.ckpt`` (Lightning's name when a
    ``last.ckpt`` it had not written itself, e.g. a pre-emption checkpoint, was in the way): the newest
    file is the one training stopped at."""
    found = sorted((Path(run_dir) / "checkpoints").glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """``None`` -> start fresh; ``auto`` -> the run dir's last checkpoint if there is one; else a path."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "auto":
        last = last_checkpoint(run_dir)
        return None if last is None else str(last)
    if not Path(ckpt_path).exists():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path!r} does not exist; pass an existing .ckpt file, ckpt_path=auto to "
            "resume from the run dir's checkpoints/last.ckpt when present, or ckpt_path=null"
        )
    return str(ckpt_path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on CPU with ``weights_only=True``, turning failures into one clear message."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise RuntimeError(
            f"checkpoint {str(path)!r} could not be read ({type(e).__name__}: {str(e)[:200]}); it is "
            "corrupt, truncated or not a longlab checkpoint: delete it, or pass ckpt_path= an intact "
            ".ckpt (or ckpt_path=null to start fresh)"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise RuntimeError(
            f"checkpoint {str(path)!r} has no 'state_dict'/'hyper_parameters': it was not written by "
            "experiments.train; pass ckpt_path= a checkpoint from a longlab run dir"
        )
    bad = [k for k, v in ckpt["state_dict"].items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise RuntimeError(
            f"checkpoint {str(path)!r} has non-finite values in {len(bad)} of {len(ckpt['state_dict'])} tensors "
            f"(e.g. {bad[:3]}): it was written after training diverged; use an earlier checkpoint "
            "(ckpt_path=<file>) or retrain with a lower optim.lr"
        )
    return ckpt


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: checkpoint {a!r} vs config {b!r}"]


def check_compatible(ckpt: dict[str, Any], path: str | Path, net_cfg: dict) -> None:
    """Raise if the checkpoint's model differs from the one the config builds."""
    saved = ckpt["hyper_parameters"].get("net")
    diffs = _diff(saved, net_cfg)
    if diffs:
        raise ValueError(
            f"checkpoint {str(path)!r} was trained with a different model.net ("
            + "; ".join(diffs[:6])
            + "); resume with the same model settings as that run (see its config.yaml), or choose a "
            "new run_dir / ckpt_path=null to start fresh"
        )
