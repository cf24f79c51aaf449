"""`wg2 eval` on a tiny trained checkpoint: every metric accounted for, files written, speed measured."""
from __future__ import annotations

import csv
import json

from experiments.cli import main
from experiments.infer.evaluate import FREE_RUNNING, pick_utterances


def test_eval_scores_every_utterance_once_per_metric_and_writes_its_files(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(tiny_checkpoint), "--schedules", "manual-6,linear-50", "--limit", "3", "--out", str(out),
                 "--device", "cpu", "--workers", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["utterances"]) == 3
    for label in ("manual-6", "linear-50"):
        assert summary["speed"][label]["rtf"] > 0 and summary["speed"][label]["steps"] in (6, 50)
        metrics = summary["metrics"][label]
        for name in ("pesq_wb", "pesq_nb", "stoi", "estoi", "mel_cd", "log_mel_distance", "f0_rmse_cents",
                     "vuv_error", "mel_cd_dtw", "length_ratio", "duration_error_frames"):
            s = metrics[name]
            assert s["n"] + s["n_missing"] == 3, f"{label}/{name}: each utterance counted once ({s})"
    with open(out / "per_utterance.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 3  # schedules x (true, predicted durations) x utterances
    for row in rows:
        free = row["durations"] == "predicted"
        assert all(bool(row.get(m)) == free for m in FREE_RUNNING), "free-running metrics only on the free pass"
    assert (out / "spectrograms_manual-6.png").stat().st_size > 1000
    assert (out / "alignment_manual-6.png").exists()
    assert (out / "training_curves.png").stat().st_size > 1000  # the checkpoint's loss and gain against the step
    for label in ("manual-6", "linear-50"):  # eval.audio_artifacts = 1: one utterance, both passes
        assert len(list((out / "audio" / label).glob("*.wav"))) == 1
        assert len(list((out / "audio" / label / "free").glob("*.wav"))) == 1
    (ref,) = (out / "audio" / "reference").glob("*.wav")
    assert ref.name == f"{summary['utterances'][0]}.wav" and (out / "audio" / "manual-6" / ref.name).is_file()
    assert "RTF" in capsys.readouterr().out


def test_eval_rejects_unknown_schedule_before_work(tiny_checkpoint, tmp_path, capsys):
    assert main(["eval", str(tiny_checkpoint), "--schedules", "nope-3", "--out", str(tmp_path / "e")]) == 2
    assert "nope-3" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_utterance_subset_is_fixed_by_seed():
    class U:
        def __init__(self, i):
            self.id = f"u{i:02d}"

    utts = [U(i) for i in range(20)]
    a = [u.id for u in pick_utterances(utts, 5, seed=0)]
    assert a == [u.id for u in pick_utterances(list(reversed(utts)), 5, seed=0)]
    assert a != [u.id for u in pick_utterances(utts, 5, seed=1)]
