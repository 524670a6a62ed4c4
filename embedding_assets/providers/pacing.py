"""Pacing requests to an endpoint's budget: requests and tokens per minute, and 429 pauses.

A `RateLimiter` is asked before every request how long to wait (`reserve`) and told when
the endpoint asks everyone to back off (`pause`). Both implementations are token buckets
with the same arithmetic: each budget refills at its rate up to BURST_SECONDS' worth, a
reservation always takes its cost, and a level below zero is the queue of reservations
ahead of this one, which the caller waits out (waits are first come, first served, and a
request larger than the bucket just waits longer). The caller sleeps, so tests see waits
without taking them.

- `LocalRateLimiter`: one process (the CLI's plan and smoke, or no database at hand).
- `PostgresRateLimiter`: every run sharing the endpoint, on any machine, through one row
  per endpoint and model in `embedding_backfills.rate_limits`, reserved with one atomic
  upsert per request. A run that dies holding a reservation only wastes that reservation.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import psycopg

from ..config import ModelConfig
from ..errors import DatabaseError

log = logging.getLogger(__name__)

# A bucket holds this many seconds of its budget: enough that requests in flight are not
# serialised on the bucket, small enough that a burst stays far below a minute's limit.
BURST_SECONDS = 2.0


@dataclass(frozen=True)
class Reservation:
    """How long to wait before sending: for the budgets, and for a pause someone was told."""

    budget_wait: float = 0.0
    pause_wait: float = 0.0


class RateLimiter(Protocol):
    def reserve(self, tokens: int) -> Reservation:
        """Take one request of `tokens` from the budgets; say how long to wait first."""

    def pause(self, seconds: float) -> None:
        """The endpoint asked to wait: no request of anyone sharing this limiter goes sooner."""

    def close(self) -> None:
        """Release what the limiter holds (a connection)."""


def bucket_name(model: ModelConfig) -> str:
    """The shared bucket of an endpoint and model: OpenAI budgets are per model."""
    return f"{model.endpoint} {model.name}"


def _capacity(per_minute: int | None) -> float | None:
    return None if per_minute is None else per_minute * BURST_SECONDS / 60.0


def _wait(level: float | None, per_minute: int | None) -> float:
    if level is None or per_minute is None or level >= 0:
        return 0.0
    return -level * 60.0 / per_minute


class LocalRateLimiter:
    """The buckets in this process's memory, shared by its threads."""

    def __init__(
        self, requests_per_minute: int | None = None, tokens_per_minute: int | None = None
    ) -> None:
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._requests = _capacity(requests_per_minute)
        self._tokens = _capacity(tokens_per_minute)
        self._updated = time.monotonic()
        self._blocked_until = 0.0
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, model: ModelConfig) -> LocalRateLimiter:
        return cls(model.requests_per_minute, model.tokens_per_minute)

    def reserve(self, tokens: int) -> Reservation:
        with self._lock:
            now = time.monotonic()
            elapsed = max(0.0, now - self._updated)
            self._updated = now
            self._requests = self._take(self._requests, self.rpm, elapsed, 1)
            self._tokens = self._take(self._tokens, self.tpm, elapsed, tokens)
            budget = max(_wait(self._requests, self.rpm), _wait(self._tokens, self.tpm))
            return Reservation(budget, max(0.0, self._blocked_until - now))

    @staticmethod
    def _take(
        level: float | None, per_minute: int | None, elapsed: float, cost: int
    ) -> float | None:
        cap = _capacity(per_minute)
        if level is None or cap is None or per_minute is None:
            return None
        return min(cap, level + per_minute / 60.0 * elapsed) - cost

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)

    def close(self) -> None:
        pass


# One statement per reservation: refill by the time since the last one (clock_timestamp:
# the moment the row lock is held, not when the statement started waiting for it), take
# the cost, return the levels. Budgets are taken from the caller: the newest config wins.
_RESERVE = """
INSERT INTO embedding_backfills.rate_limits AS r
    (bucket, requests_per_minute, tokens_per_minute, requests_level, tokens_level, updated_at)
VALUES (%(bucket)s, %(rpm)s::integer, %(tpm)s::bigint, %(rcap)s::float8 - 1,
        %(tcap)s::float8 - %(tokens)s::float8, clock_timestamp())
ON CONFLICT (bucket) DO UPDATE SET
    requests_per_minute = EXCLUDED.requests_per_minute,
    tokens_per_minute = EXCLUDED.tokens_per_minute,
    requests_level = LEAST(%(rcap)s::float8, coalesce(r.requests_level, %(rcap)s::float8)
        + %(rpm)s::integer / 60.0
        * greatest(0, extract(epoch FROM clock_timestamp() - r.updated_at))) - 1,
    tokens_level = LEAST(%(tcap)s::float8, coalesce(r.tokens_level, %(tcap)s::float8)
        + %(tpm)s::bigint / 60.0
        * greatest(0, extract(epoch FROM clock_timestamp() - r.updated_at))) - %(tokens)s::float8,
    updated_at = clock_timestamp()
RETURNING requests_level, tokens_level,
    greatest(0, extract(epoch FROM r.blocked_until - clock_timestamp()))::float8
"""

_PAUSE = """
INSERT INTO embedding_backfills.rate_limits AS r (bucket, blocked_until)
VALUES (%(bucket)s, clock_timestamp() + make_interval(secs => %(seconds)s::float8))
ON CONFLICT (bucket) DO UPDATE SET
    blocked_until = greatest(r.blocked_until, EXCLUDED.blocked_until)
"""


class PostgresRateLimiter:
    """The buckets in `embedding_backfills.rate_limits`, shared by every run and machine.

    One autocommit connection per limiter (a provider's threads share it under a lock; a
    reservation is one short statement), opened on first use and reopened after a failure.
    """

    def __init__(self, database_url: str, model: ModelConfig) -> None:
        self.url = database_url
        self.bucket = bucket_name(model)
        self.rpm = model.requests_per_minute
        self.tpm = model.tokens_per_minute
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def _execute(self, query: str, params: dict[str, object]) -> tuple[object, ...] | None:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                cur = self._conn.execute(query.encode(), params)  # static SQL
                return cur.fetchone() if cur.description else None
            except psycopg.Error as err:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                raise DatabaseError(
                    f"cannot reserve the shared rate limit of {self.bucket} in the database "
                    f"({type(err).__name__}); check DATABASE_URL and that the server is up"
                ) from None

    def _connect(self) -> psycopg.Connection:
        from ..db.migrations import apply_migrations

        conn = psycopg.connect(self.url, autocommit=True)
        apply_migrations(conn)  # the table may predate this process; idempotent
        return conn

    def reserve(self, tokens: int) -> Reservation:
        row = self._execute(
            _RESERVE,
            {
                "bucket": self.bucket,
                "rpm": self.rpm,
                "tpm": self.tpm,
                "rcap": _capacity(self.rpm),
                "tcap": _capacity(self.tpm),
                "tokens": tokens,
            },
        )
        assert row is not None
        requests, tokens_left, paused = row
        budget = max(
            _wait(None if requests is None else float(requests), self.rpm),  # type: ignore[arg-type]
            _wait(None if tokens_left is None else float(tokens_left), self.tpm),  # type: ignore[arg-type]
        )
        return Reservation(budget, float(paused or 0.0))  # type: ignore[arg-type]

    def pause(self, seconds: float) -> None:
        self._execute(_PAUSE, {"bucket": self.bucket, "seconds": seconds})

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
