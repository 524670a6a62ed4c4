"""An HNSW build an operator can watch: progress lines while it runs, figures after, on a real
embedded PostgreSQL. A writer's open transaction holds the CONCURRENTLY build in its first
phase until the watcher has logged it there, so at least one sample is always observed."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from conftest import (
    create_docs,
    make_space,
    materialize_partitions,
    materialize_target,
    metadata_of,
    non_empty_count,
    run_asset,
)
from dagster import AssetKey, DagsterInstance

from embedding_assets.lifecycle.index import build_hnsw_index_watched
from embedding_assets.lifecycle.index_progress import (
    ProgressSample,
    describe_progress,
    phase_anchor,
)

WAITING = "waiting for writers before build"
COUNTER_LINE = re.compile(r"^index build: (.+): ([0-9,]+) of ([0-9,]+) (tuples|blocks) \(\d+%\)")


class Lines:
    """A logger that keeps what it was told, as an operator would read it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)


def vector_table(conn: psycopg.Connection, rows: int, dims: int) -> None:
    """docs(id, body, emb vector(dims)) with a random unit vector in every row."""
    conn.execute(f"CREATE TABLE docs (id bigint PRIMARY KEY, body text, emb vector({dims}))")
    conn.execute(
        "INSERT INTO docs SELECT g, 'row ' || g, l2_normalize(array(SELECT random()"
        " FROM generate_series(1, %s) WHERE g > 0)::vector) FROM generate_series(1, %s) g",
        (dims, rows),
    )


@contextmanager
def writer_holding(db_url: str) -> Iterator[threading.Event]:
    """An open writer transaction on docs (it writes nothing): a CONCURRENTLY build waits
    for it in its first phase. Set the returned event to end it."""
    release = threading.Event()
    ready = threading.Event()

    def hold() -> None:
        with psycopg.connect(db_url) as writer:
            writer.execute("LOCK TABLE docs IN ROW EXCLUSIVE MODE")
            ready.set()
            release.wait(60)
            writer.rollback()

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait(30)
    try:
        yield release
    finally:
        release.set()
        thread.join()


def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(600):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("the condition never held")


def wait_for_phase(conn: psycopg.Connection, phase: str) -> None:
    for _ in range(600):
        row = conn.execute("SELECT phase FROM pg_stat_progress_create_index").fetchone()
        if row and row[0] == phase:
            return
        time.sleep(0.05)
    raise AssertionError(f"no index build reached {phase!r}")


def test_a_watched_build_logs_phase_counters_rate_and_eta(
    conn: psycopg.Connection, db_url: str
) -> None:
    vector_table(conn, 30_000, 32)
    space = make_space(model={"dimensions": 32})
    logger = Lines()
    observer = psycopg.connect(db_url, autocommit=True)
    outcome: dict[str, object] = {}

    def build() -> None:
        with psycopg.connect(db_url, autocommit=True) as builder:
            outcome["result"] = build_hnsw_index_watched(
                builder,
                space,
                lambda: psycopg.connect(db_url, autocommit=True),
                logger,
                interval=0.02,
            )

    with writer_holding(db_url):
        thread = threading.Thread(target=build)
        thread.start()
        wait_for_phase(observer, WAITING)
        # held there until the watcher has logged it: the sample is certain, not likely
        wait_until(lambda: any(line.startswith(f"index build: {WAITING}") for line in logger.lines))
    thread.join()
    observer.close()

    result, figures = outcome["result"]  # type: ignore[misc]
    assert result.created and result.size_bytes > 0
    assert any(line.startswith(f"index build: {WAITING}") for line in logger.lines)
    # the build itself: a 30k-row HNSW build lasts far longer than a poll interval
    counted = [m for line in logger.lines if (m := COUNTER_LINE.match(line))]
    assert any(m.group(1).startswith("building index") for m in counted), logger.lines
    for m in counted:
        assert int(m.group(2).replace(",", "")) <= int(m.group(3).replace(",", ""))
    # a rate needs a second sample of the same phase: how many the build allows depends on
    # the machine's load, so the rate is asserted where one exists to be computed
    phases = [(m.group(1), m.group(4)) for m in counted if m.group(4) != "lockers"]
    if any(phases.count(p) > 1 for p in phases):
        assert any(
            re.search(r", [0-9,]+ (tuples|blocks)/s(, ETA [0-9]+[hms])?", line)
            for line in logger.lines
        ), logger.lines
    assert not any("row " in line for line in logger.lines)  # counters only, never a row
    assert WAITING in figures.phase_seconds
    assert any(p.startswith("building index") for p in figures.phase_seconds)
    assert sum(figures.phase_seconds.values()) <= result.seconds + 1
    assert figures.progress_samples >= len(counted) > 0
    assert figures.maintenance_work_mem == "1GB"  # the space's index setting, as used
    assert figures.index_tuples == 30_000
    assert figures.graph_spilled_after is None


