"""Megalodon: faithful to the official code, streaming, official weights, one-switch ablations."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from architectures.megalodon import Megalodon, load_official
from architectures.megalodon.layers import CEMA
from kernels.cema import cema_reference
from kernels.timestep_norm import timestep_norm_reference

TINY = dict(model_dim=32, num_layers=2, num_heads=2, z_dim=16, value_dim=48, ffn_hidden_dim=40, chunk_size=8,
            norm_num_groups=4, cema_ndim=4)
ABLATIONS = {
    "official": {},
    "ema=real": {"ema": "real"},
    "ema=none": {"ema": "none"},
    "norm=layer": {"norm": "layer"},
    "residual=standard": {"residual": "standard"},
    "attention=softmax_scaled": {"attention_norm": "softmax_scaled"},
    "mega-preset": {"ema": "real", "norm": "layer", "residual": "standard"},
    "swiglu+share_emb+rescale": {"swiglu": True, "share_emb": True, "rescale_nffn": True, "scale_emb": True},
    "tsn-window": {"tsn_window_chunks": 2, "tsn_window_start": 3, "tsn_refresh_every": 1},
}


def model(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    net = Megalodon(**{**TINY, **kw}).to(dtype).eval()
    # official init leaves gamma/beta/norm scales at zero; perturb so every term is exercised
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("gamma", "beta", "weight", "bias")) and p.dim() <= 2 and (p == 0).all():
                p.normal_(0, 0.1)
    return net


def tokens(B=2, T=45, seed=1):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", ABLATIONS.values(), ids=ABLATIONS.keys())
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_any_segmentation_equals_one_pass(kw, dtype, tol):
    net = model(dtype, **kw)
    x = tokens()
    full, _ = net(x)
    for cuts in [(1, 2, 3, 7, 8, 9, 17, 30, 31, 44), (5, 21), tuple(range(1, 45))]:
        state, outs, edges = None, [], [0, *cuts, 45]
        for a, b in zip(edges[:-1], edges[1:]):
            out, state = net(x[:, a:b], state)
            outs.append(out)
        err = (torch.cat(outs, 1) - full).abs().max().item()
        assert err <= tol * max(1.0, full.abs().max().item()), f"segments {cuts}: max error {err:.2e}"


@pytest.mark.parametrize("kw", ABLATIONS.values(), ids=ABLATIONS.keys())
def test_causality_and_gradients(kw):
    net = model(**kw)
    x = tokens()
    ref, _ = net(x)
    for t in (0, 7, 8, 30):
        y = x.clone()
        y[:, t + 1 :] = (y[:, t + 1 :] + 1) % 256
        out, _ = net(y)
        assert torch.allclose(out[:, : t + 1], ref[:, : t + 1], atol=1e-12, rtol=0)
        assert not torch.allclose(out[:, t + 1], ref[:, t + 1])
    net.train()
    logits, _ = net(x)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"


def _rope_adjacent(x, base):
    """x [B, C, H, d] at positions 0..C-1: pairs (2j, 2j+1) as complex numbers."""
    C, d = x.shape[1], x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(C, d // 2, dtype=torch.float64), torch.arange(C, dtype=torch.float64)[:, None] * theta)
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(xc * rot[None, :, None]).flatten(-2)


def naive_block(block, x, cfg):
    """One layer written from the spec's equations, term by term (float64)."""
    mega, nffn = block.mega, block.nffn
    B, L, D = x.shape
    H, dz = cfg.num_heads, cfg.z_head_dim
    xn, _ = timestep_norm_reference(x, mega.timenorm.weight, mega.timenorm.bias, cfg.norm_num_groups, cfg.norm_eps)
    c = mega.cema
    xe = cema_reference(xn.transpose(1, 2), c.alpha, c.delta, c.theta, c.gamma, c.omega)[0].transpose(1, 2)
    mx = xe / torch.sqrt(xe.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * (mega.rmsnorm.weight + 1)
    z = (mx @ mega.wz.weight.T + mega.wz.bias).view(B, L, H, dz)
    z = z / torch.sqrt(z.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)
    z = z.reshape(B, L, H * dz)
    q = (z * (mega.gamma[0] + 1) / math.sqrt(dz) + mega.beta[0]).view(B, L, H, dz)
    k = (z * (mega.gamma[1] + 1) / math.sqrt(dz) + mega.beta[1]).view(B, L, H, dz)
    v = F.silu(xn @ mega.wv.weight.T + mega.wv.bias).view(B, L, H, -1)  # V from the TimestepNorm output
    r = F.silu(mx @ mega.wr.weight.T + mega.wr.bias)
    o = torch.zeros(B, L, H, v.shape[-1], dtype=x.dtype)
    C = cfg.chunk_size
    for s in range(0, L, C):
        qc, kc = _rope_adjacent(q[:, s : s + C], cfg.rope_base), _rope_adjacent(k[:, s : s + C], cfg.rope_base)
        n = qc.shape[1]
        scores = torch.einsum("bthd,bshd->bhts", qc, kc)  # no 1/sqrt(d)
        scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
        o[:, s : s + C] = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v[:, s : s + C])
    y_hat = mx @ mega.wh1.weight.T + mega.wh1.bias + (o.reshape(B, L, -1) * r) @ mega.wh2.weight.T + x
    u = F.layer_norm(y_hat, (D,), nffn.norm.weight + 1, nffn.norm.bias, cfg.norm_eps)
    return F.silu(u @ nffn.fc1.weight.T) @ nffn.fc2.weight.T + x  # two-hop: adds the block input x


