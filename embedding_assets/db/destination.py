"""Where a space's vectors live: in columns of the source table, or in a table of their own.

One seam, two implementations. Every query of a space reads the vector and its provenance
through the names this module gives (`space_sql`): the join that reaches them from the
source table `t` (`vjoin`, written after the text joins so that the user's `text_sql` and
`where` only ever see the source's columns), the qualified columns (`tv`, `thc`, `tk`) and
the relation that holds them (`vt`). Only the write statements, the DDL and the drop
differ per destination.

- `column` (default): three columns added to the source table, written by UPDATE.
- `table`: a table keyed like the source, `(<id>, <target>, <target>_text_hash,
  <target>_model_key)`, written by INSERT (COPY BINARY for rows it does not hold yet). The
  source table is never altered: no column, no index, no trigger, no dead tuple. There is no
  foreign key either: its referential-integrity triggers would live on the source table.
  Rows deleted from the source are hidden at once by the read path (it joins the source),
  fail the `complete` check, and are deleted by the partition run that covers them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import psycopg
from psycopg import sql

from ..config import SpaceConfig
from .keys import KeyType


def _ident(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


class Destination(ABC):
    """The relation holding a space's vector columns, and how queries reach it."""

    kind: str
    alias: str  # the alias of the vector relation in `src`

    def __init__(self, space: SpaceConfig) -> None:
        self.space = space

    @property
    def schema(self) -> str:
        return self.space.vector_schema

    @property
    def name(self) -> str:
        return self.space.vector_table_name

    @property
    def relation(self) -> sql.Composed:
        return _ident(self.schema, self.name)

    @property
    def label(self) -> str:
        """`schema.table.column` of the vectors, for messages."""
        return f"{self.schema}.{self.name}.{self.space.target_column}"

    def column(self, name: str, alias: str | None = None) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(alias or self.alias), sql.Identifier(name))

    def names(self) -> dict[str, sql.Composable]:
        """The names `space_sql` adds: vjoin, tv, thc, tk, vt, vid (see the module doc)."""
        space = self.space
        return {
            "vjoin": self.join(),
            "tv": self.column(space.target_column),
            "thc": self.column(space.text_hash_column),
            "tk": self.column(space.model_key_column),
            "vt": self.relation,
            "vid": self.column(space.vector_key_column),
            "vk": sql.Identifier(space.vector_key_column),
        }

    @abstractmethod
    def join(self, within: sql.Composable | None = None) -> sql.Composable:
        """What follows `FROM <table> AS t [text joins]` to reach the vector columns;
        `within`, a condition on the vectors' key (as `e`), bounds their side of the join."""

    @abstractmethod
    def stored(self) -> sql.Composable:
        """True when the row has something stored for this space (a partition run clears it
        when the text is gone)."""

    @abstractmethod
    def create(self, conn: psycopg.Connection, key: KeyType) -> None:
        """The DDL that makes room for the vectors, inside the caller's transaction."""

    @abstractmethod
    def drop(self, conn: psycopg.Connection) -> list[str]:
        """Drop the vectors (retention), inside the caller's transaction; return what went."""

    def orphans(self) -> sql.Composable:
        """FROM-and-WHERE of stored rows whose source row is gone, as `e` with the vector
        columns; none in a column, where a deleted row takes its vector with it."""
        return sql.SQL("{} AS e WHERE false").format(self.relation)

    def readable(self) -> sql.Composable:
        """FROM-and-WHERE of the vectors applications may find, as `e` (the read view and
        `search()`): only rows that still exist, so that the HNSW index on `e` serves it."""
        return sql.SQL("{} AS e WHERE e.{} IS NOT NULL").format(
            self.relation, sql.Identifier(self.space.target_column)
        )

    def delete_orphans(
        self, conn: psycopg.Connection, in_range: sql.Composable, model_key: int
    ) -> int:
        """Delete this model's orphans within `in_range` (over alias `e`); return how many."""
        return 0


class ColumnDestination(Destination):
    kind = "column"
    alias = "t"

    def join(self, within: sql.Composable | None = None) -> sql.Composable:
        return sql.SQL("")  # the vectors are in `t`: its own WHERE bounds them

    def stored(self) -> sql.Composable:
        return sql.SQL("t.{} IS NOT NULL").format(sql.Identifier(self.space.target_column))

    def create(self, conn: psycopg.Connection, key: KeyType) -> None:
        _add_vector_columns(conn, self.space, self.relation)

    def drop(self, conn: psycopg.Connection) -> list[str]:
        space = self.space
        columns = [space.target_column, space.text_hash_column, space.model_key_column]
        conn.execute(
            sql.SQL("ALTER TABLE {t} {drops}").format(
                t=self.relation,
                drops=sql.SQL(", ").join(
                    sql.SQL("DROP COLUMN IF EXISTS {}").format(sql.Identifier(c)) for c in columns
                ),
            )
        )
        return columns


