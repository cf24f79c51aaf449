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


def search_all_runs(mlf, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every active run matching the filter, following MLflow's pagination."""
    runs, token = [], None
    while True:
        page = mlf.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
