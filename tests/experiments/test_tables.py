from __future__ import annotations

import json
import math

import pytest
import torch
from hydra.utils import instantiate

from experiments.compare import main as compare_main
from experiments.config import CONFIGS
from experiments.table_report import aggregate, make_table
from experiments.table_spec import load_table
from experiments.tables import cell_dir, row_key, run_table
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


def test_a_table_runs_end_to_end_at_smoke_scale_and_resumes(tmp_path):
    cells = run_table("megabyte_strided", "smoke", [0], str(tmp_path))
    assert json.loads((cells[0] / "meta.json").read_text())["finished"] and (cells[0] / "methods.json").exists()
    stamp = (cells[0] / "metrics.json").stat().st_mtime_ns
    run_table("megabyte_strided", "smoke", [0], str(tmp_path))  # a finished cell is skipped
    assert (cells[0] / "metrics.json").stat().st_mtime_ns == stamp
    text = make_table("megabyte_strided", str(tmp_path), "smoke")
    assert "MEGABYTE (4096, P=8)" in text and "missing" not in text


def test_compare_at_smoke_scale_writes_its_files(tmp_path):
    rows = compare_main(["--archs", "transformer_tiny", "megalodon_tiny", "--budget", "tokens:512", "--out",
                         str(tmp_path), "--set", "debug=smoke", "--stream-docs", "1", "--stream-bytes", "300"])
    assert [r["arch"] for r in rows] == ["transformer_tiny", "megalodon_tiny"]
    for f in ("compare.md", "compare.csv"):
        assert (tmp_path / f).exists()
    md = (tmp_path / "compare.md").read_text()
    assert "| transformer_tiny |" in md and "streaming" in md


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
