"""One stable read path per table, so that applications never hard-code a column.

Two ways in, both bound to the table's active space:

- **The read view** `<schema>.<table>_embedding (id, embedding, space, provider, model,
  dimensions)`: the rows that have a vector in the active space. `embedding` is the expression
  the space's HNSW index is built on (the column, or its `::halfvec(d)` / `::vector(d)` cast),
  so `ORDER BY embedding <=> $1 LIMIT k` on the view uses the index; the other columns are
  constants naming the space and its model. `replace_read_view` points it at the active space
  inside the transaction of every activation and rollback (`activation._switch`): a reader
  sees the old space or the new one, never a half switch. A relation of that name that the
  project did not create (`embedding_backfills.read_views` records the ones it did) is never
  replaced: the switch is refused instead.
- **`search(conn, table, query_text, k)`**, for applications and notebooks: finds the active
  space in the registry, embeds the query with that space's configured model, refuses when
  that model is not the one that wrote the column (identity or fingerprint) or when the
  space's latest drift verdict failed, and searches only that space's column with its own
  operator and index expression. The answer names the space it came from.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.adapt import PyFormat

from ..config import ModelConfig, ProjectConfig, SpaceConfig, load_config
from ..db.destination import destination_of
from ..db.introspect import relation
from ..db.migrations import apply_migrations
from ..db.registry import SpaceRecord, get_space, spaces_of_table
from ..errors import ConfigError, DatabaseError, SpaceConflictError
from ..providers import SENTINEL_TEXTS, EmbeddingProvider, Fingerprint, build_provider

VIEW_SUFFIX = "_embedding"
MAX_IDENTIFIER_BYTES = 63
SECURITY_INVOKER_SINCE = 150000  # server_version_num of PostgreSQL 15
MAX_K = 1000  # HNSW returns at most hnsw.ef_search rows; pgvector caps ef_search at 1000
_OPERATORS = {"cosine": "<=>", "l2": "<->", "ip": "<#>", "l1": "<+>"}
_OPCLASS_RE = re.compile(r"\b(?:vector|halfvec)_(cosine|l2|ip|l1)_ops\b")
_CAST_RE = re.compile(r"::(halfvec|vector)\((\d+)\)")
# Privileges a view can carry; anything else read from the catalog is not re-granted.
_VIEW_PRIVILEGES = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"}
)

ProviderFactory = Callable[[ModelConfig], EmbeddingProvider]


# -- how a space is read ----------------------------------------------------------------------


@dataclass(frozen=True)
class SpaceExpression:
    """The column, the cast its index is built on (if any) and the index's opclass."""

    column: str
    opclass: str
    cast: tuple[str, int] | None = None  # ("halfvec" | "vector", dims)

    @property
    def operator(self) -> str:
        match = _OPCLASS_RE.fullmatch(self.opclass)
        if match is None:
            raise DatabaseError(f"unknown HNSW opclass {self.opclass!r}")
        return _OPERATORS[match.group(1)]

    def embedding(self) -> sql.Composable:
        """The indexed expression: what a query must order by for the index to serve it."""
        column = sql.Identifier(self.column)
        if self.cast is None:
            return column
        return sql.SQL("({}::{}({}))").format(
            column, sql.SQL(self.cast[0]), sql.Literal(self.cast[1])
        )

    def parameter(self) -> sql.Composable:
        """A binary query-vector placeholder, cast like the indexed expression."""
        param = sql.Placeholder(format=PyFormat.BINARY)
        if self.cast is None:
            return param
        return sql.SQL("{}::{}({})").format(param, sql.SQL(self.cast[0]), sql.Literal(self.cast[1]))


def space_expression(record: SpaceRecord, configured_opclass: str) -> SpaceExpression:
    """Read `record` the way its index was built.

    `index_expression` is the project's text form (`(col::halfvec(3000)) halfvec_cosine_ops`)
    or, for an adopted column, `pg_get_indexdef`; both name the cast and the opclass. Without
    it (an adopted column that never had an index) the column is read as it is, with the
    configured opclass.
    """
    text = record.index_expression or ""
    opclass = _OPCLASS_RE.search(text)
    cast = _CAST_RE.search(text)
    return SpaceExpression(
        record.column_name,
        opclass.group(0) if opclass else configured_opclass,
        (cast.group(1), int(cast.group(2))) if cast else None,
    )


