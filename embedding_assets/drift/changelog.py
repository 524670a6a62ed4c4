"""The optional change log: triggers that record which rows' text changed.

Installed only by an explicit `embedding-backfills changelog install SPACE`. Two row-level
triggers on the source table write `(space, row id)` into `embedding_backfills.change_log`:
one AFTER INSERT, one AFTER UPDATE OF the text columns WHEN their value really changed. Our
own vector writes do not touch the text columns, so they never fire it. The drift sensor
reads the log each tick (an index range scan, however large the table) and requests runs
for exactly the partitions it names; no hashing of the table is needed.

Consumption is at-least-once: entries are deleted only on the tick after the one that
handed their runs to Dagster, by exact id ranges (a transaction that commits late, with a
lower id, is read on a later tick, never deleted unread).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..config import SpaceConfig
from ..db.introspect import inspect_table, relation, table_ident, text_expression
from ..db.keys import KeyType
from ..db.migrations import apply_migrations
from ..db.registry import registry_exists
from ..errors import DatabaseError
from ..pipeline.partitions import partition_of

SCHEMA = "embedding_backfills"


@dataclass(frozen=True)
class ChangelogStatus:
    space: str
    installed: bool
    columns: list[str]
    pending: int


def _names(space: SpaceConfig) -> tuple[str, str, str]:
    """(function, insert trigger, update trigger): derived from the space, <= 63 bytes."""
    return (
        f"log_change_{space.name}",
        f"eb_changelog_{space.name}_i",
        f"eb_changelog_{space.name}_u",
    )


def text_source_columns(conn: psycopg.Connection, space: SpaceConfig) -> list[str]:
    """The columns the text is computed from: `text_column`, or those `text_sql` reads.

    For `text_sql`, PostgreSQL itself says which columns the expression depends on: a
    temporary view over it records them in pg_depend (created and rolled back here).
    """
    if space.text_column is not None:
        return [space.text_column]
    with conn.transaction(force_rollback=True):
        conn.execute(
            sql.SQL("CREATE TEMP VIEW eb_text_source AS SELECT {} AS txt FROM {}").format(
                text_expression(space), table_ident(space)
            )
        )
        rows = conn.execute(
            "SELECT DISTINCT a.attname FROM pg_depend d"
            " JOIN pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_rewrite'::regclass"
            " JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
            " WHERE r.ev_class = 'pg_temp.eb_text_source'::regclass AND d.refobjsubid > 0"
            " ORDER BY 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


def _installed(conn: psycopg.Connection, space: SpaceConfig) -> bool:
    _, insert_trigger, update_trigger = _names(space)
    row = conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = ANY(%s)",
        (table_ident(space).as_string(conn), [insert_trigger, update_trigger]),
    ).fetchone()
    return bool(row and row[0] == 2)


def _log_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('embedding_backfills.change_log')").fetchone()
    return bool(row and row[0])


def changelog_status(conn: psycopg.Connection, space: SpaceConfig) -> ChangelogStatus:
    installed = _log_exists(conn) and _installed(conn, space)
    pending = 0
    if _log_exists(conn):
        row = conn.execute(
            "SELECT count(*) FROM embedding_backfills.change_log WHERE space = %s", (space.name,)
        ).fetchone()
        pending = int(row[0]) if row else 0
    columns = text_source_columns(conn, space) if installed else []
    return ChangelogStatus(space.name, installed, columns, pending)


def install_changelog(conn: psycopg.Connection, space: SpaceConfig) -> ChangelogStatus:
    """Create (or replace) the space's triggers; `conn` must be autocommit."""
    inspect_table(conn, space)  # the table, key and text source are valid
    columns = text_source_columns(conn, space)
    if not columns:
        raise DatabaseError(
            f"space {space.name!r}: text_sql reads no column of {space.table}; nothing to watch"
        )
    apply_migrations(conn)
    function, insert_trigger, update_trigger = _names(space)
    fn = sql.Identifier(SCHEMA, function)
    table = table_ident(space)
    changed = sql.SQL(" OR ").join(
        sql.SQL("OLD.{c} IS DISTINCT FROM NEW.{c}").format(c=sql.Identifier(c)) for c in columns
    )
    body = sql.SQL(
        "BEGIN INSERT INTO embedding_backfills.change_log (space, row_id) VALUES ({s}, NEW.{id});"
        " RETURN NULL; END"
    ).format(s=sql.Literal(space.name), id=sql.Identifier(space.id_column))
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS {body}"
            ).format(fn=fn, body=sql.Literal(body.as_string(conn)))
        )
        for name in (insert_trigger, update_trigger):
            conn.execute(
                sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), table)
            )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {tr} AFTER INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {fn}()"
            ).format(tr=sql.Identifier(insert_trigger), t=table, fn=fn)
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {tr} AFTER UPDATE OF {cols} ON {t} FOR EACH ROW"
                " WHEN ({changed}) EXECUTE FUNCTION {fn}()"
            ).format(
                tr=sql.Identifier(update_trigger),
                cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                t=table,
                changed=changed,
                fn=fn,
            )
        )
    return changelog_status(conn, space)


