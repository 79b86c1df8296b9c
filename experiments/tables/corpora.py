"""One table, one text: every cell of a table that reads the same data options must have trained on the same
corpus content. A corpus is rebuilt from its sources on each machine, and some sources are the machine's own
(``data=packages`` with ``data.distributions=null`` reads the installed site-packages): a new seed, a retrain
or a resumed cell on another machine would otherwise train and score on other documents than the table's
other cells, without a word.

What a cell trained on is its ``corpus.json`` (written by the training run), or, for a cell trained before
those were written, the corpus folder its evaluations name (``corpus.folder`` where ``trained_on``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments.data.corpus import ByteCorpus, corpus_options
from experiments.data.identity import INSTALLED, describe_identity, same_content
from experiments.tables.cells import read_json

BYTE_DATA = "experiments.data.ByteDataModule"


def data_key(cfg: DictConfig) -> str | None:
    """The data options that decide a corpus's text (not where it is cached); None for generated data (no
    corpus)."""
    data = cfg.get("data")
    if data is None or data.get("_target_") != BYTE_DATA:
        return None
    options = {k: v for k, v in corpus_options(data).items() if k != "cache_dir"}
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:12]


def trained_on(cell: Path) -> dict | None:
    """The corpus identity a cell trained on: its ``corpus.json``, else the folder its evaluations were scored
    on as its own corpus (older cells), else None."""
    ident = read_json(cell / "corpus.json")
    if ident:
        return ident
    for f in sorted(cell.glob("*.json")):
        corpus = (read_json(f) or {}).get("corpus")
        if isinstance(corpus, dict) and corpus.get("trained_on") and corpus.get("folder"):
            return {"folder": corpus["folder"]}
    return None


def table_cells(results: str | Path, table: str, scale: str) -> list[Path]:
    return sorted(p.parent for p in (Path(results) / "cells" / table / scale).glob("*/*/seed=*/config.yaml"))


def check_table_corpus(results: str | Path, table: str, scale: str, cfg: DictConfig, tag: str) -> None:
    """Stop, in one line naming both corpora and the fix, when the corpus that ``cfg`` builds here holds other
    text than the one the table's cells with the same data options trained on."""
    key = data_key(cfg)
    if key is None:
        return
    here = None
    for cell in table_cells(results, table, scale):
        was = trained_on(cell)
        if was is None or data_key(OmegaConf.load(cell / "config.yaml")) != key:
            continue
        here = here or ByteCorpus.build_or_load(**corpus_options(cfg.data)).identity()
        if not same_content(was, here):
            raise ValueError(
                f"{tag}: the corpus built here is {describe_identity(here)}, but {cell} trained on "
                f"{describe_identity(was)} with the same data options: its sources differ on this machine "
                f"({INSTALLED}), so this cell would train and score on other documents than the table's; run the "
                f"table where the sources match, or move {Path(results) / 'cells' / table / scale} aside to start "
                "the table afresh")


__all__ = ["check_table_corpus", "data_key", "table_cells", "trained_on"]