class TableDestination(Destination):
    kind = "table"
    alias = "e"

    def join(self, within: sql.Composable | None = None) -> sql.Composable:
        return sql.SQL("LEFT JOIN {dst} AS e ON e.{vk} = t.{id}{within}").format(
            dst=self.relation,
            vk=sql.Identifier(self.space.vector_key_column),
            id=sql.Identifier(self.space.id_column),
            within=sql.SQL("") if within is None else sql.SQL(" AND ") + within,
        )

    def stored(self) -> sql.Composable:
        return sql.SQL("e.{} IS NOT NULL").format(sql.Identifier(self.space.vector_key_column))

    def create(self, conn: psycopg.Connection, key: KeyType) -> None:
        space = self.space
        exists = conn.execute("SELECT to_regclass(%s)", (self.relation.as_string(conn),))
        if exists.fetchone() != (None,):
            # A table that is already there (ours, or one the operator pointed at, checked by
            # `inspect_table`) only gets the columns it lacks, like a source table would.
            _add_vector_columns(conn, space, self.relation)
            return
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
        # CREATE TABLE AS copies the key's type and collation (the one its unique index
        # compares in) from the source column itself: `character varying(32) COLLATE "C"`
        # needs no spelling out, and the primary key orders exactly like the partitions.
        conn.execute(
            sql.SQL(
                "CREATE TABLE {dst} AS SELECT {kx} AS {id}, NULL::{storage}({d}) AS {v},"
                " NULL::bytea AS {h}, NULL::bigint AS {k} FROM {src} AS t WITH NO DATA"
            ).format(
                dst=self.relation,
                kx=key.expr("t"),
                id=sql.Identifier(space.vector_key_column),
                storage=sql.SQL(space.storage),
                d=sql.Literal(space.model.stored_dimensions),
                v=sql.Identifier(space.target_column),
                h=sql.Identifier(space.text_hash_column),
                k=sql.Identifier(space.model_key_column),
                src=_ident(space.schema_name, space.table_name),
            )
        )
        not_null = (space.target_column, space.text_hash_column, space.model_key_column)
        conn.execute(
            sql.SQL("ALTER TABLE {dst} ADD PRIMARY KEY ({id}), {not_null}").format(
                dst=self.relation,
                id=sql.Identifier(space.vector_key_column),
                not_null=sql.SQL(", ").join(
                    sql.SQL("ALTER COLUMN {} SET NOT NULL").format(sql.Identifier(c))
                    for c in not_null
                ),
            )
        )
        # Vectors do not compress: EXTERNAL skips pglz's attempt on every toasted vector.
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STORAGE EXTERNAL").format(
                self.relation, sql.Identifier(space.target_column)
            )
        )
        conn.execute(
            sql.SQL("COMMENT ON TABLE {} IS {}").format(
                self.relation,
                sql.Literal(
                    f"embedding_backfills: vectors of space {space.name} for "
                    f"{space.schema_name}.{space.table_name}, keyed by {space.id_column}"
                ),
            )
        )
        _comment_provenance(conn, space, self.relation)

    def drop(self, conn: psycopg.Connection) -> list[str]:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.relation))
        return [f"{self.schema}.{self.name}"]

    def readable(self) -> sql.Composable:
        space = self.space
        return sql.SQL(
            "{dst} AS e WHERE e.{v} IS NOT NULL"
            " AND EXISTS (SELECT 1 FROM {src} AS t WHERE t.{id} = e.{vk})"
        ).format(
            dst=self.relation,
            v=sql.Identifier(space.target_column),
            src=_ident(space.schema_name, space.table_name),
            id=sql.Identifier(space.id_column),
            vk=sql.Identifier(space.vector_key_column),
        )

    def orphans(self) -> sql.Composable:
        space = self.space
        return sql.SQL(
            "{dst} AS e WHERE NOT EXISTS (SELECT 1 FROM {src} AS t WHERE t.{id} = e.{vk})"
        ).format(
            dst=self.relation,
            src=_ident(space.schema_name, space.table_name),
            id=sql.Identifier(space.id_column),
            vk=sql.Identifier(space.vector_key_column),
        )

    def delete_orphans(
        self, conn: psycopg.Connection, in_range: sql.Composable, model_key: int
    ) -> int:
        # Another model's rows are never touched, orphaned or not (`one_model` reports them).
        cur = conn.execute(
            sql.SQL(
                "DELETE FROM {orphans} AND {in_range} AND (e.{k} IS NULL OR e.{k} = %s)"
            ).format(
                orphans=self.orphans(),
                in_range=in_range,
                k=sql.Identifier(self.space.model_key_column),
            ),
            (model_key,),
        )
        return cur.rowcount


def _add_vector_columns(conn: psycopg.Connection, space: SpaceConfig, table: sql.Composed) -> None:
    # ADD COLUMN of a nullable column with no default is a catalog-only change: instant.
    conn.execute(
        sql.SQL(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {v} {storage}({d}),"
            " ADD COLUMN IF NOT EXISTS {h} bytea, ADD COLUMN IF NOT EXISTS {k} bigint"
        ).format(
            t=table,
            v=sql.Identifier(space.target_column),
            storage=sql.SQL(space.storage),
            d=sql.Literal(space.model.stored_dimensions),
            h=sql.Identifier(space.text_hash_column),
            k=sql.Identifier(space.model_key_column),
        )
    )
    _comment_provenance(conn, space, table)


def _comment_provenance(conn: psycopg.Connection, space: SpaceConfig, table: sql.Composed) -> None:
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


def destination_of(space: SpaceConfig) -> Destination:
    return TableDestination(space) if space.destination == "table" else ColumnDestination(space)
