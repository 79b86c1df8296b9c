from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from experiments.compare import main as compare_main
from experiments.config import CONFIGS
from experiments.tables.cells import cell_dir
from experiments.tables.evals import check_overrides
from experiments.tables.keys import REPO, row_key
from experiments.tables.report import aggregate, make_table
from experiments.tables.runner import run_table
from experiments.tables.spec import load_table
from tests.conftest import compose

TABLES = sorted(p.stem for p in (CONFIGS / "table").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (CONFIGS / "sweep").glob("*.yaml"))


@pytest.mark.parametrize("name", TABLES)
def test_every_table_composes_and_lists_existing_rows(name):
    table = load_table(name)  # raises if a row's experiment file is missing
    assert table.rows and table.metrics
    for scale in ("tiny", "smoke"):
        assert scale in table.scales, f"{name} has no {scale} scale"
    for row in table.rows:
        cfg = compose("train", [f"experiment={row.experiment}", *table.scales["smoke"], *row.overrides])
        with torch.device("meta"):
            instantiate(cfg.model.net)


@pytest.mark.parametrize("name", TABLES)
def test_every_evaluation_of_every_table_composes_at_every_scale(name):
    """What run_table checks before it trains anything: each row's evaluations compose with their overrides."""
    table = load_table(name)
    for scale in {*table.scales, table.default_scale}:
        check_overrides(table, scale)


def test_a_table_replaces_its_cells_stale_longeval_files_itself():
    """longeval keeps a task's result scored with other settings unless told (overwrite=true); a table, which
    reruns a cell's stale evaluation on purpose, tells it."""
    from experiments.tables.evals import entry_config

    ev = next(e for e in load_table("long_context_tasks").evals if e.kind == "longeval")
    assert entry_config(Path("cell"), ev, "longeval.json").overwrite is True
    assert compose("longeval", ["run_dir=cell"]).overwrite is False


def test_an_evaluation_that_cannot_compose_stops_the_table_before_any_training(tmp_path):
    """An override the entry point cannot apply (here: a key the context evaluation's config does not have,
    without Hydra's +) is refused in one line naming the table, row and evaluation, and no cell is started."""
    import dataclasses

    spec = load_table("context_use")
    row = spec.row("megabyte")
    bad = dataclasses.replace(spec.evals[0], name="bad", overrides=(*spec.evals[0].overrides, "net_overrides.x=1"))
    spec = dataclasses.replace(spec, rows=(dataclasses.replace(row, evals=(bad,)),), tune=None, match=None,
                               context_pairs=())
    with pytest.raises(ValueError, match=r"context_use, row megabyte, evaluation bad at scale smoke: .*net_overrides"):
        run_table(spec, scale="smoke", results=str(tmp_path))
    assert not any(tmp_path.rglob("meta.json"))


@pytest.mark.parametrize("name", SWEEPS)
def test_sweeps_compose(name):
    cfg = compose("train", [f"sweep={name}"])
    assert cfg.model.net._target_


def fabricate(results, table, row, seed, value, name="metrics", scale="tiny"):
    spec = load_table(table)
    cell = cell_dir(results, table, scale, row, row_key(spec, spec.row(row), scale), seed)
    cell.mkdir(parents=True, exist_ok=True)
    (cell / f"{name}.json").write_text(json.dumps({"val/bpb": value}))
    (cell / "meta.json").write_text(json.dumps({"finished": "now", "code": {"commit": "abc", "dirty": False}}))
    return cell


def test_a_figure_with_panels_reads_each_cells_curve(tmp_path):
    """long_context_tasks draws accuracy vs length, one panel per task, from each cell's longeval curve."""
    for seed, acc in ((0, 0.5), (1, 1.0)):
        cell = fabricate(tmp_path, "long_context_tasks", "megalodon", seed, 2.0)
        curve = [{"task": t, "length": n, "accuracy": acc} for t in ("passkey", "recall") for n in (1024, 4096)]
        (cell / "longeval.json").write_text(json.dumps({"curve": curve}))
    text = make_table("long_context_tasks", str(tmp_path), "tiny")
    assert "Megalodon (carried state) / passkey: length=1024: 0.750 ± 0.354, length=4096: 0.750 ± 0.354" in text
    assert "Megalodon (carried state) / recall: length=1024: 0.750" in text
    pytest.importorskip("matplotlib")
    assert (tmp_path / "long_context_tasks.tiny.png").stat().st_size > 0


