"""What the code that writes MLflow runs (experiments/) and the code that reads them back (evaluation/) share:
the tracking URI, run search, the experiment names and the names of the wg2 tags. Imports nothing of ours and not
mlflow itself.

Layout: tracking URI from MLFLOW_TRACKING_URI, else a SQLite store `mlflow.db` in the working directory.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

# ----------------------------------------------------------------------------- experiment names

# (a grid's experiment is named after the grid, `name` in its file)
EXPERIMENT_TRAIN = "wg2 train"  # `wg2 train` outside a grid (default of --experiment)
EXPERIMENT_EVAL = "wg2 eval"  # `wg2 eval` (default of --experiment)
EXPERIMENT_SEARCH = "wg2 schedule search"  # `wg2 search`: a parent run per study
EXPERIMENT_AUTOENCODERS = "wg2 autoencoders"  # a latent space's stage-one autoencoder runs

# ----------------------------------------------------------------------------- tag names

TAG_KIND = "wg2.kind"  # what a run is: one of the KIND_* values
KIND_GRID, KIND_CELL, KIND_AUTOENCODER, KIND_SEARCH, KIND_TRIAL = "grid", "cell", "autoencoder", "search", "trial"
KIND_TRAIN, KIND_EVAL = "train", "eval"  # `wg2 train` and `wg2 eval` outside a grid

# a grid's parent run
TAG_GRID_NAME = "wg2.grid_name"
TAG_DESCRIPTION = "wg2.description"
TAG_AXES = "wg2.axes"
TAG_SEEDS = "wg2.seeds"
TAG_GRID_FILE = "wg2.grid_file"
TAG_EXPECTED_CELLS = "wg2.expected_cells"
# a grid's cell runs
TAG_CELL_HASH = "wg2.cell_hash"
TAG_TRAIN_HASH = "wg2.train_hash"
TAG_GROUP = "wg2.group"
TAG_SEED = "wg2.seed"
TAG_ASSIGNMENT = "wg2.assignment"
TAG_DEPARTURES = "wg2.departures"  # JSON [{key, paper, value}]: the run config's departures from the paper
TAG_LABEL = "wg2.label"
TAG_OVERRIDES = "wg2.overrides"
TAG_AUTOENCODER_RUN = "wg2.autoencoder_run"
TAG_ERROR = "wg2.error"
TAG_END_REASON = "wg2.end_reason"  # why a run ended FAILED or KILLED (a grid parent, a cell)
# any training run (a cell, a `wg2 train` run): the step of its uploaded checkpoint.pt artifact
TAG_CHECKPOINT_STEP = "wg2.checkpoint_step"
TAG_CORPUS_HASH = "wg2.corpus_hash"  # sha256 of the corpus content (also the dataset input's digest, cut to 36)
TAG_CONFIG_FILE = "wg2.config_file"  # `wg2 train`: the config file given
TAG_TRAIN_KEY = "wg2.train_key"  # `wg2 train`: the run's own key (claimed by it, as a cell by its hash)
TAG_CHECKPOINT = "wg2.checkpoint"  # `wg2 eval`: the checkpoint file evaluated
# the autoencoder stage
TAG_AUTOENCODER_KEY = "wg2.autoencoder_key"
# claiming runs (experiments/tracking/claims.py)
TAG_OWNER = "wg2.owner"
TAG_HEARTBEAT = "wg2.heartbeat"
# where and with what a run was made
TAG_GIT_COMMIT = "wg2.git_commit"
TAG_MACHINE = "wg2.machine"
TAG_DEVICE = "wg2.device"
TAG_TORCH_VERSION = "wg2.torch_version"
TAG_PYTHON = "wg2.python"
TAG_VERSION_PREFIX = "wg2.version."  # + package name
# the schedule search's parent run and trial runs
TAG_STUDY = "wg2.study"
TAG_STUDY_KEY = "wg2.study_key"
TAG_STORAGE = "wg2.storage"
TAG_MODEL = "wg2.model"
TAG_MODEL_SHA256 = "wg2.model_sha256"
TAG_MODEL_CONFIG_HASH = "wg2.model_config_hash"
TAG_MODEL_RUN_ID = "wg2.model_run_id"
TAG_OBJECTIVES = "wg2.objectives"
TAG_SAMPLER = "wg2.sampler"
TAG_TRIALS_REQUESTED = "wg2.trials_requested"
TAG_TRIAL_NUMBER = "wg2.trial_number"
TAG_STATE = "wg2.state"
TAG_PRUNE_REASON = "wg2.prune_reason"
TAG_BASELINE = "wg2.baseline"


def tag_is(tag: str, value: str) -> str:
    """An MLflow search filter clause: tags.`tag` = 'value'."""
    return f"tags.`{tag}` = '{value}'"


# ----------------------------------------------------------------------------- the store

def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI, or None for any other store."""
    if not uri.startswith("sqlite:"):
        return None
    path = unquote(urlparse(uri).path)
    # sqlite:///relative.db -> path "/relative.db"; sqlite:////abs.db -> "//abs.db"
    if uri.startswith("sqlite:////"):
        return Path("/" + path.lstrip("/"))
    return Path(path.lstrip("/")).resolve() if path else None


