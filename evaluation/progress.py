"""When to draw progress bars: the one rule every tqdm bar in the suite goes through (experiments.runtime re-exports
it). A bar is drawn only where someone watches it: stderr is a terminal, or bars are forced with WG2_PROGRESS=1.
TQDM_DISABLE=1 turns every bar off. Redirected to a file or a pipe, stderr gets no bar lines."""
from __future__ import annotations

import os
import sys

_TRUE = {"1", "true", "yes", "on"}


def progress_enabled(requested: bool = True) -> bool:
    """Whether a bar the caller `requested` is drawn (tqdm's `disable=not progress_enabled(...)`)."""
    if not requested or os.environ.get("TQDM_DISABLE", "").strip().lower() in _TRUE:
        return False
    if os.environ.get("WG2_PROGRESS", "").strip().lower() in _TRUE:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
