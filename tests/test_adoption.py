"""Adopting an existing column: verified on a sample, registered, retired, rolled back to."""

from __future__ import annotations

import psycopg
import pytest
from conftest import (
    create_docs,
    make_space,
    materialize_partitions,
    materialize_target,
    metadata_of,
    resources,
    run_asset,
)
from dagster import DagsterInstance, materialize
from pgvector.psycopg import register_vector

from embedding_assets.config import SpaceConfig, parse_config
from embedding_assets.defs.adoption import build_adoption_assets
from embedding_assets.defs.keys import adoption_key
from embedding_assets.errors import SpaceConflictError
from embedding_assets.lifecycle.activation import rollback
from embedding_assets.lifecycle.adoption import adopt_column
from embedding_assets.providers import build_provider


def fill_legacy(
    conn: psycopg.Connection, model: str, dims: int = 16, column: str = "legacy"
) -> None:
    """What production has today: a column some model filled, with no provenance."""
    conn.execute(f"ALTER TABLE docs ADD COLUMN {column} vector({dims})")
    provider = build_provider(make_space(model={"name": model, "dimensions": dims}).model)
    rows = conn.execute(
        "SELECT id, body FROM docs WHERE btrim(coalesce(body, '')) <> ''"
    ).fetchall()
    vectors = provider.embed([r[1] for r in rows]).vectors
    register_vector(conn)
    with conn.cursor() as cur, conn.transaction():
        cur.executemany(
            f"UPDATE docs SET {column} = %s WHERE id = %s",
            [(v, r[0]) for v, r in zip(vectors, rows, strict=True)],
        )


def legacy_space(model: str, **overrides: object) -> SpaceConfig:
    return make_space(target_column="legacy", adopt=True, model={"name": model}, **overrides)


def registry(conn: psycopg.Connection) -> dict[str, tuple]:
    return {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT name, status, adopted FROM embedding_backfills.vector_spaces"
        ).fetchall()
    }


def test_adopting_a_column_written_by_the_declared_model(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 400)
    conn.execute("INSERT INTO docs VALUES (5000, 'added after the legacy backfill')")
    fill_legacy(conn, "old-model")
    conn.execute("UPDATE docs SET legacy = NULL WHERE id = 5000")  # not covered: reported
    before = conn.execute("SELECT sum(xmin::text::bigint) FROM docs").fetchone()
    space = legacy_space("old-model")

    result = materialize(
        build_adoption_assets(space), instance=dagster_instance, resources=resources()
    )

    meta = metadata_of(result, adoption_key(space))
    assert meta["status"] == "active"  # the table had no active space: this is it today
    assert meta["min_cosine"] > 0.999 and meta["sample_size"] == 300
    assert meta["rows_with_text_without_vector"] == 1
    assert registry(conn) == {space.name: ("active", True)}
    assert conn.execute("SELECT sum(xmin::text::bigint) FROM docs").fetchone() == before
    columns = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'docs'"
        )
    }
    assert columns == {"id", "body", "legacy"}  # no vector, no provenance column written


def test_adopting_with_another_model_of_the_same_dimension_fails_with_figures(
    conn: psycopg.Connection,
) -> None:
    create_docs(conn, 400)
    fill_legacy(conn, "old-model")
    space = legacy_space("a-different-model")
    with pytest.raises(SpaceConflictError) as caught:
        adopt_column(conn, space, build_provider(space.model))
    message = str(caught.value)
    assert "does not reproduce the vectors" in message
    assert "min " in message and "median " in message and "300 sampled rows" in message
    assert conn.execute("SELECT to_regclass('embedding_backfills.vector_spaces')").fetchone() == (
        None,
    )


def test_a_wrong_dimension_row_fails_adoption(conn: psycopg.Connection) -> None:
    create_docs(conn, 200)
    conn.execute("ALTER TABLE docs ADD COLUMN legacy vector")
    fill_legacy(conn, "old-model", column="legacy_src")
    conn.execute("UPDATE docs SET legacy = legacy_src")
    conn.execute("UPDATE docs SET legacy = '[1,2,3]' WHERE id = 9")
    space = legacy_space("old-model")
    with pytest.raises(SpaceConflictError, match=r"uniform_dimension.*ids \[9\]"):
        adopt_column(conn, space, build_provider(space.model))


def test_activation_retires_the_adopted_space_and_rollback_restores_it(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 600)
    fill_legacy(conn, "old-model")
    legacy = legacy_space("old-model")
    adopt_column(conn, legacy, build_provider(legacy.model))
    new = make_space(target_column="emb_new", model={"name": "new-model"})
    materialize_target(new, dagster_instance)
    materialize_partitions(new, dagster_instance)
    run_asset(new, dagster_instance, "hnsw_index")
    run_asset(new, dagster_instance, "registry")
    assert registry(conn) == {legacy.name: ("retired", True), new.name: ("active", False)}

    config = parse_config({"spaces": [legacy.model_dump(), new.model_dump()]})
    switch = rollback(conn, config, "public.docs")

    assert switch.activated == legacy.name
    assert registry(conn) == {legacy.name: ("active", True), new.name: ("retired", False)}
    assert conn.execute(
        "SELECT column_name FROM embedding_backfills.active_column('docs')"
    ).fetchall() == [("legacy",)]
