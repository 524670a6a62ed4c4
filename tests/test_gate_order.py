"""The gate decides on the newest evaluation by evaluation time, whatever order runs end in.

Runs of one backfill finish out of their start order (a 10-partition run beside a
1-partition one). Each test holds one run inside its step with an event while another run
starts and ends, so that the run planned first evaluates its checks last, or the reverse.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from conftest import (
    create_docs,
    execute_checks,
    make_space,
    materialize_partitions,
    materialize_target,
    resources,
    run_asset,
)
from dagster import DagsterInstance, materialize
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

import embedding_assets.defs.assets as assets_module
import embedding_assets.defs.checks as checks_module
from embedding_assets.config import SpaceConfig
from embedding_assets.defs.assets import build_space_assets
from embedding_assets.defs.keys import embeddings_key
from embedding_assets.defs.partitions import id_range_partitions_name

WAIT = 60


def keys_of(space: SpaceConfig, instance: DagsterInstance) -> list[str]:
    return sorted(instance.get_dynamic_partitions(id_range_partitions_name(space)))


def range_tags(first: str, last: str) -> dict[str, str]:
    return {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}


class Held:
    """Wraps a function so that its first call waits (before or after the real call)."""

    def __init__(self, real: Callable, *, after: bool = False) -> None:
        self.real, self.after = real, after
        self.entered, self.release = threading.Event(), threading.Event()
        self._used = False

    def __call__(self, *args: object, **kwargs: object) -> object:
        first, self._used = not self._used, True
        if first and not self.after:
            self.entered.set()
            assert self.release.wait(WAIT)
        result = self.real(*args, **kwargs)
        if first and self.after:
            self.entered.set()
            assert self.release.wait(WAIT)
        return result


@contextmanager
def in_background(target: Callable[[], object]) -> Iterator[list[object]]:
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(target()), daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        thread.join(WAIT)
    assert not thread.is_alive()


def gate_opens(space: SpaceConfig, instance: DagsterInstance) -> tuple[bool, str]:
    result = run_asset(space, instance, "hnsw_index", raise_on_error=False)
    failures = [str(e.event_specific_data) for e in result.all_events if e.is_step_failure]
    return result.success, "\n".join(failures)


@pytest.fixture
def space_of_three(conn: psycopg.Connection, dagster_instance: DagsterInstance) -> SpaceConfig:
    """1,200 rows in three partitions, target column prepared, nothing embedded yet."""
    create_docs(conn, 1200)
    space = make_space()
    materialize_target(space, dagster_instance)
    return space


def test_a_long_run_that_started_first_and_finished_last_decides(
    space_of_three: SpaceConfig,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's failure: a 2-partition run planned first, a 1-partition run planned later
    that ends first with `deferred` evaluations; the long run then scans and passes."""
    space, instance = space_of_three, dagster_instance
    first, second, third = keys_of(space, instance)
    held = Held(assets_module.embed_range)
    monkeypatch.setattr(assets_module, "embed_range", held)
    long_run = lambda: run_asset(space, instance, "embeddings", tags=range_tags(first, second))  # noqa: E731
    with in_background(long_run) as outcome:
        assert held.entered.wait(WAIT)
        # planned after the long run, evaluated before it: deferred (2 partitions pending)
        run_asset(space, instance, "embeddings", partition_key=third)
        held.release.set()
    assert outcome and outcome[0].success  # type: ignore[union-attr]

    opened, why = gate_opens(space, instance)
    assert opened, why


