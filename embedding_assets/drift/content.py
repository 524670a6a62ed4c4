"""Missing and stale vectors, found by hashing a bounded window of rows per call.

Staleness means the text changed since its vector was written, and the only way to know is
to hash the current text: a full pass reads every row (see `checks.column` for its cost).
The sweep therefore walks the table in keyset windows of at most `max_rows` rows, whole
partitions only, and resumes where it stopped. Measured cost: `benchmarks/drift_cost.py`.

Drift here is what a partition run fixes: rows with text and no vector, vectors whose text
hash differs from the current text, and vectors of rows whose text became blank. A vector
of another model is not drift: the writer never overwrites it, and the `one_model` check
fails on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..config import SpaceConfig
from ..db.introspect import space_sql
from ..pipeline.partitions import bucket_range


@dataclass(frozen=True)
class PartitionDrift:
    key: str
    rows_missing: int
    rows_stale: int
    vectors_without_text: int
    signature: str  # digest of the drifting ids: the same drift gives the same run key

    @property
    def rows(self) -> int:
        return self.rows_missing + self.rows_stale + self.vectors_without_text


@dataclass(frozen=True)
class SweepWindow:
    start_id: int
    rows_scanned: int
    next_id: int | None  # where the next window starts; None: the table's end was reached
    drift: list[PartitionDrift]


def _window_query(space: SpaceConfig) -> sql.Composed:
    return sql.SQL(
        """
        WITH w AS MATERIALIZED (
            SELECT t.{id} AS id, t.{v} IS NOT NULL AS has_v, t.{k} AS k, t.{hc} AS hc, h.h
            FROM {t} AS t
            {text_hash}
            WHERE t.{id} >= %(start)s
            ORDER BY t.{id}
            LIMIT %(limit)s
        ), f AS (
            SELECT id, h IS NOT NULL AND NOT has_v AS missing,
                   has_v AND h IS NOT NULL AND k = %(key)s AND hc IS DISTINCT FROM h AS stale,
                   has_v AND h IS NULL AS orphan
            FROM w
        )
        SELECT id / %(size)s AS bucket, count(*),
               count(*) FILTER (WHERE missing), count(*) FILTER (WHERE stale),
               count(*) FILTER (WHERE orphan),
               md5(string_agg(id::text, ',' ORDER BY id) FILTER (WHERE missing OR stale OR orphan))
        FROM f GROUP BY 1 ORDER BY 1
        """
    ).format(**space_sql(space))


def sweep_window(
    conn: psycopg.Connection,
    space: SpaceConfig,
    model_key: int,
    start_id: int,
    max_rows: int,
    digits: int,
) -> SweepWindow:
    """Drift per partition in the rows with id >= start_id, at most ~max_rows of them.

    Windows end on a partition boundary, so a partition is judged whole, once per sweep.
    The limit is raised to `partition_size` (a partition never holds more rows than ids).
    """
    size = space.partition_size
    limit = max(max_rows, size)
    rows = conn.execute(
        _window_query(space),
        {"start": start_id, "limit": limit, "key": model_key, "size": size},
    ).fetchall()
    scanned = sum(int(r[1]) for r in rows)
    next_id: int | None = None
    if scanned >= limit and len(rows) > 1:
        # The last partition may be cut by the limit: it starts the next window.
        last_bucket = int(rows[-1][0])
        rows = rows[:-1]
        scanned = sum(int(r[1]) for r in rows)
        next_id = last_bucket * size
    elif scanned >= limit:
        next_id = (int(rows[-1][0]) + 1) * size
    drift = [
        PartitionDrift(
            bucket_range(int(bucket), size).key(digits), int(missing), int(stale), int(orphan), sig
        )
        for bucket, _, missing, stale, orphan, sig in rows
        if missing or stale or orphan
    ]
    return SweepWindow(start_id, scanned, next_id, drift)
