"""Drift sensors on a real database and instance: new rows, edited texts, an altered column,
a swapped model. Each sensor is evaluated through its Dagster definition with
`build_sensor_context`; what it requests is then run for real."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from conftest import (
    create_docs,
    embedded_docs,
    make_space,
    materialize_partitions,
    materialize_target,
    non_empty_count,
    resources,
    run_asset,
)
from dagster import DagsterInstance, SensorResult, build_sensor_context
from dagster_dev import write_spaces_config
from openai_server import FakeEmbeddingsServer
from test_alerts import Webhook
from typer.testing import CliRunner

from embedding_assets.cli import app
from embedding_assets.config import SpaceConfig
from embedding_assets.defs.partitions import id_range_partitions_name
from embedding_assets.defs.sensors import build_drift_sensors
from embedding_assets.drift.changelog import (
    changelog_status,
    exact_ranges,
    install_changelog,
    uninstall_changelog,
)
from embedding_assets.sensors.alerts import (
    AlertSettings,
    format_cursor,
    latest_storage_id,
    process_alerts,
)
from embedding_assets.sensors.drift import next_sweep_at


def tick(
    space: SpaceConfig, instance: DagsterInstance, cursor: str | None, *, sweep: bool = False
) -> SensorResult:
    """One evaluation of `<name>__drift` (or `__content_drift`) as the daemon would run it."""
    drift, content = build_drift_sensors(space)
    context = build_sensor_context(instance=instance, cursor=cursor, resources=resources())
    result = (content if sweep else drift)(context)
    assert isinstance(result, SensorResult)
    return result


def requested(result: SensorResult) -> list[str]:
    return sorted(r.partition_key for r in result.run_requests or [])  # type: ignore[misc]


def apply(result: SensorResult, space: SpaceConfig, instance: DagsterInstance) -> None:
    """What the daemon does with a result: add the partitions, then launch the runs."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    for run in result.run_requests or []:
        assert run.asset_check_keys == []  # upkeep runs skip the whole-column scan
        run_asset(space, instance, "embeddings", partition_key=run.partition_key)


def missing(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT count(*) FROM docs WHERE btrim(coalesce(body, '')) <> ''"
        " AND (emb IS NULL OR emb_text_hash IS DISTINCT FROM sha256(convert_to(body, 'UTF8')))"
    ).fetchone()
    return int(row[0])  # type: ignore[index]


def skipped(result: SensorResult) -> str:
    return result.skip_reason.skip_message if result.skip_reason else ""  # type: ignore[return-value]


def failed_checks(result: SensorResult) -> dict[str, str]:
    return {e.check_name: e.description or "" for e in result.asset_events if not e.passed}  # type: ignore[union-attr]


def test_new_rows_add_partitions_and_request_their_runs(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 1200)  # ranges 0-499 .. 1000-1499
    first = tick(space, dagster_instance, None)
    assert requested(first) == []  # everything known and embedded
    assert {e.check_name: e.passed for e in first.asset_events} == {  # type: ignore[union-attr]
        "config_matches": True,
        "model_fingerprint": True,
    }

    conn.execute(
        "INSERT INTO docs SELECT g, 'new document ' || g FROM generate_series(1201, 1700) g"
    )
    second = tick(space, dagster_instance, first.cursor)
    # a partition's worth of new keys above the last range's: a range of their own
    keys = ["00003_1201"]
    assert requested(second) == keys
    assert [r.partition_keys for r in second.dynamic_partitions_requests] == [keys]  # type: ignore[union-attr]
    assert second.asset_events == []  # verdicts unchanged: nothing recorded again
    apply(second, space, dagster_instance)
    assert missing(conn) == 0
    assert conn.execute("SELECT count(emb) FROM docs").fetchone() == (non_empty_count(conn),)

    third = tick(space, dagster_instance, second.cursor)
    assert requested(third) == [] and third.dynamic_partitions_requests in (None, [])


