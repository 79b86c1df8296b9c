"""lm-evaluation-harness tasks on a longlab run: ``python -m experiments.harness --run_dir <dir> --tasks <t> ...``.

The work is ``experiments.evaluation.harness.run``; this is its command line (user errors in one line).
"""

from __future__ import annotations

import argparse

from experiments.cli import run_cli


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m experiments.harness")
    ap.add_argument("--run_dir", required=True, help="a longlab run (the folder experiments.train wrote)")
    ap.add_argument("--tasks", nargs="+", required=True, help="lm_eval task names")
    ap.add_argument("--include_path", help="a folder of your own task YAMLs (local data, no download)")
    ap.add_argument("--limit", type=int, help="documents per task (default: all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="harness.json", help="written inside run_dir")
    a = ap.parse_args(argv)
    from experiments.evaluation.harness import run

    return run(a.run_dir, a.tasks, a.include_path, a.limit, a.device, a.out)


if __name__ == "__main__":
    run_cli(main)
