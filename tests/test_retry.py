"""The embedding step's retry policy: an endpoint outage is retried, a wrong model is not."""

from __future__ import annotations

import psycopg
import pytest
from conftest import create_docs, make_space, materialize_target, resources
from dagster import (
    AssetKey,
    Backoff,
    DagsterEventType,
    DagsterInstance,
    ExecuteInProcessResult,
    RetryPolicy,
    materialize,
)
from openai_server import FakeEmbeddingsServer

from embedding_assets.config import SpaceConfig
from embedding_assets.defs.assets import EMBEDDING_RETRY_POLICY, build_space_assets
from embedding_assets.defs.partitions import id_range_partitions_name

FAST = RetryPolicy(max_retries=2, delay=0.1)


def _space(base_url: str, name: str | None = None, dims: int = 8) -> SpaceConfig:
    model = {
        "provider": "openai",
        "name": "nomic-embed-text",
        "dimensions": dims,
        "base_url": base_url,
        "max_retries": 0,
        "timeout_seconds": 2,
    }
    return make_space(model=model, **({"name": name} if name else {}))


def _embed_first_partition(space: SpaceConfig, instance: DagsterInstance) -> ExecuteInProcessResult:
    key = sorted(instance.get_dynamic_partitions(id_range_partitions_name(space)))[0]
    return materialize(
        build_space_assets(space, retry_policy=FAST),
        selection=[AssetKey([space.name, "embeddings"])],
        instance=instance,
        resources=resources(),
        partition_key=key,
        raise_on_error=False,
    )


def _retries(result: ExecuteInProcessResult) -> int:
    return sum(1 for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY)


@pytest.fixture
def prepared(conn: psycopg.Connection, dagster_instance: DagsterInstance) -> SpaceConfig:
    """A space prepared against an endpoint that has gone away since."""
    create_docs(conn, 100)
    with FakeEmbeddingsServer(dims=8) as server:
        space = _space(server.base_url)
        materialize_target(space, dagster_instance)
    return space


def test_endpoint_outage_is_retried_by_the_policy(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, prepared: SpaceConfig
) -> None:
    # the server is gone: every attempt fails to connect
    result = _embed_first_partition(prepared, dagster_instance)
    assert not result.success
    assert _retries(result) == FAST.max_retries
    assert conn.execute("SELECT count(emb) FROM docs").fetchone() == (0,)


def test_a_wrong_model_fails_at_once_without_retries(
    dagster_instance: DagsterInstance, prepared: SpaceConfig
) -> None:
    with FakeEmbeddingsServer(dims=8, salt="another-model") as swapped:
        same_name = _space(swapped.base_url, name=prepared.name)
        result = _embed_first_partition(same_name, dagster_instance)
    assert not result.success and _retries(result) == 0
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert "another model under the same name" in str(failure.event_specific_data.error.message)


def test_the_production_policy_backs_off_exponentially_for_minutes() -> None:
    delays = [EMBEDDING_RETRY_POLICY.calculate_delay(n) for n in range(1, 5)]
    assert EMBEDDING_RETRY_POLICY.max_retries == 4
    # 60, 120, 240, 480 s, each +/- jitter (so a backfill's runs do not retry in lockstep)
    assert EMBEDDING_RETRY_POLICY.backoff == Backoff.EXPONENTIAL
    for n, delay in enumerate(delays):
        assert 0 <= delay <= 2 * 60 * 2**n
