"""`storage: halfvec`: half the bytes, the same life.

On the real embedded database, through Dagster, in both destinations: build, the four
checks, the HNSW index with the halfvec opclass (used by the read view), activation,
`search()`, rollback; a wrong-dimension or off-norm halfvec fails the checks like a vector
one; the storage is part of the space's identity.
"""

from __future__ import annotations

import psycopg
import pytest
from conftest import (
    create_docs,
    execute_checks,
    make_space,
    materialize_partitions,
    materialize_target,
    non_empty_count,
    run_asset,
)
from dagster import DagsterInstance

from embedding_assets.config import ProjectConfig, SpaceConfig
from embedding_assets.db.registry import get_space
from embedding_assets.drift.identity import config_verdict
from embedding_assets.lifecycle.activation import rollback
from embedding_assets.lifecycle.read_path import search
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import build_provider


def vectors_of(space: SpaceConfig) -> str:
    if space.destination == "table":
        return f"{space.vector_schema}.{space.vector_table_name}"
    return space.table


@pytest.mark.parametrize("destination", ["column", "table"])
@pytest.mark.parametrize("dims", [16, 1024])  # inline, and TOASTed (written without staging)
def test_a_halfvec_space_through_its_life(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, destination: str, dims: int
) -> None:
    create_docs(conn, 600)
    old = make_space(target_column="emb_old")
    space = make_space(
        storage="halfvec", destination=destination, model={"dimensions": dims}, partition_size=300
    )
    for s in (old, space):
        materialize_target(s, dagster_instance)
        materialize_partitions(s, dagster_instance)
        checks = execute_checks(s, dagster_instance)
        assert all(c["passed"] for c in checks.values()), checks
        run_asset(s, dagster_instance, "hnsw_index")
        run_asset(s, dagster_instance, "registry")

    where = vectors_of(space)
    declared, size = conn.execute(
        f"SELECT format_type(atttypid, atttypmod), (SELECT avg(pg_column_size(emb)) FROM {where})"
        f" FROM pg_attribute WHERE attrelid = '{where}'::regclass AND attname = 'emb'"
    ).fetchone()
    assert declared == f"halfvec({dims})"
    assert float(size) <= 2 * dims + 8  # half a vector's 4 * dims + 8 (less when compressed)
    assert conn.execute(f"SELECT count(emb) FROM {where}").fetchone() == (non_empty_count(conn),)
    index = conn.execute(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass"
        " AND NOT indisprimary",
        (where,),
    ).fetchall()
    assert [i for (i,) in index if "hnsw" in i and "halfvec_cosine_ops" in i], index

    # a table this small is cheaper to sort; what is shown is that the index can serve it
    conn.execute("SET enable_seqscan = off")
    conn.execute("SET enable_sort = off")
    plan = "\n".join(
        r[0]
        for r in conn.execute(
            "EXPLAIN SELECT id FROM docs_embedding ORDER BY embedding <=> %s::vector LIMIT 5",
            (str([1.0] + [0.0] * (dims - 1)),),
        )
    )
    conn.execute("RESET enable_seqscan")
    conn.execute("RESET enable_sort")
    assert "hnsw" in plan, plan
    project = ProjectConfig.model_construct(spaces=[old, space])
    found = search(conn, "docs", "document number 17 about topic 3", k=3, config=project)
    assert found.space == space.name and found.hits[0].id == 17
    # the drift sensor's identity check agrees that a halfvec column is what was built
    verdict = config_verdict(conn, space, build_provider(space.model), get_space(conn, space.name))
    assert verdict.passed, verdict.description
    assert rollback(conn, project, "public.docs").activated == old.name


def test_wrong_dimension_and_off_norm_halfvecs_fail_the_checks(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 300)
    # a column declared without a dimension: the database will not stop a wrong one
    conn.execute("ALTER TABLE docs ADD COLUMN emb halfvec")
    space = make_space(storage="halfvec")
    materialize_target(space, dagster_instance)
    materialize_partitions(space, dagster_instance)
    assert all(c["passed"] for c in execute_checks(space, dagster_instance).values())
    conn.execute("UPDATE docs SET emb = '[1,0,0]'::halfvec WHERE id = 3")
    conn.execute("UPDATE docs SET emb = %s::halfvec WHERE id = 4", (str([2.0] + [0.0] * 15),))
    checks = execute_checks(space, dagster_instance)
    assert not checks["uniform_dimension"]["passed"]
    assert checks["uniform_dimension"]["example_ids"] == [3]
    assert checks["uniform_dimension"]["dimensions_found"] == [3, 16]
    assert not checks["sane_vectors"]["passed"]
    assert checks["sane_vectors"]["example_ids"] == [4]


def test_storage_is_part_of_the_spaces_identity(conn: psycopg.Connection) -> None:
    from embedding_assets.errors import SpaceConflictError

    create_docs(conn, 50)
    half = make_space(storage="halfvec", name="docs_half")
    prepare_target_column(conn, half, build_provider(half.model))
    full = half.model_copy(update={"storage": "vector"})
    with pytest.raises(SpaceConflictError, match="exists as halfvec\\(16\\), not vector\\(16\\)"):
        prepare_target_column(conn, full, build_provider(full.model))
    # a halfvec space of the same model on another column is another space
    other = make_space(storage="halfvec", name="docs_half_2", target_column="emb2")
    prepare_target_column(conn, other, build_provider(other.model))
    rows = conn.execute(
        "SELECT name, storage FROM embedding_backfills.vector_spaces ORDER BY name"
    ).fetchall()
    assert rows == [("docs_half", "halfvec"), ("docs_half_2", "halfvec")]
    # the registry refuses a storage change even where the catalog cannot tell (a plain
    # column dropped and re-added as vector by hand)
    conn.execute("ALTER TABLE docs DROP COLUMN emb")
    conn.execute("ALTER TABLE docs ADD COLUMN emb vector(16)")
    with pytest.raises(SpaceConflictError, match="stores halfvec, but the configuration now"):
        prepare_target_column(conn, full, build_provider(full.model))
