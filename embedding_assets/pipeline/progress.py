"""Progress lines for long work: rows done, rate and ETA, at most every few seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Throttled progress reporting to a logger (Dagster's context.log or a std logger)."""

    def __init__(
        self,
        total: int,
        label: str,
        log: logging.Logger | logging.LoggerAdapter | object,
        every_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.label = label
        self.log = log
        self.every = every_seconds
        self.clock = clock
        self.started = clock()
        self._last = self.started
        self.done = 0

    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        remaining = max(self.total - self.done, 0)
        eta = format_duration(remaining / rate) if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.label}: {self.done:,}/{self.total:,} rows ({pct:.1f}%), "
            f"{rate:,.0f} rows/s, ETA {eta}"
        )

    def advance(self, rows: int) -> None:
        self.done += rows
        now = self.clock()
        if now - self._last >= self.every:
            self._last = now
            self.log.info(self.line())  # type: ignore[attr-defined]
