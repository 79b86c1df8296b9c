"""MEGABYTE vs a FLOP-matched Transformer vs the `megabyte-pytorch` package, on CPU.

Training bytes/s and peak memory vs sequence length, and generation bytes/s for 8192 bytes.
``--updates`` instead times one training update of each row of the megabyte_bpb table as that table trains it
(its composed config at the cpu scale: bf16 autocast, AdamW, 16384 bytes per update), with Transformers of
other sizes (``--candidates``) beside them: the sizes a Transformer matched to MEGABYTE on seconds per update
would take on this machine.
The peer package is optional and is installed only for benchmarking, e.g.

    pip install --no-deps --target /tmp/peers megabyte-pytorch==0.3.6 beartype
    PEERS=/tmp/peers OMP_WAIT_POLICY=PASSIVE python -m benchmarks.megabyte

Differences of the peer from the paper (so the comparison is about speed, not fidelity): a linear
patch embedder with LayerNorms instead of concatenated byte embeddings, a position-specific dense
Linear(D_G, P * D_L) instead of the shared w_GL, RMSNorm and GELU blocks, no learned byte positions
by default, pad id 0 (a real byte), and generation that re-runs the full forward for every byte.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import kernels.sdpa as kernels_sdpa  # noqa: E402
from architectures.megabyte import Megabyte  # noqa: E402
from architectures.transformer import Transformer  # noqa: E402
from benchmarks.common import measure, table  # noqa: E402
from experiments.evaluation.generation import generate  # noqa: E402


def peer_class():
    if os.environ.get("PEERS"):
        sys.path.insert(0, os.environ["PEERS"])
    try:
        from MEGABYTE_pytorch import MEGABYTE
    except ImportError:
        return None
    return MEGABYTE


def ours(P, DG, DL, GL, LL, max_len):
    torch.manual_seed(0)
    return Megabyte(patch_size=P, d_global=DG, d_local=DL, global_layers=GL, global_heads=P * DG // 64,
                    local_layers=LL, local_heads=max(1, DL // 64), max_len=max_len)


def peer(cls, P, DG, DL, GL, LL, T):
    torch.manual_seed(0)
    return cls(num_tokens=256, dim=(P * DG, DL), depth=(GL, LL), max_seq_len=(T // P, P), dim_head=64,
               heads=P * DG // 64)


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def train_rows(a, cls):
    rows = []
    tf = Transformer(d_model=a.tf_width, n_layers=a.tf_layers, n_heads=a.tf_width // 64)
    for T in a.lengths:
        B = max(1, a.tokens_per_step // T)
        x = torch.randint(0, 256, (B, T + 1))
        models = {"megabyte (ours)": ours(a.P, a.DG, a.DL, a.GL, a.LL, T + 1)}
        if T <= a.tf_max:
            models["transformer (FLOP-matched)"] = tf
        if cls is not None:
            models["megabyte-pytorch"] = peer(cls, a.P, a.DG, a.DL, a.GL, a.LL, T)
        for name, net in models.items():
            net.train()
            if name == "megabyte-pytorch":
                def step(net=net):
                    net(x[:, :T], return_loss=True).backward()
                    net.zero_grad(set_to_none=True)
            else:
                def step(net=net):
                    logits, _ = net(x[:, :-1])
                    F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
                    net.zero_grad(set_to_none=True)
            m = measure(step, repeat=1, warmup=1)
            flops = net.flops_per_token(T) if hasattr(net, "flops_per_token") else None
            rows.append({"model": name, "params": n_params(net), "T": T, "B": B, "bps": B * T / m["wall"],
                         "cpu_bps": B * T / m["cpu"], "mem": m["mem_mb"], "gflops": flops and flops / 1e9})
    return rows


@torch.no_grad()
def gen_rows(a, cls):
    rows = []
    prompt = torch.randint(0, 256, (1, 16))
    n = a.gen_bytes
    mb = ours(a.P, a.DG, a.DL, a.GL, a.LL, n + 16 + a.P).eval()
    tf = Transformer(d_model=a.tf_width, n_layers=a.tf_layers, n_heads=a.tf_width // 64).eval()
    for name, net, count in (("megabyte (ours), cached", mb, n), ("transformer, KV cache", tf, n)):
        t0, c0 = time.perf_counter(), time.process_time()
        generate(net, prompt, count, temperature=1.0, generator=torch.Generator().manual_seed(0))
        rows.append({"model": name, "params": n_params(net), "bytes": count,
                     "bps": count / (time.perf_counter() - t0), "cpu_bps": count / (time.process_time() - c0)})
    if cls is not None:
        total = a.peer_gen_bytes
        net = peer(cls, a.P, a.DG, a.DL, a.GL, a.LL, total).eval()
        import MEGABYTE_pytorch.megabyte as pm

        pm.tqdm = lambda it, **k: it  # silence its progress bar
        t0, c0 = time.perf_counter(), time.process_time()
        net.generate(prompt)
        count = total - prompt.shape[1]
        rows.append({"model": f"megabyte-pytorch .generate ({total} bytes: full forward per byte)",
                     "params": n_params(net), "bytes": count, "bps": count / (time.perf_counter() - t0),
                     "cpu_bps": count / (time.process_time() - c0)})
    base = rows[1]["bps"]
    for r in rows:
        r["vs_tf"] = r["bps"] / base
    return rows


def update_step(net, B: int, T: int, precision: str):
    """One training update as the table's cells run it: forward under autocast, float32 loss, AdamW."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (B, T + 1), generator=gen)
    dtype = torch.bfloat16 if precision.startswith("bf16") else None

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits, _ = net(x[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def update_rows(a) -> list[dict]:
    """Seconds per update of megabyte_bpb's rows and of Transformer candidates, timed in interleaved rounds (each
    round times every model once), so that a load on the machine falls on all of them alike."""
    from experiments.config import compose
    from experiments.tables.keys import row_overrides
    from experiments.tables.sizing import measure as model_size
    from experiments.tables.spec import load_table
    from experiments.training.run import build_module

    spec = load_table("megabyte_bpb")
    configs = {r: row_overrides(spec, spec.row(r), a.scale, lr=1e-3) for r in a.rows}
    base = configs[a.rows[0]]
    for c in a.candidates:
        d, n, h = (int(v) for v in c.split(","))
        configs[f"{a.rows[0]}, width {d}, {n} layers, {h} heads"] = [
            *base, f"model.net.d_model={d}", f"model.net.n_layers={n}", f"model.net.n_heads={h}"]
    models = {}
    for name, overrides in configs.items():
        cfg = compose("train", overrides)
        torch.manual_seed(0)
        net = build_module(cfg).net.train()
        T = int(cfg.data.seq_len)
        B = int(cfg.data.batch_size) * int(cfg.data.get("sample_len") or T) // T
        size = model_size(OmegaConf.to_container(cfg.model.net, resolve=True), T)
        models[name] = {"step": update_step(net, B, T, str(cfg.trainer.precision)), "B": B, "T": T,
                        "params": size.params, "flops": size.flops_per_byte / 1e6, "wall": [], "cpu": []}
    if a.flash_local:  # the same MEGABYTE rows with the local model on the flash kernel: the math dispatch off
        for name in [n for n in models if "megabyte" in n]:
            flash = {**models[name], "math_keys": 0, "wall": [], "cpu": []}
            models[f"{name} (flash kernel in the local model)"] = flash
    for m in models.values():
        m["step"]()  # warm-up
    math_keys = kernels_sdpa.MATH_KEYS
    for _ in range(a.rounds):
        for m in models.values():
            kernels_sdpa.MATH_KEYS = m.get("math_keys", math_keys)
            w0, c0 = time.perf_counter(), time.process_time()
            m["step"]()
            m["wall"].append(time.perf_counter() - w0)
            m["cpu"].append(time.process_time() - c0)
    kernels_sdpa.MATH_KEYS = math_keys
    ref = statistics.median(models[a.reference]["cpu"])
    return [{"model": name, "params": m["params"], "B": m["B"], "T": m["T"], "flops": m["flops"],
             "wall": statistics.median(m["wall"]), "cpu": statistics.median(m["cpu"]),
             "vs": statistics.median(m["cpu"]) / ref} for name, m in models.items()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    ap.add_argument("--tokens-per-step", type=int, default=16384)
    ap.add_argument("--P", type=int, default=8)
    ap.add_argument("--DG", type=int, default=64)
    ap.add_argument("--DL", type=int, default=192)
    ap.add_argument("--GL", type=int, default=6)
    ap.add_argument("--LL", type=int, default=3)
    ap.add_argument("--tf-width", type=int, default=256)
    ap.add_argument("--tf-layers", type=int, default=4)
    ap.add_argument("--tf-max", type=int, default=16384, help="longest context for the quadratic baseline")
    ap.add_argument("--gen-bytes", type=int, default=8192)
    ap.add_argument("--peer-gen-bytes", type=int, default=512)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--updates", action="store_true", help="time megabyte_bpb's rows per update instead")
    ap.add_argument("--rows", nargs="+", default=["transformer_tuned", "megabyte_xpatch", "megabyte_p4", "megabyte"])
    ap.add_argument("--reference", default="megabyte_xpatch", help="the row the ratio column divides by")
    ap.add_argument("--candidates", nargs="*", default=["64,4,2", "72,3,2", "96,2,2"],
                    help="Transformers beside the first row: width,layers,heads")
    ap.add_argument("--flash-local", action="store_true",
                    help="also time each MEGABYTE row with its local attention on the flash kernel")
    ap.add_argument("--scale", default="cpu")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    if a.updates:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; megabyte_bpb's rows at the "
              f"{a.scale} scale, one update each per round, {a.rounds} rounds (median)\n")
        print(table(update_rows(a), [("model", "model", "{}"), ("params", "params", "{:,}"), ("B", "rows", "{}"),
                                     ("T", "context", "{}"), ("flops", "train MFLOPs/byte", "{:.2f}"),
                                     ("wall", "s/update", "{:.3f}"), ("cpu", "CPU-s/update", "{:.3f}"),
                                     ("vs", f"CPU time vs {a.reference}", "{:.2f}x")]))
        return
    if a.quick:
        a.lengths, a.tokens_per_step, a.gen_bytes, a.peer_gen_bytes, a.tf_max = [512, 2048], 2048, 256, 64, 2048
    cls = peer_class()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, CPU; peer package: "
          f"{'found' if cls else 'not installed (set PEERS=...)'}; one forward+backward of "
          f"{a.tokens_per_step} bytes per step; mem = peak extra RSS\n")
    rows = train_rows(a, cls)
    print("## training")
    print(table(rows, [("model", "model", "{}"), ("params", "params", "{:,}"), ("T", "T", "{}"), ("B", "batch", "{}"),
                       ("bps", "bytes/s", "{:,.0f}"), ("cpu_bps", "bytes/CPU-s", "{:,.0f}"),
                       ("mem", "peak MB", "{:.0f}"),
                       ("gflops", "train GFLOP/byte", "{:.4f}")]))
    print(f"\n## generation ({a.gen_bytes} bytes after a 16-byte prompt, batch 1, sampling)")
    print(table(gen_rows(a, cls), [("model", "model", "{}"), ("params", "params", "{:,}"), ("bytes", "bytes", "{}"),
                                   ("bps", "bytes/s", "{:,.0f}"), ("cpu_bps", "bytes/CPU-s", "{:,.0f}"),
                                   ("vs_tf", "vs transformer", "{:.2f}x")]))


if __name__ == "__main__":
    main()
