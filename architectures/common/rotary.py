"""Rotary position embeddings (Su et al., 2021).

Two pairing conventions exist and they are not interchangeable for trained weights:

* ``rotate_half`` (Llama / GPT-NeoX): dimension ``i`` is paired with ``i + d/2``;
* ``adjacent`` (the original paper, Megalodon): dimensions ``(2i, 2i+1)`` form one complex number.
"""

from __future__ import annotations

import torch
from torch import nn


def rotary_angles(positions: torch.Tensor, dim: int, base: float) -> torch.Tensor:
    """Angles ``pos * base^(-2i/dim)`` as a float32 (or float64) tensor of shape [..., dim/2]."""
    dtype = torch.float64 if positions.dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, dim, 2, device=positions.device, dtype=dtype) / dim)
    return positions.to(dtype)[..., None] * inv_freq


def apply_rotary(x: torch.Tensor, angles: torch.Tensor, convention: str = "rotate_half") -> torch.Tensor:
    """Rotate ``x[..., T, d]`` by ``angles[T, d/2]`` (broadcast over leading dims)."""
    compute = torch.promote_types(x.dtype, torch.float32)
    cos, sin = angles.cos().to(compute), angles.sin().to(compute)
    xc = x.to(compute)
    if convention == "rotate_half":
        x1, x2 = xc.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    elif convention == "adjacent":
        x1, x2 = xc[..., 0::2], xc[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        raise ValueError(f"unknown rotary convention {convention!r}; use 'rotate_half' or 'adjacent'")
    return out.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Applies RoPE at absolute positions ``offset .. offset + T - 1`` (no length limit)."""

    def __init__(self, dim: int, base: float = 10000.0, convention: str = "rotate_half"):
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dimension must be even, got {dim}")
        self.dim, self.base, self.convention = dim, base, convention

    def forward(self, x: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
        T = x.shape[-2]
        pos = torch.arange(T, device=x.device) + offset
        if x.dtype == torch.float64:
            pos = pos.double()
        return apply_rotary(x, rotary_angles(pos, self.dim, self.base), self.convention)
