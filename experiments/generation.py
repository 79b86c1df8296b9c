"""Sampling with the state API: prefill the prompt once, then one byte per forward call."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(net, prompt: torch.Tensor, max_new: int, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """``prompt`` [B, T0] (T0 >= 1) -> [B, T0 + max_new]; temperature 0 is greedy."""
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be a non-empty [B, T] tensor, got shape {tuple(prompt.shape)}")
    logits, state = net(prompt)
    out = [prompt]
    for i in range(max_new):
        last = logits[:, -1].float()
        if temperature <= 0:
            nxt = last.argmax(-1, keepdim=True)
        else:
            last = last / temperature
            if top_k:
                kth = torch.topk(last, min(top_k, last.shape[-1])).values[:, -1:]
                last = last.masked_fill(last < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(last, -1), 1, generator=generator)
        out.append(nxt)
        if i + 1 < max_new:
            logits, state = net(nxt, state)
    return torch.cat(out, dim=1)
