"""Read the catalog: does the database fit the space, before anything is written?

Every check here is read-only and raises an error naming the problem and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..config import SpaceConfig
from ..errors import DatabaseError, SpaceConflictError
from .destination import destination_of
from .keys import KeyType, inspect_key


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type_name: str  # pg_type.typname, e.g. int8, text, vector
    formatted: str  # format_type(), e.g. vector(384)
    typmod: int  # for vector: the declared dimension, -1 when unconstrained


@dataclass(frozen=True)
class IndexInfo:
    name: str
    valid: bool
    method: str


@dataclass(frozen=True)
class TableInfo:
    oid: int
    schema: str
    name: str
    key: KeyType
    target: ColumnInfo | None
    provenance_present: bool
    # The relation holding the vector columns: the table itself (destination `column`), or
    # the destination table; None while that table does not exist yet.
    vectors_oid: int | None = None

    @property
    def qualified(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.name))


def table_ident(space: SpaceConfig) -> sql.Composed:
    return sql.SQL("{}.{}").format(
        sql.Identifier(space.schema_name), sql.Identifier(space.table_name)
    )


def space_sql(space: SpaceConfig) -> dict[str, sql.Composable]:
    """The quoted names every query of a space uses, for `sql.SQL(...).format(**...)`:
    t table, id key, v vector, hc text hash, k model key, text the text expression,
    text_hash the joins that add `x.txt` and `h.h` (see `text_hash_join`); and where the
    vectors live (`db.destination`): vjoin the join after `{text_hash}`, tv / thc / tk
    the qualified vector, hash and model-key columns, vt the relation holding them, vid its
    key column."""
    return {
        **destination_of(space).names(),
        "t": table_ident(space),
        "id": sql.Identifier(space.id_column),
        "v": sql.Identifier(space.target_column),
        "hc": sql.Identifier(space.text_hash_column),
        "k": sql.Identifier(space.model_key_column),
        "text": text_expression(space),
        "text_hash": text_hash_join(space),
    }


def text_hash_join(space: SpaceConfig) -> sql.Composed:
    """Joins that give every row of `t` its text (`x.txt`) and text hash (`h.h`).

    The hash is NULL for NULL or blank text, and for rows outside the space's `where`
    filter: such a row needs no vector, and a vector it has is cleared. Reader, checks and
    drift sweep all decide "done", "stale" and "missing" from this one definition.
    """
    outside = (
        sql.SQL("NOT coalesce(({}), false) OR ").format(sql.SQL(space.where))  # type: ignore[arg-type]
        if space.where is not None
        else sql.SQL("")
    )
    return sql.SQL(
        "CROSS JOIN LATERAL (SELECT {text} AS txt) AS x"
        " CROSS JOIN LATERAL (SELECT CASE WHEN {outside}btrim(x.txt, E' \\t\\r\\n') = ''"
        " THEN NULL ELSE sha256(convert_to(x.txt, 'UTF8')) END AS h) AS h"
    ).format(text=text_expression(space), outside=outside)


def text_expression(space: SpaceConfig) -> sql.Composable:
    """The text to embed, as SQL. `text_sql` is trusted configuration, like a view body."""
    if space.text_sql is not None:
        return sql.SQL("({})::text").format(sql.SQL(space.text_sql))  # type: ignore[arg-type]
    return sql.SQL("{}::text").format(sql.Identifier(space.text_column))  # type: ignore[arg-type]


def relation(conn: psycopg.Connection, schema: str, name: str) -> tuple[int, str] | None:
    """(oid, relkind) of a table or index by schema and name, or None."""
    row = conn.execute(
        "SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (schema, name),
    ).fetchone()
    return (int(row[0]), str(row[1])) if row else None


def column_info(conn: psycopg.Connection, table_oid: int, column: str) -> ColumnInfo | None:
    row = conn.execute(
        "SELECT a.attname, t.typname, format_type(a.atttypid, a.atttypmod), a.atttypmod"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = %s AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (table_oid, column),
    ).fetchone()
    return ColumnInfo(*row) if row else None


def indexes_on_column(conn: psycopg.Connection, table_oid: int, column: str) -> list[IndexInfo]:
    """Indexes that use the column, directly or in an expression (halfvec casts included)."""
    rows = conn.execute(
        """
        SELECT DISTINCT ic.relname, i.indisvalid, am.amname
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_am am ON am.oid = ic.relam
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attname = %(col)s
        WHERE i.indrelid = %(oid)s
          AND (a.attnum = ANY (i.indkey::int2[])
               OR EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                            AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum))
        ORDER BY 1
        """,
        {"col": column, "oid": table_oid},
    ).fetchall()
    return [IndexInfo(*r) for r in rows]


def inspect_table(conn: psycopg.Connection, space: SpaceConfig) -> TableInfo:
    """Validate table, key, text source and target column against the space; read-only."""
    where = f"space {space.name!r}"
    row = relation(conn, space.schema_name, space.table_name)
    if row is None:
        raise DatabaseError(
            f"{where}: table {space.schema_name}.{space.table_name} does not exist in this "
            "database; check `table` (schema-qualify it if it is not in public) and DATABASE_URL"
        )
    oid, relkind = row
    if relkind not in ("r", "p"):
        raise DatabaseError(
            f"{where}: {space.table} is not a table (relkind {relkind!r}); vectors are written "
            "into a new column, which needs a plain or partitioned table"
        )

    key = inspect_key(conn, space, oid)

    if space.text_column is not None and column_info(conn, oid, space.text_column) is None:
        raise DatabaseError(
            f"{where}: text_column {space.text_column!r} is not a column of {space.table}"
        )
    for setting, expression in (("text_sql", space.text_sql), ("where", space.where)):
        if expression is not None:
            _check_expression(conn, space, setting, expression)

    vectors_oid = oid if space.destination == "column" else _destination_table(conn, space, key)
    target = column_info(conn, vectors_oid, space.target_column) if vectors_oid else None
    if target is not None:
        check_target_column(space, target)
    hash_col = column_info(conn, vectors_oid, space.text_hash_column) if vectors_oid else None
    key_col = column_info(conn, vectors_oid, space.model_key_column) if vectors_oid else None
    return TableInfo(
        oid=oid,
        schema=space.schema_name,
        name=space.table_name,
        key=key,
        target=target,
        provenance_present=hash_col is not None and key_col is not None,
        vectors_oid=vectors_oid,
    )


def _destination_table(conn: psycopg.Connection, space: SpaceConfig, key: KeyType) -> int | None:
    """The destination table's oid once it exists, checked to be one this space can use: a
    plain table whose key column has the source key's type and a unique index."""
    found = relation(conn, space.vector_schema, space.vector_table_name)
    if found is None:
        return None
    oid, relkind = found
    where = (
        f"space {space.name!r}: destination table {space.vector_schema}.{space.vector_table_name}"
    )
    if relkind not in ("r", "p"):
        raise SpaceConflictError(
            f"{where} exists but is not a table (relkind {relkind!r}); set destination_table "
            "to a new name"
        )
    column = column_info(conn, oid, space.vector_key_column)
    if column is None or column.formatted != key.formatted:
        found_as = "is missing" if column is None else f"is {column.formatted}"
        raise SpaceConflictError(
            f"{where} exists, but its key column {space.vector_key_column!r} {found_as}, not "
            f"{key.formatted} like {space.table}; it is not this space's destination: set "
            "destination_table to a new name"
        )
    unique = conn.execute(
        "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        " AND a.attnum = i.indkey[0] WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid"
        " AND i.indnkeyatts = 1 AND i.indpred IS NULL AND a.attname = %s",
        (oid, space.vector_key_column),
    ).fetchone()
    if unique is None:
        raise SpaceConflictError(
            f"{where} has no primary key or unique index on {space.vector_key_column!r}: "
            "vectors are written one per source row by that key. Add one (CREATE UNIQUE INDEX "
            "CONCURRENTLY), "
            "or set destination_table to a new name"
        )
    return oid


