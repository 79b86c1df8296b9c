"""MEGABYTE: the paper's equations, every switch, exact streaming, cached generation, strided inference."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from architectures.megabyte import Megabyte, MegabyteConfig
from experiments.evaluation.bpb import strided_nll
from experiments.evaluation.generation import generate

P = 4
BASE = dict(patch_size=P, d_global=8, d_local=16, global_layers=2, global_heads=2, local_layers=2, local_heads=2,
            max_len=256)
SWITCHES = [
    dict(zip(("local_model", "global_model", "cross_patch_attention", "patch_encoder"), combo))
    for combo in itertools.product([True, False], [True, False], [0, 2], ["concat", "conv"])
    if (combo[0] or combo[1]) and not (combo[2] and not combo[0])
]
IDS = [",".join(f"{k}={v}" for k, v in s.items()) for s in SWITCHES]


def model(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return Megabyte(**{**BASE, **kw}).to(dtype).eval()


def tokens(B=2, T=45, seed=1):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def sees(t: int, kw: dict) -> bool:
    """Does logits[t] (paper byte j = t + 1) see token t? Always, except that without the local model
    bytes inside a patch are predicted independently, and without the global model the last byte of
    a patch is never an input of the next patch."""
    j = t + 1
    if not kw.get("local_model", True):
        return j % P == 0
    if not kw.get("global_model", True):
        return j % P != 0
    return True


@pytest.mark.parametrize("kw", SWITCHES, ids=IDS)
def test_perturbation_at_every_position_of_a_patch(kw):
    net = model(**kw)
    x = tokens(T=3 * P + 2)
    ref, _ = net(x)
    for t in range(x.shape[1] - 1):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % 256
        out, _ = net(y)
        assert torch.allclose(out[:, :t], ref[:, :t], atol=1e-12, rtol=0), f"token {t} leaks into earlier logits"
        if sees(t, kw):
            assert not torch.allclose(out[:, t], ref[:, t]), f"logits at {t} do not see token {t}"


class MisShifted(nn.Module):
    """The classic bug: the global stream shifted by one byte instead of one patch."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, tokens, state=None):
        shifted = torch.cat([tokens[:, 1:], tokens[:, -1:]], 1)  # the model reads one byte ahead
        return self.net(shifted, state)


def test_perturbation_test_catches_a_mis_shifted_model():
    net = MisShifted(model())
    x = tokens(T=3 * P)
    ref, _ = net(x)
    leaks = 0
    for t in range(1, x.shape[1] - 1):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % 256
        leaks += not torch.allclose(net(y)[0][:, :t], ref[:, :t], atol=1e-12)
    assert leaks > 0


@pytest.mark.parametrize("kw", SWITCHES, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_any_segmentation_equals_one_pass(kw, dtype, tol):
    net = model(dtype, **kw)
    x = tokens()
    full, _ = net(x)
    for cuts in [(1, 2, 3, 4, 5, 8, 9, 17, 30, 31, 44), (7, 21), tuple(range(1, 45))]:
        state, outs, edges = None, [], [0, *cuts, 45]
        for a, b in zip(edges[:-1], edges[1:]):
            out, state = net(x[:, a:b], state)
            outs.append(out)
        torch.testing.assert_close(torch.cat(outs, 1), full, atol=tol, rtol=tol)


@pytest.mark.parametrize("kw", SWITCHES, ids=IDS)
def test_gradients_reach_every_parameter(kw):
    net = model(torch.float32, **kw).train()
    x = tokens(T=33)
    logits, _ = net(x)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_cached_generation_equals_full_forward():
    net = model(cross_patch_attention=2)
    prompt = tokens(B=1, T=6)  # not patch-aligned
    out = generate(net, prompt, 13, temperature=0)
    logits, _ = net(out[:, :-1])
    assert torch.equal(logits[0, 5:].argmax(-1), out[0, 6:])


def test_global_model_runs_once_per_patch_during_generation():
    net = model()
    calls = []
    net.global_model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[1]))
    generate(net, tokens(B=1, T=5), 12, temperature=0)
    # prefill: patches 0 and 1; then one patch each time a patch boundary is crossed
    assert sum(calls) == (5 + 12 - 1) // P + 1


def test_learned_positions_bound_the_stream():
    net = model(max_len=16)
    _, state = net(tokens(T=10))
    with pytest.raises(ValueError, match=r"max_len=16 bytes.*position 20.*raise model.net.max_len"):
        net(tokens(T=10), state)


