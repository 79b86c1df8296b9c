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


# memory presets add no parameters to their backbones (overfit in the default run): theirs is slow
@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if "_memory_" in m else m
                                   for m in TINY_MODELS])
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


# ---------------------------------------------------------------------------------------------- the written contract
import dataclasses  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from architectures.contract import LanguageModel, check  # noqa: E402
from experiments.config import field_defaults  # noqa: E402
from tests.conftest import CONFIGS, REPO, compose  # noqa: E402

ALL_MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))


@pytest.mark.parametrize("model", ALL_MODELS)
def test_every_preset_honours_the_written_contract(model):
    with torch.device("meta"):
        net = build_net(model)
    assert isinstance(check(net), LanguageModel)
    fpt = net.flops_per_token(1024)
    assert math.isfinite(fpt) and fpt > 0
    assert net.max_len is None or net.max_len > 0
    assert isinstance(net.added_parameters, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.config.vocab_size = 3  # configs are frozen: nothing writes into a built model's config


def _preset(model):
    return yaml.safe_load((CONFIGS / "model" / f"{model}.yaml").read_text())


@pytest.mark.parametrize("model", ALL_MODELS)
def test_presets_list_only_what_differs_from_their_defaults(model):
    """One source of defaults: a preset built on an architecture's schema never repeats the dataclass
    default, and a preset built on another preset never repeats that preset's value."""
    raw = _preset(model)
    parent = [d for d in raw.get("defaults", []) if d != "_self_"]
    assert len(parent) == 1, f"{model}: expected one parent (a schema or a preset), got {parent}"
    parent = parent[0]
    if isinstance(parent, dict):  # the schema: {"/schema/net@net": <arch>}
        net = build_net(model)
        defaults = field_defaults(type(net.config))
    else:
        defaults = dict(compose("train", [f"model={parent}"]).model.net)
    for key, value in (raw.get("net") or {}).items():
        if isinstance(value, str) and value.startswith("${"):
            continue  # interpolations tie a field to data.* (vocab_size, the training length)
        assert key in defaults, f"{model}: net.{key} is not a field of its parent"
        assert defaults[key] != value, f"{model}: net.{key}={value!r} repeats its parent's default"


def test_experiments_never_probe_a_model_with_hasattr():
    for path in sorted((REPO / "experiments").rglob("*.py")):
        text = Path(path).read_text()
        assert "hasattr(" not in text, f"{path.relative_to(REPO)} uses hasattr: use architectures.contract"


def test_a_new_document_in_a_transformer_row_reads_as_a_fresh_model():
    net = _net("transformer_tiny", torch.float64)
    x = _tokens(T=40)
    _, state = net(x[:, :23])  # row 0 continues, row 1 starts a new document at position 23
    state = net.reset_state(state, torch.tensor([False, True]))
    out, _ = net(x[:, 23:], state)
    fresh, _ = net(x[1:, 23:])
    torch.testing.assert_close(out[1:], fresh, atol=1e-10, rtol=0)
    cont, _ = net(x)
    torch.testing.assert_close(out[:1], cont[:1, 23:], atol=1e-10, rtol=0)


def test_a_new_megalodon_document_on_a_chunk_boundary_reads_as_a_fresh_model():
    net = _net("megalodon_tiny", torch.float64)  # chunks of 16
    x = _tokens(T=48)
    _, state = net(x[:, :32])
    state = net.reset_state(state, torch.tensor([False, True]))
    out, _ = net(x[:, 32:], state)
    fresh, _ = net(x[1:, 32:])
    torch.testing.assert_close(out[1:], fresh, atol=1e-10, rtol=0)
    cont, _ = net(x)
    torch.testing.assert_close(out[:1], cont[:1, 32:], atol=1e-10, rtol=0)


def test_a_megalodon_document_starting_inside_a_chunk_sees_nothing_before_it():
    net = _net("megalodon_tiny", torch.float64)
    x = _tokens(T=40)
    outs = []
    for prefix_seed in (5, 6):  # two different previous documents
        y = x.clone()
        y[:, :21] = _tokens(T=21, seed=prefix_seed)
        _, state = net(y[:, :21])  # position 21 is inside the second chunk
        state = net.reset_state(state, torch.tensor([True, True]))
        outs.append(net(y[:, 21:], state)[0])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-10, rtol=0)


