"""Operator reports behind `embedding-backfills plan | smoke | status`.

Each report is a plain function returning a dataclass with `as_dict()` (the `--json`
shape: stable keys, numbers and verdicts, never row text or secrets). The CLI only renders
them. Long steps report through `Progress`, so the CLI can show a bar and tests need none.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import psycopg

from ..db.connection import connection


class Progress(Protocol):
    """Where a report says what it is doing; `total` turns a spinner into a bar."""

    def step(self, description: str, total: int | None = None) -> None: ...

    def advance(self, amount: int = 1) -> None: ...


class NoProgress:
    """Progress that goes nowhere (tests, --json without a terminal)."""

    def step(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass


@contextmanager
def read_only_connection(url: str | None = None) -> Iterator[psycopg.Connection]:
    """An autocommit connection on which every transaction is READ ONLY.

    Reports only read; the session default makes PostgreSQL refuse any write a bug (or a
    helper) might attempt, instead of trusting the code not to.
    """
    with connection(url, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = on")
        yield conn