def test_task_accuracies_get_intervals_over_documents_x_seeds_from_the_longeval_units(tmp_path):
    """long_context_tasks' accuracy columns pool the documents answered right over seeds, with a bootstrap
    interval and paired differences between rows, from each cell's ``metric_units``."""
    for row, right in (("megalodon", [1, 1, 0, 1]), ("transformer", [0, 0, 0, 1])):
        for seed in (0, 1):
            cell = fabricate(tmp_path, "long_context_tasks", row, seed, 2.0)
            units = {"kind": "document", "sum": right, "count": [1] * 4, "targets_sha256": "docs"}
            acc = sum(right) / 4
            (cell / "longeval.json").write_text(json.dumps({
                "passkey": {"mean_by_length": {"1024": acc}},
                "curve": [{"task": "passkey", "length": 1024, "accuracy": acc}],
                "metric_units": {"passkey.mean_by_length.1024": units}}))
    text = make_table("long_context_tasks", str(tmp_path), "tiny")
    assert "| 0.75 [" in text and "| 0.25 [" in text
    assert "the fraction of test documents answered right, pooled over seeds" in text
    assert "differences a − b (fraction of documents right;" in text
    assert "| Transformer (sliding window 1K) | Megalodon (carried state) | -0.50 [" in text or \
           "| Megalodon (carried state) | Transformer (sliding window 1K) | +0.50 [" in text


def test_heat_maps_average_each_grid_over_seeds_and_keep_not_applicable(tmp_path):
    """long_context_tasks draws accuracy by length x depth, rows x tasks, from each cell's longeval.json."""
    from experiments.tables.figures import heatmap_grids

    for seed, acc in ((0, 0.25), (1, 0.75)):
        cell = fabricate(tmp_path, "long_context_tasks", "megabyte", seed, 2.0)
        grid = {"1024": {"0.0": acc, "1.0": 1.0}, "65536": {"0.0": None, "1.0": None}}
        evaluation = {"tasks": ["recall", "passkey"], "curve": [],
                      "recall": {"accuracy": grid}, "passkey": {"accuracy": grid}}
        (cell / "longeval.json").write_text(json.dumps(evaluation))
    spec = load_table("long_context_tasks")
    row = {r.name: r for r in aggregate(spec, tmp_path, "tiny")}["megabyte"]
    grids = heatmap_grids(spec, row)
    assert list(grids) == ["recall", "passkey"]  # the cells' order
    xs, ys, vals = grids["passkey"]
    assert xs == ["1024", "65536"] and ys == ["0.0", "1.0"]
    assert vals == [[0.5, None], [1.0, None]]  # lines are depths; n/a stays n/a, not 0
    pytest.importorskip("matplotlib")
    text = make_table("long_context_tasks", str(tmp_path), "tiny")
    assert "![heat maps](long_context_tasks.tiny_heatmaps.png)" in text
    assert (tmp_path / "long_context_tasks.tiny_heatmaps.png").stat().st_size > 0
    for cell in (tmp_path / "cells").rglob("longeval.json"):  # the cells rerun (a changed config): no grid yet
        cell.unlink()
    text = make_table("long_context_tasks", str(tmp_path), "tiny")
    assert "heatmaps.png" not in text and not (tmp_path / "long_context_tasks.tiny_heatmaps.png").exists()


