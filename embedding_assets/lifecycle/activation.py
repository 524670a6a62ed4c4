"""Switch which space of a table applications query: activation and rollback.

Both are one transaction that retires the active space and activates another, under a
row lock on the table's registry rows, so that readers of `active_spaces` always see
exactly one active space per table (a unique partial index enforces it). The same
transaction points the table's read view (`<table>_embedding`, see `read_path`) at the
space it activates: the registry and the view switch together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from ..checks.column import evaluate_column
from ..config import ProjectConfig, SpaceConfig
from ..db.destination import destination_of
from ..db.introspect import inspect_table, space_sql
from ..db.registry import SpaceRecord, get_space, spaces_of_table
from ..errors import SpaceConflictError
from .index import index_definition, index_is_valid
from .read_path import replace_read_view


@dataclass(frozen=True)
class Switch:
    activated: str
    retired: list[str]
    read_view: str | None = None  # `schema.view` that now shows the activated space


def _switch(
    conn: psycopg.Connection,
    space: SpaceConfig,
    *,
    validated_at: datetime | None = None,
    index_name: str | None = None,
    index_expression: str | None = None,
    row_count: int | None = None,
) -> Switch:
    schema, table, name = space.schema_name, space.table_name, space.name
    with conn.transaction():
        conn.execute(
            "SELECT 1 FROM embedding_backfills.vector_spaces"
            " WHERE table_schema = %s AND table_name = %s FOR UPDATE",
            (schema, table),
        )
        retired = [
            r[0]
            for r in conn.execute(
                "UPDATE embedding_backfills.vector_spaces"
                " SET status = 'retired', retired_at = now()"
                " WHERE table_schema = %s AND table_name = %s AND status = 'active' AND name <> %s"
                " RETURNING name",
                (schema, table, name),
            )
        ]
        conn.execute(
            "UPDATE embedding_backfills.vector_spaces SET status = 'active', activated_at = now(),"
            " retired_at = NULL,"
            " validated_at = coalesce(%s, validated_at), index_name = coalesce(%s, index_name),"
            " index_expression = coalesce(%s, index_expression),"
            " row_count = coalesce(%s, row_count)"
            " WHERE name = %s",
            (validated_at, index_name, index_expression, row_count, name),
        )
        read_view = replace_read_view(conn, space)
    return Switch(name, retired, read_view)


def activate_space(
    conn: psycopg.Connection, space: SpaceConfig, *, validated_at: datetime
) -> Switch:
    """Make `space` the active one of its table; the caller has checked the gate."""
    record = get_space(conn, space.name)
    if record is None or record.status == "dropped":
        raise SpaceConflictError(f"space {space.name!r} is not registered (or was dropped)")
    index_name, _, index_expression = index_definition(conn, space)
    if not index_is_valid(conn, space, index_name):
        raise SpaceConflictError(
            f"space {space.name!r}: index {index_name} is missing or INVALID; materialize "
            f"{space.name}/hnsw_index first"
        )
    count = _vector_count(conn, space)
    return _switch(
        conn,
        space,
        validated_at=validated_at,
        index_name=index_name,
        index_expression=index_expression,
        row_count=count,
    )


def _vector_count(conn: psycopg.Connection, space: SpaceConfig) -> int:
    row = conn.execute(
        sql.SQL("SELECT count({tv}) FROM {t} AS t {vjoin}").format(**space_sql(space))
    ).fetchone()
    return int(row[0]) if row else 0


def rollback_candidates(conn: psycopg.Connection, schema: str, table: str) -> list[SpaceRecord]:
    """Retired spaces of the table, most recently retired first."""
    retired = [r for r in spaces_of_table(conn, schema, table) if r.status == "retired"]
    return sorted(retired, key=lambda r: r.retired_at or datetime.min, reverse=True)


def rollback(
    conn: psycopg.Connection,
    config: ProjectConfig,
    table: str,
    to_space: str | None = None,
) -> Switch:
    """Re-activate the previous space of `table` (or `to_space`) if it is still whole.

    Requires its column and a valid index to exist and its checks to pass now.
    """
    schema, _, name = table.rpartition(".")
    schema = schema or "public"
    candidates = rollback_candidates(conn, schema, name)
    if to_space is not None:
        candidates = [r for r in candidates if r.name == to_space]
    if not candidates:
        which = f"retired space {to_space!r}" if to_space else "retired space"
        raise SpaceConflictError(f"no {which} of {schema}.{name} to roll back to")
    record = candidates[0]
    space = next((s for s in config.spaces if s.name == record.name), None)
    if space is None:
        raise SpaceConflictError(
            f"space {record.name!r} is not in the configuration any more; restore its entry in "
            "embedding_backfills.yaml to roll back to it (its checks need its text source)"
        )
    info = inspect_table(conn, space)
    if info.target is None:
        raise SpaceConflictError(f"space {record.name!r}: {destination_of(space).label} is gone")
    # An adopted column may never have had an index; a built space always has one.
    needs_index = record.index_name is not None or not record.adopted
    if needs_index and not (record.index_name and index_is_valid(conn, space, record.index_name)):
        raise SpaceConflictError(
            f"space {record.name!r}: its index {record.index_name} is missing or INVALID; "
            f"materialize {record.name}/hnsw_index, then roll back"
        )
    report = evaluate_column(conn, space, record.model_key, provenance=not record.adopted)
    if not report.passed:
        failed = ", ".join(
            f"{v.name} ({v.description})" for v in report.verdicts.values() if not v.passed
        )
        raise SpaceConflictError(f"space {record.name!r} no longer passes its checks: {failed}")
    return _switch(conn, space, row_count=report.vectors)
