"""FoT evaluations: dictionary look-up accuracy vs tokens in memory, and the distraction ratio r_d.

``run(cfg)`` (``configs/fot_eval.yaml``, command line ``experiments.fot_eval``) writes
``<run_dir>/fot_eval.json``. Works with any architecture for the dictionary (a model without memory,
e.g. the baseline with a sliding window, shows what memory buys); r_d needs a CrossBatch model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from experiments.config import to_plain, write_json
from experiments.data.dictionary import K_TOK, Q_TOK, RECORD, check_window, query_value_mask, random_entries, records
from experiments.training.runs import load_run, pick_device, rebuild


@torch.no_grad()
def dictionary_accuracy(net, n_tokens: int, window: int, query_windows: int = 4, seed: int = 0,
                        device: torch.device | str = "cpu") -> dict:
    """Stream ``n_tokens`` of definitions (whole windows) through ``net`` with carried state, then ask
    queries about keys defined anywhere; accuracy of the argmax on every query value token."""
    check_window(window)
    n_defs = max(1, n_tokens // RECORD) // (window // RECORD) * (window // RECORD)
    rng = np.random.default_rng([seed, n_defs])
    keys, values = random_entries(rng, n_defs)
    defs = torch.from_numpy(records(keys, values, K_TOK)).to(device)[None]
    state = None
    for s in range(0, defs.shape[1], window):  # no logits needed: read (FoT stops at its last memory layer)
        state = net.read(defs[:, s : s + window], state)
    hits, total = 0, 0
    per = window // RECORD
    scored = torch.from_numpy(query_value_mask(per)).to(device)
    for _ in range(query_windows):
        ask = rng.choice(n_defs, size=per, replace=n_defs < per)
        q = torch.from_numpy(records(keys[ask], values[ask], Q_TOK)).to(device)[None]
        # all but the last token: the window stays incomplete, so the queries never enter the memory
        logits, _ = net(q[:, :-1], copy.copy(state))
        pred = logits.argmax(-1)[0]
        mask = scored[1:]
        hits += int((pred[mask] == q[0, 1:][mask]).sum())
        total += int(mask.sum())
    return {"tokens_in_memory": int(defs.shape[1]), "accuracy": hits / total, "queries": total // 4}


@torch.no_grad()
def distraction_ratio(net, batches, d: int, w: int = 1) -> float:
    """r_d: attention mass on the positive (own previous) context over the mass on all d contexts,
    averaged over queries, heads and memory layers."""
    W = net.crossbatch_window
    vals = []
    for tokens in batches:
        _, stats = net.forward_crossbatch(tokens[:, : w * W], tokens[:, w * W : (w + 1) * W], d,
                                          return_distraction=True)
        vals += [float(s) for s in stats]
    return float(np.mean(vals))


def run(cfg: DictConfig) -> dict[str, Any]:
    device = pick_device(cfg.device)
    train_cfg, module = load_run(cfg.run_dir, cfg.ckpt_path, device=device)
    net = module.net
    is_fot = net.crossbatch_window is not None  # a model with memory layers
    window = int(net.crossbatch_window or cfg.window)
    out: dict[str, Any] = {"run_dir": str(cfg.run_dir), "model": train_cfg.model.get("name"), "dictionary": []}
    backends = list(to_plain(cfg.backends)) if is_fot else [None]
    ks = list(to_plain(cfg.ks)) if is_fot else [None]
    for size in to_plain(cfg.sizes):
        for backend in backends:
            for k in ks:
                model = net
                if is_fot:
                    model = rebuild(net, memory_backend=backend, memory_k=int(k),
                                    memory_capacity=max(int(size) + window, net.config.memory_capacity))
                r = dictionary_accuracy(model, int(size), window, int(cfg.query_windows), int(cfg.seed), device)
                r.update(backend=backend, k=None if backend == "dense" else k)
                out["dictionary"].append(r)
                out.setdefault("accuracy_at", {}).setdefault(str(size), {})[str(backend or "none")] = r["accuracy"]
                print(f"[longlab] dictionary: {r['tokens_in_memory']:>9,} tokens in memory, backend={backend}, "
                      f"k={r['k']}: accuracy {r['accuracy']:.3f} over {r['queries']} queries")
    if is_fot and cfg.distraction_d:
        from experiments.data.dictionary import DictionaryBatches

        w = 1
        batches = [DictionaryBatches(window, int(cfg.distraction_batch), int(cfg.seed) + 99).batch(i)["tokens"][:, :-1]
                   .to(device) for i in range(int(cfg.distraction_batches))]
        out["distraction"] = [{"d": int(d), "r_d": distraction_ratio(net, batches, int(d), w)}
                              for d in to_plain(cfg.distraction_d)]
        for r in out["distraction"]:
            print(f"[longlab] distraction r_d at d={r['d']}: {r['r_d']:.3f} (1/d = {1 / r['d']:.3f})")
    write_json(Path(cfg.run_dir) / cfg.out, out)
    return out
