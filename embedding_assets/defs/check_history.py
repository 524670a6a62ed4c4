"""Check evaluations from Dagster's event log, ordered by when they were evaluated.

`get_latest_asset_check_execution_by_key` returns the execution *planned* last. In a
backfill a run that started early and finished late (10 partitions beside 1) evaluates its
checks after a run that was planned later, so "latest planned" is the wrong verdict. The
asset-check executions table records the evaluation's own event id and time: one indexed
query per decision reads the evaluations recorded after a given event (the latest write).
"""

from __future__ import annotations

from collections.abc import Sequence

from dagster import AssetKey, DagsterInstance
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._serdes import deserialize_value
from sqlalchemy import Select, select

from ..checks.gate import Evaluation

_DONE = (AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED)


def _evaluation(entry: EventLogEntry, storage_id: int) -> Evaluation | None:
    data = entry.dagster_event.asset_check_evaluation_data if entry.dagster_event else None
    if data is None:
        return None
    meta = data.metadata

    def value(key: str) -> object:
        return getattr(meta.get(key), "value", None)

    started = value("scan_started_at")
    return Evaluation(
        check_name=data.check_name,
        passed=data.passed,
        deferred=bool(value("deferred")),
        evaluated_at=entry.timestamp,
        storage_id=storage_id,
        description=data.description or "",
        severity=data.severity.value.lower(),
        scan_started_at=float(started) if isinstance(started, int | float) else None,
        run_id=entry.run_id,
    )


def _storage(instance: DagsterInstance) -> SqlEventLogStorage:
    storage = instance.event_log_storage
    if not isinstance(storage, SqlEventLogStorage):  # every storage Dagster ships is SQL
        raise TypeError(
            f"the gate needs a SQL event log storage (PostgreSQL, SQLite), not {type(storage)}"
        )
    return storage


def _query(asset_key: AssetKey, check_names: Sequence[str]) -> Select:
    table = AssetCheckExecutionsTable
    return select(table.c.evaluation_event, table.c.evaluation_event_storage_id).where(
        table.c.asset_key == asset_key.to_string(),
        table.c.check_name.in_(list(check_names)),
        table.c.execution_status.in_([s.value for s in _DONE]),
    )


def _read(instance: DagsterInstance, query: Select) -> list[Evaluation]:
    with _storage(instance).index_connection() as conn:
        rows = conn.execute(query).fetchall()
    found = (
        _evaluation(deserialize_value(event, EventLogEntry), int(storage_id or 0))
        for event, storage_id in rows
        if event
    )
    return [e for e in found if e is not None]


def evaluations_after(
    instance: DagsterInstance, asset_key: AssetKey, check_names: Sequence[str], storage_id: int
) -> list[Evaluation]:
    """Completed evaluations of these checks recorded after an event (the latest write)."""
    table = AssetCheckExecutionsTable
    return _read(
        instance,
        _query(asset_key, check_names).where(table.c.evaluation_event_storage_id > storage_id),
    )


def runs_evaluating(
    instance: DagsterInstance, asset_key: AssetKey, check_names: Sequence[str]
) -> list[str]:
    """Ids of unfinished runs that planned one of these checks and have not evaluated it."""
    table = AssetCheckExecutionsTable
    query = select(table.c.run_id).where(
        table.c.asset_key == asset_key.to_string(),
        table.c.check_name.in_(list(check_names)),
        table.c.execution_status == AssetCheckExecutionRecordStatus.PLANNED.value,
    )
    with _storage(instance).index_connection() as conn:
        run_ids = sorted({str(r[0]) for r in conn.execute(query).fetchall()})
    # A run that died leaves its checks PLANNED: only a run still going will evaluate them.
    return [
        run_id
        for run_id in run_ids
        if (run := instance.get_run_by_id(run_id)) is not None and not run.is_finished
    ]


def latest_evaluations(
    instance: DagsterInstance, asset_key: AssetKey, check_names: Sequence[str]
) -> dict[str, Evaluation]:
    """The newest evaluation of each check by evaluation time (for `status`)."""
    table = AssetCheckExecutionsTable
    latest: dict[str, Evaluation] = {}
    for name in check_names:
        query = (
            _query(asset_key, [name])
            .order_by(
                table.c.evaluation_event_timestamp.desc(),
                table.c.evaluation_event_storage_id.desc(),
            )
            .limit(1)
        )
        latest.update({e.check_name: e for e in _read(instance, query)})
    return latest
