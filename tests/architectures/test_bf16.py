"""bfloat16: autocast forward and backward of every architecture with every backend that runs on
CPU, and Megalodon cast to bfloat16 keeping its EMA parameters and logits in float32."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_MODELS, build_net

BACKENDS = ["reference", "torch", pytest.param("triton", marks=pytest.mark.interpret)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", TINY_MODELS)
def test_autocast_bf16_forward_and_backward(model, backend, monkeypatch):
    """Under autocast q/k reach Megalodon's chunk attention in float32 and v in bfloat16: the Triton
    path's recompute backward once failed on the mixed dtypes."""
    monkeypatch.setenv("LONGLAB_KERNEL_BACKEND", backend)
    if backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    net = build_net(model, ["data.seq_len=64"]).train()
    x = torch.randint(0, 256, (2, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = net(x)
    loss = torch.nn.functional.cross_entropy(logits.float()[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)


def test_megalodon_cast_to_bf16_keeps_ema_parameters_and_logits_in_float32():
    torch.manual_seed(0)
    net = build_net("megalodon_tiny").eval()
    before = {n: p.detach().clone() for n, p in net.named_parameters() if ".cema." in n}
    net = net.to(torch.bfloat16)
    for n, p in net.named_parameters():
        if ".cema." in n:
            assert p.dtype == torch.float32 and torch.equal(p, before[n]), n
        elif p.dim() == 2:
            assert p.dtype == torch.bfloat16, n
    logits, _ = net(torch.randint(0, 256, (2, 33)))
    assert logits.dtype == torch.float32
