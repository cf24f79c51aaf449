"""evaluation.metrics' tables are the one source of metric facts: the README's metric table is generated from them,
and directions, interval ranges, eval passes and report columns are derived from them."""
from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path

from evaluation.metrics import METRICS, RUN_FIGURES, metrics_markdown, value_range

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_metrics_table(text: str) -> str:
    """The first Markdown table of the README's "## Metrics" section."""
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def table_difference() -> list[str]:
    """Unified diff from the README's metric table to the generated one; empty when they agree."""
    return list(difflib.unified_diff(readme_metrics_table(README.read_text(encoding="utf-8")).splitlines(),
                                     metrics_markdown().splitlines(), "README.md", "metrics_markdown()", lineterm=""))


def test_readme_metric_table_is_the_generated_one():
    diff = table_difference()
    assert not diff, ("README.md's metric table differs from evaluation.metrics.metrics_markdown(); replace it with "
                      "the output of `python -m evaluation.metrics`:\n" + "\n".join(diff))


def test_a_changed_table_entry_makes_the_readme_check_fail(monkeypatch):
    monkeypatch.setitem(METRICS, "stoi", dataclasses.replace(METRICS["stoi"], description="a changed description"))
    diff = table_difference()
    assert "+| `stoi` | a changed description | 0-1 | higher | - |" in diff
    monkeypatch.undo()
    monkeypatch.setitem(METRICS, "mel_cd", dataclasses.replace(METRICS["mel_cd"], high=30.0))
    assert any(line.startswith("+| `mel_cd` |") and "| 0-30 |" in line for line in table_difference())
    monkeypatch.undo()
    assert table_difference() == []


def test_everything_derived_follows_the_tables():
    from evaluation.compare.data import direction
    from evaluation.compare.report import QUALITY
    from evaluation.conditioning import GAIN_KEY
    from experiments.infer.evaluate import FREE_RUNNING

    assert QUALITY == ("pesq_wb", "stoi", "estoi", "mel_cd", "mel_cd_dtw")
    assert FREE_RUNNING == {"mel_cd_dtw", "length_ratio"}
    assert not set(METRICS) & set(RUN_FIGURES) and GAIN_KEY in RUN_FIGURES
    for name, info in [*METRICS.items(), *RUN_FIGURES.items()]:
        assert info.better in ("higher", "lower", "closer to 1", ""), name
        assert info.low < info.high and not math.isnan(info.low + info.high), name
        assert direction(f"manual-6/{name}") == {"higher": 1, "lower": -1}.get(info.better, 0)
        assert value_range(f"train/{name}") == (info.low, info.high)
    assert direction("train/loss") == -1 and direction("manual-6/pesq_wb") == 1 and direction("length_ratio") == 0
    assert direction("no_such_figure") == 0 and value_range("no_such_figure") is None


def test_a_metric_is_one_table_entry(monkeypatch):
    """score_pair loops over METRICS: a new entry is computed, returned for its pass, ranked and clipped."""
    import numpy as np

    from evaluation import metrics, scoring
    from evaluation.compare.data import direction

    peak = metrics.MetricInfo(description="peak level", low=0.0, high=1.0, better="lower",
                              eval_pass=metrics.ON_FREE_RUNNING, compute=lambda p: float(np.max(np.abs(p.degraded))))
    monkeypatch.setitem(METRICS, "peak", peak)
    rng = np.random.default_rng(0)
    x = 0.1 * rng.standard_normal(8000)
    scores = scoring.score_pair(x, 0.5 * x, 8000, aligned=False)
    assert scores["peak"] == np.max(np.abs(0.5 * x)) and "peak" in metrics.metric_names(aligned=False)
    assert direction("manual-6/peak") == -1 and value_range("peak") == (0.0, 1.0)
    assert "| `peak` | peak level | 0-1 | lower | - |" in metrics_markdown().splitlines()


def test_shared_work_fails_once_for_every_metric_that_needs_it(monkeypatch):
    import numpy as np

    from evaluation import metrics, scoring

    def broken(*args):
        raise RuntimeError("no features")

    monkeypatch.setattr(scoring, "log_mel_features", broken)
    rng = np.random.default_rng(0)
    x = 0.1 * rng.standard_normal(8000)
    scores = scoring.score_pair(x, x + 0.01 * rng.standard_normal(8000), 8000, aligned=False)
    assert scores["mel_cd_dtw"] == metrics.Missing("RuntimeError: no features")
    assert isinstance(scores["length_ratio"], float)
