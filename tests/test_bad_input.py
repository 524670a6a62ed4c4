"""Each bad input fails early, says what is wrong and how to fix it, and writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from conftest import create_docs, make_space
from psycopg import sql

from embedding_assets.config import load_config, parse_config
from embedding_assets.errors import (
    ConfigError,
    DatabaseError,
    ProviderError,
    SpaceConflictError,
)
from embedding_assets.pipeline.backfill import embed_range
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import build_provider


def snapshot(conn: psycopg.Connection) -> tuple:
    """Every user column, schema and extension, plus the registry's rows if it exists."""
    columns = conn.execute(
        "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3"
    ).fetchall()
    schemas = conn.execute("SELECT nspname FROM pg_namespace ORDER BY 1").fetchall()
    extensions = conn.execute("SELECT extname FROM pg_extension ORDER BY 1").fetchall()
    indexes = conn.execute("SELECT indexrelid::regclass::text FROM pg_index ORDER BY 1").fetchall()
    return columns, schemas, extensions, indexes


def assert_refused(
    conn: psycopg.Connection,
    action: Callable[[], object],
    error: type[Exception],
    *fragments: str,
) -> str:
    before = snapshot(conn)
    with pytest.raises(error) as caught:
        action()
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    assert snapshot(conn) == before, "a refused input must leave the database untouched"
    return message


def prepare(conn: psycopg.Connection, **overrides: object) -> Callable[[], object]:
    space = make_space(**overrides)
    return lambda: prepare_target_column(conn, space, build_provider(space.model))


def test_existing_column_of_another_dimension(conn: psycopg.Connection) -> None:
    create_docs(conn, 20)
    conn.execute("ALTER TABLE docs ADD COLUMN emb vector(8)")
    assert_refused(conn, prepare(conn), SpaceConflictError, "vector(8)", "16", "target_column")


def test_existing_column_of_another_type(conn: psycopg.Connection) -> None:
    create_docs(conn, 20)
    conn.execute("ALTER TABLE docs ADD COLUMN emb real[]")
    assert_refused(conn, prepare(conn), SpaceConflictError, "real[]", "not vector(16)")


def test_missing_table(conn: psycopg.Connection) -> None:
    assert_refused(conn, prepare(conn), DatabaseError, "public.docs does not exist", "`table`")


def test_missing_text_column(conn: psycopg.Connection) -> None:
    create_docs(conn, 20)
    assert_refused(conn, prepare(conn, text_column="content"), DatabaseError, "'content'")


def test_missing_id_column(conn: psycopg.Connection) -> None:
    create_docs(conn, 20)
    assert_refused(conn, prepare(conn, id_column="doc_id"), DatabaseError, "'doc_id'")


SUPPORTED_KEYS = "smallint, integer, bigint, uuid, text, varchar or char"


@pytest.mark.parametrize(
    "key_type", ["numeric", "double precision", "jsonb", "timestamp with time zone"]
)
def test_unsupported_key_type(conn: psycopg.Connection, key_type: str) -> None:
    conn.execute(f"CREATE TABLE docs (id {key_type} PRIMARY KEY, body text)")
    assert_refused(conn, prepare(conn), DatabaseError, f"is {key_type}", SUPPORTED_KEYS)


