"""listen.html: a self-contained listening page for a grid's outputs (`wg2 compare` writes it beside report.md).

Given the cells (each with its kept wavs per schedule and pass) and the references, `write_listen_page` copies the
audio next to the page under listen/, draws a log-mel spectrogram PNG for each wav, and writes one HTML file with
plain inline CSS and JavaScript: no server, no CDN, opens from the folder (file://).

The page: per evaluated utterance the reference and every cell's output at each schedule, free-running (predicted
durations) and with ground-truth durations, each with its spectrogram; the cells' rows sortable by a metric; a blind
A/B mode (two players, labels hidden until "Reveal"). Its script writes `#status` ("audio ok N/N") once every
<audio> has fired loadedmetadata (or error), so a headless browser can check that every file plays; opened with
`?selftest` it then clicks Reveal itself (and `?sort=KEY` sorts by KEY first), which is how the tests drive it.

Pure: no MLflow here (evaluation.compare.build downloads the runs' artifacts and calls this).
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluation.compare.data import direction

GT, FREE = "gt", "free"  # the two passes: ground-truth durations, predicted durations (free-running)
PASS_TITLES = {GT: "ground-truth durations", FREE: "free-running"}


@dataclass
class ListenCell:
    """One cell of the grid as the page shows it."""
    label: str
    metrics: dict[str, float] = field(default_factory=dict)  # sortable values, e.g. "manual-6/pesq_wb" -> 3.1
    audio: dict[str, dict[str, dict[str, Path]]] = field(default_factory=dict)  # schedule -> GT/FREE -> utt -> wav
    note: str = ""  # e.g. which seed's run the audio comes from


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "cell"


def spectrogram_png(wav: Path, png: Path) -> Path:
    """A log-mel spectrogram of the wav as a bare image (80 mel bands high, one pixel per 5 ms frame, low
    frequencies at the bottom, 80 dB of range below the peak), drawn without a figure: fast for many files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    from evaluation.signal_features import TOP_DB, log_mel_db, mel_power

    audio, rate = sf.read(str(wav), dtype="float64", always_2d=True)
    x = np.nan_to_num(audio.mean(axis=1))
    if len(x) < rate // 10:  # shorter than the analysis needs: pad with silence so the picture still exists
        x = np.pad(x, (0, rate // 10 - len(x)))
    power = mel_power(x, rate)
    peak = 10.0 * np.log10(max(float(power.max(initial=0.0)), 1e-20))
    spec = log_mel_db(power, peak - TOP_DB).T  # (mels, frames)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    plt.imsave(tmp, spec[::-1], cmap="magma", vmin=peak - TOP_DB, vmax=peak, format="png")
    os.replace(tmp, png)
    return png


def write_listen_page(out_dir: str | Path, cells: list[ListenCell], references: dict[str, Path],
                      schedules: list[str], title: str = "listening page", sort_keys: list[str] | None = None,
                      default_sort: str | None = None) -> Path:
    """Copy the audio under out_dir/listen/, draw spectrograms, write out_dir/listen.html and return its path.
    Utterances shown: those with a reference or any cell output, in ID order. `sort_keys` (default: every metric
    key any cell has) are offered to sort the cells by; better values first."""
    out_dir = Path(out_dir)
    media = out_dir / "listen"
    shutil.rmtree(media, ignore_errors=True)  # files of an earlier page
    media.mkdir(parents=True)

    def place(src: Path, rel: str) -> dict[str, str]:
        dst = media / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        png = spectrogram_png(dst, dst.with_suffix(".png"))
        return {"wav": dst.relative_to(out_dir).as_posix(), "png": png.relative_to(out_dir).as_posix()}

    utterances = sorted(set(references) | {u for c in cells for by_pass in c.audio.values()
                                           for by_utt in by_pass.values() for u in by_utt})
    refs = {u: place(p, f"reference/{_slug(u)}.wav") for u, p in sorted(references.items())}
    placed: list[dict] = []  # per cell: {"label", "metrics", "note", "audio": {sched: {pass: {utt: files}}}}
    used: set[str] = set()
    for i, cell in enumerate(cells):
        folder = f"{i:02d}-{_slug(cell.label)}"
        used.add(folder)
        audio = {s: {p: {u: place(wav, f"{folder}/{_slug(s)}/{'free/' if p == FREE else ''}{_slug(u)}.wav")
                         for u, wav in sorted(by_utt.items())}
                     for p, by_utt in by_pass.items()}
                 for s, by_pass in cell.audio.items()}
        placed.append({"label": cell.label, "metrics": cell.metrics, "note": cell.note, "audio": audio})

    keys = sort_keys if sort_keys is not None else sorted({k for c in cells for k in c.metrics})
    page = out_dir / "listen.html"
    tmp = page.with_name(f".{page.name}.tmp-{os.getpid()}")
    tmp.write_text(_render(title, placed, refs, utterances, schedules, keys, default_sort), encoding="utf-8")
    os.replace(tmp, page)
    return page


_SCRIPT = r""""use strict";
const DATA = JSON.parse(document.getElementById("listen-data").textContent);
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

function sortBy(key) {
  const dir = DATA.directions[key] || 1;
  const value = (i) => {
    const v = DATA.cells[i].metrics[key];
    return (v === undefined || v === null) ? null : v;
  };
  for (const body of document.querySelectorAll("tbody.sortable")) {
    const rows = Array.from(body.rows);
    rows.sort((r1, r2) => {
      const i1 = +r1.dataset.index, i2 = +r2.dataset.index;
      if (!key) return i1 - i2;
      const v1 = value(i1), v2 = value(i2);
      if (v1 === null || v2 === null) return (v1 === null) - (v2 === null) || i1 - i2;
      return dir * (v2 - v1) || i1 - i2;
    });
    for (const r of rows) {
      r.querySelector("td.metric").textContent = key ? (value(+r.dataset.index) === null ? "—"
        : Number(value(+r.dataset.index)).toPrecision(3)) : "";
      body.appendChild(r);
    }
  }
  for (const h of document.querySelectorAll("th.metric-head")) h.textContent = key || "metric";
  const first = document.querySelector("tbody.sortable");
  $("sort-status").textContent = key && first ? "sorted by " + key + ": " +
    Array.from(first.rows).map((r) => DATA.cells[+r.dataset.index].label).join(" | ") : "";
  $("sort-status").dataset.order = first ? Array.from(first.rows).map((r) => r.dataset.index).join(",") : "";
}

let pair = null, votes = [];
function fill(select, items, labels) {
  select.innerHTML = "";
  items.forEach((v, i) => {
    const o = document.createElement("option");
    o.value = v;
    o.textContent = labels ? labels[i] : v;
    select.appendChild(o);
  });
}
function newPair() {
  const u = $("ab-utt").value, s = $("ab-sched").value, p = $("ab-pass").value;
  const have = DATA.cells.map((c, i) => i).filter((i) => ((DATA.cells[i].audio[s] || {})[p] || {})[u]);
  for (const side of ["a", "b"]) {
    const l = $("ab-label-" + side);
    l.textContent = "hidden";
    l.classList.add("hidden");
    l.classList.remove("revealed");
  }
  if (have.length < 2) { pair = null; $("ab-status").textContent = "fewer than two cells have this output"; return; }
  const i = have[Math.floor(Math.random() * have.length)];
  let j = i; while (j === i) j = have[Math.floor(Math.random() * have.length)];
  pair = { a: i, b: j, u: u, s: s, p: p, voted: null };
  $("ab-a").src = DATA.cells[i].audio[s][p][u].wav;
  $("ab-b").src = DATA.cells[j].audio[s][p][u].wav;
  $("ab-status").textContent = "labels hidden";
}
function reveal() {
  if (!pair) return;
  for (const [side, i] of [["a", pair.a], ["b", pair.b]]) {
    const l = $("ab-label-" + side);
    l.textContent = DATA.cells[i].label;
    l.classList.remove("hidden");
    l.classList.add("revealed");
  }
  $("ab-status").textContent = "revealed";
  if (pair.voted) {
    const winner = pair.voted === "=" ? "same" : DATA.cells[pair.voted === "A" ? pair.a : pair.b].label;
    votes.push(pair.u + " " + pair.s + " (" + DATA.passes[pair.p] + "): preferred " + winner);
    $("ab-votes").textContent = votes.join("; ");
  }
}

function watchAudio() {
  const all = Array.from(document.querySelectorAll("audio")).filter((a) => a.getAttribute("src"));
  let ok = 0, bad = [];
  const done = () => {
    if (ok + bad.length === all.length)
      $("status").textContent = bad.length ? "audio errors " + bad.length + "/" + all.length + ": " + bad.join(", ")
        : "audio ok " + ok + "/" + all.length;
    else $("status").textContent = "audio loading " + (ok + bad.length) + "/" + all.length;
    if (ok + bad.length === all.length && params.has("selftest")) $("reveal").click();
  };
  for (const a of all) {
    let counted = false;
    const count = (good) => {
      if (counted) return;
      counted = true;
      if (good) ok++; else bad.push(a.getAttribute("src") || a.id);
      done();
    };
    if (a.readyState >= 1) count(true);
    else if (a.error) count(false);
    else {
      a.addEventListener("loadedmetadata", () => count(true));
      a.addEventListener("error", () => count(false));
    }
  }
  done();
}

fill($("ab-utt"), DATA.utterances);
fill($("ab-sched"), DATA.schedules);
fill($("ab-pass"), Object.keys(DATA.passes), Object.values(DATA.passes));
for (const id of ["ab-utt", "ab-sched", "ab-pass"]) $(id).addEventListener("change", newPair);
$("ab-new").addEventListener("click", newPair);
$("reveal").addEventListener("click", reveal);
for (const b of document.querySelectorAll("button[data-vote]"))
  b.addEventListener("click", () => {
    if (!pair) return;
    pair.voted = b.dataset.vote;
    $("ab-status").textContent = "voted " + b.dataset.vote + "; press Reveal";
  });
$("sort-key").addEventListener("change", (ev) => sortBy(ev.target.value));
newPair();
const initial = params.get("sort") || $("sort-key").value;
if (initial) { $("sort-key").value = initial; sortBy(initial); }
watchAudio();
"""


def _player(files: dict[str, str] | None, what: str) -> str:
    if files is None:
        return '<span class="none">not kept</span>'
    return (f'<audio controls preload="metadata" src="{html.escape(files["wav"])}" title="{html.escape(what)}">'
            f'</audio><img class="spec" src="{html.escape(files["png"])}" alt="log-mel spectrogram: '
            f'{html.escape(what)}" loading="eager">')


def _fmt(v: float | None) -> str:
    if v is None or not np.isfinite(v):
        return "—"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def _render(title: str, cells: list[dict], refs: dict, utterances: list[str], schedules: list[str],
            keys: list[str], default_sort: str | None) -> str:
    e = html.escape
    passes = [GT, FREE]
    shown = [s for s in schedules if any(s in c["audio"] for c in cells)]
    options = "".join(f'<option value="{e(k)}"{" selected" if k == default_sort else ""}>{e(k)} '
                      f'({"higher" if direction(k) > 0 else "lower" if direction(k) < 0 else "?"} is better)'
                      f'</option>' for k in keys)
    sections = []
    for u in utterances:
        ref = _player(refs.get(u), f"reference {u}")
        head = "".join(f'<th>{e(s)}<br><small>{PASS_TITLES[p]}</small></th>' for s in shown for p in passes)
        rows = []
        for i, c in enumerate(cells):
            players = "".join("<td>" + _player(c["audio"].get(s, {}).get(p, {}).get(u),
                                               " ".join((c["label"], s, PASS_TITLES[p], u))) + "</td>"
                              for s in shown for p in passes)
            rows.append(f'<tr class="cell-row" data-index="{i}"><th class="label">{e(c["label"])}'
                        f'{"<br><small>" + e(c["note"]) + "</small>" if c["note"] else ""}</th>'
                        f'<td class="metric"></td>{players}</tr>')
        sections.append(f'<section class="utt" id="utt-{e(u)}"><h2>{e(u)}</h2>'
                        f'<div class="ref"><b>reference</b> {ref}</div>'
                        f'<div class="scroll"><table><thead><tr><th>cell</th><th class="metric-head">metric</th>'
                        f'{head}</tr></thead><tbody class="sortable">{"".join(rows)}</tbody></table></div></section>')
    data = {"cells": [{"label": c["label"], "metrics": c["metrics"], "audio": c["audio"]} for c in cells],
            "refs": refs, "utterances": utterances, "schedules": shown,
            "directions": {k: direction(k) for k in keys}, "passes": {p: PASS_TITLES[p] for p in passes}}
    blob = json.dumps(data).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; text-align: left; }}
