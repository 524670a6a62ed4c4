"""Partitions: ranges of the key, laid out once, recorded in the database.

A space's rows are cut into ranges `[lower, upper)` of its key, about `partition_size` rows
each, whatever the key: dense or sparse integers, negative ids, uuid v4 or v7, nanoid text.
The layout is recorded in `embedding_backfills.key_ranges` and read by every run, sensor and
machine, so they all agree. Guarantees:

- complete: the first range has no lower bound and the last none above, so every current
  and future key falls in exactly one range;
- balanced when laid out: every range holds `partition_size` rows but the last, which holds
  between 1 and `partition_size`; so the largest is at most twice the mean;
- stable: the layout is extended, never redrawn. New keys above the highest one the last
  range held (identity columns, uuid v7) become new ranges once there are `partition_size`
  of them; keys that land everywhere (uuid v4, nanoid) grow every range alike. No row that
  a range covered ever moves to another one.

Dagster partition keys are `<seq>_<lower bound>`, e.g. `00003_150000`, `00003_9f1c02aa`
(uuid), `00003_V1StGXR8_Z5j` (text, unsafe characters as `~`): short enough for the UI's
partition list, zero-padded so that text order is key order, legal for any key value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..config import SpaceConfig
from ..db.introspect import table_ident
from ..db.keys import METADATA_ID_CHARS, KeyType
from ..errors import DatabaseError

MAX_PARTITIONS = 25_000  # past this the Dagster UI slows down; widen partition_size instead
_SEQ_DIGITS = 5


@dataclass(frozen=True)
class KeyRange:
    """`[lower, upper)` of the key, as text; None is unbounded."""

    lower: str | None = None
    upper: str | None = None
    partition_key: str = ""
    seq: int = -1

    def describe(self) -> str:
        """`[lower, upper)` for logs and metadata, long text keys shortened."""
        lower = "-inf" if self.lower is None else _short(self.lower)
        upper = "+inf" if self.upper is None else _short(self.upper)
        return f"[{lower}, {upper})"


def _short(value: str) -> str:
    return value if len(value) <= METADATA_ID_CHARS else value[: METADATA_ID_CHARS - 1] + "…"


ALL_KEYS = KeyRange()  # unbounded on both sides: the whole table


def span(ranges: Sequence[KeyRange]) -> KeyRange:
    """The range covering consecutive ranges (a backfill run's partition range)."""
    ordered = sorted(ranges, key=lambda r: r.seq)
    return KeyRange(ordered[0].lower, ordered[-1].upper)


def range_filter(key: KeyType, r: KeyRange, alias: str | None = "t") -> sql.Composed:
    """`lower <= key AND key < upper` (only the bounds that exist), with literal bounds."""
    parts: list[sql.Composable] = []
    if r.lower is not None:
        parts.append(sql.SQL("{} >= {}").format(key.expr(alias), key.literal(r.lower)))
    if r.upper is not None:
        parts.append(sql.SQL("{} < {}").format(key.expr(alias), key.literal(r.upper)))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")  # type: ignore[return-value]


def partition_key(key: KeyType, seq: int, lower: object | None) -> str:
    return f"{seq:0{_SEQ_DIGITS}d}_{key.label(lower)}"


def partition_lock_key(space: SpaceConfig, seq: int) -> int:
    """The advisory-lock key of one partition of one space (signed 64-bit)."""
    digest = hashlib.blake2b(
        f"{space.schema_name}.{space.table_name}.{space.target_column}#{seq}".encode(),
        digest_size=8,
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


# --- the recorded layout --------------------------------------------------------------------

_SELECT = (
    "SELECT lower_bound, upper_bound, partition_key, seq FROM embedding_backfills.key_ranges"
    " WHERE space = %s"
)


def layout_exists(conn: psycopg.Connection) -> bool:
    """Whether the layout table exists (read-only paths run before any migration)."""
    row = conn.execute("SELECT to_regclass('embedding_backfills.key_ranges')").fetchone()
    return bool(row and row[0] is not None)


def recorded_ranges(conn: psycopg.Connection, space: SpaceConfig) -> list[KeyRange]:
    """The space's ranges in key order (empty before `<name>/target_column` laid them out)."""
    if not layout_exists(conn):
        return []
    return [KeyRange(*r) for r in conn.execute(_SELECT + " ORDER BY seq", (space.name,))]


def ranges_for_keys(
    conn: psycopg.Connection, space: SpaceConfig, keys: Sequence[str]
) -> tuple[list[KeyRange], list[str]]:
    """(the recorded ranges of these partition keys, the keys that are not recorded)."""
    by_key = {r.partition_key: r for r in recorded_ranges(conn, space)}
    return [by_key[k] for k in keys if k in by_key], [k for k in keys if k not in by_key]


def _keys_from(
    conn: psycopg.Connection, space: SpaceConfig, key: KeyType, above: str | None
) -> tuple[list[object], int, object | None]:
    """(every partition_size-th key above `above`, how many keys there are, the highest).

    Streams along the key's index: row_number needs no buffer, unlike count(*) OVER ().
    """
    where = (
        sql.SQL("WHERE {} > {}").format(key.expr("t"), key.literal(above))
        if above is not None
        else sql.SQL("")
    )
    names = {"id": sql.Identifier(key.column), "kx": key.expr("t"), "t": table_ident(space)}
    starts = [
        r[0]
        for r in conn.execute(
            sql.SQL(
                "SELECT k FROM (SELECT t.{id} AS k, row_number() OVER (ORDER BY {kx}) AS rn"
                " FROM {t} AS t {where}) s WHERE (rn - 1) %% %(size)s = 0 ORDER BY rn"
            ).format(where=where, **names),
            {"size": space.partition_size},
        )
    ]
    count = conn.execute(
        sql.SQL("SELECT count(*) FROM {t} AS t {where}").format(where=where, **names)
    ).fetchone()
    highest = conn.execute(
        sql.SQL("SELECT t.{id} FROM {t} AS t {where} ORDER BY {kx} DESC LIMIT 1").format(
            where=where, **names
        )
    ).fetchone()
    return starts, int(count[0]) if count else 0, highest[0] if highest else None


def layout_ranges(conn: psycopg.Connection, space: SpaceConfig, key: KeyType) -> list[str]:
    """Lay out the space's ranges, or extend them with ranges for new keys above the last
    one covered; return the partition keys added. `conn` must be autocommit.

    Cost: one ordered scan of the key index (all keys the first time, only the new ones
    above the last range's highest key afterwards).
    """
    size = space.partition_size
    added: list[str] = []
    with conn.transaction():
        # One layout at a time per space (two target_column runs launched together).
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (partition_lock_key(space, -1),))
        last = conn.execute(
            "SELECT seq, lower_bound, covered_max FROM embedding_backfills.key_ranges"
            " WHERE space = %s ORDER BY seq DESC LIMIT 1",
            (space.name,),
        ).fetchone()
        if last is not None and last[2] is None and last[0] == 0:
            # One range laid out over an empty table: nothing was covered, start afresh.
            conn.execute(
                "DELETE FROM embedding_backfills.key_ranges WHERE space = %s", (space.name,)
            )
            last = None
        if last is None:
            starts, count, highest = _keys_from(conn, space, key, None)
            bounds: list[object | None] = [None, *starts[1:]]  # the first range is open below
            first_seq = 0
        else:
            seq, _, covered = last
            starts, count, highest = _keys_from(conn, space, key, covered)
            if count < size:  # too few new keys for a range of their own: the last one grows
                return []
            # new ranges start at the first new key; the last new one takes the remainder
            bounds = list(starts[: count // size])
            first_seq = seq + 1
        if first_seq + len(bounds) > MAX_PARTITIONS:
            raise DatabaseError(
                f"space {space.name!r}: more than {MAX_PARTITIONS} partitions of {size:,} rows; "
                "raise partition_size so the Dagster UI stays responsive"
            )
        if last is not None:
            conn.execute(
                "UPDATE embedding_backfills.key_ranges SET upper_bound = %s, covered_max = NULL"
                " WHERE space = %s AND seq = %s",
                (key.to_text(bounds[0]), space.name, last[0]),
            )
        rows = []
        for i, lower in enumerate(bounds):
            seq = first_seq + i
            upper = bounds[i + 1] if i + 1 < len(bounds) else None
            name = partition_key(key, seq, lower)
            rows.append(
                (
                    space.name,
                    seq,
                    name,
                    None if lower is None else key.to_text(lower),
                    None if upper is None else key.to_text(upper),
                    None if upper is not None or highest is None else key.to_text(highest),
                )
            )
            added.append(name)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO embedding_backfills.key_ranges"
                " (space, seq, partition_key, lower_bound, upper_bound, covered_max)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                rows,
            )
    return added


def overlapping_ranges(
    conn: psycopg.Connection, space: SpaceConfig, key: KeyType, key_range: KeyRange
) -> list[KeyRange]:
    """The recorded ranges that share keys with `key_range`, in key order."""
    conditions: list[sql.Composable] = [sql.SQL("space = %(space)s")]
    if key_range.lower is not None:  # the range ends above the lower bound
        conditions.append(
            sql.SQL("(upper_bound IS NULL OR {} > {})").format(
                key.cast_text(sql.SQL("upper_bound")), key.literal(key_range.lower)
            )
        )
    if key_range.upper is not None:  # and starts below the upper bound
        conditions.append(
            sql.SQL("(lower_bound IS NULL OR {} < {})").format(
                key.cast_text(sql.SQL("lower_bound")), key.literal(key_range.upper)
            )
        )
    query = sql.SQL(
        "SELECT lower_bound, upper_bound, partition_key, seq FROM embedding_backfills.key_ranges"
        " WHERE {} ORDER BY seq"
    ).format(sql.SQL(" AND ").join(conditions))
    return [KeyRange(*r) for r in conn.execute(query, {"space": space.name})]


def partition_of(key: KeyType, space: SpaceConfig, value: sql.Composable) -> sql.Composed:
    """SQL: the partition key of the row whose key is `value`.

    A binary search (`width_bucket` over the sorted lower bounds, cast to the key's type),
    with the layout read once per statement (uncorrelated subqueries run once): O(log n) per
    row, so mapping millions of rows to their partitions stays cheap.
    """
    layout = sql.SQL("FROM embedding_backfills.key_ranges AS kr WHERE kr.space = {}").format(
        sql.Literal(space.name)
    )
    return sql.SQL(
        "((SELECT array_agg(kr.partition_key ORDER BY kr.seq) {layout})"
        "[1 + width_bucket({value}, (SELECT coalesce(array_agg({lower} ORDER BY kr.seq)"
        " FILTER (WHERE kr.lower_bound IS NOT NULL), '{{}}') {layout}))])"
    ).format(layout=layout, value=value, lower=key.cast_text(sql.SQL("kr.lower_bound")))
