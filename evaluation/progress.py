"""When to draw progress bars: the one rule every tqdm bar in the suite goes through. A bar is drawn only where
someone watches it: stderr is a terminal, or bars are forced with WG2_PROGRESS=1.
TQDM_DISABLE=1 turns every bar off. Redirected to a file or a pipe, stderr gets no bar lines."""
from __future__ import annotations

import os
import sys
import time

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


class LogLines:
    """Where no bar is drawn (a log file, a batch job), long loops still say how far they are: `due()` is true
    every `seconds` of wall time or every `calls` calls, whichever comes first, and always at the last one.
    Never due where a bar is drawn; the lines go through logging at INFO, so -q silences them."""

    def __init__(self, requested: bool = True, seconds: float = 30.0, calls: int = 10):
        self.enabled = not progress_enabled(requested)
        self.seconds, self.calls = seconds, calls
        self._last, self._since = time.monotonic(), 0

    def due(self, last: bool = False) -> bool:
        self._since += 1
        if not self.enabled or not (last or self._since >= self.calls or time.monotonic() - self._last >= self.seconds):
            return False
        self._last, self._since = time.monotonic(), 0
        return True
