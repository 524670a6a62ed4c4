"""The openai provider end to end, and a model swapped behind the same name and dimension."""

from __future__ import annotations

import psycopg
import pytest
from conftest import create_docs, make_space, non_empty_count
from openai_server import FakeEmbeddingsServer

from embedding_assets.errors import SpaceConflictError
from embedding_assets.pipeline.backfill import embed_range
from embedding_assets.pipeline.partitions import KeyRange
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import build_provider


def _space(base_url: str, name: str | None = None):  # type: ignore[no-untyped-def]
    model = {
        "provider": "openai",
        "name": "nomic-embed-text",
        "dimensions": 8,
        "base_url": base_url,
        "max_retries": 1,
        "timeout_seconds": 5,
    }
    return make_space(model=model, **({"name": name} if name else {}))


def test_openai_compatible_endpoint_end_to_end(conn: psycopg.Connection, db_url: str) -> None:
    create_docs(conn, 300)
    with FakeEmbeddingsServer(dims=8) as server:
        server.fail_next("429")  # rate limited once: retried, not failed
        space = _space(server.base_url)
        provider = build_provider(space.model)
        prepare_target_column(conn, space, provider)
        stats = embed_range(space, provider, database_url=db_url)
    assert stats.rows_embedded == non_empty_count(conn)
    assert stats.tokens and stats.tokens > 0
    assert conn.execute(
        "SELECT min(vector_dims(emb)), max(vector_dims(emb)) FROM docs"
    ).fetchone() == (
        8,
        8,
    )


def test_a_swapped_model_behind_the_same_name_is_refused(
    conn: psycopg.Connection, db_url: str
) -> None:
    create_docs(conn, 200)
    with FakeEmbeddingsServer(dims=8, salt="model-a") as server:
        space = _space(server.base_url)
        provider = build_provider(space.model)
        prepare_target_column(conn, space, provider)
        embed_range(space, provider, KeyRange(None, "100"), database_url=db_url)
    written = conn.execute("SELECT count(emb), sum(xmin::text::bigint) FROM docs").fetchone()

    # Same name, same dimension, same identity: only the vectors differ.
    with FakeEmbeddingsServer(dims=8, salt="model-b") as swapped:
        space_b = _space(swapped.base_url, name=space.name)
        provider_b = build_provider(space_b.model)
        assert provider_b.identity == provider.identity
        with pytest.raises(SpaceConflictError, match="another model under the same name"):
            embed_range(space_b, provider_b, database_url=db_url)
        with pytest.raises(SpaceConflictError, match="min cosine"):
            prepare_target_column(conn, space_b, provider_b)

    assert (
        conn.execute("SELECT count(emb), sum(xmin::text::bigint) FROM docs").fetchone() == written
    )
