from __future__ import annotations

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate

from tests.conftest import CONFIGS, compose

MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONFIGS / "trainer").glob("*.yaml"))
LOGGERS = sorted(p.stem for p in (CONFIGS / "logger").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONFIGS / "data").glob("*.yaml"))
EXPERIMENTS = sorted(str(p.relative_to(CONFIGS / "experiment").with_suffix(""))
                     for p in (CONFIGS / "experiment").rglob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_composes_and_builds_the_module(model):
    import torch

    cfg = compose("train", [f"model={model}", "run_dir=/tmp/x"])
    with torch.device("meta"):  # the paper-size presets would not fit in memory
        net = instantiate(cfg.model.net)
    assert isinstance(net, torch.nn.Module)
    assert cfg.model.name == model


# every option of each group, with the other groups at their defaults (the groups set disjoint keys, so
# the full product, 150 compositions, checked nothing more)
GROUP_OPTIONS = [("trainer", t) for t in TRAINERS] + [("logger", g) for g in LOGGERS] + [("data", d) for d in DATA]


@pytest.mark.parametrize("group, option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_groups_compose(group, option):
    cfg = compose("train", [f"{group}={option}", "debug=smoke", "run_dir=/tmp/x"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert cfg.data.seq_len == 64  # debug overrides data


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(experiment):
    cfg = compose("train", [f"experiment={experiment}"])
    instantiate(cfg.model.net)


@pytest.mark.parametrize("name", ["eval", "generate"])
def test_entry_configs_compose(name):
    cfg = compose(name, ["run_dir=/tmp/x"])
    assert cfg.run_dir == "/tmp/x"


def test_unknown_model_name_lists_the_options():
    with pytest.raises(MissingConfigException, match=r"(?s)model/nope.*transformer_tiny"):
        compose("train", ["model=nope"])


def test_optimizer_settings_are_shared_by_every_model():
    a = compose("train", ["model=transformer_tiny"])
    b = compose("train", ["model=transformer"])
    assert a.optim == b.optim and a.data == b.data
