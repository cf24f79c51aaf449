"""The text of a `wg2 compare` report: report.md (markdown tables and the wording) and results.csv.

Plain data in (a `Grid` read back by evaluation.compare.mlflow), strings out; `write_atomic` puts them in place
through a temporary name. Tables show each cell's mean with its 95% interval, the best of each column in bold.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from evaluation.compare.data import (
    CLEAR,
    MIN_SEEDS,
    TOO_FEW_SEEDS,
    UNIT_SEED,
    CellRow,
    Effect,
    Grid,
    RunRecord,
    Stat,
    direction,
    end_reason,
    has_ceiling,
    json_tag,
    metric_key,
    show_value,
)
from evaluation.compare.target import fraction_of_ceiling
from evaluation.conditioning import READS_TEXT_THRESHOLD, reads_text
from evaluation.metrics import GAIN_KEY, PHONEME_GAIN_KEY, headline_metrics
from evaluation.runs import TAG_DEPARTURES, TAG_DEVICE, TAG_GIT_COMMIT, TAG_MACHINE, TAG_TORCH_VERSION
from evaluation.stats import PAIRED, SEED_T, WELCH

QUALITY = headline_metrics()  # columns of each schedule's table, with rtf
TRAINING = ("train/audio_seconds_per_sec", "train/peak_memory_mb", "train/wall_seconds", "train/loss")
UTTERANCE_MARK = "†"  # marks an interval across one run's utterances (a single seed) rather than seeds


def fmt(v: float | None) -> str:
    """A figure with about three significant digits; "—" for none."""
    if v is None or not math.isfinite(v):
        return "—"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def write_atomic(path: Path, text: str) -> Path:
    """Write through a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _entry(stat: Stat | None, best: bool) -> str:
    if stat is None or stat.mean is None:
        return "—"
    text = f"**{fmt(stat.mean)}**" if best else fmt(stat.mean)
    if stat.ci() is not None:
        text += f" [{fmt(stat.ci_low)}, {fmt(stat.ci_high)}]"
    return text + (UTTERANCE_MARK if stat.interval == "utterances" else "")


def _bests(rows: list[CellRow], key: str) -> set[str]:
    """Groups holding the best mean of a column; none when the direction is unknown or every cell ties."""
    sign = direction(key)
    means = [(group, sign * m) for group, m in ((r.group, r.mean(key)) for r in rows) if m is not None]
    if sign == 0 or len(means) < 2:
        return set()
    top, low = max(m for _, m in means), min(m for _, m in means)
    if math.isclose(top, low, rel_tol=1e-9, abs_tol=1e-12):
        return set()
    return {g for g, m in means if math.isclose(m, top, rel_tol=1e-9, abs_tol=1e-12)}


