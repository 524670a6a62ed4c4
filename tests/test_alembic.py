"""The alembic filter, on a real database: autogenerate would drop a built space; the filter
stops exactly that and nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import embedded_docs, make_space, run_asset
from dagster import DagsterInstance
from sqlalchemy import BigInteger, Column, Engine, Index, MetaData, Table, Text, create_engine

from embedding_assets.config import CONFIG_ENV, parse_config
from embedding_assets.db.connection import sqlalchemy_psycopg2_url
from embedding_assets.drift.changelog import install_changelog
from embedding_assets.errors import ConfigError
from embedding_assets.integrations.alembic import (
    MODEL_KEY_SUFFIX,
    TEXT_HASH_SUFFIX,
    IncludeObject,
    ProjectObjects,
    include_object,
    include_object_for,
)
from embedding_assets.lifecycle.index import index_name


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """SQLAlchemy on the test database through psycopg 3, as an application's env.py has."""
    url = sqlalchemy_psycopg2_url(db_url).replace("postgresql+psycopg2://", "postgresql+psycopg://")
    engine = create_engine(url)
    yield engine
    engine.dispose()


def app_models(*extra: Column) -> MetaData:
    """What the application's SQLAlchemy models declare: docs(id, body), nothing of ours."""
    metadata = MetaData()
    Table(
        "docs",
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("body", Text),
        *extra,
    )
    return metadata


def autogenerate(
    engine: Engine,
    metadata: MetaData,
    hook: IncludeObject | None = None,
    *,
    include_schemas: bool = True,
) -> set[tuple[str, str]]:
    """What `alembic revision --autogenerate` would write, as {(op, object)}."""
    opts: dict[str, object] = {"include_schemas": include_schemas}
    if hook is not None:
        opts["include_object"] = hook
    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection, opts=opts), metadata)
    found: set[tuple[str, str]] = set()
    for diff in diffs:
        # column type/nullable changes come as a list of tuples; none are expected here
        op = diff[0] if isinstance(diff, tuple) else diff[0][0]
        if op in ("remove_column", "add_column"):
            found.add((op, f"{diff[2]}.{diff[3].name}"))
        elif op in ("remove_table", "add_table"):
            table = diff[1]
            found.add((op, f"{table.schema}.{table.name}" if table.schema else table.name))
        elif op in ("remove_index", "add_index"):
            found.add((op, diff[1].name))
        else:
            found.add((op, repr(diff)))
    return found


def built_space(conn: psycopg.Connection, instance: DagsterInstance):
    """A space built for real and active: column, vectors, checks, HNSW index, activation
    (which also creates the table's read view; alembic does not compare views), triggers."""
    space, _ = embedded_docs(conn, instance, 300)
    run_asset(space, instance, "hnsw_index")
    run_asset(space, instance, "registry")
    install_changelog(conn, space)
    return space


def test_autogenerate_would_drop_a_built_space_and_the_filter_prevents_it(
    conn: psycopg.Connection, engine: Engine, dagster_instance: DagsterInstance
) -> None:
    space = built_space(conn, dagster_instance)
    assert space.target_column == "emb"
    index = index_name(space)
    assert conn.execute("SELECT to_regclass(%s)", (f"public.{index}",)).fetchone() != (None,)
    models = app_models()

    # The danger is real: every object of the space would be dropped by the next revision.
    unfiltered = autogenerate(engine, models)
    assert {
        ("remove_column", "docs.emb"),
        ("remove_column", "docs.emb_text_hash"),
        ("remove_column", "docs.emb_model_key"),
        ("remove_index", index),
        ("remove_table", "embedding_backfills.vector_spaces"),
        ("remove_table", "embedding_backfills.change_log"),
    } <= unfiltered
    assert all(op.startswith("remove_") for op, _ in unfiltered), unfiltered

    # With the filter, in every form, autogenerate finds nothing at all to do.
    config = parse_config({"spaces": [space.model_dump()]})
    for hook in (include_object, include_object_for(config), ProjectObjects()):
        assert autogenerate(engine, models, hook) == set(), hook
        assert autogenerate(engine, models, hook, include_schemas=False) == set(), hook