def test_layer_matches_the_spec_equations():
    net = model()
    cfg = net.config
    x = torch.randn(2, 21, cfg.model_dim, dtype=torch.float64)
    out, _ = net.layers[0](x, net.rope, 0, None)
    torch.testing.assert_close(out, naive_block(net.layers[0], x, cfg), atol=1e-10, rtol=1e-10)


def test_full_model_matches_the_spec_equations():
    net = model()
    x = tokens(T=21)
    h = net.embed(x)
    for block in net.layers:
        h = naive_block(block, h, net.config)
    fn = net.output.final_norm
    h, _ = timestep_norm_reference(h, fn.weight, fn.bias, net.config.norm_num_groups, net.config.norm_eps)
    torch.testing.assert_close(net(x)[0], h @ net.output.output.weight.T, atol=1e-10, rtol=1e-10)


def test_real_ema_is_a_real_damped_ema():
    torch.manual_seed(0)
    ema = CEMA(5, 3, complex_=False).double()
    x = torch.randn(2, 17, 5, dtype=torch.float64)
    y, _ = ema(x)
    p = torch.sigmoid(ema.alpha[..., 0])
    decay = 1 - p * torch.sigmoid(ema.delta[..., 0])
    h = torch.zeros(2, 5, 3, dtype=torch.float64)
    expected = []
    for t in range(17):
        h = decay * h + p * x[:, t, :, None]  # real numbers only
        expected.append((ema.gamma[..., 0] * h).sum(-1) / math.sqrt(3) + ema.omega[:, 0] * x[:, t])
    torch.testing.assert_close(y, torch.stack(expected, 1))
    assert ema.theta is None and ema.gamma.shape == (5, 3, 1)


def test_timestep_norm_window_is_off_by_default_and_changes_long_streams():
    x = tokens(T=45)
    plain, _ = model()(x)
    windowed, _ = model(tsn_window_chunks=2, tsn_window_start=3, tsn_refresh_every=1)(x)
    torch.testing.assert_close(windowed[:, :24], plain[:, :24])  # before the first refresh: identical
    assert not torch.allclose(windowed[:, 24:], plain[:, 24:])


