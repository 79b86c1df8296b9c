"""Pass-key accuracy by where the needle falls inside the model's window: a control for the depth grid.

A model that reads its input in windows or chunks of ``period`` bytes (FoT's memory windows, Megalodon's
attention chunks) sees the pass-key needle (``HEAD key MID key TAIL``, the key written twice) whole in one
window, or cut by a window boundary before, inside or after one of its two keys. On the long_context_tasks
grid every depth puts the needle at one fixed offset in its window at every length (depth 0.25: byte 230 of
256, the boundary between the two keys), so depth and offset are confounded there. This evaluation moves the
needle through every ``step``-th offset of one window at a few depths (``anchors``) of one document length,
so that accuracy can be read by offset and by where the boundary cuts the needle, at the same depth.

    python -m experiments.needle_offset "run_dirs=['<run>','<run>']" length=4096 'anchors=[0.25,0.5]' step=8 \\
        samples=8 out=<file>.json

Writes ``out`` (JSON: one row per run x anchor x offset, and the documents pooled over runs by cut) and a
markdown table beside it (``.md``). The runs are pooled as seeds of one configuration.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from experiments.config import integer, to_plain, write_json
from experiments.data.tasks import KEY_DIGITS, NEEDLE_HEAD, NEEDLE_MID, NEEDLE_TAIL, QUESTION
from experiments.evaluation.long_context import score
from experiments.evaluation.run import refuse_tokens
from experiments.provenance import describe_machine, git_commit, machine_info
from experiments.training.runs import load_run, pick_device

NEEDLE = len(NEEDLE_HEAD) + KEY_DIGITS + len(NEEDLE_MID) + KEY_DIGITS + len(NEEDLE_TAIL)
TAIL = len(QUESTION) + KEY_DIGITS  # the question and its answer
CUTS = ("whole", "before key 1", "inside key 1", "between the keys", "inside key 2", "after key 2")


def cut(offset: int, period: int) -> str:
    """Where the first window boundary after the needle's start (at ``offset`` in its window) cuts the needle."""
    b = (period - offset % period) % period  # needle bytes before the boundary
    k1 = len(NEEDLE_HEAD)
    k2 = k1 + KEY_DIGITS + len(NEEDLE_MID)
    if b == 0 or b >= NEEDLE:
        return "whole"
    if b <= k1:
        return "before key 1"
    if b < k1 + KEY_DIGITS:
        return "inside key 1"
    if b <= k2:
        return "between the keys"
    return "inside key 2" if b < k2 + KEY_DIGITS else "after key 2"


def positions(length: int, period: int, step: int, anchor: float) -> list[tuple[float, int]]:
    """(depth, needle start) for the offsets 0, step, ... of the window holding ``anchor`` of the document:
    depths that ``tasks.passkey`` maps back to exactly those starts."""
    room = length - TAIL - NEEDLE
    base = int(anchor * room) // period * period
    out = []
    for o in range(0, period, step):
        at = base + o
        if at > room:
            break
        depth = at / room
        assert int(round(depth * room)) == at
        out.append((depth, at))
    return out


