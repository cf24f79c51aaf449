"""The latent-space target (issue 7): latent R=16 sampling >= 5x faster than waveform space at >= 90% of its
PESQ-wb, compared at a 6-step schedule; and how far a latent cell gets towards its autoencoder's ceiling."""
from __future__ import annotations

import itertools
from typing import Any

from evaluation.compare.data import CellRow, Target, canonical, direction, has_ceiling

# The latent-space target (issue 7): R=16 sampling >= 5x faster than waveform space at >= 90% of its PESQ-wb,
# compared at a 6-step schedule.
TARGET_STRIDE, TARGET_SPEEDUP, TARGET_QUALITY = 16, 5.0, 0.90


def fraction_of_ceiling(value: float | None, ceiling: float | None, metric: str) -> float | None:
    """1.0 = as good as the autoencoder's reconstruction, below 1 = short of it (inverted for lower-is-better)."""
    if value is None or not ceiling or direction(metric) == 0:
        return None
    return value / ceiling if direction(metric) > 0 else (ceiling / value if value else None)


def _space_axes(rows: list[CellRow]) -> set[str]:
    """Axes that choose the space: model.space, autoencoder.*, and any axis (a multi-key one, say) whose every
    value fixes model.space while its values span both spaces. Latent and waveform cells are matched on the rest."""
    keys = {k for r in rows for k in r.assignment}
    out = {k for k in keys if k == "model.space" or k.startswith("autoencoder.")}
    for k in keys - out:
        spaces: dict[str, set[str]] = {}
        for r in rows:
            spaces.setdefault(canonical(r.assignment.get(k)), set()).add(str(has_ceiling(r.params)))
        if all(len(v) == 1 for v in spaces.values()) and len(set().union(*spaces.values())) > 1:
            out.add(k)
    return out


def _is_r16(row: CellRow) -> bool:
    try:
        stride = int(row.params.get("autoencoder.stride", -1))
        return has_ceiling(row.params) and stride == TARGET_STRIDE
    except ValueError:
        return False


def latent_target(rows: list[CellRow], schedules: list[str]) -> Target:
    """Latent R=16 against waveform space at a 6-step schedule: >= 5x faster sampling at >= 90% of PESQ-wb.
    Each R=16 cell is compared with the waveform cells that agree on every non-space axis (else all of them)."""
    six = [s for s in schedules if s.endswith("-6")]  # every 6-step schedule evaluated, in the grid's order
    latent = [r for r in rows if _is_r16(r)]
    wave = [r for r in rows if not has_ceiling(r.params)]
    why = ("no finished latent R=16 cell" if not latent else "no finished waveform cell" if not wave
           else "no 6-step schedule (e.g. manual-6) was evaluated" if not six else "")
    if why:
        return Target(None, f"**Target undecided**: {why}, so R=16 cannot be compared with waveform space.")

    space_axes = _space_axes(rows)

    def rest(row: CellRow) -> str:
        return canonical({k: v for k, v in row.assignment.items() if k not in space_axes})
    comparisons: list[dict[str, Any]] = []
    for row, s in itertools.product(latent, six):
        peers = [w for w in wave if rest(w) == rest(row)] or wave
        w_rtf = [v for v in (w.mean(f"{s}/rtf") for w in peers) if v is not None]
        w_q = [v for v in (w.mean(f"{s}/pesq_wb") for w in peers) if v is not None]
        l_rtf, l_q = row.mean(f"{s}/rtf"), row.mean(f"{s}/pesq_wb")
        if not w_rtf or not w_q or not l_rtf or l_q is None:
            continue
        speedup = (sum(w_rtf) / len(w_rtf)) / l_rtf
        quality = l_q / (sum(w_q) / len(w_q))
        comparisons.append({"cell": row.label, "schedule": s, "speedup": speedup, "quality_fraction": quality,
                            "reached": speedup >= TARGET_SPEEDUP and quality >= TARGET_QUALITY})
    if not comparisons:
        return Target(None, "**Target undecided**: the R=16 or waveform cells lack rtf or pesq_wb at "
                      f"{', '.join(six)}.")
    best = max(comparisons, key=lambda c: (c["reached"], min(c["speedup"] / TARGET_SPEEDUP,
                                                             c["quality_fraction"] / TARGET_QUALITY)))
    head = "**Target reached**" if best["reached"] else "**Target not reached**"
    short = [w for w, ok in (("speed", best["speedup"] >= TARGET_SPEEDUP),
                             ("quality", best["quality_fraction"] >= TARGET_QUALITY)) if not ok]
    text = (f"{head}: latent R=16 (`{best['cell']}`) samples {best['speedup']:.1f}x as fast as waveform space at "
            f"{best['schedule']} with {100 * best['quality_fraction']:.0f}% of its PESQ-wb (target: at least "
            f"{TARGET_SPEEDUP:g}x at {100 * TARGET_QUALITY:.0f}% or more"
            + (f"; short on {' and '.join(short)}" if short else "") + "). Point estimates (means over seeds); "
            "their intervals are in the tables below.")
    return Target(best["reached"], text, comparisons)