def official_keys(cfg: dict) -> dict[str, tuple]:
    """The official state dict's keys and shapes, written out from XuezheMax/megalodon's modules."""
    D, Z, E, N, G, F_, V = (cfg[k] for k in ("model_dim", "z_dim", "value_dim", "cema_ndim", "norm_num_groups",
                                             "ffn_hidden_dim", "vocab_size"))
    keys = {"embed.weight": (V, D), "rope.freqs": (Z // cfg["num_heads"] // 2,)}
    for i in range(cfg["num_layers"]):
        m = f"layers.{i}.mega."
        keys.update({
            m + "timenorm.prior_count": (), m + "timenorm.prior_mean": (G,), m + "timenorm.prior_logv": (G,),
            m + "timenorm.weight": (D,), m + "timenorm.bias": (D,),
            m + "cema.alpha": (D, N, 1), m + "cema.delta": (D, N, 1), m + "cema.theta": (D, 1, 1),
            m + "cema.gamma": (D, N, 2), m + "cema.omega": (D, 1), m + "rmsnorm.weight": (D,),
            m + "wv.weight": (E, D), m + "wv.bias": (E,), m + "wz.weight": (Z, D), m + "wz.bias": (Z,),
            m + "wr.weight": (E, D), m + "wr.bias": (E,), m + "wh1.weight": (D, D), m + "wh1.bias": (D,),
            m + "wh2.weight": (D, E), m + "gamma": (2, Z), m + "beta": (2, Z),
        })
        f = f"layers.{i}.nffn."
        keys.update({f + "norm.weight": (D,), f + "norm.bias": (D,), f + "fc1.weight": (F_, D),
                     f + "fc2.weight": (D, F_)})
        if cfg.get("swiglu"):
            keys[f + "fc3.weight"] = (F_, D)
    keys.update({"output.final_norm.prior_count": (), "output.final_norm.prior_mean": (G,),
                 "output.final_norm.prior_logv": (G,), "output.final_norm.weight": (D,),
                 "output.final_norm.bias": (D,), "output.output.weight": (V, D)})
    return keys


@pytest.mark.parametrize("swiglu", [False, True])
def test_official_state_dict_loads_strictly(swiglu, tmp_path):
    conf = {**TINY, "vocab_size": 256, "swiglu": swiglu, "efficient_attn": "swift", "init_mode": "he"}
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape in official_keys(conf).items():
        if k.endswith("prior_count"):
            sd[k] = torch.tensor(0, dtype=torch.int64)
        elif k.endswith("rope.freqs"):
            d = conf["z_dim"] // conf["num_heads"]
            sd[k] = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.1
    ours = Megalodon(**{k: v for k, v in conf.items() if k not in ("efficient_attn", "init_mode")}, )
    assert set(ours.state_dict()) == set(sd), set(ours.state_dict()) ^ set(sd)
    ours.load_state_dict(sd, strict=True)
    (tmp_path / "config.json").write_text(json.dumps({"model": conf, "tokenizer": {}}))
    (tmp_path / "consolidate_config.json").write_text(json.dumps({"model_parallel_size": 1, "dtype": "fp32"}))
    torch.save(sd, tmp_path / "consolidated.pth")
    loaded = load_official(tmp_path)
    x = tokens(T=20)
    logits, _ = loaded(x)
    assert torch.isfinite(logits).all() and logits.shape == (2, 20, 256)
    torch.testing.assert_close(logits, ours(x)[0])


def test_bad_config_values_fail_clearly():
    with pytest.raises(ValueError, match=r"ema='quaternion'"):
        Megalodon(**TINY, ema="quaternion")
    with pytest.raises(ValueError, match="norm_num_groups=5 must divide model_dim=32"):
        Megalodon(**{**TINY, "norm_num_groups": 5})


def test_decoding_one_token_at_a_time_takes_the_recurrence_and_equals_one_pass():
    """Without autograd a single token goes through the O(1) CEMA step with cached coefficients (the
    FFT of length 1 costs ~2x the recurrence); the result equals the one-pass forward, and changed
    weights invalidate the cache."""
    net = model()
    x = tokens(T=30)
    full, _ = net(x)
    with torch.no_grad():
        out, state = net(x[:, :7])
        outs = [out]
        for t in range(7, 30):
            out, state = net(x[:, t : t + 1], state)
            outs.append(out)
        torch.testing.assert_close(torch.cat(outs, 1), full.detach(), atol=1e-10, rtol=0)
        cema = net.layers[0].mega.cema
        first = cema.step_coefficients()
        assert cema.step_coefficients() is first  # cached
        cema.alpha.add_(0.1)
        assert cema.step_coefficients() is not first  # recomputed for the new weights


def official_inference(net_plain, tokens, C, max_chunks=2, truncate_chunks=8):
    """A transcription of the official megalodon/inference.py loop on a model without the statistics
    window: groups of max_chunks chunks, the norm states replaced by a fresh pass over the last
    (truncate - max) chunks once truncate chunks are done and more input follows, then the remainder."""
    L = tokens.shape[1]
    n_chunks = L // C
    prev_pos = n_chunks * C
    state, outs = None, []
    for c in range(0, n_chunks, max_chunks):
        s, e = c * C, min(c + max_chunks, n_chunks) * C
        logits, state = net_plain(tokens[:, s:e], state)
        outs.append(logits)
        if truncate_chunks * C <= e and (e < n_chunks * C or prev_pos < L):
            _, fresh = net_plain(tokens[:, e - (truncate_chunks - max_chunks) * C : e], None)
            for st, fr in zip(state["layers"], fresh["layers"]):
                st["norm"] = fr["norm"]
            state["final"] = fresh["final"]
    if prev_pos < L:
        logits, _ = net_plain(tokens[:, prev_pos:], state)
        outs.append(logits)
    return torch.cat(outs, 1)


def test_the_statistics_window_is_the_official_inference_loop_for_every_length():
    """For every length (an odd number of chunks followed by a remainder once refreshed only at even
    counts: 0.18-0.28 logit differences on the last partial chunk), in one call and streamed in calls
    of two chunks; and a state made with the window off continues with it on."""
    C = 2
    plain = model(chunk_size=C)
    windowed = model(chunk_size=C, tsn_window_chunks=6, tsn_window_start=8, tsn_refresh_every=2)
    windowed.load_state_dict(plain.state_dict())
    x = tokens(T=33)
    for L in (5, 17, 19, 24, 27):  # refreshes from 16 on; 19 and 27: an odd chunk count, then a remainder
        ref = official_inference(plain, x[:, :L], C)
        one, _ = windowed(x[:, :L])
        torch.testing.assert_close(one, ref, atol=1e-10, rtol=0, msg=f"one call, L={L}")
        state, outs = None, []
        for a in range(0, L, 2 * C):
            out, state = windowed(x[:, a : min(L, a + 2 * C)], state)
            outs.append(out)
        torch.testing.assert_close(torch.cat(outs, 1), ref, atol=1e-10, rtol=0, msg=f"streamed, L={L}")
    _, off_state = plain(x[:, :10])
    out, _ = windowed(x[:, 10:20], off_state)  # no KeyError: the window starts from here
    assert out.shape == (2, 10, 256)


@pytest.mark.parametrize("mode", ["post_softmax", "dropkey"])
def test_attention_dropout_in_training_only(mode):
    """The official recipe's attention dropout (after the softmax), and DropKey (before it)."""
    net = model(torch.float32, attention_dropout=0.3, attention_dropout_mode=mode)
    ref = model(torch.float32)
    x = tokens(T=40)
    torch.testing.assert_close(net(x)[0], ref(x)[0])  # eval: no dropout
    net.train()
    torch.manual_seed(0)
    a, _ = net(x)
    torch.manual_seed(1)
    b, _ = net(x)
    assert torch.isfinite(a).all() and not torch.allclose(a, b)
    a.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_official_configs_with_attention_dropout_load():
    from architectures.megalodon import config_from_official

    cfg = config_from_official({"vocab_size": 256, "model_dim": 64, "num_layers": 1, "z_dim": 32, "value_dim": 64,
                                "ffn_hidden_dim": 64, "chunk_size": 16, "norm_num_groups": 4,
                                "attention_dropout": 0.1, "efficient_attn": "fused"})
    assert cfg.attention_dropout == 0.1 and cfg.attention_dropout_mode == "post_softmax"


@pytest.mark.slow
def test_compiled_training_steps_match_eager():
    """torch.compile (compile=true) of megalodon_tiny: inductor compiled the complex EMA to NaN from the second
    AdamW step on (at 4 x 256; not at 2 x 64), so the op runs eagerly inside the compiled graph."""
    import copy

    from experiments.config import build, compose

    x = torch.randint(0, 256, (4, 257), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    eager = build(compose("train", ["model=megalodon_tiny", "data.seq_len=256"]).model.net)
    compiled = copy.deepcopy(eager)
    compiled.compile()
    losses = []
    for net in (eager, compiled):
        opt, out = torch.optim.AdamW(net.parameters(), 1e-3), []
        for _ in range(3):
            logits, _ = net(x[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            out.append(float(loss))
        losses.append(out)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
