"""An official-format Megalodon checkpoint folder (config.json whose vocab_size is left to the tokenizer,
consolidated.pth, a tokenizer.json) is evaluated, sampled from and fine-tuned from the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from architectures.megalodon import Megalodon, config_from_official
from experiments.eval import evaluate
from experiments.generate import sample
from experiments.train import train
from tests.conftest import compose

pytest.importorskip("tokenizers")
TINY = dict(model_dim=32, num_layers=2, num_heads=2, z_dim=16, value_dim=64, ffn_hidden_dim=64, chunk_size=16,
            norm_num_groups=4, cema_ndim=4)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    from experiments.data.tokens import train_bpe

    folder = tmp_path_factory.mktemp("official")
    tok = train_bpe(["the quick brown fox jumps over the lazy dog " * 50], 300)
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    net = Megalodon(vocab_size=300, **TINY)
    torch.save(net.state_dict(), folder / "consolidated.pth")
    (folder / "config.json").write_text(json.dumps({"model": {**TINY, "vocab_size": -1, "init_mode": "he"}}))
    (folder / "consolidate_config.json").write_text(json.dumps({"model_parallel_size": 1}))
    return folder


def test_the_vocab_size_left_to_the_tokenizer_is_taken_from_the_override():
    assert config_from_official({**TINY, "vocab_size": -1}, vocab_size=300).vocab_size == 300
    with pytest.raises(ValueError, match="pass vocab_size="):
        config_from_official({**TINY, "vocab_size": -1})


def test_an_official_checkpoint_is_evaluated_and_sampled_from_the_command_line(official, tiny_corpus):
    data = [f"data.path={tiny_corpus}", "data.pattern=**/*.txt", "+data.test_fraction=0.3"]
    r = evaluate(compose("eval", [f"run_dir={official}", "eval.num_batches=1", "eval.batch_size=2", *data]))
    assert math.isfinite(r["test/bpb"]) and r["model"] == f"official:{official.name}"
    assert r["bytes"] > 2 * 15  # tokens of several bytes: the text's bytes are what is counted
    text = sample(compose("generate", [f"run_dir={official}", "prompt=the quick", "max_new_bytes=4", "stream=false"]))
    assert text.startswith("the quick")
    with pytest.raises(ValueError, match="official checkpoint: it comes with no training corpus.*data.path="):
        evaluate(compose("eval", [f"run_dir={official}"]))


def test_training_starts_from_an_official_checkpoint(official, tiny_corpus, tmp_path):
    cfg = compose("train", ["model=megalodon_tiny", "debug=smoke", f"run_dir={tmp_path}", f"data.path={tiny_corpus}",
                            "data.pattern=**/*.txt", "data.val_fraction=0.15", "data.test_fraction=0.15",
                            f"data.tokenizer={official}", "data.vocab_size=300",  # its embeddings are padded
                            f"init_from={official}", *[f"model.net.{k}={v}" for k, v in TINY.items()]])
    m = train(cfg)
    assert m["steps"] == 3 and (tmp_path / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="does not fit this model"):
        train(compose("train", ["model=megalodon_tiny", "debug=smoke", f"run_dir={tmp_path / 'b'}",
                                f"data.path={tiny_corpus}", "data.pattern=**/*.txt", "data.val_fraction=0.15",
                                "data.test_fraction=0.15", f"data.tokenizer={official}", f"init_from={official}"]))
