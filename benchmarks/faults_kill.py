"""benchmarks/faults.py, part `kill`: a quickstart-size grid with worker processes, SIGKILLed at random
times and restarted, then a clean rerun; what was lost, duplicated or left RUNNING, read from MLflow."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from faults_common import CORPUS, GRID, REPO, has_traceback, log, wg2_argv, wg2_env


def _children(pid: int) -> list[int]:
    """Direct child processes of pid (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _grid_workers(pid: int) -> list[int]:
    """The grid's worker processes: the command's spawned children (not multiprocessing's resource tracker)."""
    workers = []
    for child in _children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "multiprocessing" in cmd and "resource_tracker" not in cmd and "forkserver" not in cmd:
            workers.append(child)
    return workers


def _wait_group(proc: subprocess.Popen, seconds: float) -> None:
    """Wait until the command and all of its process group are gone (SIGKILL what is left after `seconds`)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _grid_state(uri: str, name: str) -> dict:
    from mlflow import MlflowClient

    from evaluation.runs import KIND_CELL, KIND_GRID, TAG_CELL_HASH, TAG_KIND
    from experiments.tracking.store import ensure_store

    ensure_store(uri)  # under the store's lock: the grid may be creating it right now
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return {"cells": {}, "parents": []}
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    cells: dict[str, list] = {}
    parents = []
    for r in runs:
        kind = r.data.tags.get(TAG_KIND)
        if kind == KIND_CELL:
            cells.setdefault(r.data.tags.get(TAG_CELL_HASH, r.info.run_id), []).append(
                {"run_id": r.info.run_id, "status": r.info.status, "metrics": len(r.data.metrics)})
        elif kind == KIND_GRID:
            parents.append({"run_id": r.info.run_id, "status": r.info.status})
    return {"cells": cells, "parents": parents}


def _finished_count(uri: str) -> int:
    return sum(any(r["status"] == "FINISHED" for r in rs) for rs in _grid_state(uri, "quickstart")["cells"].values())


def part_kill(tmp: Path, kills: int, seed: int, quick: bool, workers: int = 2) -> dict:
    rng = random.Random(seed)
    env = wg2_env(tmp)
    uri = env["MLFLOW_TRACKING_URI"]
    sets = [f"data.cache_dir={tmp / 'cache'}", f"data.root={CORPUS}"]
    if quick:
        sets += ["train.steps=6", "train.checkpoint_every=2", "train.log_every=1", "train.warmup_steps=1",
                 "train.gain_utterances=2", "data.max_utterances=40", "eval.limit=1", "eval.audio_artifacts=1",
                 'eval.schedules=["linear-6"]']
    argv = wg2_argv("grid", str(GRID), "--workers", str(workers), "--device", "cpu",
                    *[a for s in sets for a in ("--set", s)])
    low, high = (3.0, 25.0) if quick else (5.0, 90.0)
    log(f"kill: {' '.join(argv[3:])}")
    events: list[dict] = []
    seen_finished: dict[str, int] = {}
    tracebacks = 0
    proc = None
    logs = tmp / "kill-logs"
    logs.mkdir()
    k = 0
    while k < kills:
        if proc is None or proc.poll() is not None:
            if proc is not None and proc.returncode == 0:
                log("kill: the grid finished before the next kill; stopping the kills here")
                break
            stderr = open(logs / f"run{len(events)}.err", "w")
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                    start_new_session=True)
        # Every fifth kill waits for the next cell to finish and strikes just after it (0-10 s later: while the
        # result is being recorded or the next cell starts), so that finished cells exist to be lost; the
        # others strike at a random time, mostly mid-cell.
        after_finish = k % 5 == 4
        before = _finished_count(uri) if after_finish else 0
        started_wait = time.time()
        while after_finish and proc.poll() is None and _finished_count(uri) <= before \
                and time.time() - started_wait < 1800:
            time.sleep(2.0)
        delay = rng.uniform(0.0, 10.0) if after_finish else rng.uniform(low, high)
        deadline = time.time() + delay
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.25)
        if after_finish:
            delay = time.time() - started_wait  # the whole wait, for the log
        if proc.poll() is not None:
            events.append({"kill": None, "exited": proc.returncode, "after_s": round(delay, 1)})
            if sum(bool(e["kill"] is None and e["exited"]) for e in events[-3:]) == 3:
                raise RuntimeError(f"the grid failed 3 times in a row by itself; see {logs}")
            continue
        target = rng.choice(["command", "command", "parent", "worker"])
        victims = _grid_workers(proc.pid)
        if target == "worker" and victims:
            os.kill(rng.choice(victims), signal.SIGKILL)
        elif target == "parent":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            target = "command"
            os.killpg(proc.pid, signal.SIGKILL)
        k += 1
        if target != "worker":
            _wait_group(proc, 30)  # a killed parent's workers end themselves (watch_parent)
        state = _grid_state(uri, "quickstart")
        for h, rs in state["cells"].items():
            for r in rs:
                if r["status"] == "FINISHED":
                    seen_finished.setdefault(h, r["run_id"])
        events.append({"kill": target, "after_s": round(delay, 1), "after_a_cell_finished": after_finish,
                       "finished_cells": sum(any(r["status"] == "FINISHED" for r in rs)
                                             for rs in state["cells"].values())})
        when = " (just after a cell finished)" if after_finish else ""
        log(f"kill {k}/{kills}: SIGKILL {target} after {delay:.0f} s{when}; "
            f"{events[-1]['finished_cells']} cell(s) finished so far")
    if proc is not None and proc.poll() is None:
        _wait_group(proc, 3600 * 4)  # a killed worker: its command goes on; let it end
    started = time.time()
    log("kill: clean rerun")
    final = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    (logs / "final.err").write_text(final.stderr)
    for path in logs.glob("*.err"):
        tracebacks += has_traceback(path.read_text(errors="replace"))
    state = _grid_state(uri, "quickstart")
    cells = state["cells"]
    finished_now = {h: [r for r in rs if r["status"] == "FINISHED"] for h, rs in cells.items()}
    lost = [h for h, run_id in seen_finished.items()
            if not any(r["run_id"] == run_id for r in finished_now.get(h, []))]
    duplicated = sum(max(0, len(rs) - 1) for rs in cells.values())
    running = sum(r["status"] == "RUNNING" for rs in cells.values() for r in rs) + \
        sum(p["status"] == "RUNNING" for p in state["parents"])
    return {"kills": sum(e["kill"] is not None for e in events), "workers": workers, "quick": quick,
            "events": events, "final_exit": final.returncode, "final_seconds": round(time.time() - started, 1),
            "cells": len(cells), "finished": sum(bool(v) for v in finished_now.values()),
            "finished_without_metrics": sum(r["metrics"] == 0 for rs in finished_now.values() for r in rs),
            "finished_before_rerun": len(seen_finished), "lost": len(lost), "duplicated": duplicated,
            "left_running": running, "parents": state["parents"], "tracebacks_in_stderr": tracebacks,
            "final_stdout_tail": final.stdout.splitlines()[-6:]}