def test_aggregation_mean_std_and_missing_cells(tmp_path):
    table = load_table("megalodon_ablation")
    fabricate(tmp_path, "megalodon_ablation", "megalodon", 0, 2.0)
    fabricate(tmp_path, "megalodon_ablation", "megalodon", 1, 3.0)
    fabricate(tmp_path, "megalodon_ablation", "ema_real", 0, 2.5)
    rows = {r.name: r for r in aggregate(table, tmp_path, "tiny")}
    mean, std, missing = rows["megalodon"].stats("metrics/val/bpb")
    assert mean == 2.5 and math.isclose(std, math.sqrt(0.5)) and len(rows["megalodon"].values["metrics/val/bpb"]) == 2
    assert missing == []
    mean, std, missing = rows["ema_real"].stats("metrics/val/bpb")
    assert mean == 2.5 and std is None and missing == [1]
    assert rows["ema_none"].stats("metrics/val/bpb") is None and rows["ema_none"].seeds == [0, 1]
    text = make_table("megalodon_ablation", str(tmp_path), "tiny")
    assert "2.5000 ± 0.7071" in text
    assert "(missing seeds [1])" in text and "— (missing seeds [0, 1])" in text
    assert "17.23" in text  # the paper's number beside ours
    assert (tmp_path / "megalodon_ablation.tiny.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIGS / "table").glob("*.yaml")))
def test_every_table_runs_at_smoke_scale(tmp_path, name):
    """Every row of every table trains and evaluates at the smoke scale (a few steps, tiny evaluations)."""
    run_table(name, "smoke", [0], str(tmp_path))
    assert "missing" not in make_table(name, str(tmp_path), "smoke")


def test_a_table_runs_end_to_end_at_smoke_scale_and_resumes(tmp_path, monkeypatch):
    from experiments.provenance import machine_info
    from experiments.tables import runner

    cells = run_table("megabyte_strided", "smoke", [0], str(tmp_path))
    meta = json.loads((cells[0] / "meta.json").read_text())
    assert meta["finished"] and (cells[0] / "methods.json").exists()
    assert meta["machines"] == [machine_info()]  # which processor trained it (bf16 numerics differ)
    stamp = (cells[0] / "metrics.json").stat().st_mtime_ns
    run_table("megabyte_strided", "smoke", [0], str(tmp_path))  # a finished cell is skipped
    assert (cells[0] / "metrics.json").stat().st_mtime_ns == stamp
    # a new evaluation of the trained cell under later code: the cell keeps the commit that trained it, and
    # the evaluation's result records the commit and machine that evaluated it
    (cells[0] / "methods.json").unlink()
    later = {"commit": "f" * 40, "dirty": False}
    monkeypatch.setattr(runner, "git_commit", lambda: later)
    run_table("megabyte_strided", "smoke", [0], str(tmp_path))
    assert json.loads((cells[0] / "meta.json").read_text())["code"] == meta["code"] != later
    assert json.loads((cells[0] / "methods.json").read_text())["_eval"]["code"] == later
    assert (cells[0] / "metrics.json").stat().st_mtime_ns == stamp  # not trained again
    text = make_table("megabyte_strided", str(tmp_path), "smoke")
    assert "MEGABYTE (4096, P=8)" in text and "missing" not in text
    assert "## Contrasts within a row" in text and "no per-unit" not in text  # intervals per inference method


def test_the_header_names_the_machines_that_trained_the_cells(tmp_path):
    """bf16 kernels differ between processors (AMX, AVX-512 BF16): the header says which trained the cells
    and how many cells predate the record."""
    amd = {"cpu": "AMD EPYC", "cpus": 2, "bf16": ["avx512_bf16"], "torch": "2.13.0+cpu"}
    intel = {"cpu": "Intel Xeon", "cpus": 2, "bf16": ["amx_bf16", "avx512_bf16"], "torch": "2.13.0+cpu"}
    for seed, machines in enumerate(([amd], [amd, intel], None)):
        cell = fabricate(tmp_path, "megalodon_ablation", "megalodon", seed, 2.0)
        if machines:
            meta = json.loads((cell / "meta.json").read_text())
            (cell / "meta.json").write_text(json.dumps({**meta, "machines": machines}))
    text = make_table("megalodon_ablation", str(tmp_path), "tiny")
    assert ("Trained on AMD EPYC (2 cores, avx512_bf16), torch 2.13.0+cpu: 2 cells; Intel Xeon (2 cores, "
            "amx_bf16, avx512_bf16), torch 2.13.0+cpu: 1 cell; not recorded for 1 older cell.") in text


def test_a_cell_without_its_checkpoint_is_retrained_identically_for_a_new_evaluation(tmp_path):
    """Checkpoints are not committed: a later session that needs one for an evaluation (here the
    strided table reading the cells of megabyte_bpb) trains the cell again from scratch, with the same
    numbers, a clean loss curve and the first run's metrics kept."""
    import csv
    import shutil

    cell = run_table("megabyte_bpb", "smoke", [0], str(tmp_path), rows=["megabyte"])[0]
    first = json.loads((cell / "metrics.json").read_text())
    first_eval = json.loads((cell / "test4096.json").read_text())
    shutil.rmtree(cell / "checkpoints")  # what a fresh clone has
    run_table("megabyte_strided", "smoke", [0], str(tmp_path), rows=["megabyte"])
    assert (cell / "methods.json").exists() and (cell / "checkpoints" / "last.ckpt").exists()
    assert json.loads((cell / "metrics.first.json").read_text()) == first
    # megabyte_bpb's own evaluation ran again on the new weights; the first weights' is kept beside it
    assert json.loads((cell / "test4096.first.json").read_text()) == first_eval
    assert (cell / "test4096.json").stat().st_mtime_ns > (cell / "metrics.first.json").stat().st_mtime_ns
    meta = json.loads((cell / "meta.json").read_text())
    assert meta["finished"] and meta["retrained"]["val_bpb_change"] == 0.0  # deterministic training
    assert json.loads((cell / "metrics.json").read_text())["val/bpb"] == first["val/bpb"]
    with open(cell / "logs" / "metrics.csv") as fh:
        steps = [r["step"] for r in csv.DictReader(fh) if r.get("train/loss")]
    assert len(steps) == len(set(steps)) == 3  # one curve, not the first run's rows and the second's
    assert "Retrained for a checkpoint that was not kept" in make_table("megabyte_bpb", str(tmp_path), "smoke")
    assert "MEGABYTE" in make_table("megabyte_bpb", str(tmp_path), "smoke").split("Retrained for")[1].split("\n")[0]
    second = json.loads((cell / "metrics.json").read_text())
    shutil.rmtree(cell / "checkpoints")  # retrained again, in a later session: the first run stays first
    (cell / "methods.json").unlink()
    run_table("megabyte_strided", "smoke", [0], str(tmp_path), rows=["megabyte"])
    assert json.loads((cell / "metrics.first.json").read_text()) == first
    assert json.loads((cell / "metrics.run2.json").read_text()) == second
    assert json.loads((cell / "test4096.first.json").read_text()) == first_eval
    assert (cell / "test4096.run2.json").exists() and not list(cell.glob("*.run2.first.json"))
    meta = json.loads((cell / "meta.json").read_text())
    assert meta["finished"] and len(meta["earlier_retrains"]) == 1 and meta["retrained"]["val_bpb_change"] == 0.0
    # a retrain stopped part way and resumed by a later process still records its change, against the run
    # set aside last (run2 here, made 0.5 worse so that reading another one would show)
    (cell / "metrics.run2.json").write_text(json.dumps({**second, "val/bpb": second["val/bpb"] + 0.5}))
    meta.pop("finished"), meta["retrained"].pop("val_bpb_change")
    (cell / "meta.json").write_text(json.dumps(meta))
    (cell / "metrics.json").unlink()  # the checkpoint stays: training resumes from it
    run_table("megabyte_strided", "smoke", [0], str(tmp_path), rows=["megabyte"])
    meta = json.loads((cell / "meta.json").read_text())
    assert meta["finished"] and meta["retrained"]["val_bpb_change"] == pytest.approx(-0.5)


def test_an_older_finished_cell_without_a_status_is_retrained_for_its_own_new_evaluation(tmp_path):
    """Cells from before metrics.json recorded a status count as finished by their meta.json: a new
    evaluation of the table's own (here: its result file deleted) retrains one whose checkpoint is gone,
    instead of failing on the missing checkpoint."""
    import shutil

    cell = run_table("megabyte_bpb", "smoke", [0], str(tmp_path), rows=["megabyte"])[0]
    metrics = json.loads((cell / "metrics.json").read_text())
    metrics.pop("status")
    (cell / "metrics.json").write_text(json.dumps(metrics))
    shutil.rmtree(cell / "checkpoints")
    (cell / "test4096.json").unlink()
    run_table("megabyte_bpb", "smoke", [0], str(tmp_path), rows=["megabyte"])
    assert (cell / "test4096.json").exists() and (cell / "checkpoints" / "last.ckpt").exists()
    assert json.loads((cell / "meta.json").read_text())["retrained"]["val_bpb_change"] == 0.0


def test_a_fine_tune_whose_parent_lost_its_checkpoint_retrains_the_parent_first(tmp_path):
    """A fine-tuned row started in a later session than its parent (a new seed, an interrupted run) finds
    the parent finished but its checkpoint gone (not committed): the parent is trained again, same key and
    numbers, and the fine-tune starts from it instead of failing on a missing checkpoint."""
    import shutil

    parent = run_table("fot_dictionary", "smoke", [0], str(tmp_path), rows=["fot_stage1"])[0]
    first = json.loads((parent / "metrics.json").read_text())
    shutil.rmtree(parent / "checkpoints")
    cells = run_table("fot_dictionary", "smoke", [0], str(tmp_path), rows=["fot"])
    child = next(c for c in cells if c.parent.parent.name == "fot")
    assert json.loads((child / "meta.json").read_text())["finished"]
    assert (parent / "checkpoints" / "last.ckpt").exists()
    assert json.loads((parent / "metrics.first.json").read_text()) == first
    assert json.loads((parent / "meta.json").read_text())["retrained"]["val_bpb_change"] == 0.0


def test_compare_at_smoke_scale_writes_its_files(tmp_path):
    md = compare_main(["--quick", "--archs", "transformer", "megalodon", "--out", str(tmp_path)])
    for f in ("compare.smoke.md", "compare.smoke.csv"):
        assert (tmp_path / f).exists()
    assert md == (tmp_path / "compare.smoke.md").read_text()
    assert "| Transformer (reference) |" in md and "| Megalodon |" in md and "streaming" in md
    # sized to the reference (flops ratio within 3%), tuned (a grid per row), intervals on both bpb metrics
    ratio = float(re.search(r"\| Megalodon \| [\d,]+ \| [\d,]+ \| ([\d.]+) \|", md).group(1))
    assert abs(ratio - 1) <= 0.03
    assert md.count("**0.") >= 2 and "## Learning rates" in md
    assert re.search(r"\| Transformer \(reference\) \| Megalodon \| [+-][\d.]+ \[[+-][\d.]+, [+-][\d.]+\] \|", md)


def test_compare_budget_in_flops_matches_models_by_compute(tmp_path):
    from experiments.compare import steps_for
    from experiments.config import compose as compose_cfg

    a = compose_cfg("train", ["model=transformer_tiny"])
    b = compose_cfg("train", ["model=megalodon_tiny"])
    sa, fa = steps_for(a, "flops", 1e12)
    sb, fb = steps_for(b, "flops", 1e12)
    assert abs(sa * fa - sb * fb) / (sa * fa) < 0.05  # equal compute, different token counts
    with pytest.raises(ValueError, match="use tokens:<N> or flops:<N>"):
        compare_main(["--budget", "steps:10"])


# ---------------------------------------------------------------------------------------------- the runner's keys
def test_a_changed_scale_or_config_never_reuses_a_cell():
    spec = load_table("megalodon_ablation")
    row = spec.row("megalodon")
    keys = {row_key(spec, row, s) for s in ("smoke", "tiny", "cpu")}
    assert len(keys) == 3  # every scale keys its own cells
    assert row_key(spec, row, "tiny") == row_key(spec, row, "tiny")  # and a key is a pure function
    assert row_key(spec, row, "tiny", ["optim.lr=1e-3"]) != row_key(spec, row, "tiny")
    assert row_key(spec, row, "tiny", ["model.net.chunk_size=32"]) != row_key(spec, row, "tiny")
    assert row_key(spec, row, "tiny", ["trainer.enable_progress_bar=true"]) == row_key(spec, row, "tiny")
    a, b = cell_dir("r", spec.name, "smoke", "megalodon", "k", 0), cell_dir("r", spec.name, "tiny", "megalodon", "k", 0)
    assert a != b


def test_a_fine_tuned_row_is_keyed_by_its_parent_too():
    spec = load_table("fot_dictionary")
    child = spec.row("fot")
    assert child.init_from_row == "fot_stage1"
    base = row_key(spec, child, "tiny")
    import dataclasses

    changed = dataclasses.replace(spec, rows=tuple(
        dataclasses.replace(r, overrides=("optim.lr=1e-4",)) if r.name == "fot_stage1" else r for r in spec.rows))
    assert row_key(changed, changed.row("fot"), "tiny") != base


def test_every_seed_found_or_requested_is_reported(tmp_path):
    fabricate(tmp_path, "megalodon_ablation", "megalodon", 0, 2.0)
    fabricate(tmp_path, "megalodon_ablation", "megalodon", 5, 3.0)  # run with --seeds 5
    spec = load_table("megalodon_ablation")
    row = {r.name: r for r in aggregate(spec, tmp_path, "tiny")}["megalodon"]
    assert row.seeds == [0, 1, 5] and sorted(row.values["metrics/val/bpb"]) == [0, 5]
    text = make_table("megalodon_ablation", str(tmp_path), "tiny")
    assert "seeds [0, 1, 5]" in text and "(missing seeds [1])" in text


def test_cells_of_another_scale_or_config_are_not_aggregated(tmp_path):
    fabricate(tmp_path, "megalodon_ablation", "megalodon", 0, 2.0, scale="smoke")
    with pytest.raises(ValueError, match="no finished cell at scale 'tiny'"):
        make_table("megalodon_ablation", str(tmp_path), "tiny")
    assert not (tmp_path / "megalodon_ablation.tiny.md").exists()  # nothing written over a published table


def test_a_finding_that_contradicts_its_numbers_is_flagged(tmp_path, capsys):
    fabricate(tmp_path, "megalodon_ablation", "megalodon", 0, 2.0, scale="cpu")
    fabricate(tmp_path, "megalodon_ablation", "megalodon", 1, 2.1, scale="cpu")
    fabricate(tmp_path, "megalodon_ablation", "ema_real", 0, 2.5, scale="cpu")
    fabricate(tmp_path, "megalodon_ablation", "ema_real", 1, 2.6, scale="cpu")
    fabricate(tmp_path, "megalodon_ablation", "ema_none", 0, 2.04, scale="cpu")
    fabricate(tmp_path, "megalodon_ablation", "ema_none", 1, 2.1, scale="cpu")
    (tmp_path / "findings").mkdir()
    (tmp_path / "findings" / "megalodon_ablation.md").write_text(
        "CEMA helps.\n<!-- claim: megalodon < ema_real on metrics/val/bpb -->\n"
        "<!-- claim: ema_real < megalodon on metrics/val/bpb -->\n"
        "<!-- claim: megalodon < ema_none on metrics/val/bpb -->\n")
    text = make_table("megalodon_ablation", str(tmp_path), "cpu")
    assert "CEMA helps." in text
    assert "claim 'ema_real < megalodon on metrics/val/bpb' DISAGREES" in text
    assert "claim 'megalodon < ema_none on metrics/val/bpb' holds on the means but" in text
    assert text.count("⚠ check") == 2
    assert "DISAGREES" in capsys.readouterr().out


def test_an_interrupted_cell_resumes_from_its_checkpoint(tmp_path):
    from experiments.training.run import train

    spec = load_table("megalodon_ablation")
    key = row_key(spec, spec.row("megalodon"), "smoke")
    cell = cell_dir(tmp_path, "megalodon_ablation", "smoke", "megalodon", key, 0)
    train(compose("train", ["experiment=megalodon_ablation/megalodon", "debug=smoke", "seed=0", f"run_dir='{cell}'",
                            "trainer.max_steps=2", "optim.max_steps=3"]))  # killed after 2 of 3 steps
    (cell / "metrics.json").unlink()
    run_table("megalodon_ablation", "smoke", [0], str(tmp_path), rows=["megalodon"])
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["steps"] == 3 and json.loads((cell / "meta.json").read_text())["finished"]


def test_smoke_runs_never_write_into_the_committed_results():
    from experiments.tables.cells import default_results

    assert default_results("smoke") == "runs/tables" and default_results("cpu") == "results"


@pytest.mark.parametrize("name", TABLES)
def test_every_table_has_a_cpu_scale_that_composes(name):
    spec = load_table(name)
    assert "cpu" in spec.scales and spec.default_scale == "cpu"
    for row in spec.rows:
        src = row if not spec.cells_from else load_table(spec.cells_from).row(row.name)
        cfg = compose("train", [f"experiment={src.experiment}", *spec.scales["cpu"], *src.overrides,
                                *src.scale_overrides.get("cpu", [])])
        with torch.device("meta"):
            instantiate(cfg.model.net)


def test_compare_quick_writes_the_report_and_learning_curves_into_its_run_folder(tmp_path):
    md = compare_main(["--quick", "--archs", "transformer_tiny", "--out", str(tmp_path / "cmp")])
    assert "Learning curves" in md and "s/update" in md and "code commit" in md
    pytest.importorskip("matplotlib")
    assert (tmp_path / "cmp" / "compare.smoke_curves.png").stat().st_size > 0


CELLS = REPO / "results" / "cells"


@pytest.mark.parametrize("table", sorted(p.name for p in CELLS.iterdir() if p.is_dir()) if CELLS.is_dir() else [])
def test_committed_cells_keep_their_keys(table):
    """Every cell committed under results/cells is found by the current code (its folder's key is the
    key of its row's current config): a code change that only adds options at neutral values never
    orphans finished work, and a real config change shows up here (delete the stale cells). A tuning
    cell is keyed at the rate it was trained at, which must be one of the grid's or its extensions'.
    One test per table, so that parallel workers share the compositions."""
    from experiments.tables.keys import TuningPending, cell_lr, tuned_rows, tuning_name, tuning_rates

    spec = load_table(table)
    keys: dict[tuple, str | None] = {}  # composing is slow: one key per (scale, row, rate)
    checked = 0
    for meta in sorted((CELLS / table).glob("*/*/*/seed=*/meta.json")):
        cell = meta.parent
        scale, row, key = cell.parts[-4:-1]
        r = spec.row(row.removesuffix(".tune"))
        expected = set()
        if r.name == row:
            if (scale, row, None) not in keys:
                try:
                    keys[scale, row, None] = row_key(spec, r, scale)
                except TuningPending:  # tuning in progress: the row holds only its finished tuning cells
                    keys[scale, row, None] = None
            expected.add(keys[scale, row, None])
        if r.name in tuned_rows(spec) and row == tuning_name(spec, r):
            lr, rates = cell_lr(cell), tuning_rates(spec)
            assert lr in rates, f"{cell}: trained at lr={lr}, not a rate of the tuning grid {rates}"
            if (scale, row, lr) not in keys:
                keys[scale, row, lr] = row_key(spec, r, scale, lr=lr)
            expected.add(keys[scale, row, lr])
        assert key in expected, f"{cell}: its row's config changed; rerun or delete it"
        checked += 1
    assert checked, f"results/cells/{table} holds no finished cell"


def test_only_finished_cells_are_committed():
    """A cell committed while it trains (a `git add` during a table run) would publish half a run: every
    tracked cell's meta.json says finished and its metrics.json holds no pre-empted status."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "results/cells"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode:
        pytest.skip("not a git checkout")
    cells = {REPO / Path(f).parent for f in tracked.stdout.splitlines() if Path(f).name == "meta.json"
             and Path(f).parent.name.startswith("seed=")}
    for cell in sorted(cells):
        assert json.loads((cell / "meta.json").read_text()).get("finished"), f"{cell} is committed unfinished"
        status = json.loads((cell / "metrics.json").read_text()).get("status", "finished")
        assert status == "finished", f"{cell} is committed with training status {status!r}"


def test_dropping_a_neutral_key_prunes_the_group_it_leaves_empty():
    from experiments.tables.canonical import drop

    tree = {"parallel": {"sequence": 1}, "model": {"net": {"a": 1, "b": 2}}}
    drop(tree, "parallel.sequence")
    drop(tree, "model.net.a")
    assert tree == {"model": {"net": {"b": 2}}}


def test_a_claim_is_checked_on_paired_seeds():
    """Rows sharing seeds see the same data and test bytes: a gap smaller than the seed-to-seed spread
    but of the same sign on every seed holds; one that flips on a seed is flagged."""
    from experiments.tables.report import aggregate, check_claims

    spec = load_table("megalodon_ablation")
    rows = {r.name: r for r in aggregate(spec, "/nonexistent", "cpu")}
    rows["megalodon"].values["metrics/val/bpb"] = {0: 2.0, 1: 2.3, 2: 2.6}
    rows["ema_real"].values["metrics/val/bpb"] = {0: 2.05, 1: 2.32, 2: 2.61}
    rows["ema_none"].values["metrics/val/bpb"] = {0: 2.05, 1: 2.28, 2: 2.61}
    text = ("<!-- claim: megalodon < ema_real on metrics/val/bpb -->\n"
            "<!-- claim: megalodon < ema_none on metrics/val/bpb -->\n")
    warnings = check_claims(text, list(rows.values()), spec)
    assert len(warnings) == 1 and "megalodon < ema_none" in warnings[0] and "on 2 of 3 seeds only" in warnings[0]


def test_the_recorded_commit_is_dirty_for_changed_code_not_for_changed_results(tmp_path, monkeypatch):
    import subprocess

    import experiments.provenance as config

    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    (tmp_path / "configs").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "results" / "table.md").write_text("old\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(config, "CONFIGS", tmp_path / "configs")
    assert config.git_commit()["dirty"] is False
    (tmp_path / "results" / "table.md").write_text("new numbers\n")  # the table runner writes here
    assert config.git_commit()["dirty"] is False
    (tmp_path / "code.py").write_text("a = 2\n")
    code = config.git_commit()
    assert code["dirty"] is True and len(code["commit"]) == 40


def test_a_row_that_skips_an_eval_shows_its_metrics_as_not_applicable(tmp_path):
    """fot_dictionary's stage-1 rows train but are never evaluated: their kNN columns read n/a, not missing;
    the evaluated row's missing cells still read missing."""
    fabricate(tmp_path, "fot_dictionary", "fot_stage1", 0, 2.0)
    rows = {r.name: r for r in aggregate(load_table("fot_dictionary"), tmp_path, "tiny")}
    assert "fot/accuracy_at.61440.exact" in rows["fot_stage1"].not_applicable
    assert "metrics/val/acc" not in rows["fot_stage1"].not_applicable
    assert "fot/accuracy_at.61440.exact" not in rows["fot"].not_applicable
    text = make_table("fot_dictionary", str(tmp_path), "tiny")
    stage1 = next(line for line in text.splitlines() if line.startswith("| FoT stage 1"))
    assert stage1.count("n/a") == 5 and "missing" not in stage1.split("|")[1:6][0]


def test_an_interrupted_retrain_is_not_finished(tmp_path):
    """A committed cell retrained for a new evaluation and pre-empted half-way keeps its old meta.json:
    its metrics say pre-empted, so it is neither done nor evaluated on the half-trained checkpoint."""
    from experiments.tables.cells import cell_finished, interrupted

    cell = fabricate(tmp_path, "megalodon_ablation", "megalodon", 0, 2.0)
    assert cell_finished(cell, ()) and not interrupted(cell)
    (cell / "metrics.json").write_text(json.dumps({"status": "preempted", "steps": 620}))
    assert interrupted(cell) and not cell_finished(cell, ())


def test_an_evaluation_run_with_other_settings_is_never_shown_as_current(tmp_path):
    """A table whose evaluation settings changed reads none of the old evaluation's numbers (they are
    listed as to be rerun), while training metrics of the same cells stay."""
    import dataclasses

    from experiments.tables.cells import eval_key

    spec = load_table("megabyte_bpb")
    cell = fabricate(tmp_path, "megabyte_bpb", "megabyte", 0, 2.5)
    ev = spec.evals_for(spec.row("megabyte"), "tiny")[0]
    (cell / f"{ev.name}.json").write_text(json.dumps({"test/bpb": 2.1, "_eval_key": eval_key(ev)}))
    current = aggregate(spec, tmp_path, "tiny")[0]
    assert current.values["test4096/test/bpb"] == {0: 2.1} and not current.stale[0]
    (cell / f"{ev.name}.json").write_text(json.dumps({"test/bpb": 2.1, "_eval_key": "0ther5etting"}))
    stale = aggregate(spec, tmp_path, "tiny")[0]
    assert "test4096/test/bpb" not in stale.values and stale.stale[0] == {ev.name}
    assert stale.values["metrics/val/bpb"] == {0: 2.5}
    assert "left out until rerun" in make_table(dataclasses.replace(spec), str(tmp_path), "tiny")


def test_an_interval_over_some_seeds_is_never_shown_as_the_rows_value(tmp_path):
    """A row whose cells carry per-unit losses for some seeds only (an older cell retrained with a newer
    evaluation) shows the mean over all its seeds and says why there is no interval, instead of an interval
    over the seeds that have units in place of the mean."""
    units = {"kind": "document", "nll": [100.0, 120.0], "bytes": [100, 100], "targets_sha256": "x"}
    for seed, value in ((0, 1.5), (1, 2.5)):
        cell = fabricate(tmp_path, "fot_backbones", "megalodon", seed, 2.0)
        stream = {"test/stream_bpb": value, **({"units": units} if seed == 0 else {})}
        (cell / "stream.json").write_text(json.dumps(stream))
    text = make_table("fot_backbones", str(tmp_path), "tiny")
    assert "2.0000 ± 0.7071 (per-unit losses for seeds [0] of [0, 1] only: no interval)" in text
