"""torch.compile on every architecture: training steps per second eager and compiled (in place, as
``compile=true`` does), side by side in one run, and the largest loss difference over the timed steps (a
compiled network must compute the same numbers). Prints a markdown table.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.compile [--models transformer_tiny megalodon_tiny ...] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import table  # noqa: E402
from experiments.config import build, compose  # noqa: E402


def run(net, x, steps):
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    losses, times = [], []
    for i in range(steps + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        logits, _ = net(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:  # warm-up (and compilation) excluded
            times.append((time.perf_counter() - t0, time.process_time() - c0))
            losses.append(float(loss))
    return losses, sorted(t for t, _ in times)[len(times) // 2], sorted(c for _, c in times)[len(times) // 2]


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["transformer_tiny", "megalodon_tiny", "megabyte_tiny", "fot_tiny"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args(argv)
    x = torch.randint(0, 256, (a.batch, a.seq + 1), generator=torch.Generator().manual_seed(0))
    rows = []
    for model in a.models:
        torch.manual_seed(0)
        eager = build(compose("train", [f"model={model}", f"data.seq_len={a.seq}"]).model.net)
        if not eager.compiles:  # compile=true refuses it: measured eagerly only
            wall = run(eager, x, a.steps)[1]
            rows.append({"model": f"{model} (compile=true refuses it)", "eager": a.batch * a.seq / wall})
            continue
        compiled = copy.deepcopy(eager)
        compiled.compile()
        le, we, ce = run(eager, x, a.steps)
        lc, wc, cc = run(compiled, x, a.steps)
        rows.append({"model": model, "eager": a.batch * a.seq / we, "compiled": a.batch * a.seq / wc,
                     "speedup": we / wc, "cpu_speedup": ce / cc,
                     "diff": max(abs(p - q) for p, q in zip(le, lc))})
    text = table(rows, [("model", "model", ""), ("eager", "eager bytes/s", "{:,.0f}"),
                        ("compiled", "compiled bytes/s", "{:,.0f}"), ("speedup", "wall", "{:.2f}x"),
                        ("cpu_speedup", "CPU time", "{:.2f}x"), ("diff", "max |loss diff|", "{:.1e}")])
    print(text)
    return text


if __name__ == "__main__":
    main()
