"""Runs logged before `mcd`/`mcd_dtw` were renamed `mel_cd`/`mel_cd_dtw` (what they measure is a distance on an
80-band log-mel DCT, not SPTK-mcep MCD) still read, under the new names, from a real MLflow SQLite store."""
from __future__ import annotations

import json

import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric  # noqa: E402

from evaluation.compare.data import current_metric_name  # noqa: E402
from evaluation.compare.mlflow import read_grid  # noqa: E402
from evaluation.metrics import METRICS  # noqa: E402


def test_old_names_map_to_new_ones():
    assert "mcd" not in METRICS and "mcd_dtw" not in METRICS
    assert {"mel_cd", "mel_cd_dtw"} <= set(METRICS)
    assert current_metric_name("manual-6/mcd") == "manual-6/mel_cd"
    assert current_metric_name("manual-6/mcd_dtw") == "manual-6/mel_cd_dtw"
    assert current_metric_name("manual-6/mcd_dtw_n_missing") == "manual-6/mel_cd_dtw_n_missing"
    assert current_metric_name("recon/mcd_ci_low") == "recon/mel_cd_ci_low"
    assert current_metric_name("manual-6/pesq_wb") == "manual-6/pesq_wb"
    assert current_metric_name("manual-6/mcdx") == "manual-6/mcdx"


def test_compare_reads_an_old_named_metric_as_the_new_name(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("old-names", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={"wg2.kind": "grid", "wg2.axes": json.dumps(["model.upsampler"])}).info.run_id
    for up, mcd in (("gaussian", 6.0), ("repeat", 5.0)):
        assignment = {"model.upsampler": up}
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "wg2.kind": "cell", "wg2.seed": "0",
                                           "wg2.cell_hash": up, "wg2.group": up,
                                           "wg2.assignment": json.dumps(assignment)})
        old = {"manual-6/pesq_wb": 2.0, "manual-6/mcd": mcd, "manual-6/mcd_ci_low": mcd - 0.2,
               "manual-6/mcd_ci_high": mcd + 0.2, "manual-6/mcd_dtw": mcd + 0.5, "manual-6/mcd_dtw_n_missing": 1.0}
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in old.items()])
        client.set_terminated(run.info.run_id, "FINISHED")

    grid = read_grid(client, "old-names", metric="mcd")  # the old name on the command line works too
    assert grid.metric == "mel_cd"
    rows = {row.label: row for row in grid.rows}
    assert len(rows) == 2
    for row in rows.values():
        assert not any("/mcd" in key for key in row.stats)
    means = sorted(row.mean("manual-6/mel_cd") for row in rows.values())
    assert means == pytest.approx([5.0, 6.0])
    dtw = sorted(row.mean("manual-6/mel_cd_dtw") for row in rows.values())
    assert dtw == pytest.approx([5.5, 6.5])
    assert all(row.stats["manual-6/mel_cd_dtw"].n_missing == 1 for row in rows.values())
    assert all(r.metrics.keys().isdisjoint({"manual-6/mcd", "manual-6/mcd_dtw"}) for r in grid.runs)
    assert read_grid(client, "old-names", metric="mel_cd").metric == "mel_cd"
