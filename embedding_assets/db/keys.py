"""The key of a space's table: which column types can key a space, and how their values
travel between PostgreSQL, Python and Dagster.

One seam for every supported key: smallint, integer and bigint over their whole range
(negative ids and the type's maximum included), uuid, and text / varchar / char compared in
the collation of their unique index. Everything else in the project handles key values
through a `KeyType`: SQL casts and comparisons, parameters, short labels for partition keys,
ids in metadata. Values leave the database as Python objects (int, UUID, str) and go back as
text parameters cast to the column's own type, so no conversion loses anything.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace

import psycopg
from psycopg import sql

from ..config import SpaceConfig
from ..errors import DatabaseError

INTEGER_TYPES = ("int2", "int4", "int8")
TEXT_TYPES = ("text", "varchar", "bpchar")
SUPPORTED = "smallint, integer, bigint, uuid, text, varchar or char"

# Ids in metadata and alerts stay short: a text key may be long, and it is the operator's
# data (never row text, but no reason to copy more of it than identifies the row).
METADATA_ID_CHARS = 40
_LABEL_CHARS = 12
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class KeyType:
    """The id column of a space: its type, and the collation its unique index compares in."""

    column: str
    type_name: str  # pg_type.typname: int2, int4, int8, uuid, text, varchar, bpchar
    formatted: str  # format_type(): bigint, uuid, character varying(32), character(21)
    collation: str | None = None  # schema-qualified, for text keys whose index has its own

    @property
    def kind(self) -> str:
        if self.type_name in INTEGER_TYPES:
            return "integer"
        return "uuid" if self.type_name == "uuid" else "text"

    @property
    def cast(self) -> sql.Composable:
        """The column's own type, for casting text parameters (catalog text, trusted)."""
        return sql.SQL(self.formatted)

    def expr(self, alias: str | None = None) -> sql.Composable:
        """The key as compared and ordered: the column, in its index's collation."""
        column = sql.Identifier(alias, self.column) if alias else sql.Identifier(self.column)
        if self.collation is None:
            return column
        return sql.SQL("{} COLLATE {}").format(column, _collation(self.collation))

    def literal(self, value: object) -> sql.Composable:
        """A key value as a quoted literal of the column's type, in the index's collation.

        A `%` is spelled `chr(37)`: queries that also take parameters are scanned for
        placeholders, and a `%s` inside a key must never be read as one.
        """
        parts = self.to_text(value).split("%")
        text = sql.SQL(" || chr(37) || ").join(sql.Literal(p) for p in parts)
        return self.cast_text(text)

    def cast_text(self, text: sql.Composable) -> sql.Composable:
        """A text expression (a literal, a text column) as a key value, comparable with
        `expr()`."""
        value = sql.SQL("({})::{}").format(text, self.cast)
        if self.collation is None:
            return value
        return sql.SQL("{} COLLATE {}").format(value, _collation(self.collation))

    def of_column(self, column: str) -> KeyType:
        """The same key held by another column (a destination table's key column)."""
        return replace(self, column=column)

    def array(self, placeholder: str) -> sql.Composable:
        """A named array parameter of key values (sent as text[]), as the key's type."""
        return sql.SQL("{}::text[]::{}[]").format(sql.Placeholder(placeholder), self.cast)

    def to_text(self, value: object) -> str:
        """A key value as stored in the key-range table and sent as a parameter."""
        return str(value)

    def for_metadata(self, value: object) -> int | str:
        """An id for metadata and alerts: integers as numbers, others short strings."""
        if self.kind == "integer":
            return int(value)  # type: ignore[call-overload]
        text = str(value)
        return text if len(text) <= METADATA_ID_CHARS else text[: METADATA_ID_CHARS - 1] + "…"

    def label(self, value: object | None) -> str:
        """A short, legal Dagster partition-key fragment for a range's lower bound."""
        if value is None:
            return "min"
        if self.kind == "integer":
            return str(int(value))  # type: ignore[call-overload]
        if self.kind == "uuid":
            return uuid.UUID(str(value)).hex[:8]
        # char(n) comes back padded; the padding does not identify anything
        label = _UNSAFE.sub("~", str(value).rstrip(" "))[:_LABEL_CHARS]
        return label or "~"


def _collation(name: str) -> sql.Composable:
    schema, _, coll = name.rpartition(".")
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(coll))


def inspect_key(conn: psycopg.Connection, space: SpaceConfig, table_oid: int) -> KeyType:
    """The space's key column, validated: supported type, one column, unique and not partial.

    Raises DatabaseError naming what is wrong and what is supported; reads the catalog only.
    """
    where = f"space {space.name!r}"
    row = conn.execute(
        "SELECT t.typname, format_type(a.atttypid, a.atttypmod), a.attnum, a.attcollation"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = %s AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (table_oid, space.id_column),
    ).fetchone()
    if row is None:
        raise DatabaseError(
            f"{where}: id_column {space.id_column!r} is not a column of {space.table}"
        )
    type_name, formatted, attnum, column_collation = row
    if type_name not in (*INTEGER_TYPES, "uuid", *TEXT_TYPES):
        raise DatabaseError(
            f"{where}: id_column {space.id_column!r} is {formatted}; a space's key must be one "
            f"column of type {SUPPORTED} with a primary key or unique index. Point id_column "
            "at such a column"
        )
    indexes = conn.execute(
        "SELECT i.indnkeyatts, i.indpred IS NOT NULL, i.indcollation[0], i.indexprs IS NOT NULL"
        " FROM pg_index i WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid"
        " AND %s = ANY (i.indkey::int2[])",
        (table_oid, attnum),
    ).fetchall()
    single = [r for r in indexes if r[0] == 1 and not r[1] and not r[3]]
    if not single:
        composite = any(r[0] > 1 for r in indexes)
        partial = any(r[1] for r in indexes)
        why = (
            "is only part of a composite key; a space's key is one column"
            if composite
            else "has only a partial unique index (rows outside its WHERE may repeat a key)"
            if partial
            else "has no primary key or unique index"
        )
        raise DatabaseError(
            f"{where}: id_column {space.id_column!r} {why}. Rows are read and written by key, "
            f"so the key must be one unique column of type {SUPPORTED}: point id_column at "
            "one (ALTER TABLE ... ADD PRIMARY KEY, or CREATE UNIQUE INDEX CONCURRENTLY)"
        )
    collation = None
    index_collation = single[0][2]
    if type_name in TEXT_TYPES and index_collation and index_collation != column_collation:
        name = conn.execute(
            "SELECT n.nspname || '.' || c.collname FROM pg_collation c"
            " JOIN pg_namespace n ON n.oid = c.collnamespace WHERE c.oid = %s",
            (index_collation,),
        ).fetchone()
        collation = str(name[0]) if name else None
    return KeyType(space.id_column, str(type_name), str(formatted), collation)