class Bigram(nn.Module):
    """logits depend on the current byte only: both strided passes see the same effective context."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(256, 256)
        self.config = type("C", (), {"patch_size": P})()

    def forward(self, tokens, state=None):
        return self.table(tokens), None


def test_strided_equals_basic_when_both_passes_see_the_same_context():
    net = Bigram()
    u = tokens(T=40 + P // 2 + 1)
    strided, basic = strided_nll(net, u, P)
    assert strided.shape == (2, 40 - P // 2)  # one NLL per scored byte
    torch.testing.assert_close(strided, basic)


def test_strided_takes_each_byte_from_the_pass_where_it_opens_its_patch():
    net = model()
    L, h = 30, P // 2
    u = tokens(T=L + h + 1)
    strided, basic = strided_nll(net, u, P)
    la, _ = net(u[:, h : h + L])
    lb, _ = net(u[:, :L])
    for col, i in enumerate(range(h + 1, L + 1)):
        a = F.cross_entropy(la[:, i - h - 1], u[:, i], reduction="none")
        b = F.cross_entropy(lb[:, i - 1], u[:, i], reduction="none")
        expected = a if (i - h) % P < h else b
        torch.testing.assert_close(strided[:, col], expected)
        torch.testing.assert_close(basic[:, col], a)
    assert not torch.allclose(strided, basic)


def test_compute_matched_preset_is_matched():
    from tests.conftest import build_net

    t, m = build_net("transformer"), build_net("megabyte")
    ratio = m.flops_per_token(256) / t.flops_per_token(256)
    assert 0.9 < ratio < 1.1, ratio
    assert sum(p.numel() for p in m.parameters()) > 3 * sum(p.numel() for p in t.parameters())


@pytest.mark.parametrize("kwargs, match", [
    ({"local_model": False, "global_model": False}, "cannot both be false"),
    ({"cross_patch_attention": 5}, r"cross_patch_attention=5 must be in \[0, patch_size=4\]"),
    ({"patch_encoder": "lstm"}, "patch_encoder='lstm'"),
    ({"d_global": 3, "global_heads": 5}, "divisible by global_heads"),
])
def test_bad_config_values_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MegabyteConfig(**{**BASE, **kwargs})


def test_initialisation_scales():
    """Weights ~ truncated N(0, init_std), every bias zero, no bias on w_GL (paper eq. 4), LayerNorms at
    (1, 0): at init no constant vector dominates the local model's input (with PyTorch's default
    U(+-1/sqrt(fan_in)) biases ~90% of its energy was one constant vector)."""
    net = Megabyte(**{**BASE, "d_global": 32, "d_local": 64, "patch_encoder": "conv"})
    std = net.config.init_std
    assert net.w_gl.bias is None
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif ".ln" in name or "norm" in name:
            assert torch.all(p == 1), name
        elif p.numel() >= 256:
            assert abs(p.std().item() - std * 0.987) < 0.15 * std, (name, p.std().item())  # truncated at 3 sigma
            assert p.abs().max() <= 3 * std + 1e-7, name
    x = tokens(B=4, T=64)
    seen = []
    net.local_model.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    net(x)
    inp = seen[0].reshape(-1, seen[0].shape[-1])
    constant = inp.mean(0).pow(2).sum() * inp.shape[0]
    assert constant / inp.pow(2).sum() < 0.5


def test_inference_methods_score_the_same_bytes_from_the_right_pass():
    from experiments.evaluation.inference_methods import METHODS, method_nll, patch_profile, window_length

    net, T = model(), 16
    o, h = T // 2 + P // 2, P // 2
    u = tokens(T=window_length(T, P))
    nll = method_nll(net, u, T, P)

    def from_pass(ws, i):
        logits, _ = net(u[:, ws : ws + T])
        return F.cross_entropy(logits[:, i - ws - 1], u[:, i], reduction="none")

    for col, i in enumerate(range(o + 1, o + T + 1)):
        slide = o - T // 2 if i <= o + T // 2 else o

        def strided_from(ws):  # the pass offset by P/2 (earlier if it reaches byte i, else later)
            return ws if (i - ws) % P < h else (ws - h if i - (ws - h) <= T else ws + h)

        expect = {"basic": o, "sliding": slide, "strided": strided_from(o), "sliding_strided": strided_from(slide)}
        for m in ("strided", "sliding_strided"):
            assert (i - expect[m]) % P < h  # the byte opens the first half of its patch in its pass
        for m in METHODS:
            torch.testing.assert_close(nll[m][:, col], from_pass(expect[m], i))
    same = method_nll(Bigram(), u, T, P)  # a context-free model: every method gives the same numbers
    for m in METHODS:
        torch.testing.assert_close(same[m], same["basic"])
    prof = patch_profile(nll["basic"], T, P)
    assert prof[:, 1].tolist() == [2 * T / P] * P
    assert prof[:, 0].sum() == pytest.approx(float(nll["basic"].sum()), rel=1e-9)


def test_windows_laid_out_for_a_larger_patch_score_the_same_bytes_with_the_models_own_offsets():
    """eval.window_patch: a P=4 model scores the targets of windows laid out for P=8 (the bytes every P=8 row and
    the Transformer control score), its strided passes offset by its own P/2 = 2 and each byte taken where it sits
    in the first half of its patch."""
    from experiments.evaluation.inference_methods import METHODS, method_nll, pass_starts, patch_profile, window_length

    P4, W, T = P, 2 * P, 16
    net = model()
    o, h = T // 2 + W // 2, P4 // 2
    u = tokens(T=window_length(T, W))
    nll = method_nll(net, u, T, P4, W=W)
    i = torch.arange(o + 1, o + T + 1)
    for m in METHODS:
        ws = pass_starts(m, i, T, P4, W)
        assert ws.min() >= 0 and int((ws + T).max()) <= u.shape[1] - 1  # every pass fits in the window
        if m.endswith("strided"):
            assert bool(((i - ws) % P4 < h).all()) and set((ws - o).unique().tolist()) <= {-T // 2 - h, -T // 2,
                                                                                            -T // 2 + h, -h, 0, h}
        for col in (0, T // 2, T - 1):
            logits, _ = net(u[:, int(ws[col]) : int(ws[col]) + T])
            want = F.cross_entropy(logits[:, int(i[col] - ws[col]) - 1], u[:, int(i[col])], reduction="none")
            torch.testing.assert_close(nll[m][:, col], want)
    assert not torch.allclose(nll["strided"], nll["basic"])
    assert patch_profile(nll["basic"], T, P4, W)[:, 1].tolist() == [2 * T / P4] * P4
    with pytest.raises(ValueError, match="window_patch=2"):
        method_nll(net, u, T, P4, W=2)
