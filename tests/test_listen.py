"""listen.html (evaluation/compare/listen.py): every file it references exists and plays, and in a real headless browser
(chromium) every <audio> loads its metadata and the blind A/B labels stay hidden until Reveal is clicked."""
from __future__ import annotations

import html
import html.parser
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from evaluation.compare.listen import FREE, GT, ListenCell, write_listen_page

RATE = 16000
UTTS = ["harvard-01-01", "harvard-01-02"]
SCHEDULES = ["manual-6", "linear-50"]


def _tone(path: Path, freq: float, seconds: float = 0.6) -> Path:
    t = np.arange(int(seconds * RATE)) / RATE
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t) * np.hanning(len(t)), RATE, subtype="PCM_16")
    return path


def make_page(tmp: Path) -> tuple[Path, list[ListenCell]]:
    src = tmp / "src"
    refs = {u: _tone(src / "ref" / f"{u}.wav", 200 + 50 * i) for i, u in enumerate(UTTS)}
    cells = []
    for c, (label, pesq) in enumerate((("upsampler=gaussian", 2.9), ("upsampler=repeat", 3.4),
                                       ("upsampler=<odd> & \"quoted\"", 2.1))):
        audio = {s: {p: {u: _tone(src / str(c) / s / p / f"{u}.wav", 300 + 40 * c + (20 if p == FREE else 0),
                                  0.6 if p == GT else 0.7)
                         for u in UTTS} for p in (GT, FREE)} for s in SCHEDULES}
        cells.append(ListenCell(label, {f"{s}/pesq_wb": pesq + (0.1 if s == "linear-50" else 0) for s in SCHEDULES}
                                | {"manual-6/mel_cd": 6.0 - pesq}, audio, note="seed 0"))
    page = write_listen_page(tmp / "report", cells, refs, SCHEDULES, title="test grid")
    return page, cells


class _Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.audio = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "audio":
            self.audio += 1
        for key in ("src", "href"):
            if a.get(key):
                self.refs.append((tag, a[key]))


def test_every_referenced_file_exists_and_reads(tmp_path):
    page, cells = make_page(tmp_path)
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: no CDN, no server
    parser = _Refs()
    parser.feed(text)
    data = json.loads(re.search(r'<script id="listen-data" type="application/json">(.*?)</script>', text,
                                re.S).group(1).replace("<\\/", "</"))
    from_data = [f["wav"] for c in data["cells"] for by_pass in c["audio"].values() for by_utt in by_pass.values()
                 for f in by_utt.values()] + [f["wav"] for f in data["refs"].values()]
    pngs = [f["png"] for c in data["cells"] for by_pass in c["audio"].values() for by_utt in by_pass.values()
            for f in by_utt.values()]
    wavs = {src for tag, src in parser.refs if tag == "audio"} | set(from_data)
    # per utterance: reference + cells x schedules x passes, each once
    assert parser.audio == len(UTTS) * (1 + len(cells) * len(SCHEDULES) * 2) + 2  # + the two A/B players
    assert len(wavs) == len(UTTS) * (1 + len(cells) * len(SCHEDULES) * 2)
    for rel in wavs:
        path = page.parent / rel
        assert path.is_file() and path.resolve().is_relative_to(page.parent.resolve()), rel
        audio, rate = sf.read(path)
        assert rate == RATE and len(audio) > 0
    imgs = {src for tag, src in parser.refs if tag == "img"}
    assert imgs and set(pngs) <= imgs
    for rel in imgs:
        from matplotlib.image import imread
        img = imread(page.parent / rel)
        assert img.shape[0] == 80 and img.shape[1] > 50 and float(np.std(img[..., :3])) > 0.01
    assert "upsampler=&lt;odd&gt; &amp; &quot;quoted&quot;" in text  # labels escaped
    # a rewrite replaces the media folder rather than piling up stale files
    write_listen_page(page.parent, cells[:1], {}, SCHEDULES)
    assert not any("01-upsampler" in str(p) for p in (page.parent / "listen").rglob("*"))


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium in PATH: install it (Debian: apt-get install -y chromium; .ci/run does) to run the "
                "headless-browser check of listen.html")


def _dump_dom(url: str, tmp: Path) -> str:
    cmd = [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--mute-audio", "--no-first-run",
           "--allow-file-access-from-files", f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=15000",
           "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_headless_browser_loads_every_audio_and_reveals(tmp_path):
    page, cells = make_page(tmp_path)
    n_audio = page.read_text().count("<audio")
    dom = _dump_dom(page.as_uri() + "?selftest&sort=manual-6/pesq_wb", tmp_path)
    status = re.search(r'<div id="status">(.*?)</div>', dom).group(1)
    assert status == f"audio ok {n_audio}/{n_audio}", status  # every player fired loadedmetadata, none error
    labels = re.findall(r'<span class="ab-label ([^"]*)" id="ab-label-[ab]">(.*?)</span>', dom)
    assert len(labels) == 2 and all(cls == "revealed" for cls, _ in labels), labels
    names = {c.label for c in cells}
    shown = {html.unescape(t) for _, t in labels}  # the DOM's text is HTML-escaped
    assert shown <= names and len(shown) == 2
    assert 'id="ab-status">revealed<' in dom
    # sorted by PESQ (higher is better): repeat (3.4), gaussian (2.9), odd (2.1)
    order = re.search(r'id="sort-status" data-order="([0-9,]*)"', dom).group(1)
    assert order == "1,0,2"

    # without ?selftest nothing is revealed: the labels stay hidden
    dom = _dump_dom(page.as_uri(), tmp_path)
    labels = re.findall(r'<span class="ab-label ([^"]*)" id="ab-label-[ab]">(.*?)</span>', dom)
    assert labels == [("hidden", "hidden"), ("hidden", "hidden")]
