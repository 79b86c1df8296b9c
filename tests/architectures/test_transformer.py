import pytest
import torch

from architectures.common import apply_rotary
from architectures.common.rotary import rotary_angles
from architectures.transformer import Transformer, TransformerConfig


def _net(**kw):
    torch.manual_seed(0)
    return Transformer(d_model=32, n_layers=2, n_heads=4, **kw).double().eval()


@pytest.mark.parametrize("window", [1, 5, 16])
def test_bounded_cache_streams_like_sliding_window_forward(window):
    net = _net(kv_window=window)
    x = torch.randint(0, 256, (2, 50))
    full, _ = net(x)
    state, outs = None, []
    for a in range(0, 50, 7):
        out, state = net(x[:, a : a + 7], state)
        outs.append(out)
        assert state["kv"][0][0].shape[2] <= window - 1  # the cache never exceeds the window
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-10, rtol=0)


def test_window_limits_what_a_position_sees():
    net = _net(kv_window=8)
    x = torch.randint(0, 256, (1, 40))
    y = x.clone()
    y[:, 10] = (y[:, 10] + 1) % 256
    a, b = net(x)[0], net(y)[0]
    # with two layers, token 10 reaches at most 2 * 7 positions ahead
    assert torch.allclose(a[:, 25:], b[:, 25:], atol=1e-12)
    assert not torch.allclose(a[:, 10:12], b[:, 10:12])


def test_grouped_kv_heads_and_untied_head():
    net = _net(n_kv_heads=2, tie_embeddings=False)
    assert net.head.weight is not net.embed.weight
    x = torch.randint(0, 256, (2, 20))
    full, _ = net(x)
    o1, s = net(x[:, :9])
    o2, _ = net(x[:, 9:], s)
    torch.testing.assert_close(torch.cat([o1, o2], 1), full, atol=1e-10, rtol=0)


def test_rotary_is_relative():
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    for conv in ("rotate_half", "adjacent"):
        dots = []
        for offset in (0, 13, 1000):
            pos = torch.tensor([offset + 3.0], dtype=torch.float64)
            pk = torch.tensor([offset + 1.0], dtype=torch.float64)
            qr = apply_rotary(q, rotary_angles(pos, 8, 10000.0), conv)
            kr = apply_rotary(k, rotary_angles(pk, 8, 10000.0), conv)
            dots.append((qr * kr).sum())
        torch.testing.assert_close(dots[0], dots[1])
        torch.testing.assert_close(dots[0], dots[2])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"d_model": 30, "n_heads": 4}, "divisible by n_heads"),
        ({"d_model": 36, "n_heads": 4}, "must be even"),
        ({"n_heads": 4, "n_kv_heads": 3}, "multiple of n_kv_heads"),
        ({"dropout": 1.0}, "dropout"),
        ({"kv_window": 0}, "kv_window"),
        ({"init_std": float("nan")}, "init_std"),
        ({"n_layers": 0}, "n_layers"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(**kwargs)


def test_ffn_hidden_default_is_llama_rounding():
    assert TransformerConfig(d_model=96).ffn_hidden == 256
    assert TransformerConfig(d_model=384).ffn_hidden == 1024


@pytest.mark.parametrize("window", [None, 7])
def test_preallocated_inference_cache_equals_one_forward(window):
    """Without autograd the KV cache is a preallocated buffer (appended in place, compacted or grown):
    one token at a time across several compactions and growths equals one forward, and a state used
    twice (two branches from one context) gives each branch its own keys."""
    from architectures.common.attention import KVBuffer

    net = _net(kv_window=window)
    x = torch.randint(0, 256, (2, 700), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full, _ = net(x)
        out, state = net(x[:, :5])
        outs = [out]
        for t in range(5, 700):
            out, state = net(x[:, t : t + 1], state)
            outs.append(out)
        assert isinstance(state["kv"][0], KVBuffer)
        torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-9, rtol=0)
        _, ctx = net(x[:, :300])
        a, _ = net(x[:, 300:310], ctx)
        b, _ = net(x[:, 400:410], ctx)  # a second branch from the same state
        a2, _ = net(x[:, 300:310], ctx)
    torch.testing.assert_close(a, a2, atol=0, rtol=0)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("window", [5, 16])
def test_banded_window_attention_equals_the_full_masked_one(window, monkeypatch):
    """A sliding window's attention by blocks of queries, each over only the keys its window reaches, equals
    one masked attention over every key: in one forward, streamed after a full cache, and with a per-row
    mask (a row whose document began mid-window)."""
    from architectures.common import attention

    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (2, 60), generator=g)
    want_full, _ = _net(kv_window=window)(x)
    want_stream = [_net(kv_window=window)(x[:, 30:], _net(kv_window=window)(x[:, :30])[1])[0]]
    monkeypatch.setattr(attention, "BAND", 4)
    net = _net(kv_window=window)
    got_full, _ = net(x)
    got_stream = [net(x[:, 30:], net(x[:, :30])[1])[0]]
    torch.testing.assert_close(got_full, want_full, atol=1e-10, rtol=0)
    torch.testing.assert_close(got_stream[0], want_stream[0], atol=1e-10, rtol=0)
    T, S = 30, 30 + window - 1
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64) for n in (T, S, S))
    mask = attention.causal_window_mask(T, S, window, q.device)
    key_pos = torch.arange(S)
    mask = mask & (key_pos[None, :] >= torch.tensor([0, window + 3])[:, None])[:, None, None, :]  # row 1 starts late
    full = attention.fused(q, k, v, attn_mask=mask)
    torch.testing.assert_close(attention.windowed(q, k, v, mask, window), full, atol=1e-12, rtol=0)
