"""Ways to score the same test bytes with a fixed-context model (MEGABYTE paper Table 11, Fig. 5).

Every method scores the same targets ``u[o+1 : o+T+1]`` of a window ``u`` of ``T/2 + P + T + 1``
bytes (``o = T/2 + P/2``), with passes of ``T`` bytes at different starts ``ws`` (a pass starting at
``ws`` predicts ``u[ws+1 : ws+T+1]``; target ``i`` is its paper position ``j = i - ws``):

* ``basic``    — one pass at ``o``: a byte's context is its position in the window (T/2 on average);
* ``sliding``  — windows with stride T/2 scoring only their second half: every byte has >= T/2 context;
* ``strided``  — MEGABYTE's passes offset by P/2, each byte taken from the pass in which it sits in
  the first half of its patch (``j mod P < P/2``), where the global model has seen more (the offset
  pass starts P/2 earlier, or P/2 later for the last bytes an earlier pass cannot reach);
* ``sliding_strided`` — both (the paper's best row).

``patch_profile`` is the basic pass's loss by slot inside the patch (``j mod P``; paper Fig. 5).

``W`` (default ``P``) is the patch size the window is laid out for: the window is ``T/2 + W + T + 1`` bytes and
``o = T/2 + W/2``, so models with different patch sizes (and a Transformer) score the same bytes of the same
windows when they share ``W``; the strided passes stay offset by the model's own ``P/2`` (``W >= P``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

METHODS = ("basic", "sliding", "strided", "sliding_strided")


def window_length(T: int, P: int) -> int:
    return T // 2 + P + T + 1


def target_offset(T: int, W: int) -> int:
    """``o``: the targets of a window laid out for patch size ``W`` are ``u[o+1 : o+T+1]``."""
    return T // 2 + W // 2


def _check(T: int, P: int, methods, W: int) -> None:
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"eval.methods has {unknown}; use some of {list(METHODS)}")
    if T < 2 or T % 2:
        raise ValueError(f"sliding-window scoring needs an even context, got eval.context={T}")
    if any("strided" in m for m in methods) and (P < 2 or P % 2):
        raise ValueError(f"strided inference needs an even patch size, got patch_size={P}")
    if W < P or W % 2:
        raise ValueError(f"eval.window_patch={W} lays the windows out for a patch size: it must be even and at least "
                         f"the model's patch_size={P} (its strided passes must fit in the window)")


def pass_starts(method: str, i: torch.Tensor, T: int, P: int, W: int | None = None) -> torch.Tensor:
    """For each target index i (into u), the start of the pass that scores it."""
    o, h = target_offset(T, W or P), P // 2
    base = torch.full_like(i, o)
    if method.startswith("sliding"):
        base = torch.where(i <= o + T // 2, base - T // 2, base)
    if method.endswith("strided"):
        other = torch.where(i - (base - h) <= T, base - h, base + h)
        base = torch.where((i - base) % P < h, base, other)
    return base


def method_nll(net, u: torch.Tensor, T: int, P: int, methods=METHODS, W: int | None = None) -> dict[str, torch.Tensor]:
    """{method: NLL [B, T] in nats} for the targets u[o+1 : o+T+1], each pass run once."""
    W = W or P
    _check(T, P, methods, W)
    o = target_offset(T, W)
    i = torch.arange(o + 1, o + T + 1, device=u.device)
    starts = {m: pass_starts(m, i, T, P, W) for m in methods}
    nll_of: dict[int, torch.Tensor] = {}
    for ws in sorted({int(s) for st in starts.values() for s in st.unique()}):
        logits, _ = net(u[:, ws : ws + T])
        dt = torch.promote_types(logits.dtype, torch.float32)
        nll_of[ws] = F.cross_entropy(logits.to(dt).transpose(1, 2), u[:, ws + 1 : ws + T + 1], reduction="none")
    out = {}
    for m, st in starts.items():
        nll = torch.empty(u.shape[0], T, dtype=next(iter(nll_of.values())).dtype, device=u.device)
        for ws, values in nll_of.items():
            sel = st == ws
            nll[:, sel] = values[:, i[sel] - ws - 1]
        out[m] = nll
    return out


def patch_profile(nll_basic: torch.Tensor, T: int, P: int, W: int | None = None) -> torch.Tensor:
    """Sum of NLL and count by slot inside the patch for the basic pass: [P, 2]."""
    o = target_offset(T, W or P)
    slot = (torch.arange(o + 1, o + T + 1) - o) % P  # paper position j = i - o
    sums = torch.zeros(P, 2, dtype=torch.float64)
    for p in range(P):
        sel = nll_basic[:, (slot == p).to(nll_basic.device)]
        sums[p, 0], sums[p, 1] = float(sel.double().sum()), sel.numel()
    return sums