def split_table(table: str) -> tuple[str, str]:
    """`schema.table` or `table` (schema `public`), as the configuration writes tables."""
    schema, _, name = table.rpartition(".")
    return schema or "public", name


def active_space(conn: psycopg.Connection, schema: str, table: str) -> SpaceRecord:
    """The table's active space; raise naming the fix when it has none."""
    record = next((r for r in spaces_of_table(conn, schema, table) if r.status == "active"), None)
    if record is None:
        raise SpaceConflictError(
            f"{schema}.{table} has no active vector space; materialize <name>/registry of a "
            "checked space (or <name>/adoption of the column in use today) first"
        )
    return record


# -- the read view ----------------------------------------------------------------------------


def read_view_name(table: str) -> str:
    """`<table>_embedding`, shortened with a digest when it would pass 63 bytes."""
    name = f"{table}{VIEW_SUFFIX}"
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name.encode()[:44].decode(errors='ignore')}_{digest}{VIEW_SUFFIX}"


def replace_read_view(conn: psycopg.Connection, space: SpaceConfig) -> str:
    """Point the table's read view at `space`, its active space; return `schema.view`.

    Call inside the transaction that switched the registry: the view and the registry then
    change together. Refuses (raising, so the switch rolls back) when a relation the project
    did not create holds the name.
    """
    _ensure_registry_table(conn)
    record = active_space(conn, space.schema_name, space.table_name)
    if record.name != space.name:
        raise SpaceConflictError(
            f"space {space.name!r} is not the active space of {space.table} ({record.name!r} is)"
        )
    name = _claim_view_name(conn, space)
    view = sql.Identifier(space.schema_name, name)
    expression = space_expression(record, space.index.opclass)
    body = _view_body(conn, space, record, expression)
    if not _replace_in_place(conn, view, body):
        _recreate_keeping_grants(conn, view, body)
    conn.execute(
        sql.SQL("COMMENT ON VIEW {} IS {}").format(
            view, sql.Literal(_view_comment(space, record, expression))
        )
    )
    _record_view(conn, space, name)
    return f"{space.schema_name}.{name}"


def _ensure_registry_table(conn: psycopg.Connection) -> None:
    """A registry from before sql/007 (code upgraded, nothing built since) is brought up."""
    row = conn.execute("SELECT to_regclass('embedding_backfills.read_views')").fetchone()
    if not (row and row[0]):
        apply_migrations(conn)


def _claim_view_name(conn: psycopg.Connection, space: SpaceConfig) -> str:
    """The view's name, unless a relation the project did not create already has it."""
    schema, table, name = space.schema_name, space.table_name, read_view_name(space.table_name)
    owner = conn.execute(
        "SELECT table_name FROM embedding_backfills.read_views"
        " WHERE table_schema = %s AND view_name = %s",
        (schema, name),
    ).fetchone()
    existing = relation(conn, schema, name)
    if existing is not None and (owner != (table,) or existing[1] != "v"):
        raise SpaceConflictError(
            f"{schema}.{name} already exists and is not the project's read view of "
            f"{schema}.{table}; rename or drop it (it is where applications read the active "
            "space), then activate or roll back again. Nothing was switched"
        )
    return name


def _view_body(
    conn: psycopg.Connection, space: SpaceConfig, record: SpaceRecord, e: SpaceExpression
) -> sql.Composed:
    # security_invoker (PostgreSQL 15+): readers need their own SELECT on the table, and its
    # row-level security applies to them, not to the view's owner.
    invoker = conn.info.server_version >= SECURITY_INVOKER_SINCE
    options = sql.SQL(" WITH (security_invoker = true)" if invoker else "")
    return sql.SQL(
        "{options} AS SELECT e.{id} AS id, {embedding} AS embedding, {space}::text AS space,"
        " {provider}::text AS provider, {model}::text AS model, {dims}::integer AS dimensions"
        " FROM {readable}"
    ).format(
        readable=destination_of(space).readable(),
        options=options,
        id=sql.Identifier(space.vector_key_column),
        embedding=e.embedding(),
        space=sql.Literal(record.name),
        provider=sql.Literal(record.provider),
        model=sql.Literal(record.model),
        dims=sql.Literal(record.dimensions),
    )


