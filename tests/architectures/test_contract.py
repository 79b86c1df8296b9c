"""The house contract, checked for every ``configs/model/*_tiny.yaml``.

``forward(tokens[B, T], state=None) -> (logits[B, T, V], state)``; logits[:, t] depends on
tokens[:, :t+1] only; segment-by-segment with carried state equals one long forward.
"""

from __future__ import annotations

import pytest
import torch

from architectures.common import detach_state
from tests.conftest import TINY_MODELS, build_net

T = 48


def _net(model, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    net = build_net(model, ["data.seq_len=64"]).to(dtype)
    return net.eval()


def _tokens(B=2, T=T, seed=1, vocab=256):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


@pytest.mark.parametrize("model", TINY_MODELS)
def test_shapes(model):
    net = _net(model)
    x = _tokens()
    logits, state = net(x)
    assert logits.shape == (2, T, net.config.vocab_size)
    assert torch.isfinite(logits).all()
    assert state is not None


@pytest.mark.parametrize("model", TINY_MODELS)
def test_causality(model):
    net = _net(model, torch.float64)
    x = _tokens()
    ref, _ = net(x)
    for t in (0, 7, T // 2, T - 2):
        y = x.clone()
        y[:, t + 1 :] = (y[:, t + 1 :] + 17) % 256
        out, _ = net(y)
        assert torch.equal(out[:, : t + 1], ref[:, : t + 1]) or torch.allclose(
            out[:, : t + 1], ref[:, : t + 1], atol=1e-12, rtol=0
        ), f"logits up to {t} changed when tokens after {t} changed"
        # and position t+1 does see token t+1
        assert not torch.allclose(out[:, t + 1], ref[:, t + 1])


@pytest.mark.parametrize("model", TINY_MODELS)
@pytest.mark.parametrize("cuts", [(T // 2,), (1, 2, 17, 40)], ids=["halves", "odd"])
def test_carried_state_equals_one_forward(model, cuts):
    net = _net(model)
    x = _tokens()
    full, _ = net(x)
    state, outs, edges = None, [], [0, *cuts, T]
    for a, b in zip(edges[:-1], edges[1:]):
        out, state = net(x[:, a:b], state)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", TINY_MODELS)
def test_gradients_reach_every_parameter(model):
    net = _net(model).train()
    x = _tokens()
    logits, _ = net(x)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("model", TINY_MODELS)
def test_tiny_batch_overfits(model):
    net = _net(model).train()
    x = _tokens(B=2, T=32, seed=3)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        logits, _ = net(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3, f"{model} did not memorise 2x32 random bytes (loss {loss.item():.3f})"


@pytest.mark.parametrize("model", TINY_MODELS)
def test_state_dict_round_trip(model):
    a, b = _net(model, seed=0), _net(model, seed=1)
    x = _tokens()
    assert not torch.allclose(a(x)[0], b(x)[0])
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x)[0], b(x)[0], atol=0, rtol=0)


@pytest.mark.parametrize("model", TINY_MODELS)
def test_detached_state_still_continues(model):
    net = _net(model).train()
    x = _tokens()
    _, state = net(x[:, :20])
    out, _ = net(x[:, 20:], detach_state(state))
    out.sum().backward()  # no graph through the first segment, and no error
