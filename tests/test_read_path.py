"""The read path applications use: `<table>_embedding` and `read_path.search`.

On the real embedded database, with spaces built, indexed and activated through Dagster: the
view and `search` follow every activation and rollback (in the switch's own transaction),
the view keeps the HNSW index usable, and `search` refuses a model that did not write the
space or whose latest drift verdict failed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest
from conftest import (
    create_docs,
    embedded_docs,
    make_space,
    materialize_partitions,
    materialize_target,
    run_asset,
)
from dagster import DagsterInstance
from openai_server import FakeEmbeddingsServer
from pgvector.psycopg import register_vector
from psycopg import sql

from embedding_assets.config import ProjectConfig, SpaceConfig, parse_config
from embedding_assets.db.registry import SpaceRecord, get_space, record_drift_verdict
from embedding_assets.errors import ConfigError, SpaceConflictError
from embedding_assets.lifecycle import read_path
from embedding_assets.lifecycle.activation import activate_space, rollback
from embedding_assets.lifecycle.index import index_name
from embedding_assets.lifecycle.read_path import (
    SearchResult,
    nearest_query,
    read_view_name,
    search,
    space_expression,
)
from embedding_assets.providers import build_provider

QUERY = "document number 17 about topic 3"  # the exact text of row 17
VIEW = "docs_embedding"
VIEW_COLUMNS = ["id", "embedding", "space", "provider", "model", "dimensions"]


def activate(space: SpaceConfig, instance: DagsterInstance) -> None:
    run_asset(space, instance, "hnsw_index")
    run_asset(space, instance, "registry")


def built(conn: psycopg.Connection, instance: DagsterInstance, **overrides: object) -> SpaceConfig:
    space = make_space(**overrides)
    materialize_target(space, instance)
    materialize_partitions(space, instance)
    return space


def project(*spaces: SpaceConfig) -> ProjectConfig:
    return parse_config({"spaces": [s.model_dump() for s in spaces]})


def shown(conn: psycopg.Connection) -> tuple[str, str]:
    """(space, type of `embedding`) the read view shows now."""
    row = conn.execute(
        "SELECT (SELECT DISTINCT space FROM docs_embedding),"
        " format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'docs_embedding'::regclass AND attname = 'embedding'"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def direct(
    conn: psycopg.Connection, space: SpaceConfig, operator: str, k: int = 10
) -> list[tuple[int, float]]:
    """The same search written by hand on the space's column, through its index."""
    vector = build_provider(space.model).embed([QUERY]).vectors[0]
    register_vector(conn)
    query = sql.SQL(
        "SELECT id, {v} {op} %(q)s FROM docs WHERE {v} IS NOT NULL ORDER BY {v} {op} %(q)s"
        " LIMIT %(k)s"
    ).format(v=sql.Identifier(space.target_column), op=sql.SQL(operator))
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        return [(r[0], r[1]) for r in conn.execute(query, {"q": vector, "k": k})]


def recomputed(conn: psycopg.Connection, space: SpaceConfig, result: SearchResult) -> list[float]:
    """Each hit's distance recomputed from the answering space's column."""
    vector = build_provider(space.model).embed([QUERY]).vectors[0]
    register_vector(conn)
    query = sql.SQL("SELECT {v} {op} %s FROM docs WHERE id = %s").format(
        v=sql.Identifier(space.target_column), op=sql.SQL(result.operator)
    )
    return [conn.execute(query, (vector, h.id)).fetchone()[0] for h in result.hits]


def assert_answered_by(
    conn: psycopg.Connection, result: SearchResult, space: SpaceConfig, operator: str
) -> None:
    assert (result.space, result.column, result.operator) == (
        space.name,
        space.target_column,
        operator,
    )
    pairs = [(h.id, h.distance) for h in result.hits]
    expected = direct(conn, space, operator)
    assert [i for i, _ in pairs] == [i for i, _ in expected]
    assert [d for _, d in pairs] == pytest.approx([d for _, d in expected], abs=1e-6)
    assert result.hits[0].id == 17 and result.hits[0].distance == pytest.approx(0, abs=1e-5)
    # every distance is the answering column's: no vector of another space got in
    assert recomputed(conn, space, result) == pytest.approx([d for _, d in pairs], abs=1e-6)


