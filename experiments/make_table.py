"""Aggregate a table's cells: ``python -m experiments.make_table <name> [--scale cpu]`` (see
``experiments.tables.report``); user errors in one line."""

from experiments.cli import run_cli
from experiments.tables.report import cli_make

if __name__ == "__main__":
    run_cli(cli_make)
