"""The main job: the ``compare`` table (``configs/table/compare.yaml``) from one command.

    python -m experiments.compare                     # matched, tuned, 1 seed (~20 min on 2 cores): runs/compare
    python -m experiments.compare --quick             # a few steps each, tuned at that scale: checks that it all runs
    python -m experiments.compare --archs transformer megalodon
    python -m experiments.compare --match params      # size to the reference's parameters (none: the presets)
    python -m experiments.compare --budget tokens:2e7 --set data.path=~/corpus

Every architecture is sized to the reference's training FLOPs per byte (``--match``, the table's sizing
rule), trains on the same bytes in the same order at its tuned learning rate, and is scored on the same
test windows and streamed documents, with 95% intervals. By default the rates are the committed ones,
tuned at the cpu scale (``results/cells/compare/cpu``); a changed configuration (``--set``, ``--budget``,
``--match``, or an architecture without committed rates) is tuned here first, on its own grid. The 3-seed
table is ``results/compare.md`` (``python -m experiments.run_table compare --scale cpu``). ``--archs`` also
takes any model preset (``configs/model/<name>.yaml``), e.g. one of your own.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from omegaconf import OmegaConf

from experiments.config import bytes_per_update, to_plain
from experiments.tables.keys import TuningPending, composed, row_overrides, tuned_lr
from experiments.tables.report import make_table
from experiments.tables.runner import run_table
from experiments.tables.sizing import measure
from experiments.tables.spec import RowSpec, TableSpec, load_table

QUICK_SCALE = "smoke"


def parse_budget(text: str) -> tuple[str, float]:
    kind, _, value = text.partition(":")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if kind not in ("tokens", "flops") or not number > 0:
        raise ValueError(f"--budget {text!r}: use tokens:<N> or flops:<N>, e.g. tokens:1e6 or flops:5e12")
    return kind, number


def steps_for(cfg, kind: str, value: float) -> tuple[int, float]:
    """Training steps that spend the budget for a composed config (plain or not), and its FLOPs per byte."""
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    fpt = measure(to_plain(cfg.model.net), int(cfg.data.seq_len)).flops_per_byte
    tokens = value if kind == "tokens" else value / fpt
    return max(1, math.ceil(tokens / bytes_per_update(cfg))), fpt


def tokenizer_overrides(text: str) -> list[str]:
    """``bpe`` | ``bpe<vocabulary size>`` | the path of a saved tokenizer -> the row's data overrides."""
    if text == "bpe":
        return ["data.tokenizer=bpe"]
    if text.startswith("bpe") and text[3:].isdigit():
        return ["data.tokenizer=bpe", f"data.bpe_vocab_size={int(text[3:])}"]
    return [f"data.tokenizer='{text}'"]


def byte_window_evals(evals, context: int) -> tuple:
    """The table's evaluations as a token row runs them: on the byte rows' windows (``context`` bytes: the
    reference's training length) and documents (``eval.byte_windows``)."""
    return tuple(dataclasses.replace(ev, overrides=(*ev.overrides, "eval.byte_windows=true",
                                                    *([f"eval.context={context}"] if ev.kind == "window" else [])))
                 for ev in evals)


def token_row(row: RowSpec, tokenizer: str, evals, context: int) -> RowSpec:
    """A row read through a tokenizer (``--archs transformer@bpe``): sized by the table's rule per byte of text
    (``tables.keys.sizing_overrides`` also sets its windows to the reference's bytes), and scored on exactly the
    byte windows and documents of the byte-level rows."""
    label = f"{row.title.removesuffix(' (reference)')} ({tokenizer} tokens)"
    return dataclasses.replace(row, name=f"{row.name}@{tokenizer}", label=label,
                               overrides=(*row.overrides, *tokenizer_overrides(tokenizer)),
                               evals=byte_window_evals(evals, context), skip_table_evals=True)


