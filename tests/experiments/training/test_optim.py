"""The typed optimiser config: the architecture's weight-decay recipe, schedules, bad values."""

from __future__ import annotations

import pytest

from experiments.config import OptimConfig
from experiments.training.module import CausalLMModule
from experiments.training.optim import lr_lambda
from tests.conftest import compose


def _groups(model, *overrides):
    cfg = compose("train", [f"model={model}", *overrides])
    module = CausalLMModule(net=cfg.model.net, optim=cfg.optim)
    opt = module.configure_optimizers()["optimizer"]
    return {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}, module


def test_megalodon_decays_every_parameter_by_default_and_the_baseline_only_matrices():
    decay, module = _groups("megalodon_tiny")
    assert all(wd == 0.1 for wd in decay.values())  # the official recipe (norm scales stored as w + 1)
    decay, module = _groups("megalodon_tiny", "optim.decay_all=false")
    norm = module.net.layers[0].mega.rmsnorm.weight
    assert decay[id(norm)] == 0.0
    decay, module = _groups("transformer_tiny")
    assert decay[id(module.net.norm.weight)] == 0.0 and decay[id(module.net.embed.weight)] == 0.1


def test_schedules():
    cos = lr_lambda(10, 110, 0.1, "cosine")
    lin = lr_lambda(10, 110, 0.0, "polynomial", 1.0)
    assert cos(0) == pytest.approx(0.1) and cos(9) == 1.0
    assert cos(60) == pytest.approx(0.55) and cos(110) == pytest.approx(0.1)
    assert lin(60) == pytest.approx(0.5) and lin(110) == 0.0
    assert lr_lambda(10, 110, 0.1, "constant")(100) == 1.0


@pytest.mark.parametrize("kwargs, match", [
    ({"schedule": "step"}, "optim.schedule='step'"), ({"lr": 0.0}, "optim.lr=0.0"),
    ({"warmup_steps": -1}, "optim.warmup_steps=-1"), ({"betas": (0.9, 1.5)}, "optim.betas"),
])
def test_bad_values_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimConfig(**kwargs)


def test_a_misspelt_or_mistyped_override_fails_at_composition():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose("train", ["optim.lrr=1e-3"])
    with pytest.raises(ConfigCompositionException):
        compose("train", ["optim.warmup_steps=abc"])
