"""Watch an index build: poll `pg_stat_progress_create_index` from a second connection.

An HNSW build at 10M rows takes hours; without this the step is silent until it ends. The
building backend reports its phase and counters in `pg_stat_progress_create_index`, keyed by
its pid; a watcher thread with its own connection reads that row every `interval` seconds,
logs phase, tuples (or blocks) done of total, rate and ETA, and keeps the timings per phase
for the materialization's metadata. It reads only counters, never a row of the table.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import psycopg

from ..pipeline.progress import format_duration

PROGRESS_QUERY = """
SELECT phase, tuples_done, tuples_total, blocks_done, blocks_total, lockers_done, lockers_total
FROM pg_stat_progress_create_index WHERE pid = %s
"""


class InfoLogger(Protocol):
    """Dagster's `context.log` or a `logging.Logger`."""

    def info(self, msg: str) -> object: ...


@dataclass(frozen=True)
class ProgressSample:
    """One reading of the build's progress row."""

    at: float  # time.monotonic()
    phase: str
    tuples_done: int
    tuples_total: int
    blocks_done: int
    blocks_total: int
    lockers_done: int
    lockers_total: int

    def counter(self) -> tuple[str, int, int] | None:
        """(unit, done, total) of the best counter this phase reports, if any."""
        if self.tuples_total > 0:
            return "tuples", self.tuples_done, self.tuples_total
        if self.blocks_total > 0:
            return "blocks", self.blocks_done, self.blocks_total
        if self.lockers_total > 0:
            return "lockers", self.lockers_done, self.lockers_total
        return None


def read_progress(conn: psycopg.Connection, pid: int) -> ProgressSample | None:
    """The progress row of backend `pid`'s index build, None when it builds none now."""
    row = conn.execute(PROGRESS_QUERY, (pid,)).fetchone()
    if row is None:
        return None
    return ProgressSample(time.monotonic(), str(row[0]), *(int(v or 0) for v in row[1:]))


def describe_progress(sample: ProgressSample, phase_start: ProgressSample | None) -> str:
    """`phase: 12,000 of 50,000 tuples (24%), 3,100 tuples/s, ETA 12 s`. Rate and ETA are
    averaged since `phase_start`, the phase's first sample (steadier than the last interval);
    absent on that first sample."""
    counter = sample.counter()
    if counter is None:
        return f"index build: {sample.phase}"
    unit, done, total = counter
    text = f"index build: {sample.phase}: {done:,} of {total:,} {unit} ({done / total:.0%})"
    start = phase_start.counter() if phase_start and phase_start.phase == sample.phase else None
    # Lockers are transactions the build waits for: they end, they have no rate.
    if phase_start and start and start[0] == unit != "lockers" and sample.at > phase_start.at:
        rate = (done - start[1]) / (sample.at - phase_start.at)
        text += f", {rate:,.0f} {unit}/s"
        if rate > 0:
            text += f", ETA {format_duration((total - done) / rate)}"
    return text


def phase_anchor(anchor: ProgressSample | None, sample: ProgressSample) -> ProgressSample:
    """The sample rates are averaged from: the first of the phase that reports the counter
    `sample` reports. A phase's first reading often has no counter yet (pgvector sets
    blocks_total a moment after it enters "loading tuples"); anchoring on it would leave
    the whole phase, hours at 10M rows, without a rate or an ETA."""
    if anchor is None or anchor.phase != sample.phase:
        return sample
    unit = sample.counter()
    if unit is not None and (anchor.counter() or ("",))[0] != unit[0]:
        return sample
    return anchor


@dataclass
class BuildTimeline:
    """What the watcher saw: every sample, and when each phase was first seen."""

    samples: list[ProgressSample] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    def phase_seconds(self) -> dict[str, float]:
        """Seconds per phase, from its first sample to the next phase's (or the end); to
        within one poll interval. Phases shorter than an interval may not appear."""
        firsts: list[tuple[str, float]] = []
        for sample in self.samples:
            if not firsts or firsts[-1][0] != sample.phase:
                firsts.append((sample.phase, sample.at))
        end = self.ended if self.ended is not None else time.monotonic()
        seconds: dict[str, float] = {}
        for i, (phase, at) in enumerate(firsts):
            until = firsts[i + 1][1] if i + 1 < len(firsts) else end
            seconds[phase] = round(seconds.get(phase, 0.0) + until - at, 3)
        return seconds


class BuildWatcher:
    """A thread polling the progress of backend `pid`'s index build every `interval` s.

    `connect` opens the watcher's own connection (the builder's is busy with CREATE INDEX).
    Use as a context manager around the build; a failing poll stops the watching, never the
    build.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection],
        pid: int,
        logger: InfoLogger,
        *,
        interval: float = 5.0,
    ) -> None:
        self._connect = connect
        self._pid = pid
        self._logger = logger
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"index-progress-{pid}")
        self.timeline = BuildTimeline()
        self.error: str | None = None

    def __enter__(self) -> BuildWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.timeline.ended = time.monotonic()

    def _run(self) -> None:
        try:
            with self._connect() as conn:
                phase_start: ProgressSample | None = None
                while not self._stop.is_set():
                    sample = read_progress(conn, self._pid)
                    if sample is not None:
                        phase_start = phase_anchor(phase_start, sample)
                        self.timeline.samples.append(sample)
                        self._logger.info(describe_progress(sample, phase_start))
                    self._stop.wait(self._interval)
        except Exception as err:  # the build goes on without progress lines; never fail it
            self.error = type(err).__name__
            self._logger.info(f"index build progress unavailable: {type(err).__name__}")