def _replace_in_place(conn: psycopg.Connection, view: sql.Identifier, body: sql.Composed) -> bool:
    """CREATE OR REPLACE keeps grants and dependent views; False when the type changed."""
    try:
        with conn.transaction():  # a savepoint inside the switch
            conn.execute(sql.SQL("CREATE OR REPLACE VIEW {}{}").format(view, body))
    except psycopg.errors.InvalidTableDefinition:  # e.g. vector(384) -> vector(1024)
        return False
    return True


def _recreate_keeping_grants(
    conn: psycopg.Connection, view: sql.Identifier, body: sql.Composed
) -> None:
    """Drop and create the view (its `embedding` type changed), granting what it had."""
    grants = conn.execute(
        "SELECT r.rolname, a.privilege_type, a.is_grantable"
        " FROM pg_class AS c CROSS JOIN LATERAL aclexplode(c.relacl) AS a"
        " LEFT JOIN pg_roles AS r ON r.oid = a.grantee"
        " WHERE c.oid = %s::regclass AND a.grantee <> c.relowner",
        (view.as_string(conn),),
    ).fetchall()
    try:
        with conn.transaction():
            conn.execute(sql.SQL("DROP VIEW {}").format(view))
    except psycopg.errors.DependentObjectsStillExist as err:
        raise SpaceConflictError(
            f"the read view {view.as_string(conn)} must be created again (the new space's "
            f"vectors have another type), but other objects depend on it ({err.diag.detail}); "
            "drop them, switch, and create them again. Nothing was switched"
        ) from None
    conn.execute(sql.SQL("CREATE VIEW {}{}").format(view, body))
    for role, privilege, grantable in grants:
        if privilege not in _VIEW_PRIVILEGES:
            continue
        conn.execute(
            sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(privilege),
                view,
                sql.SQL("PUBLIC") if role is None else sql.Identifier(role),
                sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
        )


def _view_comment(space: SpaceConfig, record: SpaceRecord, e: SpaceExpression) -> str:
    return (
        f"The active vector space of {space.table}: space {record.name} "
        f"({record.identity.label()}), column {record.column_name}. Replaced in the transaction "
        "of every activation and rollback. Embed queries with that model and search with "
        f"ORDER BY embedding {e.operator} $1 LIMIT k ({e.opclass}, index "
        f"{record.index_name or 'none'})."
    )


def _record_view(conn: psycopg.Connection, space: SpaceConfig, name: str) -> None:
    conn.execute(
        "INSERT INTO embedding_backfills.read_views"
        " (table_schema, table_name, view_name, space) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (table_schema, table_name) DO UPDATE SET view_name = EXCLUDED.view_name,"
        "  space = EXCLUDED.space, replaced_at = now()",
        (space.schema_name, space.table_name, name, space.name),
    )


# -- search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    id: object
    distance: float  # pgvector's distance for the space's operator: smaller is nearer


@dataclass(frozen=True)
class SearchResult:
    """The k nearest rows, all from one space, and which space answered."""

    space: str
    table: str
    column: str
    model: str  # the identity label, e.g. "openai:text-embedding-3-small (1536d)"
    operator: str
    hits: list[Hit]

    @property
    def ids(self) -> list[object]:
        return [h.id for h in self.hits]


def search(
    conn: psycopg.Connection,
    table: str,
    query_text: str,
    k: int = 10,
    *,
    config: ProjectConfig | None = None,
    provider_for: ProviderFactory = build_provider,
) -> SearchResult:
    """The `k` rows of `table` nearest to `query_text`, in the table's active space.

    The query is embedded by the active space's model as configured (`config`, default
    `load_config()`), together with the sentinel texts in one call, and refused unless those
    match the fingerprint the registry recorded, so a swapped endpoint cannot search a space
    its model did not write. A space whose latest drift verdict failed is refused too.
    `provider_for` builds the provider (pass a caching factory to reuse a loaded model).
    """
    if not query_text.strip():
        raise ValueError("query_text is blank; there is nothing to search for")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}, not {k}")
    schema, name = split_table(table)
    record = active_space(conn, schema, name)
    _refuse_untrusted(record)
    space = _configured_space(config or load_config(), record)
    vector = _embed_checked(space, record, query_text, provider_for)
    expression = space_expression(record, space.index.opclass)
    hits = _nearest(conn, space, record, expression, vector, k)
    return SearchResult(
        space=record.name,
        table=f"{schema}.{name}",
        column=record.column_name,
        model=record.identity.label(),
        operator=expression.operator,
        hits=hits,
    )


