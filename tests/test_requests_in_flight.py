"""Requests in flight: the openai provider and the pipeline keep `max_concurrent_requests`
requests open, never more, and return (and write) every vector in input order.

The server's rendezvous holds each request until n are open at once, so "n in flight" is
proven by the server's own count, not by timing; a sequential client would leave its
count at 1.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from conftest import create_docs, make_space, materialize_target, non_empty_count, run_asset
from dagster import DagsterInstance
from openai_server import FakeEmbeddingsServer

from embedding_assets.config import ModelConfig, SpaceConfig
from embedding_assets.defs.partitions import id_range_partitions_name
from embedding_assets.errors import DimensionMismatchError
from embedding_assets.pipeline.backfill import embed_range
from embedding_assets.providers import EmbeddingProvider, build_provider

MODEL = "text-embedding-3-small"
DIMS = 8


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def model(base_url: str, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "provider": "openai",
        "name": MODEL,
        "dimensions": DIMS,
        "base_url": base_url,
        "max_retries": 3,
        "timeout_seconds": 20.0,
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def make_provider() -> Iterator[Any]:
    built: list[EmbeddingProvider] = []

    def make(base_url: str, **overrides: Any) -> EmbeddingProvider:
        provider = build_provider(ModelConfig(**model(base_url, **overrides)))
        built.append(provider)
        return provider

    yield make
    for provider in built:
        provider.close()


def expected(server: FakeEmbeddingsServer, texts: list[str]) -> np.ndarray:
    rows = np.vstack([server.vector(t, MODEL, DIMS) for t in texts]).astype(np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def texts_of(n: int) -> list[str]:
    return [f"document number {i}: some text about topic {i % 4}" for i in range(n)]


def test_default_is_eight_in_flight_and_one_is_possible() -> None:
    assert ModelConfig(provider="openai", name=MODEL, dimensions=DIMS).max_concurrent_requests == 8
    one = ModelConfig(provider="openai", name=MODEL, dimensions=DIMS, max_concurrent_requests=1)
    assert one.max_concurrent_requests == 1


def test_one_call_keeps_n_requests_in_flight_in_input_order(make_provider: Any) -> None:
    texts = texts_of(40)  # 20 requests of 2
    with FakeEmbeddingsServer(dims=DIMS, rendezvous=4, latency=0.02) as server:
        provider = make_provider(
            server.base_url, max_inputs_per_request=2, max_concurrent_requests=4
        )
        batch = provider.embed(texts)
        assert server.peak_in_flight == 4  # reached, never exceeded
        np.testing.assert_allclose(batch.vectors, expected(server, texts), atol=1e-6)
        sent = sorted(t for r in server.requests for t in r.inputs)
    assert sent == sorted(texts)  # every text exactly once


def test_the_cap_holds_for_the_provider_across_callers(make_provider: Any) -> None:
    """Threads sharing one provider (the pipeline's pages in flight) share its cap."""
    with FakeEmbeddingsServer(dims=DIMS, rendezvous=3, latency=0.02) as server:
        provider = make_provider(
            server.base_url, max_inputs_per_request=2, max_concurrent_requests=3
        )
        results: dict[int, np.ndarray] = {}

        def call(i: int) -> None:
            results[i] = provider.embed(texts_of(8 + i)).vectors

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert server.peak_in_flight == 3
        for i, vectors in results.items():
            np.testing.assert_allclose(vectors, expected(server, texts_of(8 + i)), atol=1e-6)
    assert len(results) == 4


def test_a_bad_response_among_concurrent_ones_fails_the_whole_call(make_provider: Any) -> None:
    with FakeEmbeddingsServer(dims=DIMS) as server:
        server.fail_next("shuffle")
        server.fail_next("wrong_dims", dims=4, times=10)  # stays bad through every retry
        provider = make_provider(
            server.base_url, max_inputs_per_request=2, max_concurrent_requests=4
        )
        with pytest.raises(DimensionMismatchError):
            provider.embed(texts_of(12))


# -- the pipeline -----------------------------------------------------------------------------


def _space(base_url: str, **overrides: Any) -> SpaceConfig:
    return make_space(model=model(base_url, **overrides), batch_size=10)


def _stored(conn: psycopg.Connection) -> tuple[list[int], list[str], np.ndarray]:
    rows = conn.execute(
        "SELECT id, body, emb::real[] FROM docs WHERE emb IS NOT NULL ORDER BY id"
    ).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows], np.asarray([r[2] for r in rows])


def test_the_pipeline_keeps_pages_in_flight_and_writes_each_row_its_own_vector(
    conn: psycopg.Connection, db_url: str, dagster_instance: DagsterInstance
) -> None:
    """batch_size 10 is one request per page: concurrency must come from pages in flight."""
    create_docs(conn, 300)
    with FakeEmbeddingsServer(dims=DIMS, rendezvous=4, latency=0.02) as server:
        space = _space(server.base_url, max_concurrent_requests=4)
        materialize_target(space, dagster_instance)
        provider = build_provider(space.model)
        try:
            stats = embed_range(space, provider, database_url=db_url)
        finally:
            provider.close()
        assert server.peak_in_flight == 4
        ids, bodies, vectors = _stored(conn)
        np.testing.assert_allclose(vectors, expected(server, bodies), atol=1e-6)
    assert len(ids) == stats.rows_embedded == non_empty_count(conn)
    assert stats.rows_scanned == 300
    assert stats.rows_empty == 300 - stats.rows_embedded
    assert stats.batches == 30  # every page with rows to embed


def test_a_429_storm_does_not_fail_the_run(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    """A storm of 429s that say when to come back, across pages in flight: the runs complete,
    each rate-limited request retried whole (full batches), every row embedded."""
    create_docs(conn, 200)
    with FakeEmbeddingsServer(dims=DIMS) as server:
        space = _space(server.base_url, max_concurrent_requests=4, max_retries=3)
        materialize_target(space, dagster_instance)
        # Fewer than one request may ride out (3 retries x 10 paced 429s).
        server.fail_next("429", times=25, retry_after="0")
        for partition in sorted(
            dagster_instance.get_dynamic_partitions(id_range_partitions_name(space))
        ):
            run_asset(space, dagster_instance, "embeddings", partition_key=partition)
        assert server.pending_faults == 0
        storm = [r for r in server.requests if r.fault == "429"]
        answered = {tuple(r.inputs) for r in server.requests if r.fault is None}
    assert len(storm) == 25
    assert all(tuple(r.inputs) in answered for r in storm)  # the same batch, not split up
    _, bodies, _ = _stored(conn)
    assert len(bodies) == non_empty_count(conn)
