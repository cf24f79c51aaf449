"""`wg2 compare GRID.toml|EXPERIMENT [--out DIR] [--metric M]`: the command line of evaluation/compare.py.

Given a grid file, the grid is expanded by the grid runner's own reader (experiments/grid_file.py), so the
expected cells (multi-key axes, `exclude`, seeds) are exactly the ones `wg2 grid` runs; the report lists those
with no run as missing. Given an experiment name, the cells come from the grid's parent run.
"""
from __future__ import annotations

from pathlib import Path

from evaluation.compare import compare
from evaluation.compare_data import CompareError
from experiments.config import InputError
from experiments.grid_file import expected_cells, load_grid


def cmd_compare(args) -> int:
    """Exit 0 with a report, 2 on bad input (a bad grid file, an unknown experiment, store or metric)."""
    target = str(args.target)
    expected = None
    if target.endswith(".toml") or Path(target).is_file():
        grid = load_grid(target)  # raises ConfigError (an InputError) naming the file and what is wrong
        name, expected = grid.name, expected_cells(grid)
    else:
        name = target
    out = Path(args.out) if getattr(args, "out", None) else Path("results") / name
    try:
        report = compare(name, out, metric=getattr(args, "metric", None) or "pesq_wb", expected=expected)
    except CompareError as err:
        raise InputError(str(err)) from err
    print(f"wrote {report.report_md} ({len(report.rows)} cells, {len(report.missing)} missing, "
          f"{len(report.failed)} failed, {len(report.running)} running)")
    if report.target is not None:
        print(report.target.statement.replace("**", ""))
    if report.parent_run_id and report.logged_on_parent:
        print(f"logged on parent run {report.parent_run_id} under report/")
    return 0