def _check_expression(
    conn: psycopg.Connection, space: SpaceConfig, setting: str, expression: str
) -> None:
    """`text_sql` or `where` must be one valid expression over the table (`where` a boolean
    one), checked read-only before anything is written."""
    # Parameters force the extended protocol: one statement, no stacked queries.
    query = (
        sql.SQL("SELECT {} FROM {} WHERE false AND %s").format(
            text_expression(space), table_ident(space)
        )
        if setting == "text_sql"
        else sql.SQL("SELECT 1 FROM {} WHERE ({}) AND false AND %s").format(
            table_ident(space),
            sql.SQL(expression),  # type: ignore[arg-type]
        )
    )
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute(query, (True,))
    except psycopg.Error as err:
        kind = "a boolean expression" if setting == "where" else "a valid expression"
        raise DatabaseError(
            f"space {space.name!r}: {setting} is not {kind} over {space.table}: "
            f"{str(err).strip().splitlines()[0]}"
        ) from None


def check_target_column(space: SpaceConfig, target: ColumnInfo) -> None:
    """A target column that exists must be vector(dimensions), or plain `vector`.

    A plain `vector` column (no declared dimension) is accepted: the database will not stop a
    vector of another dimension there, so the uniform-dimension check scans every value.
    """
    dims = space.model.stored_dimensions
    storage = space.storage
    where = f"{space.vector_schema}.{space.vector_table_name}.{space.target_column}"
    if target.type_name != storage:
        hint = (
            f"set `storage: {target.type_name}` if it holds this model's vectors, or "
            if target.type_name in ("vector", "halfvec")
            else ""
        )
        raise SpaceConflictError(
            f"space {space.name!r}: column {where} exists as {target.formatted}, not "
            f"{storage}({dims}); {hint}choose a new target_column"
        )
    if target.typmod not in (dims, -1):
        raise SpaceConflictError(
            f"space {space.name!r}: column {where} is {storage}({target.typmod}) but "
            f"the model is configured for {dims} dimensions; a column belongs to one vector "
            "space: pick a new target_column for this model (nothing was written)"
        )
