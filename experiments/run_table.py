"""Run a table's cells: ``python -m experiments.run_table <name> [--scale cpu] [--seeds 0 1 2]`` (see
``experiments.tables.runner``); user errors in one line."""

from experiments.cli import run_cli
from experiments.tables.runner import cli_run

if __name__ == "__main__":
    run_cli(cli_run)
