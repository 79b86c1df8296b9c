"""Sampling with the state API: prefill the prompt once, then one byte per forward call; and
``sample(cfg)`` for a run (``configs/generate.yaml``, command line ``experiments.generate``)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from experiments.runs import load_run, pick_device


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


def sample(cfg: DictConfig) -> str:
    device = pick_device(cfg.device)
    _, module = load_run(cfg.run_dir, cfg.ckpt_path, device=device)
    prompt = str(cfg.prompt).encode("utf-8")
    if not prompt:
        raise ValueError('prompt="" is empty; give at least one byte, e.g. prompt="def "')
    vocab = module.net.config.vocab_size
    if max(prompt) >= vocab:
        raise ValueError(f"prompt has byte values >= the model's vocab_size={vocab}")
    g = torch.Generator(device=device).manual_seed(int(cfg.seed))
    x = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    out = generate(module.net, x, int(cfg.max_new_bytes), float(cfg.temperature), cfg.top_k, g)
    text = bytes(out[0].tolist()).decode("utf-8", errors="replace")
    print(text)
    return text