th.label {{ max-width: 16em; font-weight: 600; }}
td.metric {{ font-variant-numeric: tabular-nums; white-space: nowrap; }}
audio {{ width: 220px; display: block; }}
img.spec {{ width: 220px; height: 60px; display: block; image-rendering: pixelated; margin-top: 2px; }}
.ref {{ display: flex; gap: 1em; align-items: center; margin-bottom: .5em; }}
.scroll {{ overflow-x: auto; }}
.none {{ color: #999; }}
#ab {{ border: 2px solid #446; padding: .8em; margin-bottom: 1.5em; background: #f6f6fb; }}
#ab .players {{ display: flex; gap: 2em; margin: .6em 0; }}
.ab-label {{ font-weight: 600; }}
.ab-label.hidden {{ color: #999; }}
#status {{ font-family: monospace; }}
</style></head><body>
<h1>{e(title)}</h1>
<p>Per evaluated utterance: the reference and every cell's output at each schedule, with ground-truth durations
(aligned with the reference) and free-running (predicted durations), each with its log-mel spectrogram (80 mel bands,
80 dB below the peak). The audio is kept by <code>wg2 eval</code> (<code>eval.audio_artifacts</code> utterances).</p>
<div id="status">audio loading</div>
<p><label>Sort cells by <select id="sort-key"><option value="">grid order</option>{options}</select></label>
<span id="sort-status"></span></p>
<section id="ab"><h2>Blind A/B</h2>
<label>utterance <select id="ab-utt"></select></label>
<label>schedule <select id="ab-sched"></select></label>
<label>pass <select id="ab-pass"></select></label>
<button id="ab-new" type="button">New blind pair</button>
<div class="players">
<div><b>A</b> <audio id="ab-a" controls preload="metadata"></audio>
<span class="ab-label hidden" id="ab-label-a">hidden</span></div>
<div><b>B</b> <audio id="ab-b" controls preload="metadata"></audio>
<span class="ab-label hidden" id="ab-label-b">hidden</span></div>
</div>
<button type="button" data-vote="A">A is better</button> <button type="button" data-vote="B">B is better</button>
<button type="button" data-vote="=">same</button> <button id="reveal" type="button">Reveal</button>
<span id="ab-status"></span>
<div id="ab-votes"></div>
</section>
{"".join(sections)}
<script id="listen-data" type="application/json">{blob}</script>
<script>
{_SCRIPT}</script>
</body></html>
"""