def _table(rows: list[CellRow], columns: list[tuple[str, str]], extra: dict[str, list[str]] | None = None) -> list[str]:
    """A markdown table: one row per cell, (header, metric key) columns with mean [95% interval], best in bold."""
    extra = extra or {}
    heads = ["cell", "seeds"] + [h for h, _ in columns] + list(extra)
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    bests = {key: _bests(rows, key) for _, key in columns}
    for i, row in enumerate(rows):
        cells = [f"`{_md_cell(row.label)}`", str(len(row.run_ids))]
        cells += [_entry(row.stats.get(key), row.group in bests[key]) for _, key in columns]
        cells += [col[i] for col in extra.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _legend(rows: list[CellRow], keys: list[str]) -> str:
    kinds = {row.stats[k].interval for row in rows for k in keys if k in row.stats and row.stats[k].interval}
    parts = ["mean [95% interval]; best of each column in **bold** (higher is better for PESQ/STOI/ESTOI and "
             "throughput, lower for MCD, RTF, memory, loss)"]
    if "seeds" in kinds:
        parts.append("intervals without a mark: t-interval across seeds")
    if "utterances" in kinds:
        parts.append(f"{UTTERANCE_MARK}: a single seed, so the interval is across that run's utterances")
    return "Intervals: " + "; ".join(parts) + "."


def _provenance(parent, runs: list[RunRecord]) -> list[str]:
    def values(tag: str) -> str:
        seen: dict[str, int] = {}
        for r in runs:
            if r.tags.get(tag):
                seen[r.tags[tag]] = seen.get(r.tags[tag], 0) + 1
        if parent is not None and parent.data.tags.get(tag) and not seen:
            return f"`{parent.data.tags[tag]}`"
        if len(seen) <= 1:
            return f"`{next(iter(seen))}`" if seen else "unknown"
        return ", ".join(f"`{v}` ({n} runs)" for v, n in seen.items())
    return [f"- machine: {values(TAG_MACHINE)}; device: {values(TAG_DEVICE)}; torch: {values(TAG_TORCH_VERSION)}",
            f"- commit: {values(TAG_GIT_COMMIT)}"]


def _interval_text(e: Effect) -> str:
    if e.verdict == TOO_FEW_SEEDS:
        return f"{e.n} seed(s), too few for an interval (per seed: {_per_seed_effects(e)})"
    if e.ci_low is None:
        return "no interval"
    p = f", p {e.p_value:.2g}" if e.p_value is not None else ""
    return f"95% interval [{e.ci_low:+.3g}, {e.ci_high:+.3g}] across {e.n} {e.unit}s{p}"


def _per_seed_effects(e: Effect) -> str:
    return ", ".join(f"{v:+.3g}" for v in e.per_seed.values()) or "—"


def _in_brief(effects: list[Effect], metric: str) -> list[str]:
    """One plain sentence per pair of axis values, at the first schedule each was compared at."""
    lines, seen = [], set()
    sign = direction(metric)
    for e in effects:
        if (e.axis, e.a, e.b) in seen:
            continue
        seen.add((e.axis, e.a, e.b))
        where = f"at {e.schedule}" if e.schedule else ""
        ci = _interval_text(e)
        if sign == 0 or e.verdict == TOO_FEW_SEEDS:
            lines.append(f"- `{e.axis}`: {e.a} − {e.b} = {e.diff:+.3g} {metric} {where} ({ci}).")
        elif e.verdict != CLEAR:
            lines.append(f"- `{e.axis}`: no clear difference between {e.a} and {e.b} on {metric} {where} "
                         f"({e.a} − {e.b} = {e.diff:+.3g}, {ci}).")
        else:
            better, worse = (e.a, e.b) if sign * e.diff > 0 else (e.b, e.a)
            lines.append(f"- `{e.axis}`: {better} beats {worse} on {metric} {where} by {abs(e.diff):.3g} "
                         f"({e.a} − {e.b}, {ci}).")
    return lines


def departures_section(runs: list[RunRecord]) -> list[str]:
    """The cells' departures from WaveGrad 2 as published (tag wg2.departures, logged by every run): those all
    cells share, and those that differ between cells."""
    seen: list[list[dict]] = [json_tag(r.tags.get(TAG_DEPARTURES), None) for r in runs]
    known = [d for d in seen if d is not None]
    out = ["## Departures from the paper", ""]
    if not known:
        return out + ["Not recorded (runs from before departures were logged).", ""]

    def key(d: dict) -> str:
        return f"`{d['key']}` = {json.dumps(d['value'])} (paper: {json.dumps(d['paper'])})"
    sets = [{key(d) for d in ds} for ds in known]
    shared = set.intersection(*sets)
    differ = sorted(set.union(*sets) - shared)
    out += ["Shared by every cell: " + ("; ".join(sorted(shared)) if shared else "none (WaveGrad 2 as published)")
            + ".", ""]
    if differ:
        out += ["Differing between cells (the grid's own axes among them): " + "; ".join(differ) + ".", ""]
    if len(known) < len(seen):
        out += [f"{len(seen) - len(known)} run(s) did not record their departures.", ""]
    return out


OWN = "own-schedule"  # pseudo schedule of the combined table when every cell ran a single, different schedule


def _schedule_views(rows: list[CellRow], schedules: list[str]) -> list[tuple[str, str, list[CellRow]]]:
    """(title, schedule, rows) per table: one per schedule; but when each cell was evaluated at one schedule of
    its own (an eval.schedules axis), one table of all cells, each at its schedule, so they can be compared."""
    own = {r.group: [s for s in schedules if any(k.startswith(s + "/") and st.mean is not None
                                                 for k, st in r.stats.items())] for r in rows}
    if len(schedules) < 2 or not rows or any(len(v) != 1 for v in own.values()):
        return [(f"at schedule `{s}`", s, rows) for s in schedules]
    view = []
    for r in rows:
        s = own[r.group][0]
        stats = {**r.stats, **{f"{OWN}/{k.split('/', 1)[1]}": st for k, st in r.stats.items() if k.startswith(s + "/")}}
        view.append(dataclasses.replace(r, stats=stats, params={**r.params, OWN: s}))
    return [("(each cell at its own schedule)", OWN, view)]


def cell_reads_text(row: CellRow) -> bool | None:
    """Does the cell's model read its text? With one seed: its phoneme gain's interval over the held-out utterances lies
    above 1. With several: every seed's model does (each run's own interval), since the question is about the
    trained models; the across-seed interval of the mean (df = seeds - 1) answers another one, how much gain
    the recipe gives. None: no conditioning gain recorded (a run from before it was measured)."""
    measured = [g for g in row.run_gains if g.get("mean") is not None]
    if row.run_gains and len(measured) == len(row.run_gains):
        return all(reads_text(g) for g in measured)
    stat = row.stats.get(PHONEME_GAIN_KEY)
    if stat is None or stat.mean is None:
        return None
    return reads_text({"mean": stat.mean, "ci_low": stat.ci_low})


def _per_seed(row: CellRow) -> str:
    """Each seed's phoneme gain with the low end of its interval: '1.12 (>1.09), 1.16 (>1.12)'."""
    parts = []
    for g in row.run_gains:
        if g.get("mean") is None:
            parts.append("-")
        else:
            low = g.get("ci_low")
            parts.append(f"{g['mean']:.3g}" + (f" (>{low:.3g})" if low is not None else ""))
    return ", ".join(parts)


def _text_section(rows: list[CellRow]) -> list[str]:
    """Does each cell read its text? Shown above every quality number (evaluation/conditioning.py)."""
    out = ["## Does each cell read its text?", "",
           "Two gains, each a noise-prediction loss on the speech frames of held-out utterances (fixed noise levels "
           "and seeds) over the loss with the true text. Envelope gain: the text's states rolled by half the "
           "utterance, which swaps speech and silence, so knowing where the pauses are already scores above 1. "
           "Phoneme gain: every speech phoneme replaced through a fixed derangement (durations and silences kept), "
           "so only phoneme identity scores. 1 means the decoder ignores it and the cell's quality numbers compare "
           "noise; a model reads its text when the 95% interval of its phoneme gain over the held-out utterances "
           f"lies above 1 (one utterance: its value above {READS_TEXT_THRESHOLD}), and a cell does when each of "
           "its seeds' models does (per seed: phoneme gain and the low end of its interval).", ""]
    verdicts = {r.group: cell_reads_text(r) for r in rows}
    out += _table(rows, [("envelope gain", GAIN_KEY), ("phoneme gain", PHONEME_GAIN_KEY)],
                  {"per seed": [_per_seed(r) for r in rows],
                   "reads its text": ["unmeasured" if v is None else "yes" if v else "**NO**"
                                      for v in verdicts.values()]})
    out += ["", _legend(rows, [GAIN_KEY, PHONEME_GAIN_KEY]), ""]
    silent = [r.label for r in rows if verdicts[r.group] is False]
    unmeasured = [r.label for r in rows if verdicts[r.group] is None]
    if silent:
        out += ["**Does not use its text** (its quality numbers below compare noise): "
                + ", ".join(f"`{_md_cell(c)}`" for c in silent) + ".", ""]
    if unmeasured:
        out += ["No conditioning gain recorded (treat their quality numbers as unverified): "
                + ", ".join(f"`{_md_cell(c)}`" for c in unmeasured) + ".", ""]
    if not silent and not unmeasured:
        out += ["Every cell reads its text.", ""]
    return out


def effects_section(effects: list[Effect], metric: str) -> list[str]:
    """Each axis's marginal effect with its unit of evidence: across seeds for an axis that changes training, paired
    on utterances within each model for an eval-only axis (unpaired where per-utterance values are missing)."""
    out = [f"## Marginal effect of each axis on {metric}", ""]
    if not effects:
        return out + ["No axis has two values with finished runs to compare.", ""]
    out.append("Difference (first value − second), over the other axes' settings where both values finished. "
               "Interval ends are clipped to the range a difference of the metric can take.")
    if any(e.unit == UNIT_SEED and e.test == SEED_T for e in effects):
        out += ["", f"**Training axes** (unit: seed; test: {SEED_T}): each seed's effect is its paired mean over "
                   "utterances (same utterances, same noise seeds), averaged over the other axes' settings; the "
                   f"difference is the mean over seeds, the 95% interval a t-interval across seeds (seeds − 1 degrees "
                   f"of freedom), p a one-sample t-test. With fewer than {MIN_SEEDS} seeds there is no interval and "
                   f"no p: the verdict is \"{TOO_FEW_SEEDS}\" and the per-seed effects are shown."]
    if any(e.test == PAIRED for e in effects):
        out += ["", f"**Eval-only axes** (unit: utterance; test: {PAIRED}): the same trained models evaluated two "
                   "ways, so each utterance's difference is taken within a model (seed and setting) and pooled; "
                   "the 95% interval is a t-interval on them, p the two-sided Wilcoxon signed-rank test. These "
                   "intervals speak for these models, not for retraining."]
    if any(e.test == WELCH for e in effects):
        out += ["", f"**Unpaired** rows (test: {WELCH}; per-utterance values not available, reason in the last "
                   "column): the difference of the cell means, averaged over settings, with an interval from the "
                   "seed-to-seed variance."]
    out += ["", "| axis | values | schedule | difference | 95% interval | unit (n) | p | verdict | per seed / note |",
            "|---|---|---|---|---|---|---|---|---|"]
    for e in effects:
        ci = f"[{e.ci_low:+.3g}, {e.ci_high:+.3g}]" if e.ci_low is not None else "—"
        p = f"{e.p_value:.3g}" if e.p_value is not None else "—"
        extra = _per_seed_effects(e) if e.per_seed else ""
        if e.note:
            extra = f"{extra}; {_md_cell(e.note)}" if extra else _md_cell(e.note)
        out.append(f"| `{e.axis}` | {_md_cell(e.a)} − {_md_cell(e.b)} | {e.schedule} | {e.diff:+.3g} | {ci} "
                   f"| {e.unit} ({e.n}) | {p} | {e.verdict} | {extra} |")
    return out + [""]


def listen_section(page: Path | None) -> str:
    """A link to the listening page (written beside report.md by evaluation.compare.listen), or nothing."""
    if page is None:
        return ""
    return ("\n## Listen\n\n"
            f"[{page.name}]({page.name}): per evaluated utterance the reference and every cell's output at each "
            "schedule, free-running and with ground-truth durations, with log-mel spectrograms; cells sortable by a "
            "metric, and a blind A/B mode. Open it in a browser from this folder (the audio lies beside it in "
            "listen/).\n")


def render_markdown(grid: Grid, plot_files: list[Path]) -> str:
    """report.md: the question, the cells' states, the answer in brief, the latent target, each axis's marginal
    effect, quality and speed per schedule, training cost, missing metric values and the plots."""
    name, experiment_id, parent, question = grid.name, grid.experiment_id, grid.parent, grid.question
    rows, runs, status, expected_source = grid.rows, grid.runs, grid.status, grid.expected_source
    schedules, metric, effects, ceilings, target = grid.schedules, grid.metric, grid.effects, grid.ceilings, grid.target
    out = [f"# {name}", "", f"**Question.** {question}", ""]
    out.append(f"MLflow experiment `{name}` (id {experiment_id})"
               + (f", parent run `{parent.info.run_id}`." if parent is not None else "; no grid parent run found."))
    out += _provenance(parent, runs) + [""]
    if parent is not None and parent.info.status in ("FAILED", "KILLED"):
        out += [f"The grid's parent run ended **{parent.info.status}**: "
                f"{_md_cell(end_reason(parent.data.tags, parent.info.status))}", ""]

    out += ["## Cells", ""]
    n_expected = len(status["expected"]) if status["expected"] else None
    out.append(f"{len(status['finished'])} finished, {len(status['failed'])} failed, {len(status['running'])} "
               f"running or interrupted, {len(status['missing'])} missing"
               + (f" of {n_expected} expected ({expected_source})." if n_expected is not None else
                  " (no list of expected cells was found)."))
    for state in ("missing", "failed", "running"):
        if status[state]:
            out += ["", f"{state.capitalize()}:"] + [f"- `{_md_cell(t)}`" for t in status[state]]
    out.append("")
    if not rows:
        return "\n".join(out + ["No cell has finished yet, so there is nothing to compare.", ""])

    out += departures_section(runs)
    out += _text_section(rows)
    brief = _in_brief(effects, metric)
    if brief:
        out += ["## In brief", ""] + brief + [""]

    if target is not None:
        out += ["## Latent space: was the target reached?", "", target.statement, ""]
        if target.comparisons:
            out += ["| R=16 cell | schedule | speed-up vs waveform | PESQ-wb vs waveform | reached |",
                    "|---|---|---|---|---|"]
            out += [f"| `{_md_cell(c['cell'])}` | {c['schedule']} | {c['speedup']:.2f}x | "
                    f"{100 * c['quality_fraction']:.1f}% | {'yes' if c['reached'] else 'no'} |"
                    for c in target.comparisons]
            out.append("")
        out += ["Autoencoder ceiling (reconstruction through stage one, val split): "
                + ("; ".join(f"{lab}: " + ", ".join(f"{k} {fmt(v)}" for k, v in sorted(rec.items()))
                             for lab, rec in ceilings) if ceilings else "not found (no linked autoencoder run)."), ""]

    out += effects_section(effects, metric)

    latent = any(has_ceiling(r.params) for r in rows)
    for title, s, here in _schedule_views(rows, schedules):
        cols = [("envelope gain", GAIN_KEY), ("phoneme gain", PHONEME_GAIN_KEY)]
        cols += [(m, metric_key(m, s)) for m in dict.fromkeys((*QUALITY, metric)) if "/" not in m]
        cols.append(("rtf", f"{s}/rtf"))
        here = [r for r in here if any(r.mean(k) is not None for _, k in cols)]
        cols = [(h, k) for h, k in cols if any(r.mean(k) is not None for r in here)]
        if not here:
            continue
        extra = {}
        if s == OWN:
            extra["schedule"] = [r.params.get(OWN, "") for r in here]
        if latent:
            extra[f"fraction of ceiling ({metric})"] = [
                fmt(fraction_of_ceiling(r.mean(metric_key(metric, s)), r.ceiling.get(metric), metric)) for r in here]
        out += [f"## Quality and speed {title}", ""] + _table(here, cols, extra)
        out += ["", _legend(here, [k for _, k in cols]), ""]
        if latent:
            out += [f"Fraction of ceiling: the cell's {metric} relative to its autoencoder's reconstruction "
                    "(1 = as good as stage one allows).", ""]

    cols = [(h, k) for h, k in (("train audio s/s", TRAINING[0]), ("peak train memory MB", TRAINING[1]),
                                 ("train wall s", TRAINING[2]), ("final train loss", TRAINING[3]))
            if any(r.mean(k) is not None for r in rows)]
    if cols:
        out += ["## Training speed and memory", ""] + _table(rows, cols) + ["", _legend(rows, [k for _, k in cols]), ""]

    out += ["## Missing metric values", ""]
    gaps = [(r.label, k, s.n_missing) for r in rows for k, s in sorted(r.stats.items()) if s.n_missing]
    if gaps:
        out += ["Utterances without a value (summed over seeds; reasons in each run's summary.json).", "",
                "| cell | metric | missing |", "|---|---|---|"]
        out += [f"| `{_md_cell(lab)}` | {k} | {n} |" for lab, k, n in gaps]
    else:
        out.append("None: every scored utterance has every metric.")
    out.append("")

    if plot_files:
        out += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plot_files] + [""]
    return "\n".join(out)


