"""The lm-evaluation-harness adapter: a local task (no download) runs through lm_eval on a longlab run, and
the log-likelihoods it answers are the model's own."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from experiments.train import train
from tests.conftest import compose

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def run_dir(tiny_corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("harness_run")
    train(compose("train", ["debug=smoke", f"run_dir={run}", f"data.path={tiny_corpus}", "data.pattern=**/*.txt",
                            "data.val_fraction=0.15", "data.test_fraction=0.15", "data.seq_len=16"]))
    return run


def write_tasks(folder):
    rows = [{"context": f"the {w} brown", "continuation": " fox", "choices": [" fox", " dog"], "label": i % 2}
            for i, w in enumerate(["quick", "slow", "lazy", "red"])]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder}/data.jsonl\ntest_split: test\n"
    (folder / "choice.yaml").write_text("task: toy_choice\n" + common + 'output_type: multiple_choice\n'
                                        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
                                        'doc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n')
    (folder / "rolling.yaml").write_text("task: toy_rolling\n" + common + "output_type: loglikelihood_rolling\n"
                                         'doc_to_text: ""\ndoc_to_target: "{{context}}{{continuation}}"\n'
                                         "metric_list:\n  - metric: bits_per_byte\n")
    (folder / "until.yaml").write_text("task: toy_until\n" + common + "output_type: generate_until\n"
                                       'doc_to_text: "{{context}}"\ndoc_to_target: "{{continuation}}"\n'
                                       "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 5\n"
                                       "metric_list:\n  - metric: exact_match\n")


def test_lm_eval_runs_a_local_task_of_each_request_type_on_a_run(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    from experiments.harness import main

    write_tasks(tmp_path)
    r = main(["--run_dir", str(run_dir), "--tasks", "toy_choice", "toy_rolling", "toy_until", "--include_path",
              str(tmp_path), "--device", "cpu"])
    res = r["results"]
    assert 0 <= res["toy_choice"]["acc,none"] <= 1 and res["toy_rolling"]["bits_per_byte,none"] > 0
    assert "exact_match,none" in res["toy_until"] and (run_dir / "harness.json").exists()


def test_the_adapters_log_likelihood_is_the_models_own(run_dir):
    from experiments.evaluation.harness import LonglabLM

    lm = LonglabLM(str(run_dir), device="cpu", window=8)  # several windows with carried state
    req = SimpleNamespace(args=("the quick brown", " fox jumps"))
    (logp, _), = lm.loglikelihood([req])
    ids = list(b"the quick brown fox jumps")
    with torch.no_grad():
        logits, _ = lm.net(torch.tensor([ids[:-1]]))
    ref = F.log_softmax(logits[0].double(), -1)[torch.arange(14, len(ids) - 1), torch.tensor(ids[15:])].sum()
    assert logp == pytest.approx(float(ref), abs=1e-4)
    with pytest.raises(ValueError, match="lm_eval knows no task"):
        from experiments.evaluation.harness import run

        run(str(run_dir), ["no_such_task_anywhere"], device="cpu", out=None)