@pytest.fixture
def role(conn: psycopg.Connection) -> Iterator[str]:
    """A throwaway role (roles are per server, shared by every test database)."""
    name = f"app_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_search_and_the_view_follow_activation_and_rollback(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, role: str
) -> None:
    create_docs(conn, 600)
    old = built(conn, dagster_instance, target_column="emb_old", model={"name": "old-model"})
    new = built(
        conn,
        dagster_instance,
        target_column="emb_new",
        model={"name": "new-model", "dimensions": 24},
        index={"opclass": "vector_l2_ops"},
    )
    config = project(old, new)

    activate(old, dagster_instance)
    assert shown(conn) == (old.name, "vector(16)")
    assert_answered_by(conn, search(conn, "public.docs", QUERY, config=config), old, "<=>")
    conn.execute(sql.SQL("GRANT SELECT ON docs_embedding TO {}").format(sql.Identifier(role)))

    activate(new, dagster_instance)
    assert shown(conn) == (new.name, "vector(24)")  # another type: the view was created again
    assert_answered_by(conn, search(conn, "docs", QUERY, config=config), new, "<->")
    grant = conn.execute("SELECT has_table_privilege(%s, 'docs_embedding', 'SELECT')", (role,))
    assert grant.fetchone() == (True,)  # ...with the grants it had

    switch = rollback(conn, config, "public.docs")
    assert (switch.activated, switch.read_view) == (old.name, f"public.{VIEW}")
    assert shown(conn) == (old.name, "vector(16)")
    assert_answered_by(conn, search(conn, "public.docs", QUERY, config=config), old, "<=>")
    recorded = conn.execute(
        "SELECT view_name, space FROM embedding_backfills.read_views WHERE table_name = 'docs'"
    ).fetchall()
    assert recorded == [(VIEW, old.name)]
    assert conn.execute("SELECT embedding_backfills.read_view('docs')::text").fetchone() == (VIEW,)


@pytest.mark.parametrize(("dims", "embedding_type"), [(16, "vector(16)"), (2048, "halfvec(2048)")])
def test_the_view_exposes_the_indexed_expression_so_the_hnsw_index_serves_it(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, dims: int, embedding_type: str
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 300, model={"dimensions": dims})
    activate(space, dagster_instance)
    columns = conn.execute(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'docs_embedding'::regclass AND attnum > 0 ORDER BY attnum"
    ).fetchall()
    types = ["bigint", embedding_type, "text", "text", "text", "integer"]
    assert columns == list(zip(VIEW_COLUMNS, types, strict=True))
    row = conn.execute("SELECT DISTINCT space, provider, model, dimensions FROM docs_embedding")
    assert row.fetchall() == [(space.name, "hash", "test-hash", dims)]
    comment = conn.execute("SELECT obj_description('docs_embedding'::regclass)").fetchone()[0]
    assert space.name in comment and "ORDER BY embedding <=>" in comment

    record = get_space(conn, space.name)
    assert record is not None
    vector = np.ones(dims, dtype=np.float32)
    register_vector(conn)
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # a small table: prove usability
        view_plan = conn.execute(
            "EXPLAIN SELECT id FROM docs_embedding ORDER BY embedding <=> %s LIMIT 10", (vector,)
        ).fetchall()
        search_plan = conn.execute(
            sql.SQL("EXPLAIN {}").format(
                nearest_query(space, space_expression(record, space.index.opclass), 10)
            ),
            (vector,),
        ).fetchall()
    for plan in (view_plan, search_plan):
        text = "\n".join(r[0] for r in plan)
        assert f"Index Scan using {index_name(space)}" in text, text[:400]


