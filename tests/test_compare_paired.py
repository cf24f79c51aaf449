"""`wg2 compare` with per-utterance values and kept audio (what `wg2 eval` writes and the grid runner logs as
artifacts of each cell run), against a real MLflow store: paired differences, the unpaired fall-back, intervals
clipped to each metric's range, and listen.html beside report.md."""
from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("mlflow")
import test_compare
from test_compare import _cell, _experiment, _parent
from test_listen import _Refs

from evaluation.compare.build import compare
from evaluation.stats import PAIRED, SEED_T, mean_difference, summarize

store = test_compare.store  # the same real MLflow store fixture (SQLite in a temp dir)

UTTS = [f"harvard-02-{i:02d}" for i in range(1, 9)]
BASE = dict(zip(UTTS, np.linspace(1.6, 4.0, len(UTTS))))  # utterances differ far more than the cells do
GAIN = 0.25  # gaussian beats repeat by this on every utterance, within a little noise
SEEDS = [0, 1]
RATE = 16000


def _pesq(up: str, utt: str, seed: int) -> float:
    noise = 0.02 * np.sin(7 * UTTS.index(utt) + 3 * seed)
    return float(BASE[utt] + (GAIN if up == "gaussian" else 0.0) + noise)


def _stoi(up: str, utt: str, seed: int) -> float:
    return min(1.0, 0.985 + 0.01 * (UTTS.index(utt) % 2) + (0.004 if up == "gaussian" else 0.0))


