"""Seed the demo table: stdlib docstrings with a "legacy" 256-d embedding column.

The legacy column stands for the space a team already has in production (here written by
the `hash` provider); the demo re-embeds the table into a new column with a real model.
"""

from __future__ import annotations

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from ..config import ModelConfig
from ..db.migrations import ensure_pgvector
from ..lifecycle.read_path import read_view_name
from ..providers import build_provider
from .corpus import stdlib_documents

DEMO_TABLE = "documents"
LEGACY_COLUMN = "embedding_legacy"
LEGACY_MODEL = ModelConfig(provider="hash", name="legacy-hash", dimensions=256)


def seed_demo_table(
    conn: psycopg.Connection,
    *,
    schema: str = "public",
    reset: bool = False,
    legacy_model: ModelConfig = LEGACY_MODEL,
    legacy_column: str = LEGACY_COLUMN,
) -> int:
    """Create and fill `<schema>.documents` unless it is already there; return its row count.

    `conn` must be autocommit. `reset` drops the table (and its registry entries) first.
    The legacy column is filled by `legacy_model` (the adopted space's declared model).
    """
    ensure_pgvector(conn)
    table = sql.Identifier(schema, DEMO_TABLE)
    if reset:
        with conn.transaction():
            # An activated space left the table's read view, which depends on the table.
            view = sql.Identifier(schema, read_view_name(DEMO_TABLE))
            conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(view))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
            exists = conn.execute(
                "SELECT to_regclass('embedding_backfills.vector_spaces')"
            ).fetchone()
            if exists and exists[0]:
                conn.execute(
                    "DELETE FROM embedding_backfills.vector_spaces"
                    " WHERE table_schema = %s AND table_name = %s",
                    (schema, DEMO_TABLE),
                )
    present = conn.execute("SELECT to_regclass(%s)", (f"{schema}.{DEMO_TABLE}",)).fetchone()
    if present and present[0]:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
        return int(row[0]) if row else 0

    docs = stdlib_documents()
    legacy = build_provider(legacy_model)
    texts = [d.body for d in docs if d.body]
    vectors = iter(legacy.embed(texts).vectors)
    register_vector(conn)
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "CREATE TABLE {t} (id integer PRIMARY KEY, title text NOT NULL, body text,"
                " {legacy} vector({dims}))"
            ).format(
                t=table,
                legacy=sql.Identifier(legacy_column),
                dims=sql.Literal(legacy_model.stored_dimensions),
            )
        )
        with (
            conn.cursor() as cur,
            cur.copy(
                sql.SQL("COPY {t} (id, title, body, {legacy}) FROM STDIN (FORMAT BINARY)").format(
                    t=table, legacy=sql.Identifier(legacy_column)
                )
            ) as copy,
        ):
            copy.set_types(["int4", "text", "text", "vector"])
            for row_id, doc in enumerate(docs, start=1):
                copy.write_row((row_id, doc.title, doc.body, next(vectors) if doc.body else None))
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    return len(docs)
