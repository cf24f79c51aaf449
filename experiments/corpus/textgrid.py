"""Reading Praat TextGrids (long, short and UTF-16 text formats) as MFA writes them: the phones tier."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# Praat's text formats are one token stream: the long format is the short one with comments
# (`xmin =`, `item [1]:`) around the values. Values are quoted strings ("" escapes a quote),
# flags (<exists>) and numbers standing alone (not the 1 of `[1]`).
_PRAAT_TOKEN = re.compile(r'"((?:[^"]|"")*)"|<(exists|absent)>'
                          r'|(?<![\w.\[])([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)(?![\w.\]])')


def _praat_tokens(path: Path) -> list[str | float]:
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16")  # Praat writes UTF-16 when a label needs it
    else:
        text = data.decode("utf-8-sig")
    tokens: list[str | float] = []
    for string, flag, number in _PRAAT_TOKEN.findall(text):
        tokens.append(float(number) if number else (f"<{flag}>" if flag else string.replace('""', '"')))
    return tokens


def read_phone_intervals(path: Path) -> tuple[list[tuple[float, float, str]], float]:
    """(start, end, label) of the phones tier, sorted, and the TextGrid's end time; ValueError if unusable."""
    items, end_time = read_phone_tier(path)
    return sorted(items), end_time


def _interval(number: int, start: float, end: float, label: str) -> str:
    return f"interval {number} [{start:g} s, {end:g} s] {label!r}"


def interval_problems(items: list[tuple[float, float, str]]) -> list[str]:
    """What is wrong with the phones tier's intervals (in file order, numbered from 1), one message each:
    negative times, a start after its end, intervals out of time order or overlapping, a label holding a space."""
    found = []
    for n, (start, end, label) in enumerate(items, start=1):
        where = _interval(n, start, end, label)
        if start < 0 or end < 0:
            found.append(f"{where}: negative time; expected times of at least 0 s")
        if start > end:
            found.append(f"{where}: starts after it ends; expected start <= end")
        if any(c.isspace() for c in label.strip()):
            found.append(f"{where}: label {label.strip()!r} holds a space; rejected, since a phone label is "
                         "one symbol (phones are separated by spaces elsewhere): expected e.g. 'ð' or 'AH0'")
    for n in range(1, len(items)):  # in file order: each interval starts where an earlier one ended, or later
        (s1, e1, l1), (s2, e2, l2) = items[n - 1], items[n]
        if e2 <= s1 + 1e-7 and s2 < s1 and s2 <= e2:  # wholly before the previous one (overlaps are below)
            found.append(f"{_interval(n + 1, s2, e2, l2)} starts before {_interval(n, s1, e1, l1)}; "
                         "expected intervals in time order (Praat's order; sorting would pair labels with "
                         "other times)")
    order = sorted(range(len(items)), key=lambda k: (items[k][0], items[k][1]))
    for a, b in zip(order, order[1:]):
        (s1, e1, l1), (s2, e2, l2) = items[a], items[b]
        if s2 < e1 - 1e-7 and s1 <= e1 and s2 <= e2:
            found.append(f"{_interval(b + 1, s2, e2, l2)} overlaps {_interval(a + 1, s1, e1, l1)}; "
                         "expected intervals that do not overlap")
    return found


def read_phone_tier(path: Path) -> tuple[list[tuple[float, float, str]], float]:
    """(start, end, label) of the phones tier in file order, and the TextGrid's end time; ValueError if unusable."""
    tiers, end_time = read_tiers(path)
    return phone_tier(tiers), end_time


def read_tiers(path: Path) -> tuple[dict[str, tuple[str, list]], float]:
    """Every tier by name ((class, items): intervals as (start, end, label)) and the TextGrid's end time;
    ValueError if the file is unreadable."""
    try:
        tokens = _praat_tokens(path)
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"unreadable TextGrid ({err})") from err
    try:
        if tokens[0] not in ("ooTextFile", "ooTextFile short") or tokens[1] != "TextGrid":
            raise ValueError("not a text TextGrid (expected 'File type = \"ooTextFile\"', "
                             "'Object class = \"TextGrid\"')")
        end_time = float(tokens[3])
        n_tiers = int(tokens[5]) if tokens[4] == "<exists>" else 0
        i, tiers = 6, {}
        for _ in range(n_tiers):
            kind, name, n = tokens[i], str(tokens[i + 1]), int(tokens[i + 4])
            width = 3 if kind == "IntervalTier" else 2  # TextTier points: time, mark
            if kind not in ("IntervalTier", "TextTier"):
                raise ValueError(f"unknown tier class {kind!r}")
            items: list[Any] = tokens[i + 5:i + 5 + width * n]
            if len(items) != width * n:
                raise IndexError
            if kind == "IntervalTier":
                items = [(float(items[k]), float(items[k + 1]), str(items[k + 2])) for k in range(0, len(items), 3)]
            tiers[name] = (kind, items)
            i += 5 + width * n
    except (IndexError, TypeError, ValueError) as err:
        detail = str(err) if isinstance(err, ValueError) and str(err) else "truncated or malformed"
        raise ValueError(f"unreadable TextGrid ({detail})") from err
    return tiers, end_time


def _phones_name(tiers: dict) -> str | None:
    return next((n for n in tiers if n.strip().lower() == "phones"), None)


def phone_tier(tiers: dict[str, tuple[str, list]]) -> list[tuple[float, float, str]]:
    """The phones tier's intervals, in file order; ValueError when there is none or it is a point tier."""
    name = _phones_name(tiers)
    if name is None:
        raise ValueError(f"no tier named 'phones' (tiers: {', '.join(tiers) or 'none'})")
    kind, items = tiers[name]
    if kind != "IntervalTier":
        raise ValueError(f"tier {name!r} is a point tier; expected intervals")
    return list(items)


def other_tier_problems(tiers: dict[str, tuple[str, list]]) -> list[str]:
    """Negative times and intervals that start after they end in the interval tiers other than phones (training
    reads only the phones tier, but such a tier says the file is damaged), one message per tier."""
    found = []
    phones = _phones_name(tiers)
    for name, (kind, items) in tiers.items():
        if name == phones or kind != "IntervalTier":
            continue
        bad = [(n, s, e, lab) for n, (s, e, lab) in enumerate(items, start=1) if s < 0 or e < 0 or s > e]
        if bad:
            n, s, e, lab = bad[0]
            what = "negative time" if s < 0 or e < 0 else "starts after it ends"
            found.append(f"tier {name!r}: {len(bad)} malformed interval(s), first {_interval(n, s, e, lab)}: {what}")
    return found
