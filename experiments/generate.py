"""Sample from a trained run: ``python -m experiments.generate run_dir=<dir> prompt="def " max_new_bytes=200``."""

from __future__ import annotations

import hydra
import torch
from omegaconf import DictConfig

from experiments.generation import generate
from experiments.runs import load_run, pick_device


def sample(cfg: DictConfig) -> str:
    device = pick_device(cfg.device)
    _, module = load_run(cfg.run_dir, cfg.ckpt_path, device=device)
    prompt = str(cfg.prompt).encode("utf-8")
    if not prompt:
        raise ValueError('prompt="" is empty; give at least one byte, e.g. prompt="def "')
    vocab = module.net.config.vocab_size if hasattr(module.net, "config") else 256
    if max(prompt) >= vocab:
        raise ValueError(f"prompt has byte values >= the model's vocab_size={vocab}")
    g = torch.Generator(device=device).manual_seed(int(cfg.seed))
    x = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    out = generate(module.net, x, int(cfg.max_new_bytes), float(cfg.temperature), cfg.top_k, g)
    text = bytes(out[0].tolist()).decode("utf-8", errors="replace")
    print(text)
    return text


@hydra.main(version_base="1.3", config_path="../configs", config_name="generate")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
