"""The operator's tools outside materializations: rollback and retention as Dagster jobs and
as CLI commands, and the halfvec index above HNSW's 2000-dimension limit for `vector`."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from conftest import (
    create_docs,
    make_space,
    materialize_partitions,
    materialize_target,
    resources,
    run_asset,
)
from dagster import DagsterInstance
from dagster_dev import write_spaces_config
from test_adoption import fill_legacy, legacy_space
from typer.testing import CliRunner

from embedding_assets.cli import app
from embedding_assets.defs.jobs import drop_retired_vector_space, rollback_vector_space
from embedding_assets.lifecycle.adoption import adopt_column
from embedding_assets.lifecycle.index import build_hnsw_index
from embedding_assets.pipeline.backfill import embed_range
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import build_provider


def active_column(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT column_name FROM embedding_backfills.active_column('docs')"
    ).fetchall()


@pytest.fixture
def migrated(
    conn: psycopg.Connection,
    dagster_instance: DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):  # type: ignore[no-untyped-def]
    """An adopted legacy space, retired by a new active space; config file in place."""
    create_docs(conn, 300)
    fill_legacy(conn, "old-model")
    retention = {"delay_hours": 0, "backup_dir": str(tmp_path / "backups")}
    legacy = legacy_space("old-model", retention=retention)
    adopt_column(conn, legacy, build_provider(legacy.model))
    new = make_space(target_column="emb_new", model={"name": "new-model"}, retention=retention)
    materialize_target(new, dagster_instance)
    materialize_partitions(new, dagster_instance)
    run_asset(new, dagster_instance, "hnsw_index")
    run_asset(new, dagster_instance, "registry")
    config = write_spaces_config(tmp_path / "embedding_backfills.yaml", legacy, new)
    monkeypatch.setenv("EMBEDDING_BACKFILLS_CONFIG", str(config))
    assert active_column(conn) == [("emb_new",)]
    return legacy, new


def test_rollback_and_retention_jobs(conn: psycopg.Connection, migrated) -> None:  # type: ignore[no-untyped-def]
    _, new = migrated
    result = rollback_vector_space.execute_in_process(
        run_config={"ops": {"rollback_op": {"config": {"table": "public.docs"}}}},
        resources=resources(),
    )
    assert result.success
    assert active_column(conn) == [("legacy",)]

    dropped = drop_retired_vector_space.execute_in_process(
        run_config={"ops": {"retention_op": {"config": {"space": new.name}}}},
        resources=resources(),
    )
    assert dropped.success
    status = conn.execute(
        "SELECT status, backup_path IS NOT NULL FROM embedding_backfills.vector_spaces"
        " WHERE name = %s",
        (new.name,),
    ).fetchone()
    assert status == ("dropped", True)
    assert conn.execute("SELECT to_regclass('docs_emb_new_hnsw')").fetchone() == (None,)


def test_rollback_and_retention_commands(conn: psycopg.Connection, migrated) -> None:  # type: ignore[no-untyped-def]
    legacy, new = migrated
    runner = CliRunner()
    refused = runner.invoke(app, ["retention", "drop", legacy.name])
    # legacy is retired and past its (zero) delay, but was never backed up: refused
    assert refused.exit_code == 2 and "no backup" in refused.output

    rolled = runner.invoke(app, ["rollback", "public.docs"])
    assert rolled.exit_code == 0, rolled.output
    assert legacy.name in rolled.output and active_column(conn) == [("legacy",)]

    again = runner.invoke(app, ["rollback", "public.docs", "--to", "nope"])
    assert again.exit_code == 2 and "no retired space 'nope'" in again.output

    backup = runner.invoke(app, ["retention", "backup", new.name])
    assert backup.exit_code == 0 and "backed up" in backup.output
    drop = runner.invoke(app, ["retention", "drop", new.name])
    assert drop.exit_code == 0, drop.output
    assert "emb_new" in drop.output


def test_above_2000_dims_the_index_is_on_halfvec(conn: psycopg.Connection, db_url: str) -> None:
    create_docs(conn, 120)
    space = make_space(model={"dimensions": 2048})
    provider = build_provider(space.model)
    prepare_target_column(conn, space, provider)
    embed_range(space, provider, database_url=db_url)

    result = build_hnsw_index(conn, space)

    assert result.expression == "(emb::halfvec(2048)) halfvec_cosine_ops"
    definition = conn.execute("SELECT pg_get_indexdef(to_regclass(%s))", (result.name,)).fetchone()
    assert "halfvec(2048)" in definition[0] and "hnsw" in definition[0]
