"""Partition keys of the recorded key ranges, progress lines, keys typed by hand."""

from __future__ import annotations

import logging

import psycopg
import pytest
from conftest import create_docs, make_space, materialize_target, run_asset
from dagster import DagsterEventType, DagsterInstance

from embedding_assets.defs.partitions import id_range_partitions_name
from embedding_assets.pipeline.partitions import recorded_ranges
from embedding_assets.pipeline.progress import Progress
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import build_provider


def test_partition_keys_sort_in_key_order_and_are_legal_dagster_keys(
    conn: psycopg.Connection,
) -> None:
    conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT g * 37 - 100000, 'x' FROM generate_series(1, 3000) g")
    space = make_space(partition_size=100)
    prepare_target_column(conn, space, build_provider(space.model))
    keys = [r.partition_key for r in recorded_ranges(conn, space)]
    assert len(keys) == 30 and keys == sorted(keys)
    assert keys[:2] == ["00000_min", "00001_-96263"]  # readable: the range's first key
    assert not any(c in k for k in keys for c in ",[]*") and "..." not in "".join(keys)


def test_an_empty_table_has_one_range_for_every_key(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    space = make_space()
    prepare_target_column(conn, space, build_provider(space.model))
    assert [(r.lower, r.upper) for r in recorded_ranges(conn, space)] == [(None, None)]
    # rows arriving later are laid out afresh: nothing was covered
    conn.execute("INSERT INTO docs SELECT g, 'x' FROM generate_series(1, 1200) g")
    result = prepare_target_column(conn, space, build_provider(space.model))
    assert result.partition_keys == ["00000_min", "00001_501", "00002_1001"]


def test_progress_reports_rows_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    progress = Progress(1000, "space ids 0-999", logging.getLogger("t"), 5.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO):
        now[0] = 2.0
        progress.advance(100)  # too soon: throttled
        now[0] = 10.0
        progress.advance(150)
    assert caplog.messages == ["space ids 0-999: 250/1,000 rows (25.0%), 25 rows/s, ETA 0m30s"]


@pytest.mark.parametrize(
    "typed",
    [
        "hello",  # not a range at all
        "0000000000000000000-0000000000000000499",  # a key of the old fixed-width layout
        "00001_500",  # the shape of a key, but not a recorded range
        "00009_min",  # a sequence number the layout does not have
    ],
)
def test_a_partition_key_typed_in_the_launch_dialog_fails_at_once_and_is_removed(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, typed: str
) -> None:
    create_docs(conn, 600)
    space = make_space()
    materialize_target(space, dagster_instance)
    name = id_range_partitions_name(space)
    known = set(dagster_instance.get_dynamic_partitions(name))
    dagster_instance.add_dynamic_partitions(name, [typed])  # what "Add partition" does

    result = run_asset(
        space, dagster_instance, "embeddings", partition_key=typed, raise_on_error=False
    )

    assert not result.success
    types = [e.event_type for e in result.all_events]
    assert DagsterEventType.STEP_UP_FOR_RETRY not in types  # no step retry, no 60 s wait
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description  # type: ignore[union-attr]
    assert repr(typed) in message and "not key ranges of space" in message
    assert "e.g. 00000_min" in message  # an example of a real key
    assert set(dagster_instance.get_dynamic_partitions(name)) == known
    assert conn.execute("SELECT count(emb) FROM docs").fetchone() == (0,)