def wilson(k: float, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of k successes in n documents."""
    if n == 0:
        return (math.nan, math.nan)
    z, p = 1.959964, k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, mid - half), min(1.0, mid + half))


def tally(rows: list[dict]) -> dict | None:
    """Documents right of those in ``rows``, with the 95% Wilson interval; None for no documents."""
    k, n = sum(r["right"] for r in rows), sum(r["documents"] for r in rows)
    return {"right": k, "documents": n, "accuracy": k / n, "interval": list(wilson(k, n))} if n else None


def check_config(cfg: DictConfig) -> None:
    runs = to_plain(cfg.run_dirs)
    if not isinstance(runs, list) or not runs:
        raise ValueError(f"run_dirs={runs!r} must be a non-empty list of runs (seeds of one configuration)")
    integer(cfg.length, "length", 2)
    integer(cfg.step, "step")
    integer(cfg.samples, "samples")
    integer(cfg.period, "period", optional=True)
    anchors = to_plain(cfg.anchors)
    if not isinstance(anchors, list) or not anchors or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a <= 1 for a in anchors):
        raise ValueError(f"anchors={anchors!r} must be a non-empty list of relative depths in [0, 1]")
    if not cfg.out:
        raise ValueError("out=null: name the JSON file to write (out=<file>.json); a run's own files are not touched")
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise ValueError(f"out={cfg.out} exists; choose another file or set overwrite=true to replace it")


def period_of(net, given: int | None) -> int:
    """``given``, else the model's window (FoT) or attention chunk (Megalodon)."""
    if given:
        return int(given)
    for name in ("window", "chunk_size"):
        v = getattr(getattr(net, "config", None), name, None)
        if isinstance(v, int) and v > 0:
            return v
    raise ValueError(f"{type(net).__name__} has no window or chunk to take the period from; set period=<bytes>")


def run(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)
    code = git_commit()  # the code that scores, read before it runs
    device = pick_device(cfg.device)
    rows, period = [], None
    batch = None if cfg.get("batch_size") is None else int(cfg.batch_size)
    for run_dir in to_plain(cfg.run_dirs):
        refuse_tokens(run_dir, "the pass-key task (byte-level documents and answers)")
        train_cfg, module = load_run(run_dir, cfg.ckpt_path, to_plain(cfg.net_overrides), device)
        p = period_of(module.net, cfg.period)
        if period is not None and p != period:
            raise ValueError(f"{run_dir}: period {p} differs from the first run's {period}; set period=<bytes>")
        period = p
        window = int(cfg.window or train_cfg.data.seq_len)
        for anchor in to_plain(cfg.anchors):
            pos = positions(int(cfg.length), period, int(cfg.step), float(anchor))
            r = score(module.net, "passkey", [int(cfg.length)], [d for d, _ in pos], int(cfg.samples), window,
                      device, int(cfg.seed), cfg.precision, batch)
            right = r["units"][str(cfg.length)]["sum"]  # depth-major, samples each
            n = int(cfg.samples)
            for i, (depth, at) in enumerate(pos):
                hits = right[i * n: (i + 1) * n]
                rows.append({"run": str(run_dir), "anchor": float(anchor), "depth": depth, "needle": at,
                             "offset": at % period, "cut": cut(at % period, period), "right": sum(hits),
                             "documents": n})
    by_cut = {c: t for c in CUTS if (t := tally([r for r in rows if r["cut"] == c]))}
    by_anchor_cut = {f"{a}/{c}": t for a in to_plain(cfg.anchors) for c in CUTS
                     if (t := tally([r for r in rows if r["anchor"] == float(a) and r["cut"] == c]))}
    out = {"length": int(cfg.length), "period": period, "step": int(cfg.step), "anchors": to_plain(cfg.anchors),
           "samples": int(cfg.samples), "seed": int(cfg.seed), "precision": str(cfg.precision),
           "runs": to_plain(cfg.run_dirs), "code": code, "machine": machine_info(),
           "rows": rows, "by_cut": by_cut, "by_anchor_cut": by_anchor_cut}
    path = Path(cfg.out)
    write_json(path, out)
    table = markdown(out)
    path.with_suffix(".md").write_text(table)
    print(table)
    return out


def markdown(r: dict) -> str:
    """Accuracy by cut, per anchor and pooled, with 95% Wilson intervals over documents."""
    lines = [f"Pass key at {r['length']:,} bytes, the needle moved through every {r['step']}th byte of a "
             f"{r['period']}-byte window at depths {r['anchors']}, {r['samples']} documents per offset, "
             f"{len(r['runs'])} run(s) pooled; 95% Wilson intervals over documents. Commit "
             f"{r['code'].get('commit', '?')[:10]}{' (dirty)' if r['code'].get('dirty') else ''}, "
             f"{describe_machine(r['machine'])}.", "",
             "| where the window boundary cuts the needle | " + " | ".join(f"depth ~{a}" for a in r["anchors"])
             + " | pooled |", "|---|" + "---:|" * (len(r["anchors"]) + 1)]
    fmt = lambda e: f"{e['accuracy']:.2f} [{e['interval'][0]:.2f}, {e['interval'][1]:.2f}] ({e['documents']})"  # noqa: E731
    for c in CUTS:
        if c not in r["by_cut"]:
            continue
        cells = [fmt(r["by_anchor_cut"][f"{a}/{c}"]) if f"{a}/{c}" in r["by_anchor_cut"] else "—"
                 for a in r["anchors"]]
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {fmt(r['by_cut'][c])} |")
    return "\n".join(lines) + "\n"
