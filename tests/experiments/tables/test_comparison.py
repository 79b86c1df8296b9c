"""The fair-comparison protocol: sizing to matched compute, tuning with an extended grid, intervals."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from experiments.tables.cells import cell_dir
from experiments.tables.intervals import collect, interval, paired
from experiments.tables.keys import TuningPending, row_key, row_overrides, tuned_lr, tuning_cell
from experiments.tables.protocol import TuneSpec
from experiments.tables.sizing import match, measure
from experiments.tables.spec import load_table
from tests.conftest import compose


def net_of(model: str) -> dict:
    return OmegaConf.to_container(compose("train", [f"model={model}"]).model.net, resolve=True)


@pytest.mark.parametrize("model", ["megalodon_tiny", "megabyte_tiny", "fot_tiny"])
@pytest.mark.parametrize("rule", ["flops", "params"])
def test_sizing_matches_the_reference_within_the_tolerance_and_keeps_the_architectures_ratios(model, rule):
    ref = measure(net_of("transformer_tiny"), 256).value(rule)
    net = net_of(model)
    changed, size = match(net, 256, ref, rule, 0.03)
    assert abs(size.value(rule) / ref - 1) <= 0.03
    sized = measure({**net, **changed}, 256)  # the overrides alone reproduce it
    assert sized == size
    kept = {"megalodon_tiny": ("num_heads", "chunk_size", "cema_ndim", "norm_num_groups"),
            "megabyte_tiny": ("patch_size", "global_heads", "local_heads"), "fot_tiny": ("n_heads", "window")}[model]
    assert not set(kept) & set(changed)


def test_sizing_that_cannot_get_close_enough_names_the_closest_it_found():
    ref = measure(net_of("transformer_tiny"), 256).flops_per_byte
    with pytest.raises(ValueError, match=r"within 0% of the reference's flops .* \(closest: [\d.e+]+ \([+-]\d"):
        match(net_of("megabyte_tiny"), 256, ref, "flops", 1e-9)


def test_a_table_row_is_sized_in_its_key_so_a_changed_rule_never_reuses_a_cell():
    spec = dataclasses.replace(load_table("compare"), tune=None)
    row = spec.row("megalodon")
    sized = row_overrides(spec, row, "cpu")
    assert any(o.startswith("model.net.model_dim=") for o in sized)
    none = dataclasses.replace(spec, match=dataclasses.replace(spec.match, rule="none"))
    assert not any(o.startswith("model.net.") for o in row_overrides(none, row, "cpu"))
    assert row_key(spec, row, "cpu") != row_key(none, row, "cpu")
    assert row_overrides(spec, spec.row("transformer"), "cpu") == row_overrides(none, spec.row("transformer"), "cpu")


def test_a_token_row_reads_the_references_bytes_per_window_at_its_flops_per_byte(tiny_corpus):
    """``compare --archs transformer@bpe300``: windows of the reference's bytes (its seq_len over the corpus's
    bytes per token), training FLOPs per byte of text within the tolerance, and the byte rows' evaluation
    text (byte windows of the reference's length)."""
    import argparse

    from experiments.tables.compare import table_for
    from experiments.tables.keys import composed
    from experiments.tables.sizing import bytes_per_token

    extra = [f"data.path={tiny_corpus}", "data.pattern=**/*.txt", "data.val_fraction=0.15", "data.test_fraction=0.15"]
    a = argparse.Namespace(archs=["megalodon", "transformer@bpe300"], match=None)
    spec, names = table_for(a, "tiny", extra)
    assert names == ["megalodon", "transformer@bpe300"] and spec.rows[0].name == "transformer"  # sized against
    row = spec.row("transformer@bpe300")
    spec = dataclasses.replace(spec, tune=None)
    ref = composed(row_overrides(spec, spec.rows[0], "tiny", extra))
    mine = composed(row_overrides(spec, row, "tiny", extra))
    bpt = bytes_per_token(mine["data"])
    assert mine["data"]["tokenizer"] == "bpe" and mine["model"]["net"]["vocab_size"] == 300 and bpt > 1.5
    assert mine["data"]["seq_len"] == round(ref["data"]["seq_len"] / bpt)
    assert mine["model"]["net"]["kv_window"] == mine["data"]["seq_len"]  # streams with windows of its own tokens
    per_byte = measure(mine["model"]["net"], mine["data"]["seq_len"]).flops_per_byte / bpt
    assert abs(per_byte / measure(ref["model"]["net"], ref["data"]["seq_len"]).flops_per_byte - 1) <= 0.03
    evals = {ev.name: ev for ev in spec.evals_for(row)}
    assert "eval.byte_windows=true" in evals["test"].overrides and "eval.byte_windows=true" in evals["stream"].overrides
    assert f"eval.context={ref['data']['seq_len']}" in evals["test"].overrides


def test_the_committed_token_row_is_evaluated_as_the_compare_command_builds_it():
    """configs/table/compare.yaml spells out transformer@bpe's byte-window evaluations; the compare command
    rebuilds them from the reference's training length: at the cpu scale both are the same evaluations."""
    import argparse

    from experiments.tables.cells import eval_key
    from experiments.tables.compare import table_for

    committed = load_table("compare")
    built, _ = table_for(argparse.Namespace(archs=None, match=None), "cpu", [])
    for spec in (committed, built):
        assert spec.row("transformer@bpe").skip_table_evals
    keys = [{ev.name: eval_key(ev.at("cpu")) for ev in spec.evals_for(spec.row("transformer@bpe"))}
            for spec in (committed, built)]
    assert keys[0] == keys[1] and set(keys[0]) == {ev.name for ev in committed.evals}


def fake_tuning_cell(results, spec, row, lr, value, config=True):
    cell = tuning_cell(spec, row, "tiny", lr, results)
    cell.mkdir(parents=True, exist_ok=True)
    if config:  # the rate it was trained at (a cell without one still counts: its key is composed at every rate)
        (cell / "config.yaml").write_text(f"optim:\n  lr: {lr}\n")
    (cell / "metrics.json").write_text(json.dumps({"val/bpb": value}))
    (cell / "meta.json").write_text(json.dumps({"finished": "now"}))


def test_tuning_extends_the_grid_at_an_edge_and_accepts_only_an_interior_best(tmp_path):
    spec = dataclasses.replace(load_table("compare"), match=None,
                               tune=TuneSpec(grid=(1e-3, 2e-3, 4e-3, 8e-3), max_extensions=2))
    row = spec.row("transformer")
    with pytest.raises(TuningPending, match=r"\[0.001, 0.002, 0.004, 0.008\] are not tuned") as p:
        tuned_lr(spec, row, "tiny", results=tmp_path)
    assert p.value.missing == [1e-3, 2e-3, 4e-3, 8e-3]
    for lr, v in ((1e-3, 3.0), (2e-3, 2.8), (4e-3, 2.6), (8e-3, 2.5)):  # best at the high edge
        fake_tuning_cell(tmp_path, spec, row, lr, v)
    with pytest.raises(TuningPending, match="at an edge of the grid; 0.016 is not tuned") as p:
        tuned_lr(spec, row, "tiny", results=tmp_path)
    assert p.value.missing == [0.016]
    fake_tuning_cell(tmp_path, spec, row, 0.016, 2.45)  # still the edge
    fake_tuning_cell(tmp_path, spec, row, 0.032, 2.7, config=False)
    assert tuned_lr(spec, row, "tiny", results=tmp_path) == 0.016
    # the row's cells are keyed with the chosen rate: the tuning cell at 0.016 is the row's seed-0 cell
    assert row_overrides(spec, row, "tiny", results=tmp_path)[-1] == "optim.lr=0.016"
    key = row_key(spec, row, "tiny", results=tmp_path)
    assert tuning_cell(spec, row, "tiny", 0.016, tmp_path) == cell_dir(tmp_path, "compare", "tiny", row.name, key, 0)


def test_tuning_refuses_a_best_that_stays_at_the_edge(tmp_path):
    spec = dataclasses.replace(load_table("compare"), match=None,
                               tune=TuneSpec(grid=(1e-3, 2e-3, 4e-3, 8e-3), max_extensions=1))
    row = spec.row("transformer")
    for lr, v in ((1e-3, 3.0), (2e-3, 2.8), (4e-3, 2.6), (8e-3, 2.5), (0.016, 2.4)):
        fake_tuning_cell(tmp_path, spec, row, lr, v)
    with pytest.raises(ValueError, match="still at an edge .* after 1 extensions"):
        tuned_lr(spec, row, "tiny", results=tmp_path)


def units(nll, count=100, sha="x"):
    return {"nll": list(nll), "bytes": [count] * len(nll), "targets_sha256": sha}


def test_intervals_cover_the_pooled_value_and_paired_differences_cancel_what_rows_share():
    rng = np.random.default_rng(0)
    hard = rng.gamma(2.0, 40.0, size=200)  # per-window difficulty shared by both rows
    a = collect({s: units(hard + rng.normal(0, 1, 200)) for s in range(3)})
    b = collect({s: units(hard + 2.0 + rng.normal(0, 1, 200)) for s in range(3)})
    ia, ib = interval(a), interval(b)
    assert ia.lo < ia.value < ia.hi and ib.lo < ib.value < ib.hi
    assert ia.hi > ib.lo  # the rows' own intervals overlap (window difficulty dominates) ...
    d = paired(a, b)
    assert d.separated and d.hi < 0  # ... but the paired difference separates them
    same = paired(a, a)
    assert same.value == same.lo == same.hi == 0 and not same.separated


def test_rows_scored_on_different_bytes_are_never_paired():
    a = collect({0: units([1.0, 2.0], sha="a")})
    b = collect({0: units([1.0, 2.0], sha="b")})
    with pytest.raises(ValueError, match="not scored on the same target bytes"):
        paired(a, b)
    with pytest.raises(ValueError, match="different target bytes"):
        collect({0: units([1.0], sha="a"), 1: units([1.0], sha="b")})


def test_windowed_and_streaming_evaluations_score_the_same_bytes_for_every_model(tiny_corpus):
    """Per-unit sums add up to the reported bits per byte; two different models get the same target hash."""
    from experiments.evaluation.bpb import streaming_bpb, windowed_bpb
    from experiments.training.runs import corpus_of
    from tests.conftest import build_net

    cfg = compose("train", [f"data.path={tiny_corpus}", "data.pattern=**/*.txt", "data.val_fraction=0.15",
                            "data.test_fraction=0.15"])
    split = corpus_of(cfg).split("test")
    out = {}
    for model in ("transformer_tiny", "megalodon_tiny"):
        net = build_net(model).eval()
        w = windowed_bpb(net, split, 32, 4, 2, 0, torch.device("cpu"))
        s = streaming_bpb(net, split, 16, 2, torch.device("cpu"), max_docs=2, max_doc_bytes=100)
        for r in (w, s):
            u = r["units"]
            assert sum(u["bytes"]) == r["bytes"]
            assert abs(sum(u["nll"]) / sum(u["bytes"]) / np.log(2) - r["bpb"]) < 1e-9
        assert len(w["units"]["nll"]) == 8 and len(s["units"]["nll"]) == 2
        out[model] = (w["units"]["targets_sha256"], s["units"]["targets_sha256"])
    assert out["transformer_tiny"] == out["megalodon_tiny"]


def test_the_scaling_fit_recovers_a_power_law_and_finds_where_two_curves_cross():
    from experiments.tables.scaling import Fit, crossing, fit

    C = np.array([5e11, 1.25e12, 3.1e12, 7.8e12, 2e13])
    true = Fit(1.2, 40.0, 0.12)
    got = fit(C, true(C))
    assert abs(got.alpha - 0.12) < 0.005 and abs(got(1e16) - true(1e16)) < 0.01
    flat = fit(C, np.array([2.0, 2.1, 2.0, 2.2, 2.1]))  # no fall with compute: no exponent
    assert flat.alpha < 0.05
    a, b = Fit(1.0, 30, 0.1), Fit(1.5, 300, 0.2)  # b leads at 1e13, a (the lower floor) after they meet
    c = crossing(a, b, 1e13, 1e22)
    assert a(1e13) > b(1e13) and a(1e20) < b(1e20) and c is not None and 3e16 < c < 1e17
    assert a(c * 0.9) > b(c * 0.9) and a(c * 1.1) < b(c * 1.1)
    assert crossing(a, Fit(5.0, 1, 0.1), 1e13, 1e22) is None


def test_a_scaling_table_pairs_only_the_architectures_at_one_size_and_budget(monkeypatch):
    """``differences_within: [size, budget]``: 4 architectures x 15 (size, budget) points give 6 pairs per point
    (90), not every pair of 60 rows (1,770); a key that a row's group lacks is refused at load."""
    from experiments.tables import sections
    from experiments.tables.report import RowResult

    spec = load_table("scaling")
    rows = [RowResult(r.name, r.name, {}, [0]) for r in spec.rows_at("cpu")]
    rng = np.random.default_rng(0)
    fake = {r.name: collect({0: units(rng.gamma(2.0, 40.0, 8))}) for r in rows}
    monkeypatch.setattr(sections, "units", lambda row, metric: fake[row.name])
    lines = [x for x in sections.differences(spec, rows) if x.startswith("| ") and "---" not in x][1:]
    group = {r.name: r.group for r in spec.rows}
    assert len(lines) == 90
    for line in lines:
        a, b = line.split(" | ")[:2]
        a = a.removeprefix("| ")
        assert (group[a]["size"], group[a]["budget"]) == (group[b]["size"], group[b]["budget"])
        assert group[a]["arch"] != group[b]["arch"]
    every = sections.differences(dataclasses.replace(spec, differences_within=()), rows[:10])
    assert len([x for x in every if x.startswith("| ")]) - 1 == 10 * 9 // 2
    with pytest.raises(ValueError, match="differences_within has 'depth'"):
        from experiments.tables import spec as spec_module

        real = spec_module._build

        def with_depth(cls, raw, where):
            return real(cls, {**raw, "differences_within": ["depth"]} if cls is spec_module.TableSpec else raw, where)

        monkeypatch.setattr(spec_module, "_build", with_depth)
        load_table("scaling")


def test_a_rate_transferred_from_another_tables_tuned_row_is_that_rows_rate_and_must_name_a_tuned_row(monkeypatch):
    """``lr_from: <table>:<row>`` (scaling_long's smallest and largest sizes take the rate the scaling table tuned
    for the same architecture and size): the rate is read from that table's tuning cells, it is part of the row's
    key like any rate, and a row that is not tuned there is refused when the table loads."""
    from experiments.tables import spec as spec_module
    from experiments.tables.keys import lr_source

    long, scaling = load_table("scaling_long"), load_table("scaling")
    row = long.row("transformer_s1_b5")
    other, src = lr_source(long, row)
    assert (other.name, src.name) == ("scaling", "transformer_s1_b3")
    assert tuned_lr(long, row, "cpu") == tuned_lr(scaling, scaling.row("transformer_s1_b3"), "cpu") == 0.008
    assert any(o == "optim.lr=0.008" for o in row_overrides(long, row, "cpu"))
    assert lr_source(long, long.row("transformer_s2_b5"))[1].name == "transformer_s2_b3"  # its own table's
    real = spec_module._build

    def pointing_at(target):
        def build(cls, raw, where):
            if cls is spec_module.TableSpec and raw.get("name") == "scaling_long":
                raw = {**raw, "rows": [{**raw["rows"][0], "lr_from": target}, *raw["rows"][1:]]}
            return real(cls, raw, where)
        return build

    for target in ("scaling:transformer_s1_b5", "scaling:no_such_row"):  # not tuned there / not a row
        monkeypatch.setattr(spec_module, "_build", pointing_at(target))
        with pytest.raises(ValueError, match="must be a tuned row of table 'scaling'"):
            load_table("scaling_long")


def test_the_joint_fit_recovers_a_law_in_size_and_data_its_optimal_size_and_flags_what_it_cannot_determine():
    """``L(N, D) = E + A n^-a + B d^-b`` from 3 sizes x 5 budgets: the parameters come back, the closed-form optimal
    size is the minimum of the loss over sizes at a fixed compute (checked numerically), and points that do not
    depend on size leave the size term at a bound, which the fit reports."""
    from experiments.tables.joint_fit import Joint, fit_joint

    N = np.repeat([8e5, 2.6e6, 9e6], 5)
    D = np.tile([6e5, 1.6e6, 4e6, 1e7, 2.5e7], 3)
    true = Joint(1.1, 0.4, 0.5, 0.8, 0.35, 2.6e6, 4e6)
    got = fit_joint(N, D, true.loss(N, D))
    for k in ("E", "A", "a", "B", "b"):
        assert abs(getattr(got, k) - getattr(true, k)) < 1e-3 * max(1, abs(getattr(true, k))), k
    assert got.at_bound == ()
    C = 3e15
    sizes = np.logspace(5, 10, 20001)
    numeric = sizes[np.argmin(true.loss(sizes, C / sizes))]
    assert abs(true.optimal_n(C) / numeric - 1) < 2e-3 and abs(true(C) - true.loss(numeric, C / numeric)) < 1e-6
    flat = fit_joint(N, D, 1.1 + 0.8 * (D / 4e6) ** -0.35)  # no size dependence at all
    assert flat.at_bound and {"A", "a"} & set(flat.at_bound)
    again = fit_joint(N, D, true.loss(N, D) + 0.001, start=got)  # a bootstrap replicate starts from the estimate
    assert abs(again.E - got.E - 0.001) < 1e-3


def test_contrasts_pair_two_metrics_of_one_row_over_its_own_units(monkeypatch):
    """``contrasts: [[strided, basic]]`` (megabyte_strided): within each row, a − b paired over the same windows
    x seeds: a method that is better on every window is separated, one that only adds noise is not, a row
    without per-unit losses is left out, and a contrast naming a metric without intervals is refused at load."""
    from experiments.tables import sections
    from experiments.tables import spec as spec_module
    from experiments.tables.report import RowResult

    spec = load_table("megabyte_strided")
    rows = [RowResult(n, n, {}, [0, 1, 2]) for n in ("better", "noise", "none")]
    rng = np.random.default_rng(0)
    hard = rng.gamma(2.0, 40.0, size=(3, 32))
    noise = rng.normal(0, 3.0, size=(3, 32))
    per = {("better", "basic"): hard, ("better", "strided"): hard - 1.0,
           ("noise", "basic"): hard, ("noise", "strided"): hard + noise - noise.mean()}

    def fake(row, metric):
        m = metric.key.rsplit("_", 1)[-1]
        got = per.get((row.name, m))
        return None if got is None else collect({s: units(got[s]) for s in range(3)})

    monkeypatch.setattr(sections, "units", fake)
    spec = dataclasses.replace(spec, contrasts=(("methods/test/bpb_strided", "methods/test/bpb_basic"),))
    lines = [x for x in sections.contrasts(spec, rows) if x.startswith("| ") and "---" not in x][1:]
    assert [x.split(" | ")[0] for x in lines] == ["| better", "| noise"]
    assert lines[0].endswith("| separated |") and "-0.0144" in lines[0]  # 1 nat per 100 bytes
    assert lines[1].endswith("| **not separated** |")
    real = spec_module._build

    def bad(cls, raw, where):
        return real(cls, {**raw, "contrasts": [["methods/test/bpb_strided", "steps"]]}
                    if cls is spec_module.TableSpec else raw, where)

    monkeypatch.setattr(spec_module, "_build", bad)
    with pytest.raises(ValueError, match="contrasts entry"):
        load_table("megabyte_strided")


def test_context_use_reports_the_largest_separated_gain_and_the_total_gain(monkeypatch, tmp_path):
    """context_use's section: a row whose loss falls at c=256 and again at c=4,096 (on every document) uses
    4,096 bytes, a row whose curve only wobbles uses 0, a row that gets worse with context uses 0 and its
    total gain (c=65,536 over c=0) is negative and separated. The distract evaluation (other documents read
    first), and every other evaluation (here one with a model setting changed), of each row is also given as
    its difference from the context evaluation at every c, and a
    ``context_pairs`` entry as row a − row b at every c; an entry naming no row of the table is refused."""
    from experiments.tables import sections
    from experiments.tables import spec as spec_module
    from experiments.tables.report import RowResult

    spec = load_table("context_use")
    spec = dataclasses.replace(spec, rows=spec.rows[:3],  # evaluations of every row: context and distract
                               context_pairs=(("uses", "hurt"), ("uses", "absent")))
    rows = [RowResult(n, n, {}, [0, 1, 2], cells={0: tmp_path}) for n in ("uses", "flat", "hurt")]
    rng = np.random.default_rng(0)
    hard = rng.gamma(2.0, 40.0, size=(3, 64))
    contexts = (0, 256, 1024, 4096, 16384, 65536)
    drop = {"uses": {256: 2.0, 4096: 1.0}, "flat": {}, "hurt": {c: -0.5 for c in contexts[1:]}}

    (tmp_path / "distract.json").write_text(json.dumps({"distractors": 65536, "distract_reset": []}))
    (tmp_path / "distract_keep_ema.json").write_text(json.dumps({"net_overrides": {"memory_capacity": 2048}}))

    def fake(row, name):
        out, level = {}, hard.copy() + (1.0 if name == "distract" else 0.0)  # distracted: 1 nat per 100 bytes worse
        for c in contexts:
            level = level - drop[row.name].get(c, 0.0)
            noise = rng.normal(0, 0.5, size=hard.shape) if row.name == "flat" else 0.0
            out[c] = collect({s: units((level + noise)[s]) for s in range(3)})
        return out

    monkeypatch.setattr(sections, "context_units", fake)
    lines = [x for x in sections.context_use(spec, rows) if x.startswith("| ")]
    table = lines[:next(i for i, x in enumerate(lines) if i and x.startswith("| row"))]  # the first evaluation's
    by_row = {x.split(" | ")[0].removeprefix("| "): x.split(" | ") for x in table if not x.startswith("| ↳")}
    assert by_row["uses"][-2] == "4,096 bytes" and by_row["flat"][-2] == "0 bytes" and by_row["hurt"][-2] == "0 bytes"
    assert by_row["uses"][-1].startswith("+0.043")  # 3 nats per 100 bytes
    assert by_row["hurt"][-1].startswith("-0.036") and by_row["hurt"][-1].endswith("] |")
    versus = [x for x in lines if x.startswith("| ↳ − context")]  # every evaluation after the first, per row
    assert len(versus) == 9 and versus[0].count("+0.014 [+0.014, +0.014]") == 6 == versus[2].count("+0.014 [")
    assert versus[-1].count("+0.000 [+0.000, +0.000]") == 6  # the same curves as the context evaluation's
    text = sections.context_use(spec, rows)
    setting = [x for x in text if "with the model's memory_capacity=2,048, after reading only" in x]
    assert len(setting) == 1 and text[text.index(setting[0]) - 2] == "## Context use (distract_keep_ema)"
    total = by_row["flat"][-1].removesuffix(" |")
    lo, hi = (float(v) for v in total[total.index("[") + 1:-1].split(", "))
    assert lo < 0 < hi
    pairs = [x for x in lines if x.startswith("| uses − ")]
    assert len(pairs) == 4 and all(x.startswith("| uses − hurt | +0.000 [") for x in pairs)  # once per evaluation
    assert pairs[0].endswith("| -0.079 [-0.079, -0.079] |")  # at 65,536: 3 nats better, 2.5 worse, per 100 bytes
    real = spec_module._build

    def bad(cls, raw, where):
        return real(cls, {**raw, "context_pairs": [["fot", "no_such_row"]]} if cls is spec_module.TableSpec else raw,
                    where)

    monkeypatch.setattr(spec_module, "_build", bad)
    with pytest.raises(ValueError, match="context_pairs entry"):
        load_table("context_use")


def test_a_difference_over_fewer_seeds_than_a_row_shows_says_which_seeds_it_is_on(monkeypatch):
    """A row with seeds 0-2 against one with seed 0 only: the paired difference is over seed 0, so its value is not
    the difference of the printed values, and the line says so; rows with the same seeds carry no note."""
    from experiments.tables import sections
    from experiments.tables.report import RowResult

    spec = load_table("long_context_tasks")
    rng = np.random.default_rng(0)
    fake = {"transformer": collect({s: units(rng.gamma(2.0, 40.0, 8)) for s in range(3)}),
            "megalodon": collect({s: units(rng.gamma(2.0, 40.0, 8)) for s in range(3)}),
            "megabyte": collect({0: units(rng.gamma(2.0, 40.0, 8))})}
    rows = [RowResult(name, name, {}, [0, 1, 2]) for name in fake]
    monkeypatch.setattr(sections, "units", lambda row, metric: fake[row.name])
    lines = [x for x in sections.differences(spec, rows) if x.startswith("| ") and "---" not in x and "a − b" not in x]
    by_pair = {tuple(x.split(" | ")[:2]): x for x in lines}
    assert by_pair[("| transformer", "megabyte")].endswith("(on seed [0] only) |")
    assert by_pair[("| megalodon", "megabyte")].endswith("(on seed [0] only) |")
    assert "only" not in by_pair[("| transformer", "megalodon")]
    assert sections.seeds_note(fake["transformer"], collect({s: units([1.0]) for s in (0, 2)})) == \
        " (on seeds [0, 2] only)"
