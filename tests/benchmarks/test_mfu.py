import re

import pytest

from benchmarks import mfu


def test_mfu_prints_both_precisions_against_their_measured_peaks(monkeypatch, capsys):
    monkeypatch.setenv("LONGLAB_ALLOCATOR", "off")  # no re-exec of the test process
    text = mfu.main(["--quick", "--attention"])
    peaks = dict(re.findall(r"\| (fp32|bf16) \| ([\d,]+) \|", text))
    assert set(peaks) == {"fp32", "bf16"} and all(float(v.replace(",", "")) > 0 for v in peaks.values())
    rows = re.findall(r"\| (fp32|bf16) \| [\d,.]+ \| ([\d,.]+) \| ([\d,.]+) \| ([\d.]+)% \|", text)
    assert [r[0] for r in rows] == ["fp32", "bf16"]
    for _, achieved, peak, pct in rows:  # MFU is achieved over peak, in percent
        achieved, peak = float(achieved.replace(",", "")), float(peak.replace(",", ""))
        assert float(pct) == pytest.approx(100 * achieved / peak, abs=0.2)
        assert 0 < float(pct) < 150  # above the peak would mean the FLOP count or the peak is wrong
    kernels = re.findall(r"\| (flash \(fused CPU kernel\)|math backend|blocked, \d+ queries) \| [\d,.]+ \|", text)
    assert kernels == ["flash (fused CPU kernel)", "math backend", "blocked, 256 queries", "blocked, 512 queries"]


def test_blocked_attention_is_causal_attention():
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 70, 8, generator=g, dtype=torch.float64) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(mfu.blocked_attention(q, k, v, 16), ref, atol=1e-12)


def test_step_flops_are_the_models_own_accounting():
    from experiments.config import build, compose

    net = build(compose("train", ["model=transformer_tiny", "data.seq_len=256"]).model.net)
    dense = 2 * (sum(p.numel() for p in net.layers.parameters() if p.dim() >= 2) + 256 * net.config.d_model)
    attn = 2 * 2 * net.config.n_layers * net.config.d_model * 256 / 2
    assert net.flops_per_token(256) == pytest.approx(3 * (dense + attn))
