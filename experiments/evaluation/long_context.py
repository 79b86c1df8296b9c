"""Scoring any trained run on the long-context tasks (``experiments.data.tasks``): each document is
streamed window by window with the model's state (KV window, CEMA / TimestepNorm state, kNN memory),
then the answer bytes are read off the predictions (teacher forcing, argmax). A sample is correct
when every answer byte is; accuracy by length x depth goes to ``<run_dir>/longeval/<task>.json`` with
a heat map. Lengths a model cannot represent (learned positions past ``max_len``) are not applicable,
never 0.

    python -m experiments.longeval run_dir=<run> task=passkey 'lengths=[1024,4096,16384,65536]' \\
        'depths=[0,0.25,0.5,0.75,1]' samples=4
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from experiments.config import integer, precision, to_plain, write_json
from experiments.data.tasks import make
from experiments.evaluation.bpb import autocast
from experiments.evaluation.run import refuse_tokens
from experiments.plotting import pyplot
from experiments.training.checks import read_json_quietly
from experiments.training.progress import Progress
from experiments.training.runs import load_run, pick_device


@torch.no_grad()
def score(net, task: str, lengths: list[int], depths: list[float], samples: int, window: int,
          device: torch.device, seed: int = 0, precision: str = "32", batch_size: int | None = None) -> dict[str, Any]:
    """{"accuracy": {length: {depth: acc | None}}, "byte_accuracy": ..., ...} for one task; "units": per length,
    which documents were answered right (depth-major), for intervals over documents x seeds. ``batch_size``:
    documents streamed together (None: every document of a length at once; fewer bound a memory's size)."""
    acc: dict[str, dict[str, float | None]] = {}
    units: dict[str, dict] = {}
    byte_acc: dict[str, dict[str, float | None]] = {}
    limit = net.max_len
    progress = Progress(f"longeval {task}", sum(lengths) * len(depths) * samples, unit=" bytes")
    done = 0
    for L in lengths:
        key = str(L)
        if limit is not None and L > limit:  # learned positions end here: not applicable, not 0
            acc[key] = {str(d): None for d in depths}
            byte_acc[key] = {str(d): None for d in depths}
            done += L * len(depths) * samples
            continue
        docs = [make(task, L, d, seed + s) for d in depths for s in range(samples)]
        sha, right, per_byte = hashlib.sha256(), [], []
        step = batch_size or len(docs)
        for b0 in range(0, len(docs), step):
            part = docs[b0: b0 + step]
            tokens = torch.from_numpy(np.stack([s.tokens for s in part]).astype(np.int64)).to(device)
            answer = torch.from_numpy(np.stack([s.answer for s in part])).to(device)
            sha.update(tokens.cpu().numpy().tobytes())  # row-major: the same hash at any batch size
            preds = torch.zeros_like(tokens)
            state = None
            for a in range(0, L - 1, window):
                b = min(a + window, L - 1)
                with autocast(device, precision):
                    if bool(answer[:, a + 1: b + 1].any()):
                        logits, state = net(tokens[:, a:b], state)
                        preds[:, a + 1 : b + 1] = logits.argmax(-1)  # the prediction for the next byte
                    else:  # no answer byte is predicted here: the state only (``read`` may skip work)
                        state = net.read(tokens[:, a:b], state)
                progress.update(done + len(part) * b, f"length {L:,}")
            hit = (preds == tokens) | ~answer
            right.append(hit.all(1).float())
            per_byte.append(((preds == tokens) & answer).sum(1).float() / answer.sum(1).float())
            done += L * len(part)
        right_t, per_byte_t = torch.cat(right), torch.cat(per_byte)
        units[key] = {"kind": "document", "sum": right_t.tolist(), "count": [1] * len(docs),
                      "targets_sha256": sha.hexdigest()}
        whole = right_t.view(len(depths), samples).mean(1)
        per_byte_t = per_byte_t.view(len(depths), samples).mean(1)
        acc[key] = {str(d): float(v) for d, v in zip(depths, whole.tolist())}
        byte_acc[key] = {str(d): float(v) for d, v in zip(depths, per_byte_t.tolist())}
    reached = [a for row in acc.values() for a in row.values() if a is not None]
    by_length = {L: (None if any(v is None for v in row.values()) else float(np.mean(list(row.values()))))
                 for L, row in acc.items()}
    return {"task": task, "lengths": list(lengths), "depths": list(depths), "samples": samples, "window": window,
            "accuracy": acc, "byte_accuracy": byte_acc, "mean_by_length": by_length,
            "mean_accuracy": float(np.mean(reached)) if reached else None, "units": units}


def length_label(n: float) -> str:
    """A context length for an axis: 1024 -> 1K, 65536 -> 64K, 300 -> 300."""
    return f"{n / 1024:g}K" if n >= 1024 and n % 1024 == 0 else f"{n:g}"


def draw_grid(ax, grid: np.ndarray, x_labels: list[str], y_labels: list[str], fontsize: int = 8):
    """An accuracy grid on ``ax`` (lines: y, columns: x; NaN: not applicable), every cell annotated.
    Returns the image (for a colour bar). The tables' heat maps draw each panel with it too."""
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=fontsize,
                color="gray" if np.isnan(v) else "white" if v < 0.5 else "black")
    ax.set_xticks(range(len(x_labels)), x_labels, fontsize=fontsize)
    ax.set_yticks(range(len(y_labels)), y_labels, fontsize=fontsize)
    return im


