"""An external oracle: megalodon-jax (which reproduces the official forward in float32) stored as
fixtures by tests/fixtures/make_megalodon_jax_fixture.py. Its official-format weights load strictly
into longlab's Megalodon; logits and every weight's gradient of sum(logits * R) agree within 1e-5."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from architectures.megalodon import Megalodon, MegalodonConfig
from architectures.megalodon.checkpoint import strip_prefixes
from tests.kernels.helpers import rel_rms

FIXTURES = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "megalodon_jax").glob("*.pt"))
FIELDS = {f for f in MegalodonConfig.__dataclass_fields__}


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_logits_and_gradients_match_megalodon_jax(path, backend):
    fx = torch.load(path, weights_only=True)
    cfg = {k: v for k, v in fx["config"].items() if k in FIELDS and k != "init_mode"}
    net = Megalodon(MegalodonConfig(**cfg, kernel_backend=backend))
    net.load_state_dict(strip_prefixes(fx["state_dict"]), strict=True)
    logits, _ = net(fx["tokens"])
    assert rel_rms(logits, fx["logits"]) < 1e-5, rel_rms(logits, fx["logits"])
    (logits * fx["R"]).sum().backward()
    params = dict(net.named_parameters())
    assert set(fx["grads"]) <= set(params) | {"output.output.weight"}
    for name, expected in fx["grads"].items():
        if name not in params:  # the tied head: its gradient is the embedding's, compared there
            continue
        err = rel_rms(params[name].grad, expected, floor=1e-4)
        assert err < 1e-5, f"{name}: relative RMS {err:.2e}"
