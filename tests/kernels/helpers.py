from __future__ import annotations

import torch


def rel_rms(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-3) -> float:
    """RMS of the difference relative to the RMS of the reference, with an absolute floor."""
    a, b = torch.view_as_real(a) if a.is_complex() else a, torch.view_as_real(b) if b.is_complex() else b
    a, b = a.double(), b.double()
    return ((a - b).pow(2).mean().sqrt() / max(b.pow(2).mean().sqrt().item(), floor)).item()


def assert_close_rms(a, b, tol, what=""):
    assert torch.isfinite(torch.view_as_real(a) if a.is_complex() else a).all(), f"{what}: non-finite values"
    err = rel_rms(a, b)
    assert err < tol, f"{what}: relative RMS error {err:.2e} >= {tol:.0e}"


def grads(outputs, inputs, seed=0):
    """Gradients of a fixed random projection of ``outputs`` w.r.t. ``inputs``."""
    g = torch.Generator().manual_seed(seed)
    total = 0
    for o in outputs:
        if o is None:
            continue
        r = torch.view_as_real(o) if o.is_complex() else o
        w = torch.randn(r.shape, generator=g, dtype=torch.float64).to(r.dtype)
        total = total + (r * w).sum()
    return torch.autograd.grad(total, inputs, allow_unused=True)
