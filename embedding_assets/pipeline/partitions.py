"""Id-range partition keys: fixed-width, zero-padded, so text order is numeric order.

A key is `<first id>-<last id>` (inclusive), padded to the digits of the key type's maximum
(10 for integer, 19 for bigint), e.g. `0000000000-0000099999`. Only ranges that contain rows
get a partition, found with a skip scan over the primary key (one index probe per range).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..config import SpaceConfig
from ..db.introspect import table_ident
from ..errors import DatabaseError

MAX_PARTITIONS = 25_000  # past this the Dagster UI slows down; widen partition_size instead


@dataclass(frozen=True, order=True)
class IdRange:
    first: int
    last: int  # inclusive

    def key(self, digits: int) -> str:
        return f"{self.first:0{digits}d}-{self.last:0{digits}d}"

    @classmethod
    def from_key(cls, key: str) -> IdRange:
        try:
            first, last = key.split("-")
            return cls(int(first), int(last))
        except ValueError:
            raise ValueError(f"{key!r} is not an id-range partition key like 0000-0999") from None

    @classmethod
    def span(cls, keys: list[str]) -> IdRange:
        """The range covering consecutive partition keys (a backfill run's key range)."""
        ranges = [cls.from_key(k) for k in keys]
        return cls(min(r.first for r in ranges), max(r.last for r in ranges))


def is_current_key(key: str, digits: int, size: int) -> bool:
    """False for keys made under another partition_size or key type: they would overlap."""
    try:
        first, last = key.split("-")
        r = IdRange(int(first), int(last))
    except ValueError:
        return False
    return (
        len(first) == len(last) == digits and r.first % size == 0 and r.last == r.first + size - 1
    )


def partition_lock_key(space: SpaceConfig, partition: IdRange) -> int:
    """The advisory-lock key of one partition of one space (signed 64-bit)."""
    digest = hashlib.blake2b(
        f"{space.schema_name}.{space.table_name}.{space.target_column}:{partition.first}".encode(),
        digest_size=8,
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def bucket_range(bucket: int, size: int) -> IdRange:
    return IdRange(bucket * size, bucket * size + size - 1)


def occupied_ranges(
    conn: psycopg.Connection, space: SpaceConfig, within: IdRange | None = None
) -> list[IdRange]:
    """Ranges of `partition_size` ids that hold at least one row, in key order
    (only those overlapping `within`, when given)."""
    ident = sql.Identifier(space.id_column)
    table = table_ident(space)
    size = space.partition_size
    row = conn.execute(sql.SQL("SELECT min({id}) FROM {t}").format(id=ident, t=table)).fetchone()
    if row is None or row[0] is None:
        return []
    if row[0] < 0:
        raise DatabaseError(
            f"space {space.name!r}: {space.table}.{space.id_column} has negative ids "
            f"(min {row[0]}); id-range partitions need ids >= 0"
        )
    # Loose index scan: each step jumps to the first id of the next occupied bucket.
    query = sql.SQL(
        """
        WITH RECURSIVE b(bucket) AS (
            SELECT (SELECT min({id}) FROM {t} WHERE {id} >= %(lo)s) / %(size)s
            UNION ALL
            SELECT (SELECT min({id}) FROM {t} WHERE {id} >= (b.bucket + 1) * %(size)s) / %(size)s
            FROM b WHERE b.bucket IS NOT NULL AND (b.bucket + 1) * %(size)s <= %(hi)s
        )
        SELECT bucket FROM b WHERE bucket IS NOT NULL AND bucket * %(size)s <= %(hi)s
        LIMIT %(cap)s
        """
    ).format(id=ident, t=table)
    lo, hi = (within.first, within.last) if within else (0, 2**63 - 1)
    buckets = [
        r[0]
        for r in conn.execute(
            query, {"size": size, "cap": MAX_PARTITIONS + 1, "lo": max(lo, 0), "hi": hi}
        )
    ]
    if len(buckets) > MAX_PARTITIONS:
        raise DatabaseError(
            f"space {space.name!r}: more than {MAX_PARTITIONS} partitions of {size} ids; "
            "raise partition_size so the Dagster UI stays responsive"
        )
    return [bucket_range(int(b), size) for b in buckets]
