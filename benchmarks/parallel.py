"""Memory per process of one training step (forward + backward) of long sequences: one process vs
chunk (sequence) parallelism over 2 gloo processes (``parallel.sequence=2``), each without and with
per-layer activation checkpointing (``model.net.checkpoint_layers``). Prints a markdown table.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.parallel [--models megalodon] [--seq-len 32768] [--quick]

Each step runs in fresh processes (one thread each, so two ranks fit the two cores): the peak resident
memory above the level just before the forward is the step's activations and gradients. The ranks of a
sequence run one after the other (rank 1 waits for rank 0's state; rank 0 for rank 1's gradient), so
the saving is memory, not time; wall and CPU seconds are per process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import PeakRSS, table  # noqa: E402


def _net(model: str, checkpoint: bool):
    from hydra.utils import instantiate

    from experiments.config import compose

    torch.manual_seed(0)
    cfg = compose("train", [f"model={model}", f"model.net.checkpoint_layers={str(checkpoint).lower()}"])
    return instantiate(cfg.model.net)


def _step(rank: int, size: int, port: int, model: str, checkpoint: bool, tokens: torch.Tensor, out: str):
    from experiments.training.parallel import receive_state, send_state, sequence_group, span

    torch.set_num_threads(1)
    if size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=size)
    net = _net(model, checkpoint).train()
    group = sequence_group(rank, size, size)
    x = span(tokens, group)
    warm = x[:, : min(257, x.shape[1])]  # one short step first: one-time allocations are not the step's
    F.cross_entropy(net(warm[:, :-1])[0].flatten(0, 1), warm[:, 1:].flatten()).backward()
    net.zero_grad(set_to_none=True)
    w0, c0 = time.perf_counter(), time.process_time()
    with PeakRSS() as mem:
        state, link = receive_state(group, torch.device("cpu")) if size > 1 else (None, 0.0)
        logits, state = net(x[:, :-1], state)
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        if size > 1:
            loss = loss + link + send_state(state, group)
        loss.backward()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    if size > 1:
        dist.destroy_process_group()
    Path(f"{out}.{rank}").write_text(json.dumps({"mem_mb": mem.delta_mb, "wall": wall, "cpu": cpu,
                                                 "loss": float(loss.detach())}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(model: str, seq_len: int, batch: int, size: int, checkpoint: bool) -> dict:
    tokens = torch.randint(0, 256, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/r"
        mp.spawn(_step, args=(size, _free_port(), model, checkpoint, tokens, out), nprocs=size, join=True)
        ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(size)]
    return {"model": model, "processes": size, "checkpoint": "yes" if checkpoint else "no",
            "mem_mb": max(r["mem_mb"] for r in ranks), "wall": max(r["wall"] for r in ranks),
            "cpu": max(r["cpu"] for r in ranks), "loss": sum(r["loss"] for r in ranks) / size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["megalodon", "transformer", "megabyte"])
    ap.add_argument("--seq-len", type=int, default=32768)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny presets at 2048 bytes (a check that it runs)")
    a = ap.parse_args()
    models = [f"{m}_tiny" for m in a.models] if a.quick else a.models
    seq_len = 2048 if a.quick else a.seq_len
    rows = []
    for model in models:
        base = None
        for size in (1, 2):
            for ckpt in (False, True):
                r = run(model, seq_len, a.batch, size, ckpt)
                base = base or r["mem_mb"]
                r["ratio"] = r["mem_mb"] / base
                rows.append(r)
                print(json.dumps(r), flush=True)
    print(f"\nOne training step of {a.batch} x {seq_len} bytes; peak memory per process above the level before "
          "the forward (activations + gradients); wall / CPU s per process.\n")
    print(table(rows, [("model", "model", ""), ("processes", "processes (parallel.sequence)", ""),
                       ("checkpoint", "checkpoint_layers", ""), ("mem_mb", "peak MB / process", "{:.0f}"),
                       ("ratio", "vs 1 process", "{:.2f}"), ("wall", "wall s", "{:.1f}"), ("cpu", "CPU s", "{:.1f}"),
                       ("loss", "loss", "{:.6f}")]))


if __name__ == "__main__":
    main()
