"""Dead run workers and a killed `dagster dev` end in the right state with no operator.

Both tests launch a UI backfill against a real `dagster dev` whose embeddings come from a
real HTTP server on 127.0.0.1 that answers after a delay (a remote model's round trip), so
that runs are still embedding when they are killed. The instance is the repo's
dagster.yaml with shorter monitoring intervals, so that the tests take a minute, not ten.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from conftest import create_docs, make_space, materialize_target, non_empty_count
from dagster import AssetKey, DagsterEventType, DagsterInstance, RunsFilter
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.storage.tags import PARENT_RUN_ID_TAG
from dagster_dev import (
    BACKFILL_TAG,
    SUCCESSFUL_BACKFILL_STATUSES,
    DagsterDev,
    dagster_dev_env,
    running_dagster_dev,
    write_spaces_config,
)
from openai_server import FakeEmbeddingsServer

from embedding_assets.config import SpaceConfig
from embedding_assets.defs.assets import endpoint_pool
from embedding_assets.defs.partitions import id_range_partitions_name

# A run that `dagster dev` had launched but whose worker had not started yet (STARTING) has
# no worker to check: only start_timeout_seconds fails it (180 s in dagster.yaml).
FAST_MONITORING = {
    "run_monitoring": {
        "poll_interval_seconds": 3,
        "free_slots_after_run_end_seconds": 3,
        "start_timeout_seconds": 30,
    },
    "run_launcher": {"config": {"unreachable_grace_seconds": 5}},
}


@pytest.fixture
def slow_endpoint() -> Iterator[FakeEmbeddingsServer]:
    with FakeEmbeddingsServer(dims=16, latency=0.25) as server:
        yield server


def slow_space(
    conn: psycopg.Connection, instance: DagsterInstance, server: FakeEmbeddingsServer
) -> tuple[SpaceConfig, list[str]]:
    """1,200 rows in 3 partitions, one run each, ~20 requests of 0.25 s per partition, one
    at a time: a run embeds for ~5 s, long enough to be killed in the middle."""
    create_docs(conn, 1200)
    space = make_space(
        model={
            "provider": "openai",
            "name": "test-embed",
            "base_url": server.base_url,
            "max_concurrent_requests": 1,
        },
        batch_size=20,
        partitions_per_run=1,
    )
    materialize_target(space, instance)
    return space, sorted(instance.get_dynamic_partitions(id_range_partitions_name(space)))


def started_runs(instance: DagsterInstance, backfill_id: str) -> list[str]:
    """Runs of the backfill whose embeddings step has started (slot taken, embedding)."""
    records = instance.get_run_records(
        RunsFilter(tags={BACKFILL_TAG: backfill_id}, statuses=[DagsterRunStatus.STARTED])
    )
    return [
        r.dagster_run.run_id
        for r in records
        if instance.all_logs(r.dagster_run.run_id, of_type=DagsterEventType.STEP_START)
    ]


def wait_for_started_runs(
    dev: DagsterDev, instance: DagsterInstance, backfill_id: str, count: int
) -> list[str]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        dev.check_alive()
        running = started_runs(instance, backfill_id)
        if len(running) >= count:
            time.sleep(1.0)  # a few batches in
            return running[:count]
        time.sleep(0.5)
    raise dev.fail(f"fewer than {count} runs of {backfill_id} started embedding")


def kill_run_worker(instance: DagsterInstance, run_id: str) -> None:
    """SIGKILL the run's worker process and its step subprocesses, as an OOM kill of the
    container would; the pid comes from the engine event the worker logs at start."""
    pids = [
        int(e.dagster_event.engine_event_data.metadata["pid"].value)  # type: ignore[union-attr]
        for e in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
        if e.message and e.message.startswith("Started process for run")
    ]
    assert pids, f"no worker pid recorded for run {run_id}"
    worker = psutil.Process(pids[-1])
    for process in [*worker.children(recursive=True), worker]:
        process.send_signal(signal.SIGKILL)


def assert_every_row_embedded_once(conn: psycopg.Connection) -> None:
    assert conn.execute(
        "SELECT count(emb), count(DISTINCT emb_model_key),"
        " count(*) FILTER (WHERE (emb IS NULL) <> (emb_text_hash IS NULL))"
        " FROM docs"
    ).fetchone() == (non_empty_count(conn), 1, 0)


def retries_of(instance: DagsterInstance, run_id: str) -> list[DagsterRunStatus]:
    return [
        r.dagster_run.status
        for r in instance.get_run_records(RunsFilter(tags={PARENT_RUN_ID_TAG: run_id}))
    ]


def test_killed_run_workers_free_their_pool_slots_and_their_runs_are_retried(
    conn: psycopg.Connection,
    db_url: str,
    dagster_instance: DagsterInstance,
    slow_endpoint: FakeEmbeddingsServer,
    tmp_path: Path,
) -> None:
    """Both slots of the endpoint's pool (limit 2) held by runs whose workers are then
    killed: without monitoring the queue stops for good with a partition to go."""
    space, keys = slow_space(conn, dagster_instance, slow_endpoint)
    env = dagster_dev_env(db_url, write_spaces_config(tmp_path / "spaces.yaml", space))
    with running_dagster_dev(env, tmp_path, instance_overrides=FAST_MONITORING) as dev:
        backfill_id = dev.launch_partition_backfill([[space.name, "embeddings"]], keys)
        killed = wait_for_started_runs(dev, dagster_instance, backfill_id, 2)
        for run_id in killed:
            kill_run_worker(dagster_instance, run_id)
        status = dev.wait_for_backfill(backfill_id, timeout=420)
        assert status in SUCCESSFUL_BACKFILL_STATUSES, dev.describe_backfill(backfill_id)

    for run_id in killed:
        assert dagster_instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE  # type: ignore[union-attr]
        assert DagsterRunStatus.SUCCESS in retries_of(dagster_instance, run_id)
    assert dagster_instance.get_materialized_partitions(
        AssetKey([space.name, "embeddings"])
    ) == set(keys)
    # the killed runs' slots were freed: nothing holds the endpoint's pool any more
    info = dagster_instance.event_log_storage.get_concurrency_info(endpoint_pool(space.model))
    assert info.claimed_slots == []
    assert_every_row_embedded_once(conn)


def test_runs_left_started_by_a_killed_dagster_dev_are_failed_and_retried_after_a_restart(
    conn: psycopg.Connection,
    db_url: str,
    dagster_instance: DagsterInstance,
    slow_endpoint: FakeEmbeddingsServer,
    tmp_path: Path,
) -> None:
    space, keys = slow_space(conn, dagster_instance, slow_endpoint)
    env = dagster_dev_env(db_url, write_spaces_config(tmp_path / "spaces.yaml", space))
    with running_dagster_dev(env, tmp_path, instance_overrides=FAST_MONITORING) as dev:
        backfill_id = dev.launch_partition_backfill([[space.name, "embeddings"]], keys)
        orphaned = wait_for_started_runs(dev, dagster_instance, backfill_id, 1)
        dev.kill()
    for run_id in orphaned:  # nobody is left to say the run is over
        assert dagster_instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED  # type: ignore[union-attr]

    with running_dagster_dev(env, tmp_path, instance_overrides=FAST_MONITORING) as dev:
        status = dev.wait_for_backfill(backfill_id, timeout=420)
        assert status in SUCCESSFUL_BACKFILL_STATUSES, dev.describe_backfill(backfill_id)

    for run_id in orphaned:
        assert dagster_instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE  # type: ignore[union-attr]
        assert DagsterRunStatus.SUCCESS in retries_of(dagster_instance, run_id)
    assert_every_row_embedded_once(conn)
