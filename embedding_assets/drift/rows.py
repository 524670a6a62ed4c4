"""New rows: key ranges without a Dagster partition, and rows past the highest key seen.

The layout is extended first (`layout_ranges`): keys that grow (identity columns, uuid v7)
get ranges of their own once there are `partition_size` of them. Cost: one index probe for
the highest key, one ordered scan of the keys above the last range's highest, and one probe
of the layout per new row found (rows since the last tick). Keys that do not grow (uuid v4,
nanoid) land in every range, mostly below the highest key seen: the change log finds them
within one tick, the content sweep otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..config import SpaceConfig
from ..db.introspect import table_ident
from ..db.keys import KeyType
from ..pipeline.partitions import layout_ranges, partition_of, recorded_ranges

# New rows grouped per tick: a bulk insert of millions is found by its ranges, not row by row.
MAX_NEW_ROWS_PER_TICK = 100_000


@dataclass(frozen=True)
class NewRows:
    max_key: str | None  # the highest key now, as text
    unknown: list[str]  # recorded partitions Dagster does not have yet (new ranges first)
    grown: list[str]  # partitions holding keys above the highest key seen


def highest_key(conn: psycopg.Connection, space: SpaceConfig, key: KeyType) -> object | None:
    row = conn.execute(
        sql.SQL("SELECT t.{id} FROM {t} AS t ORDER BY {kx} DESC LIMIT 1").format(
            id=sql.Identifier(key.column), t=table_ident(space), kx=key.expr("t")
        )
    ).fetchone()
    return row[0] if row else None


def find_new_rows(
    conn: psycopg.Connection,
    space: SpaceConfig,
    key: KeyType,
    known: set[str],
    max_key_seen: str | None,
) -> NewRows:
    """Extend the layout; name the partitions Dagster lacks and those with new keys above
    `max_key_seen` (None: the first look, which only records the highest key)."""
    layout_ranges(conn, space, key)
    unknown = [
        r.partition_key for r in recorded_ranges(conn, space) if r.partition_key not in known
    ]
    highest = highest_key(conn, space, key)
    grown: list[str] = []
    seen_to = highest
    if max_key_seen is not None and highest is not None:
        query = sql.SQL(
            "SELECT {p}, n.{id} FROM (SELECT t.{id} FROM {t} AS t WHERE {kx} > {seen}"
            " ORDER BY {kx} LIMIT %(cap)s) AS n ORDER BY {nkx}"
        ).format(
            p=partition_of(key, space, key.expr("n")),
            nkx=key.expr("n"),
            id=sql.Identifier(key.column),
            t=table_ident(space),
            kx=key.expr("t"),
            seen=key.literal(max_key_seen),
        )
        rows = conn.execute(query, {"cap": MAX_NEW_ROWS_PER_TICK}).fetchall()
        grown = sorted({str(p) for p, _ in rows if p is not None and p in known})
        if len(rows) == MAX_NEW_ROWS_PER_TICK:  # more than one tick's worth: resume after it
            seen_to = rows[-1][1]
    return NewRows(None if seen_to is None else key.to_text(seen_to), unknown, grown)