def test_edited_text_requests_its_partition_once(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 1200)
    start = tick(space, dagster_instance, None, sweep=True)  # the first sweep starts at once
    assert requested(start) == []
    conn.execute("UPDATE docs SET body = 'an edited text' WHERE id = 707")

    # until the cron says so, no new sweep
    assert requested(tick(space, dagster_instance, start.cursor, sweep=True)) == []
    due = json.loads(start.cursor)  # type: ignore[arg-type]
    due["last_start"] -= 2 * 86400  # the sweep that started two days ago: one is due
    found = tick(space, dagster_instance, json.dumps(due), sweep=True)
    assert requested(found) == ["00001_501"]
    (run,) = found.run_requests  # type: ignore[misc]
    # the same drift found by the next sweep gets the same run key: Dagster launches it once
    due["last_start"] -= 86400
    again = tick(space, dagster_instance, json.dumps(due), sweep=True)
    assert [r.run_key for r in again.run_requests] == [run.run_key]  # type: ignore[union-attr]

    apply(found, space, dagster_instance)
    assert missing(conn) == 0
    due["last_start"] -= 86400
    assert requested(tick(space, dagster_instance, json.dumps(due), sweep=True)) == []


def test_sweep_is_bounded_per_tick_and_skips_unmaterialized_partitions(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(
        conn, dagster_instance, 1400, drift={"sweep_rows_per_tick": 500, "sensor_status": "stopped"}
    )
    conn.execute("UPDATE docs SET body = body || ' (edited)' WHERE id IN (3, 1203)")
    conn.execute("INSERT INTO docs SELECT g, 'late ' || g FROM generate_series(1600, 2099) g")
    materialize_target(space, dagster_instance)  # adds 00003_1600, not materialized yet

    cursor, runs, ticks = None, [], 0
    while True:
        result = tick(space, dagster_instance, cursor, sweep=True)
        ticks += 1
        runs += requested(result)
        cursor = result.cursor
        if json.loads(cursor)["next_seq"] is None:  # type: ignore[arg-type]
            break
    # windows of whole partitions until 500 rows: 00000 (500 rows), 00001 (500), then
    # 00002 (400) and 00003 (500), the table's end; 00003 is left to its backfill
    assert ticks == 3
    assert runs == ["00000_min", "00002_1001"]
    assert json.loads(cursor)["rows_scanned"] == 1900  # type: ignore[arg-type]


def test_cron_decides_when_the_next_sweep_starts() -> None:
    start = datetime(2026, 11, 23, 3, 0, 5, tzinfo=UTC).timestamp()
    assert datetime.fromtimestamp(next_sweep_at(start, "0 3 * * *"), UTC) == datetime(
        2026, 11, 24, 3, 0, tzinfo=UTC
    )
    hourly = next_sweep_at(start, "0 * * * *") - start
    assert timedelta(seconds=hourly) < timedelta(hours=1)


def test_change_log_requests_exactly_the_changed_partitions(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 1200)
    status = install_changelog(conn, space)
    assert status.installed and status.columns == ["body"]
    first = tick(space, dagster_instance, None)

    conn.execute("UPDATE docs SET body = body || ' v2' WHERE id IN (11, 12)")
    conn.execute("UPDATE docs SET body = body WHERE id = 600")  # same text: not a change
    assert changelog_status(conn, space).pending == 2
    found = tick(space, dagster_instance, first.cursor)
    assert requested(found) == ["00000_min"]
    apply(found, space, dagster_instance)
    assert missing(conn) == 0
    # our own vector writes do not touch the text: they log nothing
    assert changelog_status(conn, space).pending == 2

    after = tick(space, dagster_instance, found.cursor)  # forgets what the last tick handled
    assert requested(after) == [] and changelog_status(conn, space).pending == 0

    assert not uninstall_changelog(conn, space).installed
    conn.execute("UPDATE docs SET body = 'untracked' WHERE id = 13")
    assert changelog_status(conn, space).pending == 0


def test_inserts_edits_and_a_blanked_text_request_exactly_the_partitions_they_touch(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    """New rows only in a new range: the range that held the highest id has no new row and
    gets no run (on a table of 1,000 partitions a wrong request per tick adds up)."""
    space, _ = embedded_docs(conn, dagster_instance, 1200)  # highest id 1200, in 00002_1001
    install_changelog(conn, space)
    first = tick(space, dagster_instance, None)

    conn.execute(
        "INSERT INTO docs SELECT g, 'new document ' || g FROM generate_series(1600, 2100) g"
    )
    conn.execute("UPDATE docs SET body = body || ' v2' WHERE id = 11")
    conn.execute("UPDATE docs SET body = '' WHERE id = 12")
    found = tick(space, dagster_instance, first.cursor)

    assert requested(found) == [
        "00000_min",  # the edit and the blanked text
        "00003_1600",  # the new rows, a range of their own
    ]
    apply(found, space, dagster_instance)
    assert missing(conn) == 0
    assert conn.execute("SELECT emb IS NULL FROM docs WHERE id = 12").fetchone() == (True,)
    assert requested(tick(space, dagster_instance, found.cursor)) == []


def test_change_log_watches_the_columns_text_sql_reads(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, title text, body text, views int)")
    conn.execute("INSERT INTO docs SELECT g, 't' || g, 'b' || g, 0 FROM generate_series(1, 50) g")
    space = make_space(text_column=None, text_sql="coalesce(title, '') || ' ' || body")
    materialize_target(space, dagster_instance)
    status = install_changelog(conn, space)
    assert status.columns == ["body", "title"]
    conn.execute("UPDATE docs SET views = views + 1")  # not text: not logged
    conn.execute("UPDATE docs SET title = 'new title' WHERE id = 5")
    conn.execute("INSERT INTO docs VALUES (51, 'x', 'y', 0)")
    assert conn.execute(
        "SELECT array_agg(row_id ORDER BY change_id) FROM embedding_backfills.change_log"
    ).fetchone() == (["5", "51"],)  # keys of any type are logged as text


def test_exact_ranges_never_cover_an_id_not_given() -> None:
    assert exact_ranges([7, 1, 2, 3, 9, 2]) == [(1, 3), (7, 7), (9, 9)]
    assert exact_ranges([]) == []


def test_column_altered_to_another_dimension_alerts_once_and_runs_nothing(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, webhook: Webhook
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 600)
    first = tick(space, dagster_instance, None)
    start = format_cursor(latest_storage_id(dagster_instance))
    # someone "fixes" the column for a new model: the data is gone, the type changed
    conn.execute("ALTER TABLE docs ALTER COLUMN emb TYPE vector(32) USING NULL")
    conn.execute("INSERT INTO docs SELECT g, 'more ' || g FROM generate_series(601, 700) g")

    result = tick(space, dagster_instance, first.cursor)
    assert requested(result) == [] and not result.dynamic_partitions_requests
    failed = failed_checks(result)
    assert list(failed) == ["config_matches"]
    assert "declared vector(32)" in failed["config_matches"]
    assert "configured for 16 dimensions" in failed["config_matches"]

    # the daemon stores the evaluation; the alert sensor posts it exactly once
    for event in result.asset_events:
        dagster_instance.report_runless_asset_event(event)  # type: ignore[arg-type]
    settings = AlertSettings(webhook_url=webhook.url)
    cursor = process_alerts(dagster_instance, start, settings).cursor
    process_alerts(dagster_instance, cursor, settings)
    alerts = webhook.texts(f"{space.name}/target_column")
    assert len(alerts) == 1 and "config_matches" in alerts[0] and "(ERROR)" in alerts[0]
    assert "reported by a sensor" in alerts[0] and "document number" not in alerts[0]

    # the same drift on the next tick records nothing new
    repeat = tick(space, dagster_instance, result.cursor)
    assert repeat.asset_events == [] and requested(repeat) == []


def test_a_model_swapped_behind_the_same_name_alerts_and_runs_nothing(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    def model(server: FakeEmbeddingsServer) -> dict[str, object]:
        return {
            "provider": "openai",
            "name": "nomic-embed-text",
            "dimensions": 8,
            "base_url": server.base_url,
            "max_retries": 0,
        }

    with FakeEmbeddingsServer(dims=8, salt="model-a") as server:
        space, _ = embedded_docs(conn, dagster_instance, 600, model=model(server))
        first = tick(space, dagster_instance, None)
    conn.execute("INSERT INTO docs SELECT g, 'more ' || g FROM generate_series(601, 700) g")

    with FakeEmbeddingsServer(dims=8, salt="model-b") as swapped:
        same = make_space(name=space.name, model=model(swapped))
        result = tick(same, dagster_instance, first.cursor)
        assert requested(result) == []
        failed = failed_checks(result)
        assert (
            list(failed) == ["model_fingerprint"]
            and "silent model swap" in failed["model_fingerprint"]
        )

    # the endpoint is down: that fails the fingerprint too, and still starts nothing
    down = tick(same, dagster_instance, result.cursor)
    assert requested(down) == [] and down.asset_events == []  # still failing: not repeated


def test_first_ticks_before_the_space_exists_do_nothing(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    space = make_space()
    for sweep in (False, True):
        result = tick(space, dagster_instance, None, sweep=sweep)
        assert requested(result) == [] and "materialize" in skipped(result)


@pytest.fixture
def webhook() -> Webhook:
    hook = Webhook()
    yield hook  # type: ignore[misc]
    hook.close()


def test_runs_requested_for_partitions_being_backfilled_are_left_to_the_backfill(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    """A partition not yet materialized is not the sweep's business (its backfill embeds it)."""
    create_docs(conn, 1200)
    space = make_space()
    materialize_target(space, dagster_instance)
    keys = sorted(dagster_instance.get_dynamic_partitions(id_range_partitions_name(space)))
    run_asset(space, dagster_instance, "embeddings", partition_key=keys[0])
    result = tick(space, dagster_instance, None, sweep=True)
    assert requested(result) == []
    assert "not materialized yet" in skipped(result)
    materialize_partitions(space, dagster_instance)


def test_changelog_commands_install_report_and_remove_the_triggers(
    conn: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_docs(conn, 100)
    space = make_space()
    monkeypatch.setenv(
        "EMBEDDING_BACKFILLS_CONFIG", str(write_spaces_config(tmp_path / "s.yaml", space))
    )
    runner = CliRunner()

    def run(*args: str) -> dict:
        result = runner.invoke(app, ["changelog", *args, space.name, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert run("status")["installed"] is False
    installed = run("install")
    assert installed["installed"] is True and installed["columns"] == ["body"]
    conn.execute("UPDATE docs SET body = 'changed' WHERE id = 3")
    assert run("status")["pending"] == 1
    assert run("uninstall") == {**installed, "installed": False, "columns": [], "pending": 0}
    assert conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass AND NOT tgisinternal"
    ).fetchone() == (0,)
    missing = runner.invoke(app, ["changelog", "install", "no_such_space"])
    assert missing.exit_code == 2 and "no space named 'no_such_space'" in missing.output


def test_more_new_rows_than_one_tick_reads_are_found_by_the_next_tick(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    import embedding_assets.drift.rows as rows

    space, _ = embedded_docs(conn, dagster_instance, 1200)
    first = tick(space, dagster_instance, None)
    monkeypatch.setattr(rows, "MAX_NEW_ROWS_PER_TICK", 10)
    conn.execute("INSERT INTO docs SELECT g, 'late ' || g FROM generate_series(1201, 1230) g")
    second = tick(space, dagster_instance, first.cursor)
    assert requested(second) == ["00002_1001"]
    # the cursor stopped at the tenth new key, not at the highest: the rest is still ahead
    assert json.loads(second.cursor)["max_key"] == "1210"  # type: ignore[arg-type]
    third = tick(space, dagster_instance, second.cursor)
    assert requested(third) == ["00002_1001"]
    assert json.loads(third.cursor)["max_key"] == "1220"  # type: ignore[arg-type]
