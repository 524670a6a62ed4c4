"""Runs that overlap never embed the same partition at the same time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import psycopg
import pytest
from conftest import create_docs, make_space, non_empty_count

from embedding_assets.pipeline.backfill import RangeStats, embed_range
from embedding_assets.pipeline.partitions import KeyRange
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import EmbeddingBatch, build_provider
from embedding_assets.providers.hash import HashProvider


class SlowHash(HashProvider):
    """Stands in for a real model: each batch takes a while."""

    def _embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        time.sleep(0.02)
        return super()._embed(texts)


@pytest.mark.parametrize(
    ("first_range", "second_range"),
    [((None, None), (None, None)), ((None, "1001"), ("501", None))],  # same; overlapping
)
def test_overlapping_runs_do_not_embed_a_row_twice(
    conn: psycopg.Connection,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
    first_range: tuple[str | None, str | None],
    second_range: tuple[str | None, str | None],
) -> None:
    create_docs(conn, 1400)
    space = make_space(partition_size=500, batch_size=50)
    prepare_target_column(conn, space, build_provider(space.model))
    results: list[RangeStats] = []

    def run(bounds: tuple[str | None, str | None]) -> None:
        key_range = KeyRange(*bounds)
        results.append(embed_range(space, SlowHash(space.model), key_range, database_url=db_url))

    with caplog.at_level(logging.INFO):
        one = threading.Thread(target=run, args=(first_range,))
        one.start()
        deadline = time.monotonic() + 30
        while conn.execute("SELECT count(emb) FROM docs").fetchone()[0] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        two = threading.Thread(target=run, args=(second_range,))
        two.start()
        one.join(60)
        two.join(60)

    assert len(results) == 2
    # every row embedded exactly once, across both runs
    assert sum(r.rows_embedded for r in results) == non_empty_count(conn)
    assert conn.execute("SELECT count(emb) FROM docs").fetchone()[0] == non_empty_count(conn)
    assert any("being embedded by another run" in m for m in caplog.messages)
