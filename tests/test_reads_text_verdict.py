"""The report's verdict on whether a cell reads its text: per seed's model, not on the across-seed interval."""
from __future__ import annotations

from evaluation.compare.data import CellRow, Stat
from evaluation.compare.report import cell_reads_text
from evaluation.conditioning import reads_text
from evaluation.metrics import PHONEME_GAIN_KEY


def row(gains: list[tuple[float | None, float | None]], across: Stat) -> CellRow:
    return CellRow(group="g", label="cell", assignment={}, seeds=list(range(len(gains))),
                   run_ids=[str(i) for i in range(len(gains))], params={}, stats={PHONEME_GAIN_KEY: across},
                   run_gains=[{"mean": m, "ci_low": low} for m, low in gains])


def test_two_seeds_that_each_read_their_text_make_a_cell_that_does():
    # two models at 1.12 and 1.16, each clearly above 1 on its held-out utterances; the 2-seed t-interval of
    # their mean (df = 1) reaches below 1
    across = Stat(1.14, 0.943, 1.34, n=2, interval="seeds")
    cell = row([(1.12, 1.09), (1.16, 1.12)], across)
    assert cell_reads_text(cell) is True
    # the rule this replaces, the across-seed interval, calls the same cell silent: it is the wrong question
    assert reads_text({"mean": across.mean, "ci_low": across.ci_low}) is False


def test_one_seed_that_ignores_its_text_makes_the_cell_silent():
    cell = row([(1.12, 1.09), (1.01, 0.99)], Stat(1.065, 1.0, 1.13, n=2, interval="seeds"))
    assert cell_reads_text(cell) is False


def test_runs_without_a_gain_fall_back_to_the_cell_statistic_or_none():
    assert cell_reads_text(row([(None, None)], Stat(None))) is None
    assert cell_reads_text(row([], Stat(1.06, 1.02, 1.10, n=1, interval="utterances"))) is True
    assert cell_reads_text(row([], Stat(1.06, 0.98, 1.10, n=1, interval="utterances"))) is False
