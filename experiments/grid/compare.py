"""`wg2 compare GRID.toml|EXPERIMENT [--out DIR] [--metric M] [--json]`: the command line of
evaluation/compare/build.py.

Given a grid file, the grid is expanded by the grid runner's own reader (experiments/grid/file.py), so the
expected cells (multi-key axes, `exclude`, seeds) are exactly the ones `wg2 grid` runs; the report lists those
with no run as missing. Given an experiment name, the cells come from the grid's parent run.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from evaluation.compare.build import compare
from evaluation.compare.data import CompareError
from evaluation.metrics import DEFAULT_METRIC
from experiments.config.run import InputError
from experiments.grid.file import MAX_CELLS, expected_cells, load_grid, plain_name
from experiments.train.runtime import check_writable


def cmd_compare(args) -> int:
    """Exit 0 with a report, 2 on bad input (a bad grid file, an unknown experiment, store or metric)."""
    target = str(args.target)
    expected = None
    if target.endswith(".toml") or Path(target).is_file():
        # raises ConfigError (an InputError) naming the file and what is wrong
        grid = load_grid(target, max_cells=getattr(args, "max_cells", MAX_CELLS))
        name, expected = grid.name, expected_cells(grid)
    else:
        name = target
    if getattr(args, "out", None):
        out = Path(args.out).expanduser()
    elif plain_name(name):
        out = Path("results") / name
    else:
        raise InputError(f"experiment {name!r} is not a plain name, so results/<name> would lie elsewhere; "
                         "give the report folder with --out")
    check_writable(out, "report folder")
    try:
        report = compare(name, out, metric=getattr(args, "metric", None) or DEFAULT_METRIC, expected=expected,
                         force=bool(getattr(args, "force", False)))
    except CompareError as err:
        raise InputError(str(err)) from err
    log = logging.getLogger(__name__)
    log.info("wrote %s (%d cells, %d missing, %d failed, %d running)", report.report_md, len(report.rows),
             len(report.missing), len(report.failed), len(report.running))
    if report.target is not None:
        log.info("%s", report.target.statement.replace("**", ""))
    if report.parent_run_id and report.logged_on_parent:
        log.info("logged on parent run %s under report/", report.parent_run_id)
    if getattr(args, "json", False):
        print(json.dumps(report_dict(report), indent=1, default=str))
    return 0


def report_dict(report) -> dict:
    """`wg2 compare --json`: the report's content (cells with their statistics, missing, failed and running
    cells, axis effects, the target statement) and the files written, for scripts."""
    out = json.loads(json.dumps(dataclasses.asdict(report), default=str))
    out["effects"] = [e.as_json() for e in report.effects]  # {axis, values, schedule, metric, unit, n, ...}
    return out
