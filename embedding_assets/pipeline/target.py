"""Prepare a space's target: validate everything, then add the column (or create the
destination table) and register.

All checks run before the first write; the DDL and the registry insert share one
transaction, so a failure leaves the database exactly as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..config import SpaceConfig
from ..db.destination import destination_of
from ..db.introspect import TableInfo, indexes_on_column, inspect_table
from ..db.migrations import apply_migrations, check_pgvector
from ..db.registry import SpaceRecord, check_registration, register_space
from ..errors import SpaceConflictError
from ..providers import EmbeddingProvider, Fingerprint
from .partitions import KeyRange, layout_ranges, recorded_ranges

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetColumn:
    table: TableInfo
    record: SpaceRecord
    created: bool
    dropped_indexes: list[str]
    ranges: list[KeyRange]  # every recorded range, in key order
    added: list[str]  # partition keys laid out by this call

    @property
    def partition_keys(self) -> list[str]:
        return [r.partition_key for r in self.ranges]


def check_fingerprint(space: SpaceConfig, record: SpaceRecord | None, current: Fingerprint) -> None:
    """Same name and dimension is not the same model: compare the sentinel vectors."""
    if record is None or not record.fingerprint:
        return
    registered = Fingerprint.from_json(record.fingerprint)
    if not registered.matches(current):
        raise SpaceConflictError(
            f"space {space.name!r}: the model now returns different vectors for the sentinel "
            f"texts than when the space was registered (min cosine "
            f"{registered.min_cosine(current):.4f}, registered fingerprint {registered.digest}, "
            f"now {current.digest}). The endpoint serves another model under the same name; "
            "restore the original model, or build a new space for the new one"
        )


def indexes_blocking_writes(
    conn: psycopg.Connection, space: SpaceConfig, table_oid: int, record: SpaceRecord | None
) -> list[str]:
    """Indexes on the target column of a space that is still being built.

    A bulk backfill into an indexed column runs ~100x slower, and the index would cover
    unchecked data. Once the space has been validated and indexed (active or retired),
    writes are incremental upkeep (new rows, edited texts) and the index stays.
    """
    if record is not None and record.status != "building":
        return []
    return [i.name for i in indexes_on_column(conn, table_oid, space.target_column)]


def blocking_indexes(
    conn: psycopg.Connection, space: SpaceConfig, info: TableInfo, record: SpaceRecord | None
) -> list[str]:
    """`indexes_blocking_writes` on the relation that holds the space's vectors."""
    if info.vectors_oid is None:
        return []
    return indexes_blocking_writes(conn, space, info.vectors_oid, record)


def prepare_target_column(
    conn: psycopg.Connection,
    space: SpaceConfig,
    provider: EmbeddingProvider,
    *,
    drop_index: bool = False,
) -> TargetColumn:
    """Create `vector(dimensions)` + provenance columns if absent (in the table or in the
    destination table) and register the space.

    `conn` must be autocommit. Refuses an index on the target column (writes into an indexed
    vector column are ~100x slower) unless `drop_index` and the space is still `building`.
    """
    # Read-only validation first: a bad input fails here and nothing has been written.
    check_pgvector(conn)
    identity = provider.identity
    info = inspect_table(conn, space)
    record = check_registration(conn, space, identity)
    fingerprint = provider.fingerprint()  # an unreachable endpoint fails here
    check_fingerprint(space, record, fingerprint)

    dropped: list[str] = []
    if info.target is not None:
        blocking = blocking_indexes(conn, space, info, record)
        if blocking and not drop_index:
            raise SpaceConflictError(
                f"space {space.name!r}: index {', '.join(blocking)} exists on "
                f"{destination_of(space).label}; writing into an indexed vector column is ~100x "
                "slower and the index would cover unchecked data. Drop it, or materialize "
                "with drop_index: true while the space is still building"
            )
        dropped = blocking

    created = info.target is None
    destination = destination_of(space)
    apply_migrations(conn)  # the first write: extension, registry schema
    with conn.transaction():
        # Serialise concurrent preparations of the same table (two launches at once).
        conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (info.oid,))
        for name in dropped:
            conn.execute(
                sql.SQL("DROP INDEX IF EXISTS {}.{}").format(
                    sql.Identifier(space.vector_schema), sql.Identifier(name)
                )
            )
            log.warning("dropped index %s on building space %s", name, space.name)
        destination.create(conn, info.key)
        record = register_space(conn, space, identity, fingerprint)
    added = layout_ranges(conn, space, info.key)
    info = inspect_table(conn, space)
    return TargetColumn(info, record, created, dropped, recorded_ranges(conn, space), added)