def table_for(a: argparse.Namespace, scale: str = "run",
              extra: list[str] | None = None) -> tuple[TableSpec, list[str]]:
    """The compare table with the command line's rows and matching rule, and the rows to train (the reference
    is in the table either way: the others are sized against it)."""
    spec = load_table("compare")
    rows = []
    for arch in a.archs or [r.name for r in spec.rows]:
        arch, at, tokenizer = arch.partition("@")
        name = arch.removesuffix("_tiny")
        context = 0
        if tokenizer:  # the byte rows' windows: the reference's training length with these overrides
            context = int(composed(row_overrides(spec, spec.row(spec.match.reference), scale, extra,
                                                 lr=1.0))["data"]["seq_len"])
        known = [r for r in spec.rows if r.name == name + at + tokenizer]  # a table row (tokens included)
        if known:  # its windows follow a changed training length (--set data.seq_len=...)
            rows.append(dataclasses.replace(known[0], evals=byte_window_evals(spec.evals, context))
                        if tokenizer else known[0])
            continue
        known = [r for r in spec.rows if r.name == name]
        row = known[0] if known else RowSpec(name=arch, experiment=None, overrides=(f"model={arch}",))
        rows.append(token_row(row, tokenizer, spec.evals_for(row), context) if tokenizer else row)
    names = [r.name for r in rows]
    reference = spec.row(spec.match.reference)
    if reference not in rows:  # the reference is sized against, not necessarily trained
        rows.insert(0, reference)
    spec = dataclasses.replace(spec, rows=tuple(rows))
    if a.match:
        spec = dataclasses.replace(spec, match=dataclasses.replace(spec.match, rule=a.match))
    return spec, names


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", help="rows of the compare table (transformer megalodon megabyte fot) or "
                    "model presets, each optionally read through a tokenizer: transformer@bpe, transformer@bpe8192, "
                    "transformer@<tokenizer path>; default: every row")
    ap.add_argument("--match", choices=["flops", "params", "none"], help="sizing rule (default: the table's, flops)")
    ap.add_argument("--lr", type=float, help="one learning rate for every row instead of each row's tuned rate "
                    "(not a fair comparison: say so)")
    ap.add_argument("--budget", help="tokens:<N> or flops:<N> of the reference per model (default: the table's steps)")
    ap.add_argument("--seeds", type=int, nargs="+", help="default: 0 (the 3-seed table is the cpu scale)")
    ap.add_argument("--scale", default="run", help="a scale of the compare table (default: run)")
    ap.add_argument("--out", default=None, help="folder for the cells and the report (default: runs/compare)")
    ap.add_argument("--quick", action="store_true", help="a few steps per model: checks that everything runs")
    ap.add_argument("--publish", action="store_true", help="run the cpu scale into results/ (the committed table)")
    ap.add_argument("--set", action="append", default=[], help="Hydra override for every cell (a new config)")
    a = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    if a.publish and (a.quick or a.set or a.budget or a.match or a.archs or a.lr):
        raise ValueError("--publish writes the committed results/compare.md from the cpu scale as configured; it "
                         "cannot be combined with --quick, --set, --budget, --match, --archs or --lr")
    scale = QUICK_SCALE if a.quick else ("cpu" if a.publish else a.scale)
    out = Path(a.out or ("results" if a.publish else "runs/compare-quick" if a.quick else "runs/compare"))
    extra = list(a.set)
    spec, names = table_for(a, scale, extra)
    if a.budget:
        kind, value = parse_budget(a.budget)
        # the reference's config at any rate (the budget does not depend on it)
        ref = composed(row_overrides(spec, spec.row(spec.match.reference), scale, extra, lr=1.0))
        steps, _ = steps_for(ref, kind, value)
        extra += [f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(1, steps // 8)}",
                  f"optim.warmup_steps={max(1, min(100, steps // 10))}",
                  f"callbacks.checkpoint.every_n_train_steps={max(1, steps // 4)}"]
    if a.lr is not None:
        spec = dataclasses.replace(spec, tune=None)
        extra.append(f"optim.lr={a.lr}")
    spec = tune_here_if_needed(spec, scale, extra, out)
    run_table(spec, scale, a.seeds, str(out), extra, rows=names)
    text = make_table(spec, str(out), scale, extra)
    print(text)
    print(f"[compare] report: {out}/{'compare' if scale == spec.default_scale else f'compare.{scale}'}.md; the "
          "3-seed table with intervals is results/compare.md")
    return text


def tune_here_if_needed(spec: TableSpec, scale: str, extra: list[str], out: Path) -> TableSpec:
    """Rates tuned at another scale (``tune.use_scale``) are used only where they exist for exactly these
    configs; otherwise this run tunes its own, at its own scale, into ``out`` (and says so)."""
    tscale = spec.tune.use_scale.get(scale, scale) if spec.tune else scale
    if tscale == scale:
        return spec
    missing = []
    for row in spec.rows:
        try:
            tuned_lr(spec, row, scale, extra)
        except TuningPending:
            missing.append(row.name)
    if not missing:
        return spec
    print(f"[compare] no committed tuned learning rates for {missing} with this configuration: tuning them here "
          f"({len(spec.tune.grid)}+ runs each on seed {spec.tune.seed}) into {out}", flush=True)
    return dataclasses.replace(spec, tune=dataclasses.replace(spec.tune, use_scale={}))


__all__ = ["main", "parse_budget", "steps_for"]