def uninstall_changelog(conn: psycopg.Connection, space: SpaceConfig) -> ChangelogStatus:
    """Drop the triggers and function, and forget the space's pending entries."""
    function, insert_trigger, update_trigger = _names(space)
    with conn.transaction():
        if relation(conn, space.schema_name, space.table_name) is not None:
            for name in (insert_trigger, update_trigger):
                conn.execute(
                    sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                        sql.Identifier(name), table_ident(space)
                    )
                )
        conn.execute(
            sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(SCHEMA, function))
        )
        if _log_exists(conn):
            conn.execute(
                "DELETE FROM embedding_backfills.change_log WHERE space = %s", (space.name,)
            )
    return changelog_status(conn, space)


def pending_changes(
    conn: psycopg.Connection, space: SpaceConfig, key: KeyType, limit: int
) -> list[tuple[int, str | None]]:
    """(change id, partition key) of the oldest entries of the space, at most `limit`.

    The partition is None for a row deleted since (nothing to embed). Keys of every type are
    logged as text and compared as the key's own type.
    """
    if not registry_exists(conn) or not _log_exists(conn):
        return []
    row = key.cast_text(sql.SQL("c.row_id"))
    query = sql.SQL(
        "SELECT c.change_id, CASE WHEN EXISTS (SELECT 1 FROM {t} AS t WHERE {kx} = {row})"
        " THEN {partition} END"
        " FROM embedding_backfills.change_log AS c WHERE c.space = %s"
        " ORDER BY c.change_id LIMIT %s"
    ).format(
        t=table_ident(space), kx=key.expr("t"), row=row, partition=partition_of(key, space, row)
    )
    rows = conn.execute(query, (space.name, limit)).fetchall()
    return [(int(c), None if p is None else str(p)) for c, p in rows]


def forget_changes(
    conn: psycopg.Connection, space: SpaceConfig, ranges: list[tuple[int, int]]
) -> int:
    """Delete handled entries by exact, inclusive change-id ranges; return how many."""
    if not ranges or not _log_exists(conn):
        return 0
    cur = conn.execute(
        "DELETE FROM embedding_backfills.change_log AS c"
        " USING unnest(%s::bigint[], %s::bigint[]) AS r(lo, hi)"
        " WHERE c.space = %s AND c.change_id BETWEEN r.lo AND r.hi",
        ([lo for lo, _ in ranges], [hi for _, hi in ranges], space.name),
    )
    return cur.rowcount


def exact_ranges(ids: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive ids: [1, 2, 3, 7] -> [(1, 3), (7, 7)]. Never covers an id not given."""
    ranges: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    return ranges
