"""Prepare a space's target column: validate everything, then add the column and register.

All checks run before the first write; the DDL and the registry insert share one
transaction, so a failure leaves the database exactly as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..config import SpaceConfig
from ..db.introspect import TableInfo, indexes_on_column, inspect_table, table_ident
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


def prepare_target_column(
    conn: psycopg.Connection,
    space: SpaceConfig,
    provider: EmbeddingProvider,
    *,
    drop_index: bool = False,
) -> TargetColumn:
    """Create `vector(dimensions)` + provenance columns if absent and register the space.

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
        blocking = indexes_blocking_writes(conn, space, info.oid, record)
        if blocking and not drop_index:
            raise SpaceConflictError(
                f"space {space.name!r}: index {', '.join(blocking)} exists on {space.table}."
                f"{space.target_column}; writing into an indexed vector column is ~100x "
                "slower and the index would cover unchecked data. Drop it, or materialize "
                "with drop_index: true while the space is still building"
            )
        dropped = blocking

    created = info.target is None
    apply_migrations(conn)  # the first write: extension, registry schema
    with conn.transaction():
        # Serialise concurrent preparations of the same table (two launches at once).
        conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (info.oid,))
        table = table_ident(space)
        for name in dropped:
            conn.execute(
                sql.SQL("DROP INDEX IF EXISTS {}.{}").format(
                    sql.Identifier(space.schema_name), sql.Identifier(name)
                )
            )
            log.warning("dropped index %s on building space %s", name, space.name)
        # ADD COLUMN of a nullable column with no default is a catalog-only change: instant.
        conn.execute(
            sql.SQL(
                "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {v} vector({d}),"
                " ADD COLUMN IF NOT EXISTS {h} bytea, ADD COLUMN IF NOT EXISTS {k} bigint"
            ).format(
                t=table,
                v=sql.Identifier(space.target_column),
                d=sql.Literal(space.model.dimensions),
                h=sql.Identifier(space.text_hash_column),
                k=sql.Identifier(space.model_key_column),
            )
        )
        for column, purpose in (
            (space.text_hash_column, "sha256 of the text embedded into"),
            (space.model_key_column, "model identity key (registry model_key) of"),
        ):
            conn.execute(
                sql.SQL("COMMENT ON COLUMN {t}.{c} IS {txt}").format(
                    t=table,
                    c=sql.Identifier(column),
                    txt=sql.Literal(f"embedding_backfills: {purpose} {space.target_column}"),
                )
            )
        record = register_space(conn, space, identity, fingerprint)
    added = layout_ranges(conn, space, info.key)
    info = inspect_table(conn, space)
    return TargetColumn(info, record, created, dropped, recorded_ranges(conn, space), added)