def test_a_switch_that_fails_midway_switches_neither_the_registry_nor_the_view(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_docs(conn, 300)
    old = built(conn, dagster_instance, target_column="emb_old", model={"name": "old-model"})
    new = built(conn, dagster_instance, target_column="emb_new", model={"name": "new-model"})
    activate(old, dagster_instance)
    run_asset(new, dagster_instance, "hnsw_index")

    def fail(*_: object) -> None:  # the last step of replacing the view
        raise RuntimeError("connection lost")

    monkeypatch.setattr(read_path, "_record_view", fail)
    with pytest.raises(RuntimeError, match="connection lost"):
        activate_space(conn, new, validated_at=datetime.now(UTC))
    status = dict(conn.execute("SELECT name, status FROM embedding_backfills.vector_spaces"))
    assert status == {old.name: "active", new.name: "building"}
    assert shown(conn) == (old.name, "vector(16)")


def test_a_relation_the_project_did_not_create_is_never_replaced(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 200)
    # someone's own view of that name: replacing it would silently break their application
    conn.execute("CREATE VIEW docs_embedding AS SELECT 1 AS id, 'mine'::text AS note")
    run_asset(space, dagster_instance, "hnsw_index")
    with pytest.raises(SpaceConflictError, match="not the project's read view"):
        activate_space(conn, space, validated_at=datetime.now(UTC))
    assert get_space(conn, space.name).status == "building"  # type: ignore[union-attr]
    assert conn.execute("SELECT * FROM docs_embedding").fetchall() == [(1, "mine")]


def fake_model(server: FakeEmbeddingsServer, name: str = "nomic-embed-text") -> dict[str, object]:
    return {
        "provider": "openai",
        "name": name,
        "dimensions": 8,
        "base_url": server.base_url,
        "max_retries": 0,
    }


def test_search_refuses_a_model_that_did_not_write_the_space_or_failed_drift(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    with pytest.raises(SpaceConflictError, match="no active vector space"):
        search(conn, "public.docs", QUERY, config=project(make_space()))
    with FakeEmbeddingsServer(dims=8, salt="model-a") as server:
        space, _ = embedded_docs(conn, dagster_instance, 300, model=fake_model(server))
        activate(space, dagster_instance)
        assert search(conn, "docs", QUERY, 5, config=project(space)).space == space.name

        renamed = make_space(name=space.name, model=fake_model(server, "other-model"))
        with pytest.raises(SpaceConflictError, match="declares openai:other-model"):
            search(conn, "docs", QUERY, config=project(renamed))
        with pytest.raises(ConfigError, match="not in the configuration"):
            search(conn, "docs", QUERY, config=project(make_space()))

        record = get_space(conn, space.name)
        assert record is not None
        record_drift_verdict(conn, record.space_id, {"model_fingerprint": "silent model swap"})
        with pytest.raises(SpaceConflictError, match=r"failed its latest drift check.*rollback"):
            search(conn, "docs", QUERY, config=project(space))
        record_drift_verdict(conn, record.space_id, {})
        assert search(conn, "docs", QUERY, config=project(space)).space == space.name

    # same name, same dimension, same identity: only the vectors differ
    with FakeEmbeddingsServer(dims=8, salt="model-b") as swapped:
        same = make_space(name=space.name, model=fake_model(swapped))
        with pytest.raises(SpaceConflictError, match=r"fingerprint.*another model"):
            search(conn, "docs", QUERY, config=project(same))


def _record(index_expression: str | None) -> SpaceRecord:
    now = datetime.now(UTC)
    return SpaceRecord(
        1, "s", "public", "docs", "my col", "hash", "m", None, 3000, True, 1, {}, "active",
        "idx", None, now, None, None, None, index_expression=index_expression,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("recorded", "opclass", "cast"),
    [
        ("my col vector_l2_ops", "vector_l2_ops", None),
        ("(my col::halfvec(3000)) halfvec_cosine_ops", "halfvec_cosine_ops", ("halfvec", 3000)),
        ("(my col::vector(16)) vector_ip_ops", "vector_ip_ops", ("vector", 16)),
        (  # an adopted column records pg_get_indexdef
            'CREATE INDEX x ON public.docs USING hnsw ((("my col")::halfvec(3000)) '
            "halfvec_l1_ops) WITH (m='16')",
            "halfvec_l1_ops",
            ("halfvec", 3000),
        ),
        (None, "vector_cosine_ops", None),  # no index: the column, the configured opclass
    ],
)
def test_the_recorded_index_expression_decides_cast_and_operator(
    recorded: str | None, opclass: str, cast: tuple[str, int] | None
) -> None:
    expression = space_expression(_record(recorded), "vector_cosine_ops")
    assert (expression.column, expression.opclass, expression.cast) == ("my col", opclass, cast)


def test_the_view_name_fits_postgresql_identifiers() -> None:
    assert read_view_name("documents") == "documents_embedding"
    long = read_view_name("t" * 60)
    assert len(long.encode()) <= 63 and long.endswith("_embedding")
    assert long != read_view_name("t" * 59 + "u")
