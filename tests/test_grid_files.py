"""Every shipped grid in experiments/grids/ resolves and validates on a fresh machine (`--dry-run` reads no corpus)."""
from __future__ import annotations

from pathlib import Path

import pytest

from experiments.cli import main
from experiments.grid.file import load_grid

GRIDS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "grids").glob("*.toml"))
PAPER_GRIDS = ("quickstart", "upsampling", "window", "decoder-width", "zoneout", "schedules")


def test_the_paper_grids_are_shipped():
    assert {p.stem for p in GRIDS} >= set(PAPER_GRIDS)


@pytest.mark.parametrize("path", GRIDS, ids=[p.stem for p in GRIDS])
def test_grid_passes_dry_run(path: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a fresh directory: no corpus, no MLflow store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["grid", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    grid = load_grid(path)
    assert "?" in grid.description  # each grid states the question it answers
    for cell in grid.cells:
        assert cell.label in out and cell.cell_hash in out
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_schedules_grid_trains_once_per_seed():
    grid = load_grid(Path(__file__).resolve().parents[1] / "experiments" / "grids" / "schedules.toml")
    assert len(grid.trainings()) == len(grid.seeds) and len(grid.cells) == 5 * len(grid.seeds)