def nearest_query(space: SpaceConfig, expression: SpaceExpression, k: int) -> sql.Composed:
    """`(id, distance)` of the k nearest rows, ordered by the indexed expression."""
    return sql.SQL(
        "SELECT e.{id}, {embedding} {op} {q} AS distance FROM {readable}"
        " ORDER BY distance LIMIT {k}"
    ).format(
        readable=destination_of(space).readable(),
        id=sql.Identifier(space.vector_key_column),
        embedding=expression.embedding(),
        op=sql.SQL(expression.operator),
        q=expression.parameter(),
        k=sql.Literal(k),
    )


def _refuse_untrusted(record: SpaceRecord) -> None:
    if record.trusted:  # false only when the latest drift verdict failed
        return
    table = f"{record.table_schema}.{record.table_name}"
    raise SpaceConflictError(
        f"space {record.name!r}, the active space of {table}, failed its latest drift check "
        f"({record.drift_detail or ', '.join(record.drift_failures or [])}; checked "
        f"{record.drift_checked_at}): queries embedded with its model now would not match its "
        f"vectors. Restore the model behind {record.identity.label()} (the next drift check "
        f"clears the verdict), or roll back: embedding-backfills rollback {table}"
    )


def _configured_space(config: ProjectConfig, record: SpaceRecord) -> SpaceConfig:
    space = next((s for s in config.spaces if s.name == record.name), None)
    if space is None:
        raise ConfigError(
            f"space {record.name!r}, the active space of {record.table_schema}."
            f"{record.table_name} ({record.identity.label()}), is not in the configuration; "
            "add its entry to embedding_backfills.yaml (or pass config=) so queries are "
            "embedded with its own model"
        )
    return space


def _embed_checked(
    space: SpaceConfig, record: SpaceRecord, query_text: str, provider_for: ProviderFactory
) -> np.ndarray:
    """The query's vector, from one call that also re-embeds the sentinel texts."""
    provider = provider_for(space.model)
    try:
        if provider.identity.key != record.model_key:
            raise SpaceConflictError(
                f"space {record.name!r}: the configuration declares "
                f"{provider.identity.label()} but column {record.column_name} was written by "
                f"{record.identity.label()}; restore the space's `model` in "
                "embedding_backfills.yaml (a new model needs a new space)"
            )
        vectors = provider.embed([*SENTINEL_TEXTS, query_text]).vectors
    finally:
        provider.close()
    current = Fingerprint.from_array(vectors[: len(SENTINEL_TEXTS)])
    registered = Fingerprint.from_json(record.fingerprint) if record.fingerprint else None
    if registered is None or not registered.matches(current):
        cosine = f"{registered.min_cosine(current):.4f}" if registered else "none recorded"
        raise SpaceConflictError(
            f"space {record.name!r}: {provider.identity.label()} no longer returns the vectors "
            f"its fingerprint recorded for the sentinel texts (min cosine {cosine}): the "
            "endpoint serves another model under the same name. Restore the original model, "
            f"or roll back: embedding-backfills rollback {record.table_schema}."
            f"{record.table_name}"
        )
    return vectors[-1]


def _nearest(
    conn: psycopg.Connection,
    space: SpaceConfig,
    record: SpaceRecord,
    expression: SpaceExpression,
    vector: np.ndarray,
    k: int,
) -> list[Hit]:
    register_vector(conn)
    with conn.transaction():
        conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(40, k)),))
        now = get_space(conn, record.name)
        if now is None or now.status != "active":
            raise SpaceConflictError(
                f"the active space of {record.table_schema}.{record.table_name} changed from "
                f"{record.name!r} while the query was embedded; search again"
            )
        rows = conn.execute(
            nearest_query(space, expression, k), (np.asarray(vector, dtype=np.float32),)
        ).fetchall()
    return [Hit(row[0], float(row[1])) for row in rows]
