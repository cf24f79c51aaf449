"""`wg2`: the suite's command line. Each subcommand's handler lives in the module that owns the work
and is imported only when that subcommand runs, so `wg2 --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from evaluation.metrics import DEFAULT_METRIC
from evaluation.runs import EXPERIMENT_EVAL, EXPERIMENT_TRAIN
from experiments.grid.file import MAX_CELLS
from experiments.tracking.ending import Terminated, interrupt_reason, raise_on_sigterm

DISTRIBUTION = "wavegrad2-ablation"


def _handler(target: str):
    def run(args: argparse.Namespace) -> int:
        module, func = target.split(":")
        return getattr(importlib.import_module(module), func)(args)
    return run


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run (auto: CUDA when visible, else CPU)")


def _precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default=None, choices=["auto", "bf16", "fp32"],
                   help="network arithmetic for synthesis (default: the checkpoint's eval.precision)")


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key (repeatable), type-checked")


def _tracking(p: argparse.ArgumentParser, experiment: str) -> None:
    p.add_argument("--no-track", action="store_true", help="write nothing to MLflow")
    p.add_argument("--experiment", default=None, metavar="NAME",
                   help=f"MLflow experiment (default {experiment!r}); store: MLFLOW_TRACKING_URI, else ./mlflow.db")


def _skip_unknown(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-unknown-phonemes", action="store_true",
                   help="leave out utterances holding phonemes the model never saw (a corpus changed since training)")


def _max_cells(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-cells", type=int, default=MAX_CELLS, metavar="N",
                   help=f"refuse a grid of more cells than this, counted from its axes (default {MAX_CELLS})")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed)"


def _verbosity() -> argparse.ArgumentParser:
    """-q/-v, shared by every subcommand: the level of the root logger that status messages go through."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                       default=logging.INFO, help="only warnings and errors on stderr")
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                       help="debug messages too")
    return common


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message is logged (not the stream of the moment it was made)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: int) -> None:
    """The root logger, configured once per process: messages to stderr, so stdout holds only results."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_wg2", False)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._wg2 = True  # type: ignore[attr-defined]  # ours to remove on the next call
    root.addHandler(handler)
    root.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wg2", description="WaveGrad 2 ablation suite: corpora, training, "
                                     "synthesis, evaluation, MLflow grids and Optuna schedule search.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    common = _verbosity()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    corpus = sub.add_parser("corpus", help="build the offline default corpus or check any corpus")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    p = corpus_sub.add_parser("build", parents=[common],
                              help="synthesize the Harvard-sentence corpus offline with espeak-ng")
    p.add_argument("--out", default="corpora/harvard", help="output folder (LJSpeech layout + TextGrids)")
    p.add_argument("--voice", default="en-us", help="espeak-ng voice")
    p.add_argument("--limit", type=int, default=0, help="only the first N sentences (0 = all 720)")
    p.add_argument("--workers", type=int, default=0, help="processes (0 = one per core)")
    p.set_defaults(func=_handler("experiments.corpus.command:cmd_build"))
    p = corpus_sub.add_parser("check", parents=[common],
                              help="read an LJSpeech-layout corpus with TextGrids and report on it")
    p.add_argument("dir", help="corpus folder (metadata.csv, wavs/)")
    p.add_argument("--alignments", default=None, help="folder searched for ID.TextGrid (default DIR/alignments)")
    p.add_argument("--skip-bad", action="store_true", help="drop unusable utterances instead of failing")
    p.add_argument("--hop-length", type=int, default=300, help="frame hop in samples for durations")
    p.add_argument("--sample-rate", type=int, default=22050, help="rate audio is resampled to")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_handler("experiments.corpus.command:cmd_check"))

    config = sub.add_parser("config", help="inspect run configs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    p = config_sub.add_parser("show", parents=[common],
                              help="print the resolved config and its departures from WaveGrad 2 as published")
    p.add_argument("config", help="TOML run config")
    _overrides(p)
    p.add_argument("--json", action="store_true", help='print {"config": {...}, "departures": [...]}')
    p.set_defaults(func=_handler("experiments.config.departures:cmd_config_show"))

    p = sub.add_parser("train", parents=[common], help="train one WaveGrad 2 model from a TOML config")
    p.add_argument("config", help="run config (TOML)")
    _overrides(p)
    _device(p)
    p.add_argument("--out", default=None, help="run folder (default runs/<config hash>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run folder's last checkpoint, or the tracking server's when later")
    _tracking(p, EXPERIMENT_TRAIN)
    p.set_defaults(func=_handler("experiments.train.command:cmd_train"))

    p = sub.add_parser("synth", parents=[common], help="synthesize a sentence (or a corpus utterance) to a wav file")
    p.add_argument("checkpoint", help="checkpoint file (.pt) or MLflow run ID")
    p.add_argument("text", nargs="?", default=None, help="text to say (espeak-ng front end)")
    p.add_argument("-o", "--out", required=True, help="output wav")
    p.add_argument("--schedule", default=None,
                   help="inference schedule name or .json/.toml file (default: the checkpoint's first eval schedule, "
                        "which passed the schedule check when it trained)")
    p.add_argument("--pace", type=float, default=1.0, help=">1 speaks faster")
    p.add_argument("--utterance", default=None, help="corpus utterance ID: use its ground-truth durations")
    p.add_argument("--phonemes", default=None, help="space-separated phonemes instead of text")
    p.add_argument("--seed", type=int, default=0)
    _precision(p)
    _device(p)
    p.set_defaults(func=_handler("experiments.infer.synth:cmd_synth"))

    p = sub.add_parser("bench", parents=[common], help="measure training and inference speed and memory per preset")
    p.add_argument("--presets", default="tiny,base", help="comma-separated decoder presets")
    p.add_argument("--seconds", type=float, default=None,
                   help="utterance length for inference timing (default 10 s on CUDA, 2 s on CPU)")
    p.add_argument("--batch-size", type=int, default=4, help="training batch size")
    p.add_argument("--window-frames", type=int, default=64)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="timed beside eager fp32 in every row (auto: bf16 where the device computes it natively)")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="write the table (markdown) and JSON here")
    p.add_argument("--json", action="store_true", help="print the rows as JSON on stdout instead of the table")
    p.add_argument("--config", default=None,
                   help="run config (TOML) whose [train] section the timed training step uses (default: the defaults)")
    _overrides(p)
    _device(p)
    p.set_defaults(func=_handler("experiments.infer.bench:cmd_bench"))

    p = sub.add_parser("score", parents=[common], help="score a degraded wav against a reference with every metric")
    p.add_argument("reference")
    p.add_argument("degraded")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_handler("experiments.infer.score:cmd_score"))

    p = sub.add_parser("eval", parents=[common],
                       help="synthesize a split with a checkpoint and score quality and speed")
    p.add_argument("checkpoint", help="checkpoint file (.pt) or MLflow run ID")
    p.add_argument("--schedules", default=None, help="comma-separated schedule names or files")
    p.add_argument("--split", default=None, choices=["train", "val", "test"])
    p.add_argument("--limit", type=int, default=None, help="utterances (0 = all)")
    p.add_argument("--out", default=None, help="output folder (default next to the checkpoint)")
    p.add_argument("--workers", type=int, default=None, help="metric worker processes")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    _skip_unknown(p)
    _precision(p)
    _device(p)
    _tracking(p, EXPERIMENT_EVAL)
    p.set_defaults(func=_handler("experiments.infer.command:cmd_eval"))

    p = sub.add_parser("grid", parents=[common], help="run an ablation grid tracked in MLflow (resumable)")
    p.add_argument("grid", help="grid file (TOML)")
    _overrides(p)
    p.add_argument("--workers", type=int, default=1, help="cells run in parallel processes")
    _device(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the cells, their hashes and their price in GPU-hours, then stop")
    p.add_argument("--gpu", default=None, help="GPU the dry run prices on: h100 (default), h200, a100, or NAME=TFLOPS "
                   "(bf16 dense peak)")
    p.add_argument("--utilisation", type=float, default=None,
                   help="fraction of the GPU's peak a FLOP-derived price assumes (default 0.10)")
    _max_cells(p)
    p.set_defaults(func=_handler("experiments.grid.run:cmd_grid"))

    p = sub.add_parser("compare", parents=[common], help="report a grid's MLflow runs: tables, intervals, plots")
    p.add_argument("target", help="grid file or MLflow experiment name")
    p.add_argument("--out", default=None, help="report folder (default results/<grid name>)")
    p.add_argument("--metric", default=DEFAULT_METRIC, help="headline metric")
    p.add_argument("--json", action="store_true", help="print the report's content as JSON on stdout")
    p.add_argument("--force", action="store_true",
                   help="replace files in --out that an earlier `wg2 compare` did not write (refused otherwise)")
    _max_cells(p)
    p.set_defaults(func=_handler("experiments.grid.compare:cmd_compare"))

    p = sub.add_parser("search", parents=[common], help="search an inference noise schedule with Optuna")
    p.add_argument("model", help="checkpoint file or MLflow run ID")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--objective", default=DEFAULT_METRIC)
    p.add_argument("--multi", action="store_true", help="quality (PESQ-wb, STOI) against steps: a Pareto front")
    p.add_argument("--min-steps", type=int, default=3, help="with --multi")
    p.add_argument("--max-steps", type=int, default=12, help="with --multi")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "grid"])
    p.add_argument("--storage", default=None, help="SQLAlchemy URL (default sqlite:///optuna.db)")
    p.add_argument("--study", default=None, help="study name (rerun to resume)")
    p.add_argument("--workers", type=int, default=1, help="local processes on one study")
    p.add_argument("--limit-utterances", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/schedules", help="where the best schedule file goes")
    _skip_unknown(p)
    _device(p)
    p.set_defaults(func=_handler("experiments.search.command:cmd_search"))

    p = sub.add_parser("autoencoder", help="latent space: train the stage-one waveform autoencoder")
    ae_sub = p.add_subparsers(dest="autoencoder_command", metavar="ACTION", required=True)
    p = ae_sub.add_parser("train", parents=[common], help="train (or find cached) the autoencoder for a config")
    p.add_argument("config", help="run config (TOML) with [autoencoder] and [data]")
    _overrides(p)
    _device(p)
    p.set_defaults(func=_handler("experiments.train.autoencoder:cmd_autoencoder_train"))
    return parser


def main(argv: list[str] | None = None) -> int:
    from experiments.config.run import InputError

    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "log_level", logging.INFO))
    raise_on_sigterm()  # `kill PID` ends runs and trials KILLED, as Ctrl-C does, instead of leaving them RUNNING
    try:
        code = args.func(args)
    except InputError as err:
        print(f"wg2: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # what was running is marked KILLED; a rerun resumes it
        resume = "" if getattr(args, "dry_run", False) else "; rerun the same command to resume"
        print(f"wg2: {interrupt_reason(err)}{resume}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130  # the shell's codes for death by SIGTERM / SIGINT
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
