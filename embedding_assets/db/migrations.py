"""Apply the versioned DDL in `sql/`, once per database, idempotently.

Connections in this project are autocommit with explicit transactions. The files are
applied in name order inside one transaction under an advisory lock, so that several
processes starting at once (a backfill fanning out) apply them exactly once.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from ..config import PROJECT_ROOT
from ..errors import DatabaseError

MIGRATIONS_LOCK_KEY = 0x656D6264  # "embd": arbitrary, constant across versions
SQL_DIR = PROJECT_ROOT / "sql"


def _migration_files() -> list[Path]:
    files = sorted(SQL_DIR.glob("[0-9][0-9][0-9]_*.sql"))
    if not files:  # installed without the repo: fall back to nothing rather than guess
        raise DatabaseError(f"no migration files found in {SQL_DIR}; run from a checkout")
    return files


def check_pgvector(conn: psycopg.Connection) -> str | None:
    """Read-only: the installed pgvector version (None if available but not installed).

    Raises when the server cannot provide pgvector >= 0.5 at all.
    """
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row is None:
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()
        if not available:
            raise DatabaseError(
                "pgvector is not available on this PostgreSQL server; install pgvector >= 0.5 "
                "on the server (or unset DATABASE_URL to use the embedded server, which has it)"
            )
        return None
    version = str(row[0])
    major, minor = (int(p) for p in version.split(".")[:2])
    if (major, minor) < (0, 5):
        raise DatabaseError(
            f"pgvector {version} is too old; HNSW needs >= 0.5: ALTER EXTENSION vector UPDATE"
        )
    return version


def ensure_pgvector(conn: psycopg.Connection) -> str:
    """Return the installed pgvector version, creating the extension when allowed."""
    version = check_pgvector(conn)
    if version is not None:
        return version
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.errors.InsufficientPrivilege:
        raise DatabaseError(
            "pgvector is available on the server but not installed in this database, and this "
            "role may not create it; ask an administrator to run CREATE EXTENSION vector "
            "in this database"
        ) from None
    version = check_pgvector(conn)
    assert version is not None
    return version


def apply_migrations(conn: psycopg.Connection) -> list[str]:
    """Apply pending files from sql/; return the names applied now (empty when up to date)."""
    ensure_pgvector(conn)
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATIONS_LOCK_KEY,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS embedding_backfills")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS embedding_backfills.schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r[0] for r in conn.execute("SELECT version FROM embedding_backfills.schema_migrations")
        }
        for path in _migration_files():
            if path.name in done:
                continue
            conn.execute(path.read_text(encoding="utf-8").encode())  # static, versioned DDL
            conn.execute(
                "INSERT INTO embedding_backfills.schema_migrations (version) VALUES (%s)",
                (path.name,),
            )
            applied_now.append(path.name)
    return applied_now
