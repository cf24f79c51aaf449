"""Hostile inputs and a hostile machine, as figures (issue 24): the real `wg2` CLI in subprocesses against

  foreign   a user's files where wg2 writes: `*.tmp<digits>` files in a `wg2 train --out` folder, report files
            (report.md, listen/, results.csv, PNGs) in a `wg2 compare --out` folder, `--out ~`, grid names that are
            paths. Outcome per case: kept (the file is unchanged; exit 2 naming it, or exit 0 when nothing of it
            was in the way), lost (deleted or overwritten), traceback.
  server    MLFLOW_TRACKING_URI at a dead server (a closed port, an address that never answers, an unknown host) or
            an unknown scheme, for train, eval, grid, compare, synth RUN_ID and search RUN_ID. Outcome: clear (exit 2
            naming the URI within 15 s beyond the start-up of a command that exits at once, measured first), slow
            (clear, later), hang (still running after 60 s), traceback, other (exit 2 for another reason first).
  disk      a full disk (a tmpfs of 256 KiB to 2 MiB, filled up to 4-192 KiB) under synth -o, eval --out, the
            dataset cache (train's data.cache_dir) and corpus build --out. Outcome: clear (exit 2, "no space left on
            DEVICE writing PATH", no temporary left), leftover (clear, but a temporary stays), traceback, other.
  database  MLFLOW_TRACKING_URI at a SQLite file that is not an MLflow store: another application's database
            (random tables), random bytes, an MLflow store cut at a random length. Outcome for train, grid and
            compare: clear (exit 2 naming the file, the file byte-identical), modified (wg2 changed it), traceback.

    python benchmarks/faults_inputs.py --part all --out results/faults      # writes results/faults/<part>/
    python benchmarks/faults_inputs.py --part server --cases 4 --out /tmp/f  # a smoke run

Each part writes DIR/<part>/faults.json (every case: what was done, exit code, seconds, outcome) and faults.md
(the count of cases per outcome). The disk part needs `mount -t tmpfs` (root); without it it is recorded as
skipped. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("foreign", "server", "database", "disk")
HANG_SECONDS = 60
CLEAR_SECONDS = 15


def log(message: str) -> None:
    print(f"[faults-inputs {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_wg2(args: list[str], tmp: Path, env: dict[str, str] | None = None, timeout: float = HANG_SECONDS,
            cwd: Path | None = None) -> dict:
    """One `wg2` command: exit code (None: killed after `timeout`), seconds, stderr."""
    full = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
            "WG2_RUNS_DIR": str(tmp / "runs"), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
            "MPLCONFIGDIR": str(tmp / "matplotlib"), **(env or {})}  # (its font cache would go to $HOME)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", *args], cwd=cwd or tmp, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        _, err = proc.communicate()
        code = None
    return {"code": code, "seconds": round(time.monotonic() - started, 2), "stderr": err[-2000:]}


def traceback(result: dict) -> bool:
    return "Traceback (most recent call last)" in result["stderr"]


# ----------------------------------------------------------------------------- shared fixtures

def build_corpus(tmp: Path) -> Path:
    out = tmp / "corpus"
    result = run_wg2(["corpus", "build", "--out", str(out), "--limit", "24", "--workers", "2"], tmp, timeout=600)
    if result["code"] != 0:
        raise RuntimeError(f"corpus build failed: {result['stderr']}")
    return out


def train_model(tmp: Path, corpus: Path) -> Path:
    out = tmp / "model"
    config = tmp / "tiny.toml"
    config.write_text((REPO / "experiments" / "configs" / "tiny.toml").read_text())
    result = run_wg2(["train", str(config), "--no-track", "--device", "cpu", "--out", str(out),
                      "--set", "train.steps=8", "--set", "train.checkpoint_every=8", "--set", "train.warmup_steps=1",
                      "--set", f"data.root={corpus}", "--set", f"data.cache_dir={tmp / 'cache'}",
                      "--set", "data.val_fraction=0.3", "--set", "data.test_fraction=0.1"], tmp, timeout=600)
    if result["code"] != 0:
        raise RuntimeError(f"training failed: {result['stderr']}")
    return out / "checkpoint.pt"


def grid_file(folder: Path, name: str, corpus: Path | None = None) -> Path:
    path = folder / f"grid-{abs(hash(name)) % 10**8}.toml"
    base = f'[base]\ndata.root = "{corpus}"\n' if corpus else ""
    path.write_text(f"name = {json.dumps(name)}\ndescription = \"q?\"\n{base}[axes]\n"
                    '"model.upsampler" = ["gaussian"]\n')
    return path


def summary(cases: list[dict]) -> dict:
    return {"cases": len(cases), "outcomes": dict(Counter(c["outcome"] for c in cases))}


# ----------------------------------------------------------------------------- foreign files

REPORT_NAMES = ("report.md", "results.csv", "axes.png", "loss_curves.png", "quality_vs_rtf.png", "listen.html")


def part_foreign(tmp: Path, cases: int, rng: random.Random) -> list[dict]:
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}").create_experiment("g", artifact_location=str(tmp / "artifacts"))
    kinds = ["train tmp files", "compare report files", "compare listen folder", "compare --out ~", "grid name"]
    done = []
    for i in range(cases):
        kind = kinds[i % len(kinds)]
        case = tmp / f"case{i}"
        case.mkdir()
        env, names = {}, []
        if kind == "train tmp files":
            out = case / "run"
            out.mkdir()
            names = [f"{rng.choice(['notes', 'thesis.tex', 'data.csv', 'checkpoint.pt'])}.tmp{rng.randint(1, 9999999)}"
                     for _ in range(3)]
            config = case / "run.toml"
            config.write_text(f'[data]\nroot = "{case / "no-corpus"}"\n')
            argv = ["train", str(config), "--no-track", "--device", "cpu", "--out", str(out)]
        elif kind.startswith("compare"):
            out = case / "home" if kind.endswith("~") else case / "report"
            out.mkdir()
            if kind == "compare listen folder":
                names = ["listen/keep.wav"]
                (out / "listen").mkdir()
            else:
                names = rng.sample(REPORT_NAMES, rng.randint(1, 3))
            env = {"HOME": str(case / "home")}
            argv = ["compare", "g", "--out", "~" if kind.endswith("~") else str(out)]
        else:
            out = case
            outside = case / "outside"
            name = rng.choice([str(outside), "../" + outside.name, "a/../../outside", "~/outside", ".outside"])
            names = ["outside/report.md"]
            (case / "outside").mkdir()
            argv = ["compare", str(grid_file(case, name))]
        for name in names:
            (out / name).write_bytes(f"the user's {name}".encode())
        result = run_wg2(argv, tmp, env=env, cwd=case)
        kept = all((out / n).is_file() and (out / n).read_bytes() == f"the user's {n}".encode() for n in names)
        if kind == "compare --out ~":  # the home folder must hold nothing new (MLflow's own ~/.config aside)
            kept = kept and sorted(p.name for p in out.iterdir() if p.name != ".config") == sorted(names)
        outcome = "traceback" if traceback(result) else ("kept" if kept else "lost")
        done.append({"kind": kind, "files": names, "argv": argv[:2], **result, "outcome": outcome})
        log(f"foreign {i + 1}/{cases}: {kind}: {outcome} (exit {result['code']})")
    return done


# ----------------------------------------------------------------------------- dead tracking server

DEAD_URIS = ("http://127.0.0.1:9", "http://10.255.255.1:5000", "https://no-such-host.invalid", "foo://bar")
RUN_ID = "0123456789abcdef0123456789abcdef"


def part_server(tmp: Path, cases: int, rng: random.Random, model: Path, corpus: Path) -> list[dict]:
    config = tmp / "run.toml"
    config.write_text(f'[data]\nroot = "{corpus}"\ncache_dir = "{tmp / "cache"}"\n')
    grid = grid_file(tmp, "g", corpus)
    commands = {"train": ["train", str(config), "--device", "cpu", "--out", str(tmp / "run")],
                "eval": ["eval", str(model), "--device", "cpu", "--limit", "1", "--out", str(tmp / "eval")],
                "grid": ["grid", str(grid), "--device", "cpu"], "compare": ["compare", "g", "--out", str(tmp / "r")],
                "synth RUN_ID": ["synth", RUN_ID, "hello", "-o", str(tmp / "x.wav")],
                "search RUN_ID": ["search", RUN_ID, "--trials", "1", "--out", str(tmp / "s")]}
    # what a wg2 command takes to start and stop at once on this machine now (torch and MLflow imported):
    # the 15 s are counted beyond it, since a loaded machine stretches start-up alone past 15 s
    startup = sorted(run_wg2(["synth", "no.pt", "hello", "-o", str(tmp / "x.mp3")], tmp)["seconds"]
                     for _ in range(3))[1]
    log(f"server: a command that exits at once takes {startup} s here")
    done = []
    pairs = [(uri, what) for uri in DEAD_URIS for what in commands]
    rng.shuffle(pairs)
    for i, (uri, what) in enumerate(pairs[:cases]):
        result = run_wg2(commands[what], tmp, env={"MLFLOW_TRACKING_URI": uri})
        named = result["code"] == 2 and uri in result["stderr"]
        beyond = round(result["seconds"] - startup, 2)
        if traceback(result):
            outcome = "traceback"
        elif result["code"] is None:
            outcome = "hang"
        elif named:
            outcome = "clear" if beyond < CLEAR_SECONDS else "slow"
        else:
            outcome = "other"
        done.append({"uri": uri, "command": what, **result, "startup_seconds": startup,
                     "beyond_startup_seconds": beyond, "outcome": outcome})
        log(f"server {i + 1}/{min(cases, len(pairs))}: {what} on {uri}: {outcome} ({result['seconds']} s, "
            f"{beyond} s beyond start-up)")
    return done


# ----------------------------------------------------------------------------- foreign databases

def _foreign_db(path: Path, kind: str, rng: random.Random) -> None:
    if kind == "another application's database":
        with sqlite3.connect(path) as con:
            for t in range(rng.randint(1, 4)):
                table = f"{rng.choice(['invoices', 'users', 'notes', 'events'])}_{t}"
                con.execute(f"CREATE TABLE {table} (id INTEGER, v TEXT)")
                con.execute(f"INSERT INTO {table} VALUES (1, 'x')")  # noqa: S608 - our own table name
    elif kind == "random bytes":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(100, 20000))))
    else:
        from mlflow import MlflowClient

        MlflowClient(f"sqlite:///{path}").create_experiment("g", artifact_location=str(path.parent / "a"))
        data = path.read_bytes()
        path.write_bytes(data[:rng.randint(100, len(data) - 4096)])


def part_database(tmp: Path, cases: int, rng: random.Random) -> list[dict]:
    kinds = ["another application's database", "random bytes", "truncated MLflow store"]
    done = []
    for i in range(cases):
        kind, command = kinds[i % len(kinds)], rng.choice(["train", "grid", "compare"])
        case = tmp / f"db{i}"
        case.mkdir()
        db = case / "store.db"
        _foreign_db(db, kind, rng)
        before = db.read_bytes()
        config = case / "run.toml"
        config.write_text(f'[data]\nroot = "{case / "no-corpus"}"\n')
        argv = {"train": ["train", str(config), "--device", "cpu", "--out", str(case / "run")],
                "grid": ["grid", str(grid_file(case, "g", case / "no-corpus")), "--device", "cpu"],
                "compare": ["compare", "g", "--out", str(case / "r")]}[command]
        result = run_wg2(argv, tmp, env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}, cwd=case)
        if traceback(result):
            outcome = "traceback"
        elif db.read_bytes() != before:
            outcome = "modified"
        else:
            outcome = "clear" if result["code"] == 2 and str(db) in result["stderr"] else "other"
        done.append({"kind": kind, "command": command, **result, "outcome": outcome})
        log(f"database {i + 1}/{cases}: {kind} / {command}: {outcome}")
    return done


# ----------------------------------------------------------------------------- full disk

def _mount(where: Path, size: int, remount: bool = False) -> bool:
    options = f"size={size}" + (",remount" if remount else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def part_disk(tmp: Path, cases: int, rng: random.Random, model: Path, corpus: Path) -> list[dict] | str:
    probe = tmp / "probe"
    probe.mkdir()
    if not _mount(probe, 65536):
        return "mount -t tmpfs is not permitted here"
    subprocess.run(["umount", str(probe)], check=False)
    kinds = ["synth -o", "eval --out", "train data.cache_dir", "corpus build --out"]
    done = []
    for i in range(cases):
        kind = kinds[i % len(kinds)]
        fs = tmp / f"fs{i}"
        fs.mkdir()
        size = rng.choice([256, 512, 1024, 2048]) * 1024
        _mount(fs, size)
        try:
            stats = os.statvfs(fs)
            leave = rng.choice([4, 16, 64, 192]) * 1024  # less than any of the outputs needs
            (fs / "filler").write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
            argv = {"synth -o": ["synth", str(model), "--utterance", "harvard-001", "-o",  # ~2 s: 100 KB
                                 str(fs / "x.wav"), "--device", "cpu"],
                    "eval --out": ["eval", str(model), "--no-track", "--device", "cpu", "--limit", "1",
                                   "--schedules", "manual-6", "--out", str(fs / "eval")],
                    "train data.cache_dir": ["train", str(REPO / "experiments" / "configs" / "tiny.toml"),
                                             "--no-track", "--device", "cpu", "--out", str(tmp / f"run{i}"),
                                             "--set", "train.steps=1", "--set", f"data.root={corpus}",
                                             "--set", f"data.cache_dir={fs / 'cache'}"],
                    "corpus build --out": ["corpus", "build", "--out", str(fs / "c"), "--limit", "40",
                                           "--workers", "1"]}[kind]
            result = run_wg2(argv, tmp, timeout=300)
            leftovers = [str(p) for p in fs.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
            if traceback(result):
                outcome = "traceback"
            elif result["code"] == 0:
                outcome = "fitted"  # the output fitted in what was left: not a full-disk case
            elif result["code"] == 2 and "no space left on" in result["stderr"] and str(fs) in result["stderr"]:
                outcome = "clear" if not leftovers else "leftover"
            else:
                outcome = "other"
            done.append({"kind": kind, "size": size, "free": leave, **result, "leftovers": leftovers[:5],
                         "outcome": outcome})
            log(f"disk {i + 1}/{cases}: {kind} on {size // 1024} KiB: {outcome}")
        finally:
            subprocess.run(["umount", "-l", str(fs)], check=False)
    return done


# ----------------------------------------------------------------------------- report

def markdown(part: str, cases: list[dict] | str) -> str:
    if isinstance(cases, str):
        return f"| {part} | not run: {cases} |\n"
    counts = summary(cases)["outcomes"]
    seconds = sorted(c["seconds"] for c in cases)
    timing = f"; wall seconds median {seconds[len(seconds) // 2]}, max {seconds[-1]}" if seconds else ""
    if cases and "startup_seconds" in cases[0]:
        timing += f" (start-up alone: {cases[0]['startup_seconds']} s)"
    by_kind: dict[str, Counter] = {}
    for c in cases:
        by_kind.setdefault(c.get("kind") or c.get("command") or "", Counter())[c["outcome"]] += 1
    rows = [f"| {part} | {len(cases)} cases | " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
            + timing + " |",
            "|---|---|---|"]
    rows += [f"| | {kind} | " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) + " |"
             for kind, c in sorted(by_kind.items())]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="all", choices=[*PARTS, "all"])
    p.add_argument("--cases", type=int, default=None, help="cases per part (default: 20, 24, 15, 12)")
    p.add_argument("--out", default="results/faults")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    parts = PARTS if args.part == "all" else (args.part,)
    defaults = {"foreign": 20, "server": 24, "database": 15, "disk": 12}
    tmp = Path(tempfile.mkdtemp(prefix="wg2-faults-inputs-"))
    bad = 0
    try:
        corpus = model = None
        if {"server", "disk"} & set(parts):
            log("building a 24-utterance corpus and training a tiny model (8 steps)")
            corpus = build_corpus(tmp)
            model = train_model(tmp, corpus)
        for part in parts:
            rng = random.Random(f"{args.seed}-{part}")
            work = tmp / part
            work.mkdir()
            n = args.cases or defaults[part]
            started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            cases: list[dict] | str
            if part == "foreign":
                cases = part_foreign(work, n, rng)
            elif part == "server":
                assert model is not None and corpus is not None
                cases = part_server(work, n, rng, model, corpus)
            elif part == "database":
                cases = part_database(work, n, rng)
            else:
                assert model is not None and corpus is not None
                cases = part_disk(work, n, rng, model, corpus)
            out = Path(args.out) / part
            out.mkdir(parents=True, exist_ok=True)
            record = {"part": part, "seed": args.seed, "started": started,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      **(summary(cases) if isinstance(cases, list) else {"skipped": cases}),
                      "case_list": cases if isinstance(cases, list) else []}
            (out / "faults.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
            (out / "faults.md").write_text(markdown(part, cases))
            print(markdown(part, cases))
            if isinstance(cases, list):
                bad += sum(c["outcome"] in ("lost", "hang", "traceback", "modified", "leftover") for c in cases)
    finally:
        for mount in sorted(tmp.glob("*/fs*")):
            subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