def test_megalodon_resets_each_named_part_of_its_state_alone_and_all_of_them_as_reset_state():
    """``reset_parts``: every part at once is ``reset_state`` (bit for bit); one part changes that part only (the
    context evaluation's ablation of what Megalodon carries out of other text); no part changes nothing."""
    net = _net("megalodon_tiny", torch.float64)
    x = _tokens(T=40)
    rows = torch.tensor([False, True])
    _, state = net(x[:, :32])
    whole = net(x[:, 32:], net.reset_state(state, rows))[0]
    assert torch.equal(net(x[:, 32:], net.reset_parts(state, rows, net.state_parts))[0], whole)
    assert net.reset_parts(state, rows, ()) is state
    norm = net.reset_parts(state, rows, ("norm",))
    ema = net.reset_parts(state, rows, ("ema",))
    for st, n, e in zip(state["layers"], norm["layers"], ema["layers"]):
        assert torch.equal(n["ema"], st["ema"]) and all(torch.equal(a, b) for a, b in zip(e["norm"], st["norm"]))
        assert not torch.equal(e["ema"][1], st["ema"][1]) and torch.equal(e["ema"][0], st["ema"][0])
        assert not torch.equal(n["norm"][1][1], st["norm"][1][1]) and torch.equal(n["norm"][1][0], st["norm"][1][0])
    assert norm["start"] is None and ema["start"] is None  # the attention part alone moves the start
    assert net.reset_parts(state, rows, ("attention",))["start"].tolist() == [0, 32]
    with pytest.raises(ValueError, match=r"no state parts \['kv'\]"):
        net.reset_parts(state, rows, ("kv",))
    with pytest.raises(ValueError, match="Transformer has no state parts"):
        _net("transformer_tiny").reset_parts(None, rows, ("norm",))


@pytest.mark.parametrize("model, extra", [("transformer_tiny", []), ("fot_tiny", []), ("megalodon_tiny", []),
                                          ("megabyte_tiny", []), ("megabyte_tiny", ["model.net.patch_encoder=conv"])])
def test_flop_counts_agree_with_torch_flop_counter(model, extra):
    """The forward terms of flops_per_token against torch.utils.flop_counter where both count the same
    ops: matmuls (and convolutions) always; attention under the math SDPA backend, which the counter
    sees as full (non-causal) score matrices, i.e. twice our causal count. Megalodon's chunk attention
    pads q/k to the value width for the CPU kernel, so only its matmuls are compared."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    net = build_net(model, extra).eval()
    x = torch.randint(0, 256, (2, 256))
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        net(x)
    counts = {str(k): v / x.numel() for k, v in fc.get_flop_counts()["Global"].items()}
    terms = net.flops_terms(256)
    dense = counts.get("aten.mm", 0) + counts.get("aten.addmm", 0)
    tol = 0.02 if model.startswith("megabyte") else 0.001  # MEGABYTE runs the global model on K+1 patches
    assert dense == pytest.approx(terms["dense"], rel=tol)
    assert counts.get("aten.convolution", 0) == pytest.approx(terms.get("conv", 0), rel=1e-6)
    if model in ("transformer_tiny", "megabyte_tiny"):
        assert counts["aten.bmm"] == pytest.approx(2 * terms["attention"], rel=0.05)
    assert net.flops_per_token(256) == pytest.approx(3 * sum(terms.values()))


@pytest.mark.parametrize("model", ["fot_tiny", "transformer_tiny", "megalodon_tiny", "megalodon_memory_tiny"])
def test_a_document_starting_inside_a_window_sees_nothing_before_it(model):
    """reset_state mid-window: what the row read before (its memory, the window's earlier tokens,
    token-shift history) never reaches the new document's logits, and the memory never stores it."""
    net = _net(model, torch.float64)
    x = _tokens(T=100)
    outs = []
    for prefix_seed in (5, 6):
        y = x.clone()
        y[:, :45] = _tokens(T=45, seed=prefix_seed)  # 45 is inside FoT's 32-token windows
        _, state = net(y[:, :45])
        state = net.reset_state(state, torch.tensor([True, True]))
        out, state = net(y[:, 45:], state)
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-10, rtol=0)


@pytest.mark.parametrize("model", TINY_MODELS)
def test_activation_checkpointing_changes_no_number(model):
    """model.net.checkpoint_layers=true: the same loss and gradients (activations recomputed)."""
    x = _tokens()
    grads = []
    for flag in ("false", "true"):
        torch.manual_seed(0)
        net = build_net(model, ["data.seq_len=64", f"model.net.checkpoint_layers={flag}"]).train()
        logits, _ = net(x)
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5, msg=n)
