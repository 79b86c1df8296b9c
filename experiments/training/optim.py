"""The optimiser every architecture shares unless an experiment says otherwise: AdamW (weight decay on
matrices, or on everything for architectures whose recipe says so), linear warm-up then a schedule, and
the rule that applies changed ``optim`` values when a run resumes."""

from __future__ import annotations

import math

import torch

from experiments.config import OptimConfig


def lr_lambda(warmup_steps: int, max_steps: int, min_lr_ratio: float, schedule: str = "cosine",
              power: float = 1.0):
    """Linear warm-up to 1, then ``schedule`` (cosine | polynomial | constant) down to ``min_lr_ratio``
    at ``max_steps``."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if max_steps <= warmup_steps or schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (max_steps - warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else (1 - progress) ** power
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return f


def optimizer_and_schedule(net: torch.nn.Module, o: OptimConfig, max_steps: int, decays_all: bool) -> dict:
    """Lightning's ``configure_optimizers`` answer: AdamW over two groups (norms' scales and biases not
    decayed unless ``decays_all``) and a per-step LambdaLR schedule of ``max_steps`` (``o.max_steps`` wins)."""
    decay_all = decays_all if o.decay_all is None else o.decay_all
    decay, no_decay = [], []
    for p in net.parameters():
        if p.requires_grad:
            (decay if (p.dim() >= 2 or decay_all) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=o.lr, betas=o.betas, eps=o.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.warmup_steps, o.max_steps or max_steps,
                                                             o.min_lr_ratio, o.schedule, o.power))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def apply_on_resume(opt: torch.optim.Optimizer, sched, o: OptimConfig, max_steps: int) -> None:
    """After a checkpoint restored the optimiser and scheduler: use this run's ``optim`` values (learning
    rate, betas, eps, weight decay, warm-up and schedule), the schedule recomputed at the current step."""
    for g in opt.param_groups:
        g["betas"], g["eps"] = o.betas, o.eps
        if g["weight_decay"] > 0 or o.decay_all:
            g["weight_decay"] = o.weight_decay
    f = lr_lambda(o.warmup_steps, o.max_steps or max_steps, o.min_lr_ratio, o.schedule, o.power)
    sched.base_lrs = [o.lr] * len(opt.param_groups)
    sched.lr_lambdas = [f] * len(opt.param_groups)
    for g in opt.param_groups:
        g["lr"] = o.lr * f(sched.last_epoch)


def changes(saved: dict | None, current: dict) -> list[str]:
    """``key: old -> new`` for every optimiser value that differs from the checkpoint's."""
    saved = saved or {}
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k)]
