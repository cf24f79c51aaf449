"""The text of a `wg2 compare` report: report.md (markdown tables and the wording) and results.csv.

Plain data in (a `Grid` read back by evaluation.compare.mlflow), strings out; `write_atomic` puts them in place
through a temporary name. Tables show each cell's mean with its 95% interval, the best of each column in bold.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Any

from evaluation.runs import TAG_DEVICE, TAG_GIT_COMMIT, TAG_MACHINE, TAG_TORCH_VERSION
from evaluation.conditioning import GAIN_KEY, READS_TEXT_THRESHOLD, reads_text
from evaluation.metrics import headline_metrics
from evaluation.stats import PAIRED, WELCH
from evaluation.compare.data import (CellRow, Effect, Grid, RunRecord, Stat, direction, end_reason, metric_key,
                                     show_value)
from evaluation.compare.target import fraction_of_ceiling

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


def _in_brief(effects: list[Effect], metric: str) -> list[str]:
    """One plain sentence per pair of axis values, at the first schedule each was compared at."""
    lines, seen = [], set()
    sign = direction(metric)
    for e in effects:
        if (e.axis, e.a, e.b) in seen:
            continue
        seen.add((e.axis, e.a, e.b))
        where = f"at {e.schedule}" if e.schedule else ""
        ci = f"95% interval [{e.ci_low:+.3g}, {e.ci_high:+.3g}]" if e.ci_low is not None else "no interval"
        if sign == 0:
            lines.append(f"- `{e.axis}`: {e.a} − {e.b} = {e.diff:+.3g} {metric} {where} ({ci}).")
            continue
        better, worse = (e.a, e.b) if sign * e.diff > 0 else (e.b, e.a)
        if e.ci_low is not None and e.ci_high is not None and e.ci_low <= 0 <= e.ci_high:
            lines.append(f"- `{e.axis}`: no clear difference between {e.a} and {e.b} on {metric} {where} "
                         f"({e.a} − {e.b} = {e.diff:+.3g}, {ci} includes 0).")
        else:
            lines.append(f"- `{e.axis}`: {better} beats {worse} on {metric} {where} by {abs(e.diff):.3g} "
                         f"({e.a} − {e.b}, {ci}" + (", too few runs to tell it from noise" if e.ci_low is None
                                                     else "") + ").")
    return lines


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
    """Does the cell's model read its text? With one seed: its gain's interval over the held-out utterances lies
    above 1. With several: every seed's model does (each run's own interval), since the question is about the
    trained models; the across-seed interval of the mean (df = seeds - 1) answers another one, how much gain
    the recipe gives. None: no conditioning gain recorded (a run from before it was measured)."""
    measured = [g for g in row.run_gains if g.get("mean") is not None]
    if row.run_gains and len(measured) == len(row.run_gains):
        return all(reads_text(g) for g in measured)
    stat = row.stats.get(GAIN_KEY)
    if stat is None or stat.mean is None:
        return None
    return reads_text({"mean": stat.mean, "ci_low": stat.ci_low})


def _per_seed(row: CellRow) -> str:
    """Each seed's gain with the low end of its interval: '1.12 (>1.09), 1.16 (>1.12)'."""
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
           "Conditioning gain: noise-prediction loss with the text's states shifted in time over the loss with the "
           "true states, on held-out utterances at fixed noise levels and seeds. 1 means the decoder ignores its text "
           "and the cell's quality numbers compare noise; a model reads its text when the 95% interval of its gain "
           f"over the held-out utterances lies above 1 (one utterance: its value above {READS_TEXT_THRESHOLD}), and "
           "a cell does when each of its seeds' models does (per seed: gain and the low end of its interval).", ""]
    verdicts = {r.group: cell_reads_text(r) for r in rows}
    out += _table(rows, [("conditioning gain", GAIN_KEY)],
                  {"per seed": [_per_seed(r) for r in rows],
                   "reads its text": ["unmeasured" if v is None else "yes" if v else "**NO**"
                                      for v in verdicts.values()]})
    out += ["", _legend(rows, [GAIN_KEY]), ""]
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
    """Each axis's marginal effect, saying for each difference which test made its interval: paired on utterances
    (same utterances, same noise seeds) where the runs logged per-utterance values, else unpaired, and why."""
    out = [f"## Marginal effect of each axis on {metric}", ""]
    if not effects:
        return out + ["No axis has two values with finished runs to compare.", ""]
    paired = [e for e in effects if e.test == PAIRED]
    unpaired = [e for e in effects if e.test != PAIRED]
    out.append("Difference (first value − second), over the other axes' settings where both values finished. "
               "Interval ends are clipped to the range a difference of the metric can take.")
    if paired:
        out += ["", f"**Paired** rows (test: {PAIRED}): the cells were scored on the same utterances with the same "
                   "noise seeds, so each utterance's difference is taken within a seed (and setting of the other "
                   "axes) and pooled; the difference is the mean of those, the 95% interval a t-interval on them, "
                   "p the two-sided Wilcoxon signed-rank test of them."]
    if unpaired:
        out += ["", f"**Unpaired** rows (test: {WELCH}; per-utterance values not available, reason in the last "
                   "column): the difference of the cell means (seeds pooled within a cell), averaged over settings; "
                   "95% interval with one setting Welch across seeds, with several a t-interval from the "
                   "seed-to-seed variance pooled over those cells (without repeated seeds, from the spread of the "
                   "differences across settings)."]
    out += ["", "| axis | values | schedule | difference | 95% interval | test | Wilcoxon p | runs (settings) "
            "| pairs / why unpaired |", "|---|---|---|---|---|---|---|---|---|"]
    for e in effects:
        ci = f"[{e.ci_low:+.3g}, {e.ci_high:+.3g}]" if e.ci_low is not None else "— (too few runs)"
        p = f"{e.p_value:.3g}" if e.p_value is not None else "—"
        why = f"{e.n_pairs} pairs" if e.test == PAIRED else _md_cell(e.note or "no per-utterance values")
        out.append(f"| `{e.axis}` | {_md_cell(e.a)} − {_md_cell(e.b)} | {e.schedule} | {e.diff:+.3g} | {ci} "
                   f"| {'paired' if e.test == PAIRED else 'Welch'} | {p} | {e.n_a} vs {e.n_b} ({e.settings}) "
                   f"| {why} |")
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

    latent = any(r.params.get("model.space") == "latent" for r in rows)
    for title, s, here in _schedule_views(rows, schedules):
        cols = [("gain", GAIN_KEY)] + [(m, metric_key(m, s)) for m in dict.fromkeys((*QUALITY, metric)) if "/" not in m]
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