def _artifacts(tmp, up: str, seed: int, with_csv: bool, with_audio: bool):
    folder = tmp / f"{up}-{seed}"
    folder.mkdir(parents=True)
    if with_csv:
        with open(folder / "per_utterance.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, ["utterance", "schedule", "durations", "pesq_wb", "stoi", "mel_cd_dtw"])
            w.writeheader()
            for u in UTTS:
                pesq = "audio shorter than 0.25 s" if (up, seed, u) == ("repeat", 1, UTTS[0]) else _pesq(up, u, seed)
                w.writerow({"utterance": u, "schedule": "manual-6", "durations": "true", "pesq_wb": pesq,
                            "stoi": _stoi(up, u, seed)})
                w.writerow({"utterance": u, "schedule": "manual-6", "durations": "predicted", "mel_cd_dtw": 6.0})
    if with_audio:
        t = np.arange(int(0.5 * RATE)) / RATE
        for i, u in enumerate(UTTS[:2]):
            for sub, f in (("manual-6", 300), ("manual-6/free", 330), ("reference", 200)):
                path = folder / "audio" / sub / f"{u}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, 0.3 * np.sin(2 * np.pi * (f + 40 * i + (25 if up == "repeat" else 0)) * t), RATE)
    return folder


def _build(store, tmp, name: str, csv_missing_for: tuple | None = None) -> str:
    _, client, _ = store
    exp = _experiment(store, name)
    parent = _parent(client, exp, name, "Gaussian or repeat?", ["model.upsampler"], None)
    for up in ("gaussian", "repeat"):
        for seed in SEEDS:
            values = [_pesq(up, u, seed) for u in UTTS]
            pesq, stoi = summarize(values), summarize([_stoi(up, u, seed) for u in UTTS])
            metrics = {"manual-6/pesq_wb": pesq["mean"], "manual-6/pesq_wb_ci_low": pesq["ci_low"],
                       "manual-6/pesq_wb_ci_high": pesq["ci_high"], "manual-6/pesq_wb_n_missing": 0.0,
                       "manual-6/stoi": stoi["mean"], "manual-6/stoi_ci_low": stoi["ci_low"],
                       "manual-6/stoi_ci_high": stoi["ci_high"] + 0.05,  # as runs logged before clipping
                       "manual-6/rtf": 0.05}
            rid = _cell(client, exp, parent, {"model.upsampler": up}, seed,
                        {"model.upsampler": up, "train.seed": seed, "eval.schedules": ["manual-6"]}, metrics)
            folder = _artifacts(tmp, up, seed, with_csv=(up, seed) != csv_missing_for, with_audio=True)
            client.log_artifacts(rid, str(folder))
    return parent


def test_paired_difference_from_per_utterance_values(store, tmp_path):
    uri, client, _ = store
    parent = _build(store, tmp_path / "runs", "paired")
    report = compare("paired", tmp_path / "out", tracking_uri=uri)
    (effect,) = [e for e in report.effects if e.schedule == "manual-6"]
    assert effect.test == SEED_T and (effect.a, effect.b) == ("gaussian", "repeat") and effect.unit == "seed"
    # each seed's effect is its paired mean over utterances (the missing PESQ drops its pair): both near the gain,
    # though unpaired the same values could not tell the cells apart (the utterances' spread swamps the gain)
    assert effect.per_seed == pytest.approx({"0": GAIN, "1": GAIN}, abs=0.02) and not effect.note
    welch = mean_difference([_pesq("gaussian", u, s) for u in UTTS for s in SEEDS],
                            [_pesq("repeat", u, s) for u in UTTS for s in SEEDS])
    assert welch["ci_low"] < 0 < welch["ci_high"]
    # two seeds: no interval and no p-value, whatever the utterances say
    assert effect.n == 2 and effect.verdict == "too few seeds" and effect.p_value is None and effect.ci_low is None

    md = report.report_md.read_text()
    section = md.split("## Marginal effect of each axis on pesq_wb", 1)[1].split("\n## ", 1)[0]
    assert "**Training axes**" in section and SEED_T in section and "**Unpaired**" not in section
    assert re.search(r"\| `model.upsampler` \| gaussian − repeat \| manual-6 \| \+0\.2\d* \| — \| seed \(2\) \| — "
                     r"\| too few seeds \| \+0\.2", section), section
    # interval ends clipped to the metric's range: STOI never above 1, though a run logged 1.03
    for row in report.rows:
        assert row.stats["manual-6/stoi"].ci_high <= 1.0 and row.stats["manual-6/pesq_wb"].ci_low >= 1.0

    # listen.html beside report.md, linked from it, with every cell's kept audio and the references
    page = report.listen_html
    assert page == report.out_dir / "listen.html" and page.is_file()
    assert "[listen.html](listen.html)" in md
    parser = _Refs()
    parser.feed(page.read_text())
    wavs = [src for tag, src in parser.refs if tag == "audio"]
    assert len(wavs) == 2 * (1 + 2 * 2)  # 2 utterances x (reference + 2 cells x 2 passes)
    for rel in wavs:
        assert sf.read(page.parent / rel)[1] == RATE
    assert {"upsampler=gaussian", "upsampler=repeat"} <= set(re.findall(r'"label": "model\.(upsampler=\w+)"',
                                                                         page.read_text()))
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/listen.html" in logged and "report/listen" in logged


def test_unpaired_fallback_is_said(store, tmp_path):
    uri, _, _ = store
    _build(store, tmp_path / "runs", "half-paired", csv_missing_for=("repeat", 1))
    report = compare("half-paired", tmp_path / "out", tracking_uri=uri)
    (effect,) = [e for e in report.effects if e.schedule == "manual-6"]
    # seed 1 has no per-utterance values on one side: that seed's effect is the difference of its run-level values
    assert effect.test == SEED_T and "per_utterance.csv" in effect.note and len(effect.per_seed) == 2
    assert effect.p_value is None and effect.verdict == "too few seeds"
    md = report.report_md.read_text()
    section = md.split("## Marginal effect of each axis on pesq_wb", 1)[1].split("\n## ", 1)[0]
    assert "no per_utterance.csv" in section


def test_paired_statistics_and_ranges():
    from evaluation.metrics import METRICS, Missing, value_range
    from evaluation.stats import clip_interval, difference_bounds, paired_difference

    assert value_range("manual-6/pesq_wb") == (1.0, 4.64) and value_range("stoi") == (0.0, 1.0)
    assert value_range("mel_cd") == (0.0, float("inf")) and value_range("rtf")[0] == 0.0
    assert value_range("length_ratio") == (0.0, float("inf")) and value_range("no_such_metric") is None
    assert all(value_range(name) is not None for name in METRICS)  # every range in the table parses
    assert clip_interval(-0.2, 1.3, (0.0, 1.0)) == (0.0, 1.0) and clip_interval(None, 2.0, None) == (None, 2.0)
    assert difference_bounds((1.04, 4.64)) == pytest.approx((-3.6, 3.6)) and difference_bounds((0, np.inf)) is None
    a = {(0, "u1"): 0.99, (0, "u2"): 0.97, (1, "u1"): 1.0, (1, "u2"): Missing("silent"), (2, "u9"): 0.5}
    b = {(0, "u1"): 0.90, (0, "u2"): 0.96, (1, "u1"): 0.2, (1, "u2"): 0.9}
    d = paired_difference(a, b, bounds=(0.0, 1.0))
    assert d["n"] == 3 and d["diff"] == pytest.approx((0.09 + 0.01 + 0.8) / 3) and d["test"] == PAIRED
    assert d["ci_low"] >= -1.0 and d["ci_high"] <= 1.0  # clipped to +-(the range's width)
    assert 0 < d["p_wilcoxon"] <= 1
    same = paired_difference({1: 2.0, 2: 3.0}, {1: 2.0, 2: 3.0})
    assert same["diff"] == 0 and same["p_wilcoxon"] == 1.0 and (same["ci_low"], same["ci_high"]) == (0, 0)
    assert paired_difference({1: 2.0}, {1: 1.0})["p_wilcoxon"] is None
