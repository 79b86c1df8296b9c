"""Sampling with the state API: prefill the prompt once, then one byte per forward call; and
``sample(cfg)`` for a run (``configs/generate.yaml``, command line ``experiments.generate``)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from experiments.runs import load_run, pick_device


def check_sampling(max_new: int, temperature: float, top_k: int | None) -> None:
    if max_new < 0:
        raise ValueError(f"max_new_bytes={max_new} must be >= 0")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1, or null for no top-k filter")


@torch.no_grad()
def generate(net, prompt: torch.Tensor, max_new: int, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """``prompt`` [B, T0] (T0 >= 1) -> [B, T0 + max_new]; temperature 0 is greedy. A model with a
    ``max_len`` stops there (with a message) and returns what it generated."""
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be a non-empty [B, T] tensor, got shape {tuple(prompt.shape)}")
    check_sampling(max_new, temperature, top_k)
    limit = net.max_len
    if limit is not None and prompt.shape[1] > limit:
        raise ValueError(f"the prompt has {prompt.shape[1]} bytes but {type(net).__name__} represents at most "
                         f"max_len={limit}; shorten the prompt")
    if limit is not None and prompt.shape[1] + max_new > limit:
        print(f"[longlab] {type(net).__name__} has max_len={limit}: stopping after {limit - prompt.shape[1]} of "
              f"{max_new} new bytes", flush=True)
        max_new = limit - prompt.shape[1]
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