# the tracking-store schemes MLflow opens (a database engine may carry a driver: postgresql+psycopg2)
STORE_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc")
REACH_SECONDS = 5.0  # how long a tracking server gets to accept a connection before the command gives up
SQLITE_HEADER = b"SQLite format 3\x00"


def store_problem(uri: str) -> str | None:
    """What is wrong with the tracking store at `uri`, found without opening it through MLflow (so nothing is
    created, migrated or retried for minutes), or None: an unknown scheme; a tracking server that accepts no
    connection within REACH_SECONDS; a SQLite file that is not SQLite, is truncated or corrupt, or holds another
    application's tables (MLflow would add its ~40 tables to it)."""
    scheme = urlparse(uri).scheme.lower().split("+")[0] if "://" in uri or uri.startswith("sqlite:") else ""
    if len(scheme) == 1:  # a Windows drive letter, C:/...
        scheme = ""
    if scheme not in STORE_SCHEMES:
        return (f"MLFLOW_TRACKING_URI={uri}: unknown scheme {scheme!r}; expected a path, sqlite:///FILE, "
                "http(s)://HOST:PORT or a database URL (postgresql://, mysql://, mssql://)")
    if scheme in ("http", "https"):
        return _unreachable(uri)
    db = sqlite_path(uri)
    return _sqlite_problem(uri, db) if db is not None and db.is_file() else None


def _unreachable(uri: str) -> str | None:
    """None when an MLflow tracking server answers at `uri` within REACH_SECONDS (name lookup included): its
    REST API replies, or asks for credentials. Otherwise why not, naming the URI."""
    import threading
    import urllib.error
    import urllib.request

    parsed = urlparse(uri)
    try:
        _ = parsed.port
    except ValueError:
        return f"MLFLOW_TRACKING_URI={uri}: not a valid port"
    if not parsed.hostname:
        return f"MLFLOW_TRACKING_URI={uri}: no host in the URI"
    probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    answer: list[str | None] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(probe, timeout=REACH_SECONDS).close()  # noqa: S310 - http(s) only, checked above
            answer.append(None)
        except urllib.error.HTTPError as err:  # a server answered: MLflow's, unless it does not know the API
            answer.append(None if err.code in (400, 401, 403) else f"answers HTTP {err.code} to MLflow's REST API")
        except Exception as err:  # noqa: BLE001 - refused, unknown host, TLS, timeout: all "not reachable"
            reason = getattr(err, "reason", err)
            answer.append(f"is not reachable ({getattr(reason, 'strerror', None) or reason})")

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(REACH_SECONDS + 1)
    problem = answer[0] if answer else f"is not reachable (no answer within {REACH_SECONDS:g} s)"
    if problem is None:
        return None
    return (f"MLflow tracking server {uri} {problem}; start it, or set MLFLOW_TRACKING_URI to a reachable MLflow "
            "store")


def _sqlite_problem(uri: str, db: Path) -> str | None:
    import sqlite3

    where = f"MLflow store {db} (tracking URI {uri})"
    try:
        with open(db, "rb") as fh:
            head = fh.read(100)
    except OSError as err:
        return f"{where}: cannot be read ({err.strerror or err})"
    if not head:
        return None  # an empty file: a new store
    if not head.startswith(SQLITE_HEADER) or len(head) < 100:
        return f"{where}: not an SQLite database (corrupt, or another kind of file); move it away or set " \
               "MLFLOW_TRACKING_URI to another store"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    valid = head[92:96] == head[24:28]  # the in-header size is trusted only when written by the same change
    wal = Path(f"{db}-wal")
    if valid and pages and not (wal.exists() and wal.stat().st_size) and db.stat().st_size < pages * page_size:
        return (f"{where}: truncated ({db.stat().st_size} bytes of the {pages * page_size} its header states); "
                "restore it from a backup or set MLFLOW_TRACKING_URI to another store")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.OperationalError as err:
        if "locked" in str(err).lower():
            return None  # another wg2 command writing it: MLflow waits and retries
        return f"{where}: unreadable ({err}); restore it from a backup or set MLFLOW_TRACKING_URI to another store"
    except sqlite3.DatabaseError as err:
        return f"{where}: corrupt ({err}); restore it from a backup or set MLFLOW_TRACKING_URI to another store"
    tables.discard("sqlite_sequence")
    if tables and not tables & {"alembic_version", "experiments"}:  # (a store being created has one of them)
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        return (f"{where}: another application's database (tables {shown}), not an MLflow store; wg2 would add "
                "MLflow's tables to it, so it is left alone: set MLFLOW_TRACKING_URI to an MLflow store or a new file")
    return None


def search_all_runs(mlf, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every active run matching the filter, following MLflow's pagination."""
    runs, token = [], None
    while True:
        page = mlf.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