def test_a_graph_outgrowing_maintenance_work_mem_is_reported(
    conn: psycopg.Connection, db_url: str
) -> None:
    vector_table(conn, 20_000, 64)
    space = make_space(model={"dimensions": 64}, index={"maintenance_work_mem": "1MB"})
    logger = Lines()

    _, figures = build_hnsw_index_watched(
        conn, space, lambda: psycopg.connect(db_url, autocommit=True), logger, interval=0.05
    )

    assert figures.maintenance_work_mem == "1MB"
    assert figures.graph_spilled_after is not None and 0 < figures.graph_spilled_after < 20_000
    metadata = figures.as_metadata()
    assert metadata["graph_spilled"] is True
    assert metadata["graph_spilled_after_tuples"] == figures.graph_spilled_after
    assert any("outgrew maintenance_work_mem" in line for line in logger.lines)


def test_rate_and_eta_are_averaged_over_the_phase() -> None:
    first = ProgressSample(10.0, "building index: loading tuples", 0, 0, 100, 1000, 0, 0)
    later = ProgressSample(15.0, "building index: loading tuples", 0, 0, 600, 1000, 0, 0)

    assert describe_progress(first, first) == (
        "index build: building index: loading tuples: 100 of 1,000 blocks (10%)"
    )
    assert describe_progress(later, first) == (
        "index build: building index: loading tuples: 600 of 1,000 blocks (60%), "
        "100 blocks/s, ETA 0m04s"
    )


def test_a_phase_whose_first_reading_has_no_counter_still_gets_a_rate_and_an_eta() -> None:
    """What a 5M-row build showed: "loading tuples" read once before blocks_total was set."""
    phase = "building index: loading tuples"
    bare = ProgressSample(10.0, phase, 0, 0, 0, 0, 0, 0)
    first = ProgressSample(15.0, phase, 0, 0, 100, 1000, 0, 0)
    later = ProgressSample(20.0, phase, 0, 0, 600, 1000, 0, 0)
    anchor = phase_anchor(None, bare)
    assert describe_progress(bare, anchor) == f"index build: {phase}"
    anchor = phase_anchor(anchor, first)
    assert anchor is first
    anchor = phase_anchor(anchor, later)
    assert anchor is first
    assert describe_progress(later, anchor).endswith("(60%), 100 blocks/s, ETA 0m04s")
    # a new phase starts its own average
    graph = ProgressSample(25.0, "building index: writing", 0, 0, 0, 0, 0, 0)
    assert phase_anchor(anchor, graph) is graph


@pytest.mark.usefixtures("db_url")
def test_the_index_asset_logs_progress_and_records_the_figures(
    conn: psycopg.Connection, db_url: str, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 600)
    space = make_space(partition_size=300)
    materialize_target(space, dagster_instance)
    materialize_partitions(space, dagster_instance)
    outcome: dict[str, object] = {}

    def build() -> None:
        outcome["result"] = run_asset(
            space, dagster_instance, "hnsw_index", config={"progress_interval_seconds": 0.02}
        )

    def waiting_logged() -> bool:
        runs = dagster_instance.get_runs(limit=1)
        return bool(runs) and any(
            (e.message or "").startswith(f"index build: {WAITING}")
            for e in dagster_instance.all_logs(runs[0].run_id)
        )

    with writer_holding(db_url):
        thread = threading.Thread(target=build)
        thread.start()
        wait_for_phase(conn, WAITING)
        wait_until(waiting_logged)  # the run's log shows the phase before the writer lets go
    thread.join()

    result = outcome["result"]
    metadata = metadata_of(result, AssetKey([space.name, "hnsw_index"]))  # type: ignore[arg-type]
    assert metadata["created"] is True and metadata["index_size_bytes"] > 0
    assert metadata["index_tuples"] == non_empty_count(conn)  # rows with a vector
    assert metadata["maintenance_work_mem_used"] == "1GB"
    assert metadata["progress_samples"] >= 1
    phases = metadata["phase_seconds"]
    assert WAITING in phases and phases[WAITING] > 0
    assert metadata["graph_spilled"] is False and "graph_spilled_after_tuples" not in metadata
    messages = [
        e.message
        for e in dagster_instance.all_logs(result.run_id)  # type: ignore[attr-defined]
        if e.message
    ]
    assert any(m.startswith(f"index build: {WAITING}") for m in messages)
