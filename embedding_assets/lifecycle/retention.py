"""Retention of retired spaces: back up `(id, vector)`, then, after a delay, drop.

Dropping is never a side effect of activation: it is an explicit command or job, refused
before the configured delay and before a backup file of the column exists. The backup is
PostgreSQL's binary COPY format (`COPY ... FROM ... (FORMAT BINARY)` restores it into a
table `(id <the key's type>, v vector(d))`), and its path is recorded in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from ..config import SpaceConfig
from ..db.destination import destination_of
from ..db.registry import SpaceRecord, get_space
from ..errors import SpaceConflictError


@dataclass(frozen=True)
class Backup:
    path: Path
    rows: int
    bytes: int


def _record(conn: psycopg.Connection, space: SpaceConfig) -> SpaceRecord:
    record = get_space(conn, space.name)
    if record is None:
        raise SpaceConflictError(f"space {space.name!r} is not registered")
    return record


def backup_space(conn: psycopg.Connection, space: SpaceConfig) -> Backup:
    """Write `(id, vector)` of every row with a vector to a binary COPY file; record it."""
    record = _record(conn, space)
    if record.status == "dropped":
        raise SpaceConflictError(f"space {space.name!r} was dropped; nothing to back up")
    directory = space.retention.backup_path()
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{space.name}-{stamp}.pgcopy"
    partial = path.with_suffix(".partial")
    # From the relation holding the vectors: the table, or the destination table.
    names = {
        "id": sql.Identifier(space.vector_key_column),
        "v": sql.Identifier(space.target_column),
        "vt": destination_of(space).relation,
    }
    query = sql.SQL(
        "COPY (SELECT {id}, {v} FROM {vt} WHERE {v} IS NOT NULL ORDER BY {id})"
        " TO STDOUT (FORMAT BINARY)"
    ).format(**names)
    count = sql.SQL("SELECT count({v}) FROM {vt}").format(**names)
    # One snapshot for the count and the copy, so the recorded count is the file's.
    with conn.transaction(), partial.open("wb") as out, conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        rows = int(cur.execute(count).fetchone()[0])  # type: ignore[index]
        with cur.copy(query) as copy:
            for chunk in copy:
                out.write(chunk)
    partial.rename(path)  # a backup path in the registry always names a whole file
    conn.execute(
        "UPDATE embedding_backfills.vector_spaces SET backup_path = %s, backed_up_at = now()"
        " WHERE name = %s",
        (str(path), space.name),
    )
    return Backup(path, rows, path.stat().st_size)


def drop_retired_space(
    conn: psycopg.Connection, space: SpaceConfig, *, now: datetime | None = None
) -> list[str]:
    """Drop a retired space's index and columns; refuse before the delay or the backup."""
    record = _record(conn, space)
    if record.status != "retired":
        raise SpaceConflictError(
            f"space {space.name!r} is {record.status}; only a retired space can be dropped"
        )
    now = now or datetime.now(UTC)
    delay = timedelta(hours=space.retention.delay_hours)
    assert record.retired_at is not None
    if now < record.retired_at + delay:
        raise SpaceConflictError(
            f"space {space.name!r} was retired at {record.retired_at:%Y-%m-%d %H:%M} UTC; the "
            f"retention delay of {space.retention.delay_hours:g} h ends at "
            f"{record.retired_at + delay:%Y-%m-%d %H:%M} UTC. Rollback stays possible until then"
        )
    backup_ok = (
        record.backup_path is not None
        and record.backed_up_at is not None
        and record.backed_up_at >= record.retired_at
        and Path(record.backup_path).is_file()
        and Path(record.backup_path).stat().st_size > 0
    )
    if not backup_ok:
        raise SpaceConflictError(
            f"space {space.name!r} has no backup taken after its retirement; run "
            f"`embedding-backfills retention backup {space.name}` first"
        )
    dropped: list[str] = []
    with conn.transaction():
        if record.index_name:
            conn.execute(
                sql.SQL("DROP INDEX IF EXISTS {}").format(
                    sql.Identifier(space.vector_schema, record.index_name)
                )
            )
            dropped.append(record.index_name)
        dropped.extend(destination_of(space).drop(conn))
        conn.execute(
            "UPDATE embedding_backfills.vector_spaces SET status = 'dropped', dropped_at = now()"
            " WHERE name = %s",
            (space.name,),
        )
    return dropped
