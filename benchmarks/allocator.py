"""The allocator: training steps of Megalodon at a long context and of the Transformer at 2K, each in a fresh
process with glibc's defaults and with the setting every longlab entry point runs under
(``experiments.cli.allocator_env``: jemalloc without page decay where the system has it, else glibc with no
mmap and no trimming), side by side in one run: minor page faults, bytes per second (wall) and per
CPU-second, and kernel (system) time. Prints a markdown table.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.allocator [--steps 4] [--context 16384]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks.common import table
from experiments.cli import allocator_env

CHILD = r"""
import json, resource, sys, time, torch
import torch.nn.functional as F
from architectures.megalodon import Megalodon
from architectures.transformer import Transformer
kind, T, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
net = (Megalodon(model_dim=256, num_layers=4, num_heads=1, z_dim=128, value_dim=512, ffn_hidden_dim=512,
                 chunk_size=2048, norm_num_groups=16) if kind == "megalodon"
       else Transformer(d_model=256, n_layers=4, n_heads=4))
opt = torch.optim.AdamW(net.parameters(), 1e-3)
x = torch.randint(0, 256, (1, T + 1))
def step():
    logits, _ = net(x[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
    opt.step(); opt.zero_grad(set_to_none=True)
step()  # warm-up
r0, t0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.process_time()
for _ in range(steps):
    step()
r1, t1, c1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.process_time()
print(json.dumps({"faults": r1.ru_minflt - r0.ru_minflt, "wall": t1 - t0, "cpu": c1 - c0,
                  "sys": r1.ru_stime - r0.ru_stime, "bytes": steps * T}))
"""


def child(kind: str, T: int, steps: int, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(T), str(steps)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--context", type=int, default=16384, help="Megalodon's context (the Transformer runs at 2048)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is shown")
    a = ap.parse_args(argv)
    plain = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES")}
    plain["LONGLAB_ALLOCATOR"] = "off"
    kept = allocator_env({k: v for k, v in plain.items() if k != "LONGLAB_ALLOCATOR"})
    rows = []
    for kind, T in (("megalodon", a.context), ("transformer", 2048)):
        runs = {"glibc defaults": [], kept["LONGLAB_ALLOCATOR"]: []}
        for _ in range(a.rounds):  # alternate, so that a load change hits both alike
            for name, env in (("glibc defaults", plain), (kept["LONGLAB_ALLOCATOR"], kept)):
                runs[name].append(child(kind, T, a.steps, env))
        base = None
        for name, rs in runs.items():
            med = sorted(rs, key=lambda r: r["wall"])[len(rs) // 2]
            bps = med["bytes"] / med["wall"]
            base = base or bps
            rows.append({"workload": f"{kind} {T:,}", "allocator": name, "faults": med["faults"], "bps": bps,
                         "cpu": med["bytes"] / med["cpu"], "sys": med["sys"], "speed": bps / base})
    text = table(rows, [("workload", "workload", ""), ("allocator", "allocator", ""),
                        ("faults", "minor faults", "{:,}"), ("bps", "bytes/s", "{:,.0f}"),
                        ("cpu", "bytes/CPU-s", "{:,.0f}"), ("sys", "system s", "{:.2f}"),
                        ("speed", "vs glibc defaults", "{:.2f}x")])
    print(text)
    return text


if __name__ == "__main__":
    main()
