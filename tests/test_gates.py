"""Checks gate the index and the activation, across runs; rollback and retention."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from conftest import (
    create_docs,
    embedded_docs,
    execute_checks,
    make_space,
    materialize_partitions,
    materialize_target,
    metadata_of,
    resources,
    run_asset,
)
from dagster import DagsterInstance, materialize

from embedding_assets.config import parse_config
from embedding_assets.defs.assets import build_space_assets
from embedding_assets.defs.keys import embeddings_key, hnsw_index_key
from embedding_assets.defs.partitions import id_range_partitions_name
from embedding_assets.errors import SpaceConflictError
from embedding_assets.lifecycle.activation import rollback
from embedding_assets.lifecycle.index import build_hnsw_index, index_name
from embedding_assets.lifecycle.retention import backup_space, drop_retired_space

CHECKS = {"uniform_dimension", "complete", "one_model", "sane_vectors"}


def index_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def assert_not_exposed(conn: psycopg.Connection, instance: DagsterInstance, space) -> str:  # type: ignore[no-untyped-def]
    """Neither the index nor the activation may materialize; return the index's error."""
    failed = run_asset(space, instance, "hnsw_index", raise_on_error=False)
    assert not failed.success
    assert not index_exists(conn, index_name(space))
    assert not run_asset(space, instance, "registry", raise_on_error=False).success
    status = conn.execute(
        "SELECT status FROM embedding_backfills.vector_spaces WHERE name = %s", (space.name,)
    ).fetchone()
    assert status == ("building",)
    events = failed.all_events
    return "\n".join(str(e.event_specific_data) for e in events if e.is_step_failure)


def activate(space, instance: DagsterInstance) -> None:  # type: ignore[no-untyped-def]
    run_asset(space, instance, "hnsw_index")
    run_asset(space, instance, "registry")


def test_happy_path_checks_pass_index_built_space_active(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 1200)
    # the run of the last partition scanned the whole column; all four passed
    results = execute_checks(space, dagster_instance)
    assert set(results) == CHECKS and all(r["passed"] for r in results.values())
    assert results["complete"]["rows_missing"] == 0

    index = run_asset(space, dagster_instance, "hnsw_index")
    meta = metadata_of(index, hnsw_index_key(space))
    assert meta["created"] is True and meta["build_seconds"] >= 0 and meta["index_size_bytes"] > 0
    valid = conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass", (index_name(space),)
    ).fetchone()
    assert valid == (True,)

    run_asset(space, dagster_instance, "registry")
    active = conn.execute(
        "SELECT column_name, space, dimensions FROM embedding_backfills.active_column('docs')"
    ).fetchall()
    assert active == [("emb", space.name, 16)]
    by_model = conn.execute(
        "SELECT count(*) FROM embedding_backfills.active_column('docs', 'hash', 'other-model')"
    ).fetchone()
    assert by_model == (0,)

    # upkeep of the live space (an edited text, a new row) writes through its index
    conn.execute("UPDATE docs SET body = 'edited text' WHERE id = 1")
    conn.execute("INSERT INTO docs VALUES (1300, 'a late row')")
    assert materialize_target(space, dagster_instance)["registry_status"] == "active"
    runs = materialize_partitions(space, dagster_instance)
    assert sum(int(m["rows_embedded"]) for m in runs) == 2
    assert index_exists(conn, index_name(space))


def test_checks_are_deferred_while_partitions_are_missing(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 1200)
    space = make_space()
    materialize_target(space, dagster_instance)
    first = sorted(dagster_instance.get_dynamic_partitions(id_range_partitions_name(space)))[0]
    run_asset(space, dagster_instance, "embeddings", partition_key=first)
    results = execute_checks(space, dagster_instance)
    assert all(not r["passed"] and r["severity"] == "WARN" for r in results.values())
    assert results["complete"]["partitions_pending"] == 2
    message = assert_not_exposed(conn, dagster_instance, space)
    assert "not validated" in message


def test_wrong_dimension_in_a_column_without_declared_dimension(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 600)
    conn.execute("ALTER TABLE docs ADD COLUMN emb vector")  # no dimension: the DB won't stop it
    space = make_space()
    materialize_target(space, dagster_instance)
    materialize_partitions(space, dagster_instance)
    conn.execute("UPDATE docs SET emb = '[1,2,3]' WHERE id = 7")  # provenance left as it was

    results = execute_checks(space, dagster_instance)

    dim = results["uniform_dimension"]
    assert dim["passed"] is False and dim["severity"] == "ERROR"
    assert dim["declared_dimension"] == "none"
    assert dim["dimensions_found"] == [3, 16]
    assert dim["example_ids"] == [7]
    assert "uniform_dimension: failed" in assert_not_exposed(conn, dagster_instance, space)


def test_a_row_written_by_another_model(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 600)
    conn.execute("UPDATE docs SET emb_model_key = 42 WHERE id IN (11, 12)")

    results = execute_checks(space, dagster_instance)

    one = results["one_model"]
    assert one["passed"] is False
    assert one["vectors_other_model"] == 2 and one["example_ids"] == [11, 12]
    assert one["distinct_model_keys"] == 2
    assert "one_model: failed" in assert_not_exposed(conn, dagster_instance, space)


