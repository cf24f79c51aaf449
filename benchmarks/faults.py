"""Load and faults, as figures: nothing lost, nothing duplicated, no tracebacks. Not a test: it runs the real
`wg2` CLI in subprocesses (a real MLflow SQLite store and real Optuna storage in a temporary folder, the real
corpus) and counts what went wrong.

  kill    a quickstart-size grid with 2 worker processes, SIGKILLed at random times (the whole command, its
          parent process only, or one worker) and restarted after each kill, then a clean rerun. Counts the
          finished cells lost, duplicated and left RUNNING, from MLflow.
  search  N `wg2 search` commands started at once on one study (SQLite; PostgreSQL too with --postgres, from a
          pip-installed `pgserver`) with a budget of T trials. Counts trials lost (never finished, finished
          without an MLflow run), duplicated (over the budget, two MLflow runs for one trial) and failed.
  corpus  random corruptions of a copy of a 60-utterance subset of the corpus (truncated wav or TextGrid, NaN
          samples, shuffled TextGrid times, deleted files, bad metadata lines), each checked by `wg2 corpus
          check` with and without --skip-bad. Counts the share of clear messages (exit 2 naming the file, or
          with --skip-bad the utterance dropped and named), silent acceptances and tracebacks.

    python benchmarks/faults.py --part all --out results/faults          # the full run (CPU-heavy: tens of minutes)
    python benchmarks/faults.py --part all --quick --out /tmp/faults     # a smoke version (a few minutes)

Writes DIR/faults.json and DIR/faults.md (the table for the README). Progress goes to stderr (-q: none).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faults_common
import faults_inputs
from faults_common import REPO, log
from faults_corpus import part_corpus
from faults_kill import part_kill
from faults_search import part_search, start_postgres, train_model

INPUT_PARTS = faults_inputs.PARTS


def markdown(results: dict) -> str:
    rows = ["| part | measure | value | target |", "|---|---|---|---|"]
    if "kill" in results:
        k = results["kill"]
        rows += [f"| kill ({k['kills']} SIGKILLs, {k['workers']} workers, then a rerun) | finished cells lost | "
                 f"{k['lost']} | 0 |",
                 f"| | cells duplicated (more than one run) | {k['duplicated']} | 0 |",
                 f"| | runs left RUNNING | {k['left_running']} | 0 |",
                 f"| | cells finished after the rerun | {k['finished']} of {k['cells']} | all |",
                 f"| | tracebacks | {k['tracebacks_in_stderr']} | 0 |"]
    for s in results.get("search", []):
        rows += [f"| search ({s['storage']}, {s['workers']} commands, {s['budget']} trials) | trials lost | "
                 f"{s['lost']} | 0 |",
                 f"| | trials duplicated | {s['duplicated']} | 0 |",
                 f"| | trials failed | {s['failed']} | 0 |",
                 f"| | tracebacks | {s['tracebacks']} | 0 |"]
    if "postgres_skipped" in results:
        rows.append(f"| search (PostgreSQL) | not run | {results['postgres_skipped']} | |")
    if "corpus" in results:
        c = results["corpus"]
        rows += [f"| corpus ({c['cases']} corruptions of {c['utterances']} utterances) | clear message | "
                 f"{c['clear_share']:.0%} | 100% |",
                 f"| | clear with --skip-bad (dropped and named, or exit 2 naming it) | "
                 f"{c['clear_share_skip_bad']:.0%} | 100% |",
                 f"| | silently accepted | {c['counts']['check'].get('accepted', 0)} | 0 |",
                 f"| | tracebacks | {c['tracebacks']} | 0 |"]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="all", choices=["kill", "search", "corpus", *INPUT_PARTS, "all"],
                   help="kill, search, corpus; or one of the bad-input classes of benchmarks/faults_inputs.py "
                        f"({', '.join(INPUT_PARTS)}), which that module runs")
    p.add_argument("--quick", action="store_true", help="a small smoke version of each part")
    p.add_argument("--out", default="results/faults", help="folder for faults.json and faults.md")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kills", type=int, default=None, help="SIGKILLs (default 20; 3 with --quick)")
    p.add_argument("--search-workers", type=int, default=None, help="default 8; 3 with --quick")
    p.add_argument("--trials", type=int, default=None, help="default 64; 6 with --quick")
    p.add_argument("--cases", type=int, default=None, help="corpus corruptions (default 100; 10 with --quick)")
    p.add_argument("--postgres", action="store_true", help="also run the search part on a PostgreSQL study")
    p.add_argument("--pg-packages", default=str(Path(tempfile.gettempdir()) / "pgpkgs"),
                   help="folder where `pip install --target` put pgserver and psycopg2-binary")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if args.part in INPUT_PARTS:  # foreign files, dead tracking server, foreign database, full disk
        return faults_inputs.main(["--part", args.part, "--out", args.out, "--seed", str(args.seed)]
                                  + (["--cases", str(args.cases)] if args.cases else []))
    faults_common.QUIET = args.quiet
    sys.path.insert(0, str(REPO))
    parts = ["corpus", "search", "kill"] if args.part == "all" else [args.part]
    tmp = Path(tempfile.mkdtemp(prefix="wg2-faults-"))
    results: dict = {"quick": args.quick, "seed": args.seed, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        if "corpus" in parts:
            results["corpus"] = part_corpus(tmp / "corpus", args.cases or (10 if args.quick else 100), args.seed)
        if "search" in parts:
            (tmp / "search").mkdir()
            model = train_model(tmp / "search", 4 if args.quick else 60)
            workers = args.search_workers or (3 if args.quick else 8)
            trials = args.trials or (6 if args.quick else 64)
            db = tmp / "search" / "optuna.db"
            results["search"] = [part_search(tmp / "search", f"sqlite:///{db}", "SQLite", workers, trials, model,
                                             args.seed)]
            if args.postgres:
                try:
                    server, url, extra = start_postgres(tmp / "search", Path(args.pg_packages))
                except Exception as err:  # noqa: BLE001 - recorded in the report instead
                    results["postgres_skipped"] = f"no server: {type(err).__name__}: {err}"
                else:
                    try:
                        results["search"].append(part_search(tmp / "search", url, "PostgreSQL", workers, trials,
                                                             model, args.seed, extra))
                    finally:
                        server.cleanup()
        if "kill" in parts:
            (tmp / "kill").mkdir()
            results["kill"] = part_kill(tmp / "kill", args.kills or (3 if args.quick else 20), args.seed, args.quick)
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (out / "faults.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "faults.md").write_text(markdown(results))
    print(markdown(results), end="")
    bad = (results.get("corpus", {}).get("tracebacks", 0) + results.get("kill", {}).get("lost", 0)
           + results.get("kill", {}).get("duplicated", 0) + sum(s["lost"] + s["duplicated"] + s["tracebacks"]
                                                               for s in results.get("search", [])))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
