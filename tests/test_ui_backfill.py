"""A backfill launched the way the UI launches it, against a real `dagster dev`.

GraphQL `launchPartitionBackfill` -> backfill daemon -> BackfillPolicy.multi_run groups the
partitions into runs -> QueuedRunCoordinator -> one subprocess per run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import create_docs, make_space, materialize_target, non_empty_count
from dagster import AssetCheckKey, AssetKey, DagsterInstance, RunsFilter
from dagster_dev import (
    SUCCESSFUL_BACKFILL_STATUSES,
    dagster_dev_env,
    running_dagster_dev,
    write_spaces_config,
)
from openai_server import FakeEmbeddingsServer

from embedding_assets.defs.partitions import id_range_partitions_name


def test_backfill_launched_from_the_ui_runs_partitions_in_groups(
    conn: psycopg.Connection, db_url: str, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    create_docs(conn, 2200)
    space = make_space(partition_size=500, partitions_per_run=2, batch_size=100)
    materialize_target(space, dagster_instance)
    keys = sorted(dagster_instance.get_dynamic_partitions(id_range_partitions_name(space)))
    assert len(keys) == 5  # ids 1..2200 in ranges of 500
    config = write_spaces_config(tmp_path / "embedding_backfills.yaml", space)
    embeddings = AssetKey([space.name, "embeddings"])

    with running_dagster_dev(dagster_dev_env(db_url, config), tmp_path) as dev:
        backfill_id = dev.launch_partition_backfill([embeddings.path], keys)
        status = dev.wait_for_backfill(backfill_id, timeout=240)
        assert status in SUCCESSFUL_BACKFILL_STATUSES, dev.describe_backfill(backfill_id)
        runs = dev.backfill_runs(backfill_id)

    # multi_run(2): 5 partitions -> 3 runs, each a contiguous range of at most 2 partitions
    assert len(runs) == math.ceil(len(keys) / space.partitions_per_run)
    assert all(r.status == "SUCCESS" for r in runs), runs
    covered: list[str] = []
    for run in runs:
        assert run.partition_range is not None, run.tags
        first, last = run.partition_range
        chunk = keys[keys.index(first) : keys.index(last) + 1]
        assert 1 <= len(chunk) <= space.partitions_per_run, run.partition_range
        covered.extend(chunk)
    assert sorted(covered) == keys

    expected = non_empty_count(conn)
    row = conn.execute(
        "SELECT count(emb), count(emb) FILTER (WHERE vector_dims(emb) = 16),"
        " count(*) FILTER (WHERE emb IS NULL AND btrim(coalesce(body, '')) <> '')"
        " FROM docs"
    ).fetchone()
    assert row == (expected, expected, 0)
    assert dagster_instance.get_materialized_partitions(embeddings) == set(keys)


def test_ui_backfill_with_the_index_never_indexes_a_failed_column(
    conn: psycopg.Connection, db_url: str, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    """The embeddings partitions and the index selected together, one foreign-model row."""
    create_docs(conn, 1200)
    space = make_space(partition_size=500, partitions_per_run=2, batch_size=100)
    materialize_target(space, dagster_instance)
    keys = sorted(dagster_instance.get_dynamic_partitions(id_range_partitions_name(space)))
    # a vector another model wrote: the writer never overwrites it, the checks must catch it
    conn.execute(
        "UPDATE docs SET emb = array_fill(0.25, ARRAY[16])::vector, emb_model_key = 42,"
        " emb_text_hash = sha256(convert_to(body, 'UTF8')) WHERE id = 7"
    )
    config = write_spaces_config(tmp_path / "embedding_backfills.yaml", space)
    embeddings = AssetKey([space.name, "embeddings"])
    index = AssetKey([space.name, "hnsw_index"])

    with running_dagster_dev(dagster_dev_env(db_url, config), tmp_path) as dev:
        backfill_id = dev.launch_partition_backfill([embeddings.path, index.path], keys)
        status = dev.wait_for_backfill(backfill_id, timeout=300)
        description = dev.describe_backfill(backfill_id)

    assert status not in SUCCESSFUL_BACKFILL_STATUSES, description
    assert dagster_instance.get_latest_materialization_event(index) is None, description
    assert conn.execute(
        "SELECT count(*) FROM pg_index WHERE indrelid = 'docs'::regclass"
        " AND indexrelid <> 'docs_pkey'::regclass"
    ).fetchone() == (0,)
    one_model = dagster_instance.get_latest_asset_check_evaluation_record(
        AssetCheckKey(embeddings, "one_model")
    )
    assert one_model is not None and one_model.event is not None
    evaluation = one_model.event.asset_check_evaluation
    assert evaluation is not None and not evaluation.passed
    assert evaluation.metadata["example_ids"].value == [7]
    # every other row was embedded; the foreign vector was left as it was
    assert conn.execute("SELECT emb_model_key FROM docs WHERE id = 7").fetchone() == (42,)


@pytest.fixture
def slow_endpoint() -> Iterator[FakeEmbeddingsServer]:
    with FakeEmbeddingsServer(dims=16, latency=0.3) as server:
        yield server


def test_partition_runs_execute_in_parallel_through_the_daemon(
    conn: psycopg.Connection,
    db_url: str,
    dagster_instance: DagsterInstance,
    tmp_path: Path,
    slow_endpoint: FakeEmbeddingsServer,
) -> None:
    """One run per partition, several at once (queue limit 4, endpoint pool 2), one database:
    the column ends complete and consistent and the whole-column checks pass. The endpoint
    answers after 0.3 s, one request at a time: each run embeds for ~3 s, longer than a run
    takes to start, so that runs can overlap at all."""
    create_docs(conn, 3000)
    model = {
        "provider": "openai",
        "name": "test-embed",
        "base_url": slow_endpoint.base_url,
        "max_concurrent_requests": 1,
    }
    space = make_space(model=model, partition_size=500, partitions_per_run=1, batch_size=50)
    materialize_target(space, dagster_instance)
    keys = sorted(dagster_instance.get_dynamic_partitions(id_range_partitions_name(space)))
    assert len(keys) == 6
    config = write_spaces_config(tmp_path / "embedding_backfills.yaml", space)
    embeddings = AssetKey([space.name, "embeddings"])

    with running_dagster_dev(dagster_dev_env(db_url, config), tmp_path) as dev:
        backfill_id = dev.launch_partition_backfill([embeddings.path], keys)
        status = dev.wait_for_backfill(backfill_id, timeout=300)
        assert status in SUCCESSFUL_BACKFILL_STATUSES, dev.describe_backfill(backfill_id)
        runs = dev.backfill_runs(backfill_id)

    assert len(runs) == len(keys) and all(r.status == "SUCCESS" for r in runs), runs
    records = dagster_instance.get_run_records(RunsFilter(run_ids=[r.run_id for r in runs]))
    spans = sorted((r.start_time, r.end_time) for r in records)
    assert all(start is not None and end is not None for start, end in spans)
    # the most runs in progress at one moment (a run's start inside another's span)
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)  # type: ignore[operator]
    assert most >= 2, spans

    expected = non_empty_count(conn)
    assert conn.execute(
        "SELECT count(emb), count(DISTINCT emb_model_key),"
        " count(*) FILTER (WHERE emb IS NOT NULL AND"
        "   emb_text_hash <> sha256(convert_to(body, 'UTF8')))"
        " FROM docs"
    ).fetchone() == (expected, 1, 0)
    for name in ("uniform_dimension", "complete", "one_model", "sane_vectors"):
        record = dagster_instance.get_latest_asset_check_evaluation_record(
            AssetCheckKey(embeddings, name)
        )
        assert record is not None and record.event is not None
        evaluation = record.event.asset_check_evaluation
        assert evaluation is not None and evaluation.passed, (name, evaluation)
