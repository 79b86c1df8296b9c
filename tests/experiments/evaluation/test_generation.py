"""Sampling options on the shared cached path: top-k, top-p, repetition penalty, stop strings,
several samples, bytes printed as generated."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.evaluation.generation import decode, generate, next_token
from experiments.train import train
from tests.conftest import compose


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = torch.zeros(1, 4, dtype=torch.bool)
    picks = {int(next_token(logits, seen, 1.0, None, 0.75, 1.0, torch.Generator().manual_seed(i))) for i in range(200)}
    assert picks == {0, 1}  # 0.5 + 0.3 >= 0.75: the third byte is never drawn
    picks = {int(next_token(logits, seen, 1.0, None, 0.5, 1.0, torch.Generator().manual_seed(i))) for i in range(50)}
    assert picks == {0}


def test_repetition_penalty_lowers_bytes_already_seen():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    seen = torch.tensor([[True, False, True]])
    assert int(next_token(logits, seen, 0.0, None, None, 1.0, None)) == 0
    assert int(next_token(logits, seen, 0.0, None, None, 1.5, None)) == 1  # 2.0 / 1.5 < 1.9


class Cycle(torch.nn.Module):
    """A stand-in model: always predicts (last byte + 1) mod 256."""

    max_len = None

    class config:
        vocab_size = 256

    def forward(self, tokens, state=None):
        return torch.nn.functional.one_hot((tokens + 1) % 256, 256).float() * 10, state


def test_stop_strings_end_each_sample_where_it_produces_them():
    prompt = torch.tensor([[ord("a")], [ord("w")]])
    out = generate(Cycle(), prompt, 10, temperature=0, stop=[b"de", b"yz"])
    assert out.shape[1] == 1 + 4  # "bcde" ends the first row, the second ended at "xyz" one byte earlier
    assert decode(out[0], 1, [b"de", b"yz"]) == "abcde"
    assert decode(out[1], 1, [b"de", b"yz"]) == "wxyz"


def test_bytes_are_handed_out_as_they_are_generated():
    got = []
    generate(Cycle(), torch.tensor([[ord("a")]]), 5, temperature=0, on_byte=got.append)
    assert bytes(got) == b"bcdef"


def test_several_samples_and_streaming_from_a_run(tiny_corpus, tmp_path, capsys):
    from experiments.evaluation.generation import sample

    run = tmp_path / "run"
    train(compose("train", ["debug=smoke", f"run_dir={run}", f"data.path={tiny_corpus}", "data.pattern=**/*.txt",
                            "data.val_fraction=0.15", "data.test_fraction=0.15"]))
    capsys.readouterr()
    texts = sample(compose("generate", [f"run_dir={run}", "prompt=abc", "max_new_bytes=20", "num_samples=3",
                                        "top_p=0.9", "repetition_penalty=1.2"]))
    assert len(texts) == 3 and all(t.startswith("abc") for t in texts)
    out = capsys.readouterr().out
    assert out.startswith("abc") and "--- sample 3 ---" in out
    with pytest.raises(ValueError, match=r"top_p=1.5 must be in \(0, 1\]"):
        sample(compose("generate", [f"run_dir={run}", "top_p=1.5"]))
    assert math.isfinite(len(texts[0]))