def test_a_short_run_that_started_first_and_finished_last_decides(
    space_of_three: SpaceConfig,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other way round: the 1-partition run starts first and ends after the 2-partition
    run recorded `deferred` evaluations."""
    space, instance = space_of_three, dagster_instance
    first, second, third = keys_of(space, instance)
    held = Held(assets_module.embed_range)
    monkeypatch.setattr(assets_module, "embed_range", held)
    short_run = lambda: run_asset(space, instance, "embeddings", partition_key=third)  # noqa: E731
    with in_background(short_run) as outcome:
        assert held.entered.wait(WAIT)
        run_asset(space, instance, "embeddings", tags=range_tags(first, second))
        held.release.set()
    assert outcome and outcome[0].success  # type: ignore[union-attr]

    opened, why = gate_opens(space, instance)
    assert opened, why


def test_a_later_failure_contradicts_an_earlier_pass(
    conn: psycopg.Connection,
    space_of_three: SpaceConfig,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checks executed from the UI twice: the one planned first is held before its scan,
    the second passes, a row is then corrupted, the first scans and fails. The gate must
    stay closed although the execution planned last passed."""
    space, instance = space_of_three, dagster_instance
    materialize_partitions(space, instance)
    held = Held(checks_module.evaluate_column)
    monkeypatch.setattr(checks_module, "evaluate_column", held)
    with in_background(lambda: execute_checks(space, instance)) as outcome:
        assert held.entered.wait(WAIT)
        assert all(r["passed"] for r in execute_checks(space, instance).values())
        conn.execute("UPDATE docs SET emb_model_key = 42 WHERE id = 11")
        held.release.set()
    assert outcome and outcome[0]["one_model"]["passed"] is False  # type: ignore[index]

    opened, why = gate_opens(space, instance)
    assert not opened
    assert "one_model: failed" in why


def test_a_scan_that_began_before_the_latest_write_does_not_open(
    space_of_three: SpaceConfig,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A check scan runs, then another run writes, then the scan's result is recorded: it is
    newer than the write but may not have seen it."""
    space, instance = space_of_three, dagster_instance
    materialize_partitions(space, instance)
    held = Held(checks_module.evaluate_column, after=True)
    monkeypatch.setattr(checks_module, "evaluate_column", held)
    with in_background(lambda: execute_checks(space, instance)) as outcome:
        assert held.entered.wait(WAIT)  # scanned, not recorded yet
        # a re-run of one partition without its checks: a write after the scan started
        monkeypatch.setattr(checks_module, "evaluate_column", held.real)
        materialize(
            build_space_assets(space),
            selection=[embeddings_key(space)],
            partition_key=keys_of(space, instance)[0],
            instance=instance,
            resources=resources(),
        )
        held.release.set()
    assert outcome and all(r["passed"] for r in outcome[0].values())  # type: ignore[union-attr]

    opened, why = gate_opens(space, instance)
    assert not opened
    assert "started before the latest write" in why


def test_the_index_waits_for_checks_a_running_run_will_still_evaluate(
    space_of_three: SpaceConfig,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A UI backfill launches the index run as soon as the last partition is materialized,
    while that partition's run still scans the column: the index waits for the verdicts
    instead of failing the backfill, then builds on them."""
    space, instance = space_of_three, dagster_instance
    first, second, third = keys_of(space, instance)
    run_asset(space, instance, "embeddings", tags=range_tags(first, second))
    held = Held(checks_module.evaluate_column)
    monkeypatch.setattr(checks_module, "evaluate_column", held)
    monkeypatch.setattr(checks_module, "CHECKS_POLL_SECONDS", 0.05)
    waiting = threading.Event()
    real_runs = checks_module.runs_evaluating

    def spy(*args: object) -> list[str]:
        running = real_runs(*args)  # type: ignore[arg-type]
        if running:
            waiting.set()
        return running

    monkeypatch.setattr(checks_module, "runs_evaluating", spy)
    last_run = lambda: run_asset(space, instance, "embeddings", partition_key=third)  # noqa: E731
    with in_background(last_run) as outcome:
        assert held.entered.wait(WAIT)  # materialized; its checks are about to scan
        with in_background(lambda: gate_opens(space, instance)) as index:
            assert waiting.wait(WAIT)  # the index run sees the checks in flight and waits
            held.release.set()
    assert outcome and outcome[0].success  # type: ignore[union-attr]
    opened, why = index[0]  # type: ignore[misc]
    assert opened, why
