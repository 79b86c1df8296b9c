"""The README's "Adding an architecture" recipe, followed end to end: a GRU registered through Hydra
(a config folder of the user's, on the search path) trains, evaluates, generates and compares."""

from __future__ import annotations

import pytest
import torch

from architectures.contract import check
from experiments.compare import main as compare_main
from experiments.eval import evaluate
from experiments.generate import sample
from experiments.train import train
from tests.conftest import compose
from tests.fixtures.custom_model import GRULM

MODEL_YAML = """\
name: gru
net:
  _target_: tests.fixtures.custom_model.GRULM
  vocab_size: ${data.vocab_size}
  d_model: 32
"""


@pytest.fixture(scope="module")
def user_configs(tmp_path_factory):
    root = tmp_path_factory.mktemp("my_configs")
    (root / "model").mkdir()
    (root / "model" / "gru.yaml").write_text(MODEL_YAML)
    return f"hydra.searchpath=[file://{root}]"


def test_the_example_honours_the_contract():
    net = check(GRULM(d_model=16))
    x = torch.randint(0, 256, (2, 20))
    full, _ = net(x)
    a, st = net(x[:, :7])
    b, _ = net(x[:, 7:], st)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)
    assert net.max_len is None and net.crossbatch_window is None and net.added_parameters == ()


def test_a_custom_model_trains_evaluates_generates_and_compares(user_configs, tiny_corpus, tmp_path):
    data = [f"data.path={tiny_corpus}", "data.pattern=**/*.txt", "data.val_fraction=0.15",
            "data.test_fraction=0.15"]
    run = tmp_path / "run"
    m = train(compose("train", [user_configs, "model=gru", "debug=smoke", f"run_dir={run}", *data]))
    assert m["model"] == "gru" and m["flops_per_token"] > 0 and 0 < m["val/bpb"] < 10
    w = evaluate(compose("eval", [f"run_dir={run}", "eval.num_batches=1", "eval.context=32"]))
    s = evaluate(compose("eval", [f"run_dir={run}", "eval.streaming=true", "eval.max_docs=2", "out=stream.json"]))
    assert w["test/bpb"] > 0 and s["test/stream_bpb"] > 0
    text = sample(compose("generate", [f"run_dir={run}", "prompt=abc", "max_new_bytes=8"]))
    assert text.startswith("abc")
    sets = sum((["--set", d] for d in [user_configs, "debug=smoke", *data]), [])
    md = compare_main(["--archs", "gru", "--match", "none", "--lr", "0.01", "--budget", "tokens:256",
                       "--out", str(tmp_path / "cmp"), *sets])
    gru = next(line for line in md.splitlines() if line.startswith("| gru |"))
    assert "—" not in gru.split("|")[2] and "[" in gru  # a test bits/byte with its interval


def test_a_model_missing_part_of_the_contract_is_named():
    class NoFlops(torch.nn.Module):
        config = None

        def forward(self, tokens, state=None):
            return tokens, state

    with pytest.raises(TypeError, match=r"missing \['flops_per_token'"):
        check(NoFlops())
