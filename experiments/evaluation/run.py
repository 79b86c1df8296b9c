"""``evaluate(cfg)``: a run's windowed or streaming bits per byte (``configs/eval.yaml``, command line
``experiments.eval``), on the corpus it trained on or another one; writes ``<run_dir>/<out>`` and keeps
every setting's result under ``<run_dir>/eval_metrics/``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from experiments.config import integer, precision, to_plain, write_json
from experiments.data.build import describe_source
from experiments.data.corpus import CORPUS_KEYS, ByteCorpus, corpus_options
from experiments.data.identity import INSTALLED, describe_identity, same_content
from experiments.data.tokens import load as load_tokenizer
from experiments.evaluation.aligned import aligned_streaming_bpb, aligned_windowed_bpb
from experiments.evaluation.bpb import streaming_bpb, windowed_bpb
from experiments.training.checks import read_json_quietly
from experiments.training.runs import corpus_of, load_run, pick_device


def check_eval_config(cfg: DictConfig) -> None:
    """Refuse values that would score nothing or something else than asked, naming the field."""
    e = cfg.eval
    precision(cfg.precision)
    for name in ("batch_size", "num_batches", "curve_base"):
        integer(e[name], f"eval.{name}", 2 if name == "curve_base" else 1)
    for name in ("context", "window", "max_docs", "max_doc_bytes"):
        integer(e[name], f"eval.{name}", 2 if name == "max_doc_bytes" else 1, optional=True)


def refuse_tokens(run_dir, what: str) -> None:
    """A token-level run (it has a tokenizer.json) cannot be scored by an evaluation defined on bytes."""
    if (Path(run_dir) / "tokenizer.json").exists():
        raise ValueError(f"{run_dir} is a token-level run (data.tokenizer): {what} is defined on bytes; evaluate it "
                         "with experiments.eval (windowed or streaming bits per byte) or train a byte-level run")


def eval_corpus(cfg: DictConfig, train_cfg: DictConfig) -> tuple[ByteCorpus, bool]:
    """The corpus to score: the run's own, or another one (``data=<preset>`` and/or ``data.path=...``), and
    whether it is another one."""
    data = cfg.get("data")
    preset = data is not None and "_target_" in data
    if data is None or (not preset and data.get("path") is None):
        corpus = corpus_of(train_cfg)
        was, here = read_json_quietly(Path(cfg.run_dir) / "corpus.json"), corpus.identity()
        if was and not same_content(was, here):
            raise ValueError(f"{cfg.run_dir} trained on {describe_identity(was)}, but the corpus built here from its "
                             f"data options is {describe_identity(here)}: its test documents are not the ones of the "
                             f"run's corpus ({INSTALLED}); evaluate where the sources match, or name another corpus "
                             "with data=<preset> (scored as another corpus)")
        return corpus, False
    if preset:
        options = corpus_options(data)
    else:
        options = {**corpus_options(train_cfg.data), "name": "eval",
                   **{k: data[k] for k in data if k in CORPUS_KEYS}}
    tokenizer = Path(cfg.run_dir) / "tokenizer.json"
    if tokenizer.exists():  # another corpus read with the run's own tokenizer, never one trained on it
        options["tokenizer"] = str(tokenizer)
    return ByteCorpus.build_or_load(**options), True


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """``configs/eval.yaml``: windowed or streaming bits per byte of a run; writes ``<run_dir>/<out>``."""
    e = cfg.eval
    check_eval_config(cfg)
    device = pick_device(cfg.device)
    train_cfg, module = load_run(cfg.run_dir, cfg.ckpt_path, to_plain(e.net_overrides), device)
    corpus, other = eval_corpus(cfg, train_cfg)
    split = corpus.split(e.split)
    seq_len = int(train_cfg.data.seq_len)
    result: dict[str, Any] = {"run_dir": str(cfg.run_dir), "split": e.split, "model": train_cfg.model.get("name"),
                              "corpus": {"path": corpus.meta["source"].get("path"), "folder": corpus.folder.name,
                                         "trained_on": not other}}
    print(f"[longlab] evaluating on {'another corpus' if other else 'the corpus the run trained on'}: "
          f"{describe_source(corpus.meta)} ({e.split} split, "
          f"{split.n_docs:,} documents)")
    aligned = bool(e.get("byte_windows")) and split.tokenizer is not None
    if aligned:  # the byte windows and documents a byte-level run is scored on, read through the tokenizer
        tok, split = load_tokenizer(split.tokenizer), corpus.byte_corpus().split(e.split)
        result["byte_windows"] = True
    if aligned and e.streaming:
        r = aligned_streaming_bpb(module.net, split, tok, int(e.window or seq_len), int(e.batch_size), device,
                                  e.max_docs, e.max_doc_bytes, int(e.curve_base), cfg.precision)
    elif e.streaming:
        r = streaming_bpb(module.net, split, int(e.window or seq_len), int(e.batch_size), device,
                          e.max_docs, e.max_doc_bytes, int(e.curve_base), cfg.precision)
    if e.streaming:
        result["units"] = r.pop("units")
        result.update({f"{e.split}/stream_bpb": r["bpb"], f"{e.split}/stream_loss": r["loss"],
                       "stream": r})
        print(f"[longlab] streaming {e.split} bits/byte {r['bpb']:.4f} over {r['bytes']:,} bytes "
              f"in {r['docs']} documents (window {r['window']})")
        for c in r["curve"]:
            print(f"  positions [{c['start']:>7}, {c['end']:>7}): {c['bpb']:.4f} bpb  ({c['bytes']:,} bytes)")
    else:
        ctx = int(e.context or (round(seq_len * corpus.bytes_per_token) if aligned else seq_len))
        methods = list(to_plain(e.methods) or [])
        if aligned and (methods or e.strided):
            raise ValueError("eval.byte_windows=true scores plain windows; drop eval.methods / eval.strided (they are "
                             "MEGABYTE's inference methods, defined on bytes)")
        if aligned:
            r = aligned_windowed_bpb(module.net, split, tok, ctx, int(e.batch_size), int(e.num_batches),
                                     int(e.seed), device, cfg.precision, e.split)
        else:
            r = windowed_bpb(module.net, split, ctx, int(e.batch_size), int(e.num_batches), int(e.seed),
                             device, cfg.precision, e.split, strided=bool(e.strided), methods=methods,
                             patch_size=e.patch_size, window_patch=e.window_patch)
        if "units" in r:
            result["units"] = r.pop("units")
        if "method_units" in r:  # a table's intervals on <split>/bpb_<method>, paired across methods
            result["metric_units"] = {f"{e.split}/bpb_{m}": v for m, v in r.pop("method_units").items()}
        result.update({f"{e.split}/bpb": r["bpb"], f"{e.split}/loss": r["loss"], "context": ctx,
                       "bytes": r["bytes"]})
        for m, v in r.get("methods", {}).items():
            result[f"{e.split}/bpb_{m}"] = v
            print(f"[longlab] {m:>15}: {v:.4f} bits/byte")
        if "patch_profile" in r:
            result["patch_profile"] = r["patch_profile"]
            print("[longlab] bits/byte by slot in the patch: "
                  + ", ".join(f"{p['slot']}: {p['bpb']:.3f}" for p in r["patch_profile"]))
        if r.get("strided"):
            result[f"{e.split}/bpb_basic"] = r["bpb_basic"]
            print(f"[longlab] strided inference: {r['bpb']:.4f} bits/byte (basic pass on the same bytes: "
                  f"{r['bpb_basic']:.4f})")
        print(f"[longlab] {e.split} bits/byte {r['bpb']:.4f} at context {ctx} over {r['bytes']:,} bytes")
    if aligned:
        result["edited_units"] = r["edited_units"]
        print("[longlab] byte windows: the same text a byte-level run scores, read through the run's tokenizer"
              + (f"; {r['edited_units']} of {len(result['units']['nll'])} units hold bytes that are not UTF-8 and "
                 "reached the tokenizer as U+FFFD" if r["edited_units"] else ""))
    run_dir = Path(cfg.run_dir)
    write_json(run_dir / cfg.out, result)
    if cfg.out == "eval_metrics.json":  # the default: also kept per setting, so settings never overwrite each other
        (run_dir / "eval_metrics").mkdir(exist_ok=True)
        write_json(run_dir / "eval_metrics" / f"{setting_name(cfg, train_cfg)}.json", result)
    return result


def setting_name(cfg: DictConfig, train_cfg: DictConfig) -> str:
    """A file name that says what was evaluated: stream_test_w256, window_test_ctx1024_strided, ..."""
    e, seq = cfg.eval, int(train_cfg.data.seq_len)
    parts = ["stream" if e.streaming else "window", str(e.split)]
    if e.streaming:
        parts += [f"w{int(e.window or seq)}"] + ([f"docs{e.max_docs}"] if e.max_docs else []) \
            + ([f"max{e.max_doc_bytes}"] if e.max_doc_bytes else [])
    else:
        parts.append(f"ctx{int(e.context or seq)}")
        parts += ["strided"] if e.strided else []
        parts += list(to_plain(e.methods) or [])
    parts += ["bytewin"] if e.get("byte_windows") and (Path(cfg.run_dir) / "tokenizer.json").exists() else []
    parts += [f"{k}{v}" for k, v in sorted((to_plain(e.net_overrides) or {}).items())]
    data = cfg.get("data")
    if data is not None and ("_target_" in data or data.get("path") is not None):
        tag = f"{data.get('name')}|{data.get('path')}".encode()
        parts.append("corpus-" + hashlib.sha1(tag).hexdigest()[:8])
    if str(cfg.precision) not in ("32", "32-true"):
        parts.append(str(cfg.precision))
    return "_".join(str(p).replace("/", "-") for p in parts)
