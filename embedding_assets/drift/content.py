"""Missing and stale vectors, found by hashing a bounded window of rows per call.

Staleness means the text changed since its vector was written, and the only way to know is
to hash the current text: a full pass reads every row (see `checks.column` for its cost).
The sweep therefore walks the table partition by partition (whole partitions only, each
one statement bounded by its key range) until about `max_rows` rows were hashed, and
resumes at the next partition. Measured cost: `benchmarks/drift_cost.py`.

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
from ..db.destination import destination_of
from ..db.introspect import space_sql
from ..db.keys import KeyType
from ..pipeline.partitions import KeyRange, range_filter


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
    start_seq: int
    rows_scanned: int
    next_seq: int | None  # the partition the next window starts at; None: the sweep is done
    drift: list[PartitionDrift]


def _partition_query(space: SpaceConfig, key: KeyType, key_range: KeyRange) -> sql.Composed:
    e_range = range_filter(key.of_column(space.vector_key_column), key_range, "e")
    # MATERIALIZED: each row's text hash is computed once, not once per reference below.
    return sql.SQL(
        """
        WITH w AS MATERIALIZED (
            SELECT t.{id} AS id, {tv} IS NOT NULL AS has_v, {tk} AS k, {thc} AS hc, h.h
            FROM {t} AS t
            {text_hash}
            {vjoin}
            WHERE {in_range}
            UNION ALL  -- destination `table`: vectors of deleted rows count as vectors w/o text
            SELECT e.{vk}, true, e.{k}, e.{hc}, NULL FROM {orphans} AND {e_range}
        ), f AS (
            SELECT id, h IS NOT NULL AND NOT has_v AS missing,
                   has_v AND h IS NOT NULL AND k = %(key)s AND hc IS DISTINCT FROM h AS stale,
                   has_v AND h IS NULL AS orphan
            FROM w
        )
        SELECT count(*), count(*) FILTER (WHERE missing), count(*) FILTER (WHERE stale),
               count(*) FILTER (WHERE orphan),
               md5(string_agg(id::text, ',' ORDER BY id) FILTER (WHERE missing OR stale OR orphan))
        FROM f
        """
    ).format(
        in_range=range_filter(key, key_range),
        orphans=destination_of(space).orphans(),
        e_range=e_range,
        # the window's bounds on the destination's side of the join too (see page_query)
        **{**space_sql(space), "vjoin": destination_of(space).join(e_range)},
    )


def sweep_window(
    conn: psycopg.Connection,
    space: SpaceConfig,
    key: KeyType,
    model_key: int,
    ranges: list[KeyRange],
    start_seq: int,
    max_rows: int,
) -> SweepWindow:
    """Drift per partition from partition `start_seq` on, until ~max_rows rows were hashed."""
    todo = [r for r in ranges if r.seq >= start_seq]
    scanned = 0
    drift: list[PartitionDrift] = []
    for i, key_range in enumerate(todo):
        row = conn.execute(_partition_query(space, key, key_range), {"key": model_key}).fetchone()
        assert row is not None
        rows, missing, stale, orphan, signature = row
        scanned += int(rows)
        if missing or stale or orphan:
            drift.append(
                PartitionDrift(
                    key_range.partition_key, int(missing), int(stale), int(orphan), signature
                )
            )
        if scanned >= max_rows and i + 1 < len(todo):
            return SweepWindow(start_seq, scanned, todo[i + 1].seq, drift)
    return SweepWindow(start_seq, scanned, None, drift)