def results_csv(grid: Grid) -> str:
    """One row per cell: its axis values, then every metric's mean, interval, n, interval kind and missing count;
    latent grids add the autoencoder's recon metrics and each schedule's fraction of that ceiling."""
    rows, axes, metric, schedules = grid.rows, grid.axes, grid.metric, grid.schedules
    keys = sorted({k for r in rows for k in r.stats})
    heads = ["cell", "group", *axes, "n_runs", "seeds"]
    for k in keys:
        heads += [f"{k}_mean", f"{k}_ci_low", f"{k}_ci_high", f"{k}_n", f"{k}_interval", f"{k}_n_missing"]
    ceiling_keys = sorted({k for r in rows for k in r.ceiling})
    fractions = [metric_key(metric, s) for s in schedules] if metric in ceiling_keys else []
    heads += [f"ceiling/{k}" for k in ceiling_keys] + [f"{k}_fraction_of_ceiling" for k in fractions]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(heads)
    for r in rows:
        line: list[Any] = [r.label, r.group, *[show_value(r.assignment[a]) if a in r.assignment else "" for a in axes],
                           len(r.run_ids), " ".join(map(str, r.seeds))]
        for k in keys:
            s = r.stats.get(k) or Stat(None)
            line += ["" if v is None else v for v in (s.mean, s.ci_low, s.ci_high)] + [s.n, s.interval, s.n_missing]
        line += [r.ceiling.get(k, "") for k in ceiling_keys]
        line += [fraction_of_ceiling(r.mean(k), r.ceiling.get(metric), metric) or "" for k in fractions]
        writer.writerow(line)
    return buf.getvalue()

