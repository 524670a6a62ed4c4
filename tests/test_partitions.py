"""Id-range partition keys and the discovery of occupied ranges."""

from __future__ import annotations

import logging

import psycopg
import pytest
from conftest import create_docs, make_space, materialize_target, run_asset
from dagster import DagsterEventType, DagsterInstance

from embedding_assets.defs.partitions import id_range_partitions_name
from embedding_assets.errors import DatabaseError
from embedding_assets.pipeline.partitions import IdRange, is_current_key, occupied_ranges
from embedding_assets.pipeline.progress import Progress


def test_text_order_is_numeric_order() -> None:
    ranges = [IdRange(b * 1000, b * 1000 + 999) for b in (0, 2, 9, 10, 11, 100, 12345)]
    keys = [r.key(10) for r in ranges]
    assert sorted(keys) == keys
    assert [IdRange.from_key(k) for k in keys] == ranges
    assert IdRange.span([keys[1], keys[3]]) == IdRange(2000, 10999)
    assert not any(c in k for k in keys for c in ",[]*") and "..." not in "".join(keys)


def test_keys_of_an_earlier_layout_are_recognised() -> None:
    assert is_current_key("0000001000-0000001999", 10, 1000)
    assert not is_current_key("0000001000-0000001999", 19, 1000)  # key type changed
    assert not is_current_key("0000001000-0000001499", 10, 1000)  # partition_size changed
    assert not is_current_key("not-a-key", 10, 1000)


def test_only_occupied_ranges_become_partitions(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    conn.execute(
        "INSERT INTO docs SELECT g, 'x' FROM unnest(ARRAY[3, 4, 999, 1000, 250000, 250001]) g"
    )
    space = make_space(partition_size=1000)
    assert occupied_ranges(conn, space) == [
        IdRange(0, 999),
        IdRange(1000, 1999),
        IdRange(250000, 250999),
    ]


def test_empty_table_has_no_partitions(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    assert occupied_ranges(conn, make_space()) == []


def test_negative_ids_are_refused(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs VALUES (-5, 'x'), (1, 'y')")
    with pytest.raises(DatabaseError, match="negative ids"):
        occupied_ranges(conn, make_space())


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
        "0000000000000000000-0000000000000000999",  # two partitions wide (size 500)
        "0000000000000000100-0000000000000000599",  # straddles two partitions
        "0000000000-0000000499",  # the width of an integer key, on a bigint table
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
    assert repr(typed) in message and "partition_size (500)" in message
    assert "0000000000000000000-0000000000000000499" in message  # an example of a real key
    assert set(dagster_instance.get_dynamic_partitions(name)) == known
    assert conn.execute("SELECT count(emb) FROM docs").fetchone() == (0,)
