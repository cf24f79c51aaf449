"""benchmarks/faults.py, part `corpus`: random corruptions of a copy of a corpus subset, each checked by
`wg2 corpus check` with and without --skip-bad."""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from faults_common import CORPUS, REPO, has_traceback, log, wg2_argv, wg2_env


def make_subset(dest: Path, n: int = 60) -> list[str]:
    """The first n utterances of the corpus (metadata lines, wavs, TextGrids) copied to dest."""
    lines = [line for line in (CORPUS / "metadata.csv").read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    (dest / "wavs").mkdir(parents=True)
    (dest / "alignments").mkdir()
    (dest / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids = [line.split("|", 1)[0] for line in lines]
    for uid in ids:
        shutil.copyfile(CORPUS / "wavs" / f"{uid}.wav", dest / "wavs" / f"{uid}.wav")
        shutil.copyfile(CORPUS / "alignments" / f"{uid}.TextGrid", dest / "alignments" / f"{uid}.TextGrid")
    return ids


def _replace(path: Path, data: bytes) -> None:
    """Write a new file in place of a (hard-linked) one, never through the link."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _phones_times(text: str) -> tuple[int, list[re.Match]]:
    """The interval times (xmin/xmax) of the phones tier, as regex matches in `text`."""
    start = text.index('name = "phones"')
    first = text.index("intervals [1]:", start)
    return first, list(re.finditer(r"(?<=\bxm(?:in|ax) = )[-+0-9.eE]+", text[first:]))


def corrupt(case: Path, ids: list[str], rng: random.Random) -> dict:
    """One random corruption of the corpus copy in `case`. Returns what was done and the names (any one of
    which) a clear message must contain."""
    import numpy as np
    import soundfile as sf

    kind = rng.choice(["truncate wav", "truncate TextGrid", "NaN samples", "shuffle TextGrid times",
                       "delete wav", "delete TextGrid", "bad metadata line"])
    uid = rng.choice(ids)
    wav, grid, meta = case / "wavs" / f"{uid}.wav", case / "alignments" / f"{uid}.TextGrid", case / "metadata.csv"
    detail = ""
    names = [wav.name]
    if kind == "truncate wav":
        data = wav.read_bytes()
        cut = rng.randint(0, int(len(data) * 0.9))
        _replace(wav, data[:cut])
        detail = f"{uid}.wav cut to {cut} of {len(data)} bytes"
        names = [wav.name]
    elif kind == "truncate TextGrid":
        data = grid.read_bytes()
        cut = rng.randint(0, int(len(data) * 0.95))
        _replace(grid, data[:cut])
        detail = f"{uid}.TextGrid cut to {cut} of {len(data)} bytes"
        names = [grid.name]
    elif kind == "NaN samples":
        audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
        first = rng.randrange(len(audio))
        span = rng.randint(1, max(1, min(len(audio) - first, rate // 10)))
        value = rng.choice([np.nan, np.inf, -np.inf])
        audio[first:first + span] = value
        wav.unlink()
        sf.write(str(wav), audio, rate, subtype="FLOAT")
        detail = f"{uid}.wav samples {first}..{first + span - 1} set to {value}"
        names = [wav.name]
    elif kind == "shuffle TextGrid times":
        text = grid.read_text(encoding="utf-8")
        first, matches = _phones_times(text)
        values = [m.group(0) for m in matches]  # xmin, xmax of interval 1, then of interval 2, ...
        shuffled = values[:]
        if rng.random() < 0.5:  # two intervals' spans swapped, labels kept: nothing overlaps, order is wrong
            i, j = sorted(rng.sample(range(len(values) // 2), 2))
            while j - i < 2:
                i, j = sorted(rng.sample(range(len(values) // 2), 2))
            shuffled[2 * i:2 * i + 2], shuffled[2 * j:2 * j + 2] = values[2 * j:2 * j + 2], values[2 * i:2 * i + 2]
            how = f"the spans of phone intervals {i + 1} and {j + 1} swapped"
        else:
            for _ in range(100):  # a permutation that changes the times (values repeat: end k = start k+1)
                rng.shuffle(shuffled)
                if [float(v) for v in shuffled] != [float(v) for v in values]:
                    break
            how = f"{len(values)} phone interval times shuffled"
        body, pos, out = text[first:], 0, []
        for m, v in zip(matches, shuffled):
            out += [body[pos:m.start()], v]
            pos = m.end()
        _replace(grid, (text[:first] + "".join(out) + body[pos:]).encode("utf-8"))
        detail = f"{uid}.TextGrid: {how}"
        names = [grid.name]
    elif kind == "delete wav":
        wav.unlink()
        detail = f"{uid}.wav deleted"
    elif kind == "delete TextGrid":
        grid.unlink()
        detail = f"{uid}.TextGrid deleted"
        names = [grid.name]
    else:
        lines = meta.read_text(encoding="utf-8").splitlines()
        k = ids.index(uid)
        line_no = k + 1
        how = rng.choice(["too many fields", "one field", "empty ID", "duplicate ID", "unknown ID", "not UTF-8",
                          "empty file", "file deleted"])
        text = lines[k].split("|")[1]
        names = [f"metadata.csv:{line_no}"]
        if how == "too many fields":
            lines[k] = f"{uid}|{text}|{text}|extra"
        elif how == "one field":
            lines[k] = f"{uid} {text}"
        elif how == "empty ID":
            lines[k] = f"|{text}|{text}"
        elif how == "duplicate ID":
            other = rng.choice([j for j in range(len(ids)) if j != k])
            lines[k] = f"{ids[other]}|{text}|{text}"
            line_no = max(k, other) + 1  # the later of the two lines is the duplicate
            names = [f"metadata.csv:{line_no}"]
        elif how == "unknown ID":
            lines[k] = f"{uid}x|{text}|{text}"
            names = [f"{uid}x.wav", f"{uid}x.TextGrid"]
        if how == "not UTF-8":
            raw = "\n".join(lines).encode("utf-8")
            at = rng.randrange(len(raw))
            _replace(meta, raw[:at] + b"\xff\xfe\xc3" + raw[at:])
            names = ["metadata.csv"]
        elif how == "empty file":
            _replace(meta, b"")
            names = ["metadata.csv"]
        elif how == "file deleted":
            meta.unlink()
            names = ["metadata.csv"]
        else:
            _replace(meta, ("\n".join(lines) + "\n").encode("utf-8"))
        kind, detail = f"bad metadata line ({how})", f"metadata.csv line {line_no}: {how}"
    return {"kind": kind, "detail": detail, "names": names}


def classify(rc: int, out: str, err: str, names: list[str], skip_bad: bool, n_usable: int | None,
             n_ids: int) -> str:
    """clear / unclear / accepted / traceback (see the module docstring)."""
    if has_traceback(out + err) or rc not in (0, 2):
        return "traceback"
    named = any(n in err for n in names) if rc == 2 else any(n in out + err for n in names)
    if rc == 2:
        return "clear" if "wg2: error:" in err and named else "unclear"
    if skip_bad and named and n_usable is not None and n_usable < n_ids:
        return "clear"  # dropped, and the report names it
    return "accepted"


def part_corpus(tmp: Path, cases: int, seed: int) -> dict:
    base = tmp / "corpus-base"
    ids = make_subset(base)
    rng = random.Random(seed)
    outcomes: list[dict] = []
    env = wg2_env(tmp)
    for i in range(cases):
        case = tmp / f"corpus-case-{i}"
        shutil.copytree(base, case, copy_function=os.link)  # hard links: the corruption replaces, never edits
        what = corrupt(case, ids, rng)
        record = dict(what, case=i)
        for skip_bad in (False, True):
            argv = wg2_argv("corpus", "check", str(case), *(["--skip-bad"] if skip_bad else []))
            proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
            found = re.search(r"^utterances: (\d+) usable", proc.stdout, re.M)
            usable = int(found[1]) if found else None
            outcome = classify(proc.returncode, proc.stdout, proc.stderr, what["names"], skip_bad, usable, len(ids))
            key = "skip_bad" if skip_bad else "check"
            record[key] = outcome
            if outcome != "clear":
                lines = [line for line in proc.stderr.splitlines() if line.strip()]
                record[f"{key}_evidence"] = {"rc": proc.returncode, "stderr_tail": lines[-3:],
                                             "usable": usable}
        outcomes.append(record)
        log(f"corpus {i + 1}/{cases}: {what['detail']}: check {record['check']}, --skip-bad {record['skip_bad']}")
        shutil.rmtree(case)
    counts = {key: dict(Counter(o[key] for o in outcomes)) for key in ("check", "skip_bad")}
    return {"cases": cases, "utterances": len(ids), "counts": counts,
            "clear_share": sum(o["check"] == "clear" for o in outcomes) / max(cases, 1),
            "clear_share_skip_bad": sum(o["skip_bad"] == "clear" for o in outcomes) / max(cases, 1),
            "tracebacks": sum((o["check"] == "traceback") + (o["skip_bad"] == "traceback") for o in outcomes),
            "by_kind": {k: dict(Counter(f"{o['check']}/{o['skip_bad']}" for o in outcomes if o["kind"] == k))
                        for k in sorted({o["kind"] for o in outcomes})},
            "not_clear": [o for o in outcomes if o["check"] != "clear" or o["skip_bad"] != "clear"]}
