"""Evaluate a training run: ``python -m experiments.eval run_dir=<dir> [eval.streaming=true]``.

Writes ``<run_dir>/eval_metrics.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from experiments.evaluation import streaming_bpb, windowed_bpb
from experiments.runs import corpus_of, load_run, pick_device, plain
from experiments.train import write_json


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    e = cfg.eval
    device = pick_device(cfg.device)
    train_cfg, module = load_run(cfg.run_dir, cfg.ckpt_path, plain(e.net_overrides), device)
    split = corpus_of(train_cfg).split(e.split)
    seq_len = int(train_cfg.data.seq_len)
    result: dict[str, Any] = {"run_dir": str(cfg.run_dir), "split": e.split, "model": train_cfg.model.get("name")}
    if e.streaming:
        r = streaming_bpb(module.net, split, int(e.window or seq_len), int(e.batch_size), device,
                          e.max_docs, e.max_doc_bytes, int(e.curve_base), cfg.precision)
        result.update({f"{e.split}/stream_bpb": r["bpb"], f"{e.split}/stream_loss": r["loss"],
                       "stream": r})
        print(f"[longlab] streaming {e.split} bits/byte {r['bpb']:.4f} over {r['bytes']:,} bytes "
              f"in {r['docs']} documents (window {r['window']})")
        for c in r["curve"]:
            print(f"  positions [{c['start']:>7}, {c['end']:>7}): {c['bpb']:.4f} bpb  ({c['bytes']:,} bytes)")
    else:
        ctx = int(e.context or seq_len)
        r = windowed_bpb(module.net, split, ctx, int(e.batch_size), int(e.num_batches), int(e.seed),
                         device, cfg.precision, e.split, strided=bool(e.get("strided", False)))
        result.update({f"{e.split}/bpb": r["bpb"], f"{e.split}/loss": r["loss"], "context": ctx,
                       "bytes": r["bytes"]})
        if r.get("strided"):
            result[f"{e.split}/bpb_basic"] = r["bpb_basic"]
            print(f"[longlab] strided inference: {r['bpb']:.4f} bits/byte (basic pass on the same bytes: "
                  f"{r['bpb_basic']:.4f})")
        print(f"[longlab] {e.split} bits/byte {r['bpb']:.4f} at context {ctx} over {r['bytes']:,} bytes")
    out = Path(cfg.run_dir) / cfg.out
    write_json(out, result)
    return result


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