def heat_map(result: dict, path: Path, title: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    lengths, depths = result["lengths"], result["depths"]
    grid = np.array([[np.nan if result["accuracy"][str(L)][str(d)] is None else result["accuracy"][str(L)][str(d)]
                      for L in lengths] for d in depths])
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2, 0.5 * len(depths) + 1.5))
    im = draw_grid(ax, grid, [length_label(L) for L in lengths], [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (bytes)")
    ax.set_ylabel("depth of the needle")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def check_longeval_config(cfg: DictConfig) -> None:
    """Refuse values that would score nothing or something else than asked, naming the field."""
    precision(cfg.precision)
    integer(cfg.window, "window", optional=True)
    integer(cfg.samples, "samples")
    integer(cfg.get("batch_size"), "batch_size", optional=True)
    lengths, depths = to_plain(cfg.lengths), to_plain(cfg.depths)
    if not isinstance(lengths, list) or not lengths:
        raise ValueError(f"lengths={lengths!r} must be a non-empty list of document lengths in bytes")
    for i, n in enumerate(lengths):
        integer(n, f"lengths[{i}]", 2)
    need = 16 * int(cfg.samples) * max(lengths)  # int64 documents and their targets, one length at a time
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system: no check
        have = None
    if have and need > have // 2:
        raise ValueError(f"lengths up to {max(lengths):,} bytes x samples={cfg.samples} need about {need / 2**30:.0f} "
                         f"GiB before the model runs (this machine has {have / 2**30:.0f}); lower the lengths or "
                         "samples")
    if not isinstance(depths, list) or not depths or not all(
            isinstance(d, (int, float)) and not isinstance(d, bool) and 0 <= d <= 1 for d in depths):
        raise ValueError(f"depths={depths!r} must be a non-empty list of relative depths in [0, 1] "
                         "(0: the start of the document, 1: its end)")


def refuse_replacing(path: Path, settings: dict[str, Any]) -> None:
    """A task's result scored with other settings is kept, not replaced unasked (a table cell's ``longeval/``
    files must stay those of its evaluation): stop in one line naming the setting and the fix."""
    old = read_json_quietly(path) or {}
    differ = [k for k, v in settings.items() if k in old and old[k] != v]
    if differ:
        k = differ[0]
        raise ValueError(f"{path} holds a result scored with {k}={old[k]!r} (now {settings[k]!r}); set "
                         "out_dir=<folder> to keep both, or overwrite=true to replace it")


def run(cfg: DictConfig) -> dict[str, Any]:
    """``configs/longeval.yaml``: every task of ``tasks`` (or ``task``) scored on the length x depth grid.
    Returns {task: result, "tasks": [...], "curve": [{task, length, accuracy}]}."""
    check_longeval_config(cfg)
    refuse_tokens(cfg.run_dir, "the long-context tasks (byte-level documents and answers)")
    device = pick_device(cfg.device)
    train_cfg, module = load_run(cfg.run_dir, cfg.ckpt_path, to_plain(cfg.net_overrides), device)
    tasks = [cfg.task] if cfg.task else list(to_plain(cfg.tasks))
    window = int(cfg.window or train_cfg.data.seq_len)
    settings = {"lengths": [int(x) for x in to_plain(cfg.lengths)], "depths": [float(x) for x in to_plain(cfg.depths)],
                "samples": int(cfg.samples), "window": window, "seed": int(cfg.seed), "precision": str(cfg.precision),
                "net_overrides": to_plain(cfg.net_overrides) or {}}
    out_dir = Path(cfg.run_dir) / cfg.out_dir
    if not cfg.overwrite:
        for task in tasks:
            refuse_replacing(out_dir / f"{task}.json", settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for task in tasks:
        r = score(module.net, task, settings["lengths"], settings["depths"], settings["samples"], window, device,
                  settings["seed"], cfg.precision, None if cfg.get("batch_size") is None else int(cfg.batch_size))
        r.update(settings, model=train_cfg.model.get("name"))
        write_json(out_dir / f"{task}.json", r)
        heat_map(r, out_dir / f"{task}.png", f"{task}: {r['model']} ({Path(cfg.run_dir).name})")
        print(f"[longlab] {task}: " + "; ".join(
            f"{L}: " + " ".join("n/a" if v is None else f"{v:.2f}" for v in row.values())
            for L, row in r["accuracy"].items()))
        results[task] = r
    curve = [{"task": t, "length": int(L), "accuracy": v} for t, r in results.items()
             for L, v in r["mean_by_length"].items() if v is not None]
    metric_units = {f"{t}.mean_by_length.{L}": u for t, r in results.items() for L, u in r["units"].items()}
    summary = {**results, "tasks": tasks, "curve": curve,  # curve: the tables' accuracy-vs-length figure
               "metric_units": metric_units}  # a table's intervals on <task>.mean_by_length.<length>
    if cfg.get("out"):
        write_json(Path(cfg.run_dir) / cfg.out, summary)
    return summary