def test_the_filter_still_shows_the_applications_own_changes(
    conn: psycopg.Connection, engine: Engine, dagster_instance: DagsterInstance
) -> None:
    built_space(conn, dagster_instance)
    # Undeclared objects of the application's own, including a lone lookalike of a
    # provenance column (no `summary` vector beside it): all must still be reported.
    conn.execute("ALTER TABLE docs ADD COLUMN extra text, ADD COLUMN summary_text_hash bytea")
    conn.execute("CREATE INDEX docs_body_idx ON docs (body)")
    models = app_models(Column("title", Text))
    expected = {
        ("remove_column", "docs.extra"),
        ("remove_column", "docs.summary_text_hash"),
        ("remove_index", "docs_body_idx"),
        ("add_column", "docs.title"),
    }
    assert expected <= autogenerate(engine, models)
    assert autogenerate(engine, models, include_object) == expected


def test_an_adopted_column_is_protected_by_the_configuration(
    conn: psycopg.Connection, engine: Engine, dagster_instance: DagsterInstance
) -> None:
    """An adopted column has no provenance columns: only the configuration names it."""
    built_space(conn, dagster_instance)
    conn.execute("ALTER TABLE docs ADD COLUMN legacy vector(16)")
    adopted = make_space(target_column="legacy", adopt=True)
    config = parse_config({"spaces": [adopted.model_dump()]})
    models = app_models()
    assert autogenerate(engine, models, ProjectObjects()) == {("remove_column", "docs.legacy")}
    assert autogenerate(engine, models, include_object_for(config)) == set()


def test_shape_rule_follows_the_projects_naming() -> None:
    """No database: the suffixes are SpaceConfig's, and long index names are the digest form."""
    space = make_space(table="public." + "t" * 40, target_column="v" * 40)
    assert space.text_hash_column == space.target_column + TEXT_HASH_SUFFIX
    assert space.model_key_column == space.target_column + MODEL_KEY_SUFFIX
    name = index_name(space)
    assert name != f"{space.table_name}_{space.target_column}_hnsw"  # shortened with a digest
    table = Table(
        space.table_name,
        MetaData(),
        Column(space.target_column, Text),
        Column(space.text_hash_column, Text),
        Column(space.model_key_column, BigInteger),
        Column("other", Text),
    )
    index = Index(name, table.c[space.target_column])
    other = Index("t_other_idx", table.c.other)
    hook = ProjectObjects()
    assert not hook(index, name, "index", True, None)
    assert hook(other, other.name, "index", True, None)
    assert not hook(table.c[space.model_key_column], space.model_key_column, "column", True, None)
    assert hook(table.c.other, "other", "column", True, None)


def test_a_configuration_that_cannot_be_read_is_an_error(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo in $EMBEDDING_BACKFILLS_CONFIG must not silently narrow what is protected."""
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not found"):
        include_object_for()


def test_a_destination_table_space_gives_autogenerate_nothing_to_do(
    conn: psycopg.Connection, engine: Engine, dagster_instance: DagsterInstance
) -> None:
    """`destination: table` leaves the application's schema alone: alembic's default
    comparison (the default schema only) finds no difference at all, without any filter."""
    space, _ = embedded_docs(conn, dagster_instance, 300, destination="table")
    run_asset(space, dagster_instance, "hnsw_index")
    run_asset(space, dagster_instance, "registry")
    models = app_models()
    assert autogenerate(engine, models, include_schemas=False) == set()
    # comparing every schema shows the project's own schema, which the filter covers
    assert ("remove_table", "embedding_backfills.docs_emb") in autogenerate(engine, models)
    assert autogenerate(engine, models, include_object) == set()

    # a destination table placed in the application's schema is known by its name
    elsewhere = make_space(
        name="docs_public_dest",
        destination="table",
        destination_table="docs_vectors",
        target_column="emb2",
    )
    run_asset(elsewhere, dagster_instance, "target_column")
    assert ("remove_table", "docs_vectors") in autogenerate(engine, models, include_schemas=False)
    config = parse_config({"spaces": [space.model_dump(), elsewhere.model_dump()]})
    assert autogenerate(engine, models, include_object_for(config), include_schemas=False) == set()
