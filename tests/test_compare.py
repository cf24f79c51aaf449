"""`wg2 compare` against a real MLflow store in a temp dir: runs are created with the client exactly as the grid
runner lays them out (parent + child cells, tags, params, metrics), nothing is trained."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

from evaluation.compare.build import compare  # noqa: E402
from evaluation.compare.data import CompareError  # noqa: E402

SCHEDULES = ["manual-6", "linear-50"]
UPS, WINDOWS, SEEDS = ["gaussian", "repeat"], [64, 256], [0, 1]


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return uri, MlflowClient(uri), root


def _experiment(store, name: str) -> str:
    uri, client, root = store
    return client.create_experiment(name, artifact_location=str(root / "artifacts" / name))


def _parent(client, exp: str, name: str, description: str, axes: list[str], expected: list[dict] | None) -> str:
    tags = {"wg2.kind": "grid", "wg2.grid_name": name, "wg2.description": description,
            "mlflow.note.content": description, "wg2.axes": json.dumps(axes), "wg2.git_commit": "abc1234",
            "wg2.machine": "test-box (2 cores)"}
    if expected is not None:
        tags["wg2.expected_cells"] = json.dumps(expected)
    run = client.create_run(exp, tags=tags, run_name=f"grid: {name}")
    return run.info.run_id


def _cell(client, exp: str, parent: str, assignment: dict, seed: int, params: dict, metrics: dict[str, float],
          status: str = "FINISHED", extra_tags: dict | None = None) -> str:
    label = " ".join(f"{k}={v}" for k, v in assignment.items()) + f" seed={seed}"
    group = "g-" + "-".join(str(v) for v in assignment.values())
    tags = {"mlflow.parentRunId": parent, "wg2.kind": "cell", "wg2.cell_hash": f"{group}-s{seed}",
            "wg2.train_hash": f"{group}-s{seed}", "wg2.group": group, "wg2.seed": str(seed),
            "wg2.assignment": json.dumps(assignment), "wg2.git_commit": "abc1234", "wg2.device": "cpu",
            "wg2.torch_version": "2.13.0", "wg2.machine": "test-box (2 cores)", **(extra_tags or {})}
    run = client.create_run(exp, tags=tags, run_name=label)
    rid = run.info.run_id
    curve = [Metric("train/loss", 1.0 / (1 + s / 50) + 0.01 * seed, 0, s) for s in range(0, 101, 25)]
    client.log_batch(rid, metrics=curve + [Metric(k, v, 0, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()],
                     tags=[RunTag("wg2.error", "RuntimeError: loss is NaN at step 75")] if status == "FAILED" else [])
    client.set_terminated(rid, status)
    return rid


def _eval_metrics(pesq: float, mcd: float, rtf: dict[str, float], stoi: float = 0.9) -> dict[str, float]:
    out = {"train/audio_seconds_per_sec": 40.0, "train/peak_memory_mb": 900.0, "train/wall_seconds": 30.0}
    for s in SCHEDULES:
        bonus = 0.2 if s == "linear-50" else 0.0
        for m, v, half in (("pesq_wb", pesq + bonus, 0.15), ("stoi", stoi, 0.02), ("estoi", stoi - 0.1, 0.02),
                           ("mel_cd", mcd - bonus, 0.3), ("mel_cd_dtw", mcd + 0.5, 0.3)):
            out.update({f"{s}/{m}": v, f"{s}/{m}_ci_low": v - half, f"{s}/{m}_ci_high": v + half,
                        f"{s}/{m}_n_missing": 0.0})
        out[f"{s}/rtf"] = rtf[s]
        out[f"{s}/peak_memory_mb"] = 300.0
    out["manual-6/mel_cd_dtw_n_missing"] = 1.0  # one utterance too short for DTW
    return out


QUESTION = "Does Gaussian upsampling beat repeat at both window sizes?"
MISSING = ("repeat", 64, 1)
FAILED = ("gaussian", 64, 1)


def _pesq(up: str, window: int, seed: int) -> float:
    # gaussian +0.4, window 256 +0.1, seeds differ a little: the best PESQ cell is gaussian/256
    return 2.5 + (0.4 if up == "gaussian" else 0.0) + (0.1 if window == 256 else 0.0) + 0.03 * seed


def _mcd(up: str, window: int, seed: int) -> float:
    # lower is better; the best MCD cell is repeat/256 (not the best PESQ cell, so the marks are independent)
    return 6.0 + (0.3 if up == "gaussian" else 0.0) - (0.6 if window == 256 else 0.0) + 0.02 * seed


def _build_grid(store, name: str, list_cells: bool) -> str:
    _, client, _ = store
    exp = _experiment(store, name)
    expected = [{"assignment": {"model.upsampler": u, "train.window_frames": w}, "seed": s,
                 "label": f"model.upsampler={u} train.window_frames={w} seed={s}"}
                for u in UPS for w in WINDOWS for s in SEEDS]
    parent = _parent(client, exp, name, QUESTION, ["model.upsampler", "train.window_frames"],
                     expected if list_cells else None)
    for u in UPS:
        for w in WINDOWS:
            for s in SEEDS:
                if (u, w, s) == MISSING:
                    continue
                rtf = {"manual-6": 0.05 * (w / 64) ** 0.2, "linear-50": 0.4 * (w / 64) ** 0.2}
                params = {"model.upsampler": u, "train.window_frames": w, "train.seed": s, "model.space": "waveform",
                          "eval.schedules": SCHEDULES}
                _cell(client, exp, parent, {"model.upsampler": u, "train.window_frames": w}, s, params,
                      _eval_metrics(_pesq(u, w, s), _mcd(u, w, s), rtf),
                      status="FAILED" if (u, w, s) == FAILED else "FINISHED")
    return parent


def _table(md: str, heading: str) -> dict[str, dict[str, str]]:
    """The markdown table under a heading: row label -> column -> text."""
    lines = md.split(heading, 1)[1].strip().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = dict(zip(head, cells))
    return rows


def _check_png(path):
    from matplotlib.image import imread
    assert path.is_file() and path.stat().st_size > 5000, path
    img = imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert float(np.std(img[..., :3])) > 0.02  # something was drawn, not a blank canvas


@pytest.fixture(scope="session")
def grid_report(store, tmp_path_factory):
    uri, _, _ = store
    parent = _build_grid(store, "upsampling-x-window", list_cells=True)
    out = tmp_path_factory.mktemp("report")
    return compare("upsampling-x-window", out, tracking_uri=uri), parent


def test_report_content(grid_report):
    report, _ = grid_report
    md = report.report_md.read_text()
    assert QUESTION in md
    assert "abc1234" in md and "test-box" in md
    present = [f"model.upsampler={u} train.window_frames={w}" for u in UPS for w in WINDOWS]
    for label in present:
        assert f"`{label}`" in md
    assert "model.upsampler=repeat train.window_frames=64 seed=1" in md  # the missing cell, named
    assert report.missing == ["model.upsampler=repeat train.window_frames=64 seed=1"]
    assert len(report.failed) == 1 and "NaN at step 75" in report.failed[0] and "NaN at step 75" in md
    assert "7 finished" not in md and "6 finished, 1 failed" in md


def test_best_marked_on_right_rows(grid_report):
    report, _ = grid_report
    md = report.report_md.read_text()
    table = _table(md, "## Quality and speed at schedule `manual-6`")
    assert set(table) == {f"model.upsampler={u} train.window_frames={w}" for u in UPS for w in WINDOWS}
    bold_pesq = [k for k, row in table.items() if row["pesq_wb"].startswith("**")]
    bold_mcd = [k for k, row in table.items() if row["mel_cd"].startswith("**")]
    assert bold_pesq == ["model.upsampler=gaussian train.window_frames=256"]  # higher is better
    assert bold_mcd == ["model.upsampler=repeat train.window_frames=256"]  # lower is better
    # one seed (the failed and the missing seed): the run's own across-utterance interval, marked
    assert table["model.upsampler=gaussian train.window_frames=64"]["pesq_wb"].endswith("†")
    assert not table["model.upsampler=gaussian train.window_frames=256"]["pesq_wb"].endswith("†")
    assert "across seeds" in md and "across that run's utterances" in md
    # the pooled mean is the mean of the seeds
    row = next(r for r in report.rows if r.label == "model.upsampler=gaussian train.window_frames=256")
    seeds_mean = (_pesq("gaussian", 256, 0) + _pesq("gaussian", 256, 1)) / 2
    assert row.stats["manual-6/pesq_wb"].mean == pytest.approx(seeds_mean)
    assert row.stats["manual-6/pesq_wb"].interval == "seeds" and row.seeds == [0, 1]
    missing = md.split("## Missing metric values", 1)[1]
    assert f"| `{row.label}` | manual-6/mel_cd_dtw | 2 |" in missing  # one utterance per seed, summed


def test_marginal_effects_signs(grid_report):
    report, _ = grid_report
    by = {(e.axis, e.schedule): e for e in report.effects}
    up = by[("model.upsampler", "manual-6")]
    assert (up.a, up.b) == ("gaussian", "repeat")
    # each seed's effect over the window sizes where it finished (the missing repeat/64 seed does not tilt it);
    # training axes are judged across seeds, and two seeds are too few for an interval or a p-value
    assert up.per_seed == pytest.approx({"0": 0.4, "1": 0.4}, abs=1e-9) and up.diff == pytest.approx(0.4, abs=1e-9)
    assert up.unit == "seed" and up.n == 2 and up.verdict == "too few seeds" and up.settings == 2
    assert up.ci_low is None and up.ci_high is None and up.p_value is None
    win = by[("train.window_frames", "manual-6")]
    assert (win.a, win.b) == ("64", "256") and win.diff < 0 and win.verdict == "too few seeds"
    assert ("model.upsampler", "linear-50") in by
    md = report.report_md.read_text()
    assert "## Marginal effect of each axis on pesq_wb" in md
    assert "`model.upsampler`: gaussian − repeat = +0.4 pesq_wb at manual-6 (2 seed(s), too few for an interval" in md
    assert "| seed (2) | — | too few seeds |" in md


def test_csv_plots_and_artifacts(grid_report, store):
    report, parent = grid_report
    with report.results_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    for col in ("cell", "model.upsampler", "train.window_frames", "n_runs", "manual-6/pesq_wb_mean",
                "manual-6/pesq_wb_ci_low", "manual-6/pesq_wb_ci_high", "linear-50/rtf_mean",
                "train/peak_memory_mb_mean", "manual-6/mel_cd_dtw_n_missing"):
        assert col in rows[0], col
    assert {r["n_runs"] for r in rows} == {"1", "2"}
    names = {p.name for p in report.plots}
    assert names == {"quality_vs_rtf.png", "axes.png", "loss_curves.png"}
    for p in report.plots:
        _check_png(p)
    _, client, _ = store
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/results.csv", "report/quality_vs_rtf.png"} <= logged
    assert report.logged_on_parent and report.parent_run_id == parent


def test_inferred_cells_without_a_list(store, tmp_path):
    uri, _, _ = store
    _build_grid(store, "no-list", list_cells=False)
    report = compare("no-list", tmp_path, tracking_uri=uri, metric="mel_cd")
    assert report.missing == ["model.upsampler=repeat train.window_frames=64 seed=1"]
    assert "inferred" in report.report_md.read_text()
    up = next(e for e in report.effects if e.axis == "model.upsampler" and e.schedule == "manual-6")
    assert up.diff == pytest.approx(0.3, abs=1e-9)  # gaussian has the higher (worse) MCD


def _build_latent(store, name: str, latent_rtf: float, latent_pesq: float) -> None:
    _, client, _ = store
    exp = _experiment(store, name)
    parent = _parent(client, exp, name, "Is latent R=16 worth it?", ["model.space"], None)
    ae = client.create_run(exp, tags={"wg2.kind": "autoencoder"}, run_name="autoencoder R=16")
    client.log_batch(ae.info.run_id, metrics=[Metric("recon/pesq_wb", 3.8, 0, 0), Metric("recon/stoi", 0.97, 0, 0),
                                              Metric("recon/mel_cd", 2.0, 0, 0)],
                     params=[Param("autoencoder.stride", "16"), Param("autoencoder.kind", "continuous")])
    client.set_terminated(ae.info.run_id, "FINISHED")
    for space, pesq, rtf in (("waveform", 3.0, 0.5), ("latent", latent_pesq, latent_rtf)):
        params = {"model.space": space, "autoencoder.stride": 16, "eval.schedules": SCHEDULES}
        metrics = _eval_metrics(pesq, 5.0, {"manual-6": rtf, "linear-50": rtf * 8})
        _cell(client, exp, parent, {"model.space": space}, 0, params, metrics,
              extra_tags={"wg2.autoencoder_run": ae.info.run_id} if space == "latent" else None)


def test_latent_target_reached(store, tmp_path):
    uri, _, _ = store
    _build_latent(store, "latent-yes", latent_rtf=0.08, latent_pesq=2.85)  # 6.25x, 95%
    report = compare("latent-yes", tmp_path, tracking_uri=uri)
    md = report.report_md.read_text()
    assert report.target is not None and report.target.reached is True
    assert "**Target reached**" in md and "6.2x" in md
    assert "Autoencoder ceiling" in md and "autoencoder R=16 continuous" in md
    table = _table(md, "## Quality and speed at schedule `manual-6`")
    assert table["model.space=latent"]["fraction of ceiling (pesq_wb)"] == "0.75"  # 2.85 / 3.8
    assert table["model.space=waveform"]["fraction of ceiling (pesq_wb)"] == "—"
    with report.results_csv.open() as fh:
        latent_row = next(r for r in csv.DictReader(fh) if r["model.space"] == "latent")
    assert float(latent_row["manual-6/pesq_wb_fraction_of_ceiling"]) == pytest.approx(2.85 / 3.8)
    assert float(latent_row["ceiling/pesq_wb"]) == pytest.approx(3.8)
    _check_png(tmp_path / "quality_vs_rtf.png")


def test_latent_target_not_reached(store, tmp_path):
    uri, _, _ = store
    _build_latent(store, "latent-no", latent_rtf=0.2, latent_pesq=2.95)  # 2.5x only
    report = compare("latent-no", tmp_path, tracking_uri=uri)
    md = report.report_md.read_text()
    assert report.target is not None and report.target.reached is False
    assert "**Target not reached**" in md and "2.5x" in md and "short on speed" in md


def test_cli_grid_file_and_errors(store, tmp_path, monkeypatch, capsys):
    from experiments.cli import main

    uri, _, _ = store
    _build_grid(store, "from-file", list_cells=False)
    grid = tmp_path / "grid.toml"
    grid.write_text('name = "from-file"\ndescription = "q"\nseeds = [0, 1]\n'
                    '[axes]\n"model.upsampler" = ["gaussian", "repeat"]\n"train.window_frames" = [64, 256]\n')
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["compare", str(grid), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "from the grid file" in md and "model.upsampler=repeat train.window_frames=64 seed=1" in md
    assert main(["compare", "no-such-grid", "--out", str(tmp_path / "x")]) == 2
    assert "no-such-grid" in capsys.readouterr().err
    assert main(["compare", "from-file", "--out", str(tmp_path / "y"), "--metric", "nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err
    with pytest.raises(CompareError, match="no MLflow store"):
        compare("x", tmp_path / "z", tracking_uri=f"sqlite:///{tmp_path / 'absent.db'}")


def test_schedule_axis_one_table(store, tmp_path):
    """An eval.schedules axis: each cell has metrics under its own schedule only; they share one table and the
    axis effect compares each run at its own schedule."""
    uri, client, _ = store
    exp = _experiment(store, "schedule-axis")
    parent = _parent(client, exp, "schedule-axis", "Which schedule?", ["eval.schedules"], None)
    quality = {"manual-6": 2.8, "linear-50": 3.1}
    for s, q in quality.items():
        for seed in SEEDS:
            metrics = {f"{s}/pesq_wb": q + 0.02 * seed, f"{s}/rtf": 0.05 if s == "manual-6" else 0.4,
                       "system/cpu_utilization_percentage": 50.0}  # MLflow's system metrics: not a schedule
            _cell(client, exp, parent, {"eval.schedules": s}, seed, {"eval.schedules": [s]}, metrics)
    report = compare("schedule-axis", tmp_path, tracking_uri=uri)
    assert "`system`" not in report.report_md.read_text()
    table = _table(report.report_md.read_text(), "## Quality and speed (each cell at its own schedule)")
    assert table["eval.schedules=linear-50"]["pesq_wb"].startswith("**")
    assert table["eval.schedules=manual-6"]["rtf"].startswith("**")
    (effect,) = report.effects
    assert effect.schedule == "own schedule" and effect.diff == pytest.approx(
        (quality["linear-50"] - quality["manual-6"]) * (1 if effect.a == "linear-50" else -1))


def _row(label: str, assignment: dict, params: dict, means: dict[str, float]):
    from evaluation.compare.data import CellRow, Stat
    return CellRow(group=label, label=label, assignment=assignment, seeds=[0], run_ids=[label], params=params,
                   stats={k: Stat(v, n=1) for k, v in means.items()})


def test_latent_target_matching_and_undecided():
    """A multi-key space axis is matched on the other axes (steps here); no 6-step schedule: undecided."""
    from evaluation.compare.target import latent_target

    rows = []
    for steps, (w_rtf, l_rtf) in ((1000, (0.5, 0.05)), (2000, (0.5, 0.2))):
        rows.append(_row(f"wave {steps}", {"space": "waveform", "train.steps": steps}, {"model.space": "waveform"},
                         {"manual-6/rtf": w_rtf, "manual-6/pesq_wb": 3.0}))
        rows.append(_row(f"r16 {steps}", {"space": "latent-R16", "train.steps": steps},
                         {"model.space": "latent", "autoencoder.stride": "16"},
                         {"manual-6/rtf": l_rtf, "manual-6/pesq_wb": 2.9}))
    target = latent_target(rows, ["manual-6"])
    by_cell = {c["cell"]: c for c in target.comparisons}
    assert by_cell["r16 1000"]["speedup"] == pytest.approx(10.0) and by_cell["r16 1000"]["reached"]
    assert by_cell["r16 2000"]["speedup"] == pytest.approx(2.5) and not by_cell["r16 2000"]["reached"]
    assert target.reached is True and "r16 1000" in target.statement
    undecided = latent_target(rows, ["linear-50"])
    assert undecided.reached is None and "no 6-step schedule" in undecided.statement
    assert latent_target(rows[:1], ["manual-6"]).reached is None


def test_cli_grid_file_with_a_multi_key_axis(store, tmp_path, monkeypatch, capsys):
    """`wg2 compare` expands a grid file with the grid runner's reader: a multi-key axis (latent.toml's `space`)
    gives the expected cells by label, so cells without a run are listed as missing."""
    from pathlib import Path

    from experiments.cli import main
    from experiments.grid.file import load_grid

    uri, client, _ = store
    grid_file = Path(__file__).resolve().parents[1] / "experiments" / "grids" / "latent.toml"
    grid = load_grid(grid_file)
    exp = client.create_experiment(grid.name + "-multi-key", artifact_location=str(tmp_path / "artifacts"))
    parent = _parent(client, exp, grid.name, grid.description, [a.name for a in grid.axes], None)
    first = grid.cells[0]
    _cell(client, exp, parent, first.assignment, first.seed, {"model.space": "waveform", "eval.schedules": SCHEDULES},
          _eval_metrics(3.0, 5.0, {"manual-6": 0.05, "linear-50": 0.4}),
          extra_tags={"wg2.cell_hash": first.cell_hash, "wg2.label": first.label})
    spec = tmp_path / "latent.toml"  # the same grid under this test's experiment name
    base = grid_file.parent.parent / "configs" / "base.toml"
    spec.write_text(grid_file.read_text().replace('name = "latent"', f'name = "{grid.name}-multi-key"')
                    .replace('base_file = "../configs/base.toml"', f'base_file = "{base}"'))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["compare", str(spec), "--out", str(tmp_path / "out"), "--json"]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "from the grid file" in md
    captured = capsys.readouterr()
    assert len(grid.cells) > 1 and f"{len(grid.cells) - 1} missing" in captured.err
    report = json.loads(captured.out)  # --json: stdout is the report's content and nothing else
    assert len(report["rows"]) == 1 and first.label.startswith(report["rows"][0]["label"])
    assert len(report["missing"]) == len(grid.cells) - 1
    assert report["report_md"] == str(tmp_path / "out" / "report.md")
    for cell in grid.cells[1:]:
        assert cell.label in md