def test_stale_text_and_missing_rows_name_the_partitions_to_rerun(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 1200)
    conn.execute("UPDATE docs SET body = body || ' edited' WHERE id = 3")
    conn.execute(
        "UPDATE docs SET emb = NULL, emb_text_hash = NULL, emb_model_key = NULL WHERE id = 1101"
    )
    complete = execute_checks(space, dagster_instance)["complete"]
    assert complete["passed"] is False
    assert (complete["rows_stale"], complete["rows_missing"]) == (1, 1)
    assert complete["partitions_to_rerun"] == [
        "00000_min",
        "00002_1001",
    ]
    assert complete["example_ids"] == [3, 1101]


def test_a_write_after_the_checks_closes_the_gate(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 600)
    assert all(r["passed"] for r in execute_checks(space, dagster_instance).values())
    time.sleep(0.01)
    key = sorted(dagster_instance.get_dynamic_partitions(id_range_partitions_name(space)))[0]
    # a partition run without its checks (e.g. launched for one partition, checks deselected)
    materialize(
        build_space_assets(space),
        selection=[embeddings_key(space)],
        partition_key=key,
        instance=dagster_instance,
        resources=resources(),
    )
    message = assert_not_exposed(conn, dagster_instance, space)
    assert "since the latest write" in message


def test_activation_retires_the_previous_space_and_rollback_restores_it(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    create_docs(conn, 600)
    retention = {"delay_hours": 1, "backup_dir": str(tmp_path)}
    old = make_space(target_column="emb_old", model={"name": "old-model"}, retention=retention)
    new = make_space(target_column="emb_new", model={"name": "new-model"}, retention=retention)
    for space in (old, new):
        materialize_target(space, dagster_instance)
        materialize_partitions(space, dagster_instance)
    activate(old, dagster_instance)
    activate(new, dagster_instance)
    status = dict(conn.execute("SELECT name, status FROM embedding_backfills.vector_spaces"))
    assert status == {old.name: "retired", new.name: "active"}
    assert conn.execute(
        "SELECT column_name FROM embedding_backfills.active_column('docs')"
    ).fetchall() == [("emb_new",)]

    config = parse_config({"spaces": [old.model_dump(), new.model_dump()]})
    switch = rollback(conn, config, "public.docs")
    assert (switch.activated, switch.retired) == (old.name, [new.name])
    assert conn.execute(
        "SELECT column_name FROM embedding_backfills.active_column('docs')"
    ).fetchall() == [("emb_old",)]

    # retention: the now-retired new space may not be dropped before the delay...
    with pytest.raises(SpaceConflictError, match="retention delay"):
        drop_retired_space(conn, new)
    later = datetime.now(UTC) + timedelta(hours=2)
    # ...nor without a backup taken after retirement
    with pytest.raises(SpaceConflictError, match="no backup"):
        drop_retired_space(conn, new, now=later)
    backup = backup_space(conn, new)
    assert backup.rows == conn.execute("SELECT count(emb_new) FROM docs").fetchone()[0] > 0
    assert backup.path.is_file() and backup.bytes > 0
    dropped = drop_retired_space(conn, new, now=later)
    assert "emb_new" in dropped
    columns = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'docs'"
        )
    }
    assert "emb_new" not in columns and "emb_old" in columns
    # the backup restores into (id, vector)
    conn.execute("CREATE TABLE restored (id bigint, v vector(16))")
    with conn.cursor() as cur, cur.copy("COPY restored FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(backup.path.read_bytes())
    assert conn.execute("SELECT count(*) FROM restored").fetchone()[0] == backup.rows
    with pytest.raises(SpaceConflictError, match="no retired space"):
        rollback(conn, config, "public.docs")


def test_an_interrupted_index_build_does_not_block_the_next(
    conn: psycopg.Connection, db_url: str
) -> None:
    conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT g, 'row ' || g FROM generate_series(1, 30000) g")
    space = make_space(model={"dimensions": 64})
    from embedding_assets.pipeline.backfill import embed_range
    from embedding_assets.pipeline.target import prepare_target_column
    from embedding_assets.providers import build_provider

    provider = build_provider(space.model)
    prepare_target_column(conn, space, provider)
    embed_range(space, provider, database_url=db_url)

    def build() -> None:
        with (
            psycopg.connect(db_url, autocommit=True) as builder,
            contextlib.suppress(psycopg.errors.QueryCanceled),
        ):
            build_hnsw_index(builder, space)

    thread = threading.Thread(target=build)
    thread.start()
    deadline = time.monotonic() + 60
    cancelled = False
    while time.monotonic() < deadline and not cancelled:
        # cancel only once the build has registered its (not yet valid) index in the catalog
        cancelled = bool(
            conn.execute(
                "SELECT pg_cancel_backend(a.pid) FROM pg_stat_activity a"
                " WHERE a.query LIKE 'CREATE INDEX CONCURRENTLY%%' AND a.pid <> pg_backend_pid()"
                " AND EXISTS (SELECT 1 FROM pg_index i"
                "             WHERE i.indexrelid = to_regclass(%s) AND NOT i.indisvalid)",
                (index_name(space),),
            ).fetchall()
        )
        time.sleep(0.005)
    thread.join(timeout=60)
    assert cancelled
    invalid = conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (index_name(space),)
    ).fetchone()
    assert invalid == (False,), "the cancelled concurrent build leaves an INVALID index"

    result = build_hnsw_index(conn, space)

    assert result.dropped_invalid == [index_name(space)] and result.created
    valid = conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (index_name(space),)
    ).fetchone()
    assert valid == (True,)