def test_key_without_unique_index(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE docs (id bigint, body text)")
    assert_refused(conn, prepare(conn), DatabaseError, "no primary key or unique index")


def test_part_of_a_composite_key(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE docs (tenant int, id bigint, body text, PRIMARY KEY (tenant, id))")
    assert_refused(conn, prepare(conn), DatabaseError, "composite key", "one unique column")


def test_key_with_only_a_partial_unique_index(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE docs (id bigint, body text, deleted boolean)")
    conn.execute("CREATE UNIQUE INDEX docs_live_id ON docs (id) WHERE NOT deleted")
    assert_refused(conn, prepare(conn), DatabaseError, "partial unique index")


def test_where_that_is_not_boolean(conn: psycopg.Connection) -> None:
    create_docs(conn, 20)
    action = prepare(conn, where="length(body)")
    assert_refused(conn, action, DatabaseError, "where is not a boolean expression", "boolean")


def test_where_cannot_smuggle_a_second_statement(conn: psycopg.Connection) -> None:
    create_docs(conn, 20)
    action = prepare(conn, where="true; DROP TABLE docs; --")
    assert_refused(conn, action, DatabaseError, "where is not a boolean expression")
    assert conn.execute("SELECT to_regclass('docs')").fetchone()[0] is not None


def test_text_sql_that_does_not_compile(conn: psycopg.Connection) -> None:
    create_docs(conn, 20)
    action = prepare(conn, text_column=None, text_sql="coalesce(title, '') || body")
    assert_refused(conn, action, DatabaseError, "text_sql is not a valid expression", "title")


def test_text_sql_cannot_smuggle_a_second_statement(conn: psycopg.Connection) -> None:
    create_docs(conn, 20)
    action = prepare(conn, text_column=None, text_sql="body FROM docs; DROP TABLE docs; --")
    assert_refused(conn, action, DatabaseError, "text_sql")
    assert conn.execute("SELECT to_regclass('docs')").fetchone()[0] is not None


def test_model_identity_conflict_with_registry(conn: psycopg.Connection) -> None:
    create_docs(conn, 20)
    space = make_space()
    prepare_target_column(conn, space, build_provider(space.model))
    # same name, same column, same dimension, another model: a silent swap, refused
    other = make_space(name=space.name, model={"name": "another-model"})
    message = assert_refused(
        conn,
        lambda: prepare_target_column(conn, other, build_provider(other.model)),
        SpaceConflictError,
        "hash:test-hash",
        "hash:another-model",
        "new target_column",
    )
    assert "another-model" in message


def test_column_owned_by_another_space(conn: psycopg.Connection) -> None:
    create_docs(conn, 20)
    space = make_space()
    prepare_target_column(conn, space, build_provider(space.model))
    other = make_space()  # another name, same column
    assert_refused(
        conn,
        lambda: prepare_target_column(conn, other, build_provider(other.model)),
        SpaceConflictError,
        f"already belongs to vector space {space.name!r}",
    )


def test_embedding_refuses_a_column_of_another_model(conn: psycopg.Connection, db_url: str) -> None:
    create_docs(conn, 20)
    space = make_space()
    prepare_target_column(conn, space, build_provider(space.model))
    other = make_space(name=space.name, model={"name": "another-model"})
    before = conn.execute("SELECT count(emb) FROM docs").fetchone()
    with pytest.raises(SpaceConflictError):
        embed_range(other, build_provider(other.model), database_url=db_url)
    assert conn.execute("SELECT count(emb) FROM docs").fetchone() == before == (0,)


def test_embedding_before_the_column_exists(conn: psycopg.Connection, db_url: str) -> None:
    create_docs(conn, 20)
    space = make_space()
    with pytest.raises(DatabaseError, match="target_column first"):
        embed_range(space, build_provider(space.model), database_url=db_url)


def test_index_on_target_column_is_refused_then_dropped_on_request(
    conn: psycopg.Connection, db_url: str
) -> None:
    create_docs(conn, 20)
    space = make_space()
    provider = build_provider(space.model)
    prepare_target_column(conn, space, provider)
    conn.execute("CREATE INDEX docs_emb_hnsw ON docs USING hnsw (emb vector_cosine_ops)")
    assert_refused(
        conn, lambda: prepare_target_column(conn, space, provider), SpaceConflictError, "~100x"
    )
    with pytest.raises(SpaceConflictError, match="docs_emb_hnsw"):
        embed_range(space, provider, database_url=db_url)
    result = prepare_target_column(conn, space, provider, drop_index=True)
    assert result.dropped_indexes == ["docs_emb_hnsw"]
    assert conn.execute("SELECT to_regclass('docs_emb_hnsw')").fetchone()[0] is None


def test_unreachable_endpoint(conn: psycopg.Connection) -> None:
    create_docs(conn, 20)
    action = prepare(
        conn,
        model={
            "provider": "openai",
            "name": "nomic-embed-text",
            "base_url": "http://127.0.0.1:9/v1",  # discard port: nothing listens
            "max_retries": 0,
            "timeout_seconds": 2,
        },
    )
    assert_refused(conn, action, ProviderError, "cannot reach", "127.0.0.1:9", "base_url")


def test_pgvector_missing_and_not_creatable(pg_server_url: str, db_url: str) -> None:
    from embedding_assets.db.connection import with_database

    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS app_user")
        admin.execute("CREATE ROLE app_user LOGIN")
        admin.execute("CREATE DATABASE novector OWNER app_user")
    url = with_database(pg_server_url, "novector").replace("user=postgres", "user=app_user")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            create_docs(conn, 5)
            assert_refused(
                conn, prepare(conn), DatabaseError, "pgvector", "CREATE EXTENSION vector"
            )
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute("DROP DATABASE novector")
            admin.execute("DROP ROLE app_user")


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"name": "Docs-Minilm"}, ["spaces.0.name", "[a-z][a-z0-9_]*"]),
        ({"partiton_size": 10}, ["spaces.0.partiton_size", "unknown key"]),
        ({"model": {"provider": "cohere", "name": "x", "dimensions": 8}}, ["model.provider"]),
        ({"model": {"provider": "hash", "name": "x", "dimensions": 0}}, ["model.dimensions"]),
        ({"model": {"provider": "hash", "name": "x"}}, ["model.dimensions", "missing"]),
        ({"text_sql": "body"}, ["exactly one of text_column or text_sql"]),
        ({"target_column": "body"}, ["must be a new column"]),
        ({"table": "a.b.c"}, ["spaces.0.table"]),
        (
            {
                "model": {
                    "provider": "openai",
                    "name": "x",
                    "dimensions": 8,
                    "api_key_env": "sk-abc",
                }
            },
            ["api_key_env", "NAME of an environment variable"],
        ),
    ],
)
def test_bad_config_names_the_key(change: dict, fragments: list[str]) -> None:
    space = {
        "name": "docs",
        "table": "docs",
        "text_column": "body",
        "target_column": "emb",
        "model": {"provider": "hash", "name": "h", "dimensions": 8},
    }
    space.update(change)
    with pytest.raises(ConfigError) as caught:
        parse_config({"spaces": [space]})
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_config_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDING_BACKFILLS_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="EMBEDDING_BACKFILLS_CONFIG"):
        load_config()
    broken = tmp_path / "broken.yaml"
    broken.write_text("spaces: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("spaces: []\n")
    with pytest.raises(ConfigError, match="spaces"):
        load_config(empty)


def test_repository_config_is_valid() -> None:
    config = load_config(Path(__file__).parent.parent / "embedding_backfills.yaml")
    assert {(s.name, s.adopt, s.model.dimensions) for s in config.spaces} == {
        ("docs_legacy", True, 256),
        ("docs_minilm", False, 384),
    }


def test_identifiers_are_quoted_not_formatted(conn: psycopg.Connection, db_url: str) -> None:
    """A table and columns whose names need quoting work end to end."""
    conn.execute('CREATE SCHEMA "Odd Schema"')
    conn.execute('CREATE TABLE "Odd Schema"."My Docs" ("Doc Id" int PRIMARY KEY, "Body;--" text)')
    conn.execute("""INSERT INTO "Odd Schema"."My Docs" VALUES (1, 'a'), (2, 'b')""")
    space = make_space(
        table="Odd Schema.My Docs",
        id_column="Doc Id",
        text_column="Body;--",
        target_column='Emb "x"',
    )
    provider = build_provider(space.model)
    prepare_target_column(conn, space, provider)
    stats = embed_range(space, provider, database_url=db_url)
    assert stats.rows_embedded == 2
    count = conn.execute(
        sql.SQL("SELECT count({}) FROM {}").format(
            sql.Identifier('Emb "x"'), sql.Identifier("Odd Schema", "My Docs")
        )
    ).fetchone()
    assert count == (2,)
