"""The shipped latent grid, shrunk with --set to tiny size, runs end to end on CPU and `wg2 compare` reports
latent against waveform cells with the autoencoder ceiling."""
from __future__ import annotations

from pathlib import Path

from conftest import tiny_tables
from mlflow import MlflowClient

from evaluation.compare.build import compare
from experiments.config.identity import _toml_value
from experiments.grid.run import run_grid

REPO = Path(__file__).resolve().parents[1]

TINY_OVERRIDES = [  # the tiny preset's model; a latent autoencoder and a run as short
    *(f"model.{key}={_toml_value(value)}" for key, value in tiny_tables()["model"].items()),
    "autoencoder.hidden_channels=8", "autoencoder.latent_channels=4", "autoencoder.steps=8",
    "autoencoder.batch_size=2", "autoencoder.segment_samples=2048",
    "train.steps=4", "train.batch_size=2", "train.window_frames=8", "train.warmup_steps=1",
    "train.checkpoint_every=4", "train.log_every=2", "train.precision=\"fp32\"",
    'eval.schedules=["manual-6"]', "eval.limit=2", "eval.metric_workers=1", "eval.audio_artifacts=1",
]


def test_tiny_latent_grid_runs_and_reports_the_ceiling(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("WG2_RUNS_DIR", str(tmp_path / "runs"))
    data = [f'data.root="{corpus_dir}"', f'data.cache_dir="{tmp_path / "cache"}"', "data.val_fraction=0.3",
            "data.test_fraction=0.1"]
    outcome = run_grid(REPO / "experiments" / "grids" / "latent.toml", overrides=data + TINY_OVERRIDES,
                       device="cpu", progress=False)
    assert outcome.exit_code == 0

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("latent")
    cells = client.search_runs([experiment.experiment_id], "tags.`wg2.kind` = 'cell'")
    assert len(cells) == 4 and all(r.info.status == "FINISHED" for r in cells)
    latent = [r for r in cells if r.data.params["model.space"] == "latent"]
    assert len(latent) == 3 and all(r.data.tags.get("wg2.autoencoder_run") for r in latent)
    # two continuous strides and one vq: three stage-one runs, each holding the reconstruction ceiling
    ae_runs = {r.data.tags["wg2.autoencoder_run"] for r in latent}
    assert len(ae_runs) == 3
    for run_id in ae_runs:
        assert "recon/pesq_wb_n_missing" in client.get_run(run_id).data.metrics

    report = compare("latent", tmp_path / "report", tracking_uri=uri)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "ceiling" in text.lower()
    assert "Target" in text, "the report says whether the R=16 target was reached"
    assert report.missing == [] and report.failed == []
    assert report.target is not None, "an R=16 cell and a waveform cell were compared"
    assert report.logged_on_parent
