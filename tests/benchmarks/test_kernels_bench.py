import pytest

from benchmarks import kernels


def test_the_window_table_times_the_banded_path_against_the_masked_one():
    (row,) = kernels.window_rows([2 * kernels.BAND + 16], B=1, H=1, d=8)
    assert row["S"] == 2 * row["W"] - 1
    assert row["err"] < 1e-5  # the banded path is the same attention
    assert row["band_cpu_ms"] > 0 and row["full_cpu_ms"] > 0
    assert row["ratio"] == pytest.approx(row["full_cpu_ms"] / row["band_cpu_ms"])
