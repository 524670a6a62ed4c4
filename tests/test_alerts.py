"""The alert sensor: real failed checks and runs on the real instance, a real HTTP webhook."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
from conftest import (
    create_docs,
    embedded_docs,
    execute_checks,
    make_space,
    materialize_target,
    run_asset,
)
from dagster import (
    DagsterInstance,
    Failure,
    SensorEvaluationContext,
    SkipReason,
    asset,
    build_sensor_context,
    materialize,
)
from dagster._utils.error import serializable_error_info_from_exc_info

from embedding_assets.defs.partitions import id_range_partitions_name
from embedding_assets.defs.sensors import build_alert_sensor
from embedding_assets.errors import DatabaseError
from embedding_assets.sensors.alerts import (
    ENV_UI_URL,
    ENV_WEBHOOK,
    FAILURE_MESSAGE_CHARS,
    AlertSettings,
    describe_error,
    format_cursor,
    latest_storage_id,
    parse_cursor,
    process_alerts,
)

UI = "http://dagster.example:3000"
SECRET = "sk-proj-Zq8XrT2vLm9Wn4Kp7Yd3"  # what an API key looks like; must never be posted


class Webhook:
    """A real HTTP server on 127.0.0.1 that records the bodies it accepted."""

    def __init__(self) -> None:
        self.status = 200
        self.attempts = 0
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.attempts += 1
                if hook.status < 300:
                    hook.bodies.append(json.loads(body))
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def texts(self, *needles: str) -> list[str]:
        """Accepted message texts mentioning any of `needles` (other tests share the instance)."""
        texts = [b["text"] for b in self.bodies]
        return [t for t in texts if any(n in t for n in needles)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    hook = Webhook()
    monkeypatch.setenv(ENV_WEBHOOK, hook.url)
    monkeypatch.delenv(ENV_UI_URL, raising=False)
    yield hook
    hook.close()


def evaluate(
    instance: DagsterInstance, cursor: str | None, context: SensorEvaluationContext | None = None
) -> tuple[str, str]:
    """One sensor tick, on a fresh context from `cursor` unless given one; (cursor, message)."""
    context = context or build_sensor_context(instance=instance, cursor=cursor)
    result = build_alert_sensor()(context)
    assert isinstance(result, SkipReason)
    assert context.cursor is not None
    return context.cursor, result.skip_message or ""


def test_failed_check_and_failed_run_post_once_without_row_text(
    conn: psycopg.Connection,
    dagster_instance: DagsterInstance,
    webhook: Webhook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_UI_URL, UI + "/")
    start = format_cursor(latest_storage_id(dagster_instance))
    space, _ = embedded_docs(conn, dagster_instance, 600)
    conn.execute("UPDATE docs SET emb_model_key = 42 WHERE id IN (11, 12)")
    assert execute_checks(space, dagster_instance)["one_model"]["passed"] is False
    failed = run_asset(space, dagster_instance, "hnsw_index", raise_on_error=False)
    assert not failed.success

    context = build_sensor_context(instance=dagster_instance, cursor=start)
    cursor, message = evaluate(dagster_instance, start, context)

    assert "delivered" in message and parse_cursor(cursor) > parse_cursor(start)  # type: ignore[operator]
    # the first partition's run deferred its checks, the last one passed: only one_model alerts
    checks = webhook.texts(f"{space.name}/embeddings")
    assert len(checks) == 1, checks
    (check,) = checks
    assert "one_model" in check and "(ERROR)" in check
    assert "example_ids: [11, 12]" in check and "vectors_other_model: 2" in check
    runs = webhook.texts(failed.run_id)
    assert len(runs) == 1 and f"{UI}/runs/{failed.run_id}" in runs[0]
    # in-process runs have no asset selection: the message names the step
    assert f"steps: {space.name}__hnsw_index" in runs[0] and "ChecksNotPassed:" in runs[0]
    assert "Traceback" not in runs[0] and 'File "' not in runs[0]
    for body in webhook.bodies:
        assert "document number" not in json.dumps(body)
        assert body["blocks"][0]["text"]["text"] == body["text"]

    posted = len(webhook.bodies)
    # the next tick on the same context, then a daemon restart: a new context from the string
    again, message = evaluate(dagster_instance, None, context)
    assert again == cursor and len(webhook.bodies) == posted and "no new alerts" in message
    restarted, _ = evaluate(dagster_instance, cursor)
    assert restarted == cursor and len(webhook.bodies) == posted


def test_webhook_outage_retries_without_losing_or_duplicating(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, webhook: Webhook
) -> None:
    start = format_cursor(latest_storage_id(dagster_instance))
    create_docs(conn, 600)
    space = make_space()
    materialize_target(space, dagster_instance)
    failed = run_asset(space, dagster_instance, "hnsw_index", raise_on_error=False)
    assert not failed.success

    webhook.status = 500
    cursor, message = evaluate(dagster_instance, start)
    assert cursor == start and webhook.attempts == 1 and not webhook.bodies
    assert "will retry" in message
    webhook.status = 200
    cursor, _ = evaluate(dagster_instance, cursor)
    assert len(webhook.texts(failed.run_id)) == 1 and webhook.attempts == 2
    evaluate(dagster_instance, cursor)
    assert len(webhook.texts(failed.run_id)) == 1


def test_webhook_unreachable_keeps_the_cursor(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    start = format_cursor(latest_storage_id(dagster_instance))
    create_docs(conn, 100)
    space = make_space()
    materialize_target(space, dagster_instance)
    assert not run_asset(space, dagster_instance, "hnsw_index", raise_on_error=False).success
    closed = Webhook()
    closed.close()  # nothing listens on that port any more
    tick = process_alerts(dagster_instance, start, AlertSettings(webhook_url=closed.url))
    assert tick.cursor == start and tick.error and not tick.delivered
    # without a webhook the alert is only logged, and the cursor moves past it
    logged = process_alerts(dagster_instance, start, AlertSettings())
    assert logged.delivered and parse_cursor(logged.cursor) > parse_cursor(start)  # type: ignore[operator]


def test_deferred_evaluations_do_not_alert(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, webhook: Webhook
) -> None:
    start = format_cursor(latest_storage_id(dagster_instance))
    create_docs(conn, 1200)
    space = make_space()
    materialize_target(space, dagster_instance)
    first = sorted(dagster_instance.get_dynamic_partitions(id_range_partitions_name(space)))[0]
    run_asset(space, dagster_instance, "embeddings", partition_key=first)
    results = execute_checks(space, dagster_instance)
    assert all(r["deferred"] and not r["passed"] for r in results.values())

    cursor, _ = evaluate(dagster_instance, start)

    assert webhook.texts(space.name) == []
    assert parse_cursor(cursor) > parse_cursor(start)  # type: ignore[operator]


def test_first_tick_without_cursor_starts_at_the_newest_event(
    dagster_instance: DagsterInstance, webhook: Webhook
) -> None:
    cursor, _ = evaluate(dagster_instance, None)
    assert parse_cursor(cursor) == latest_storage_id(dagster_instance)
    assert webhook.attempts == 0


def test_failed_target_column_run_names_the_project_error(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, webhook: Webhook
) -> None:
    start = format_cursor(latest_storage_id(dagster_instance))
    create_docs(conn, 100)
    space = make_space()
    materialize_target(space, dagster_instance)
    partition = sorted(dagster_instance.get_dynamic_partitions(id_range_partitions_name(space)))[0]
    # the same space, column and dimension, another model: the registry refuses the swap
    swapped = make_space(name=space.name, model={"name": "another-model"})
    target = run_asset(swapped, dagster_instance, "target_column", raise_on_error=False)
    embeddings = run_asset(
        swapped, dagster_instance, "embeddings", partition_key=partition, raise_on_error=False
    )
    assert not target.success and not embeddings.success

    evaluate(dagster_instance, start)

    (alert,) = webhook.texts(target.run_id)
    # the raw SpaceConflictError escaped the asset: Dagster wrapped it, the alert unwraps it
    expected = (
        f"step {space.name}__target_column: SpaceConflictError: space '{space.name}' "
        "(public.docs.emb) was registered for hash:test-hash"
    )
    assert expected in alert, alert
    assert "hash:another-model" in alert and "DagsterExecutionStepExecutionError" not in alert
    cause = alert.split(f"{space.name}__target_column: ", 1)[1].splitlines()[0]
    assert len(cause) == len("SpaceConflictError: ") + FAILURE_MESSAGE_CHARS
    assert cause.endswith("…")  # the message is longer than the limit
    # `embeddings` wraps the same error into a Failure: the same message, under that class
    (wrapped,) = webhook.texts(embeddings.run_id)
    assert f"step {space.name}__embeddings: Failure: space '{space.name}'" in wrapped, wrapped
    assert "Traceback" not in alert + wrapped and 'File "' not in alert + wrapped


def test_third_party_errors_are_named_by_class_only(
    conn: psycopg.Connection, db_url: str, dagster_instance: DagsterInstance, webhook: Webhook
) -> None:
    start = format_cursor(latest_storage_id(dagster_instance))
    conn.execute("CREATE TABLE secrets (body text PRIMARY KEY)")
    conn.execute("INSERT INTO secrets VALUES (%s)", (f"document number 7 {SECRET}",))

    @asset(name="duplicate_row")
    def duplicate_row() -> None:
        # a real psycopg error: its DETAIL line quotes the row, key included
        with psycopg.connect(db_url) as db:
            db.execute("INSERT INTO secrets VALUES (%s)", (f"document number 7 {SECRET}",))

    @asset(name="foreign_failure")
    def foreign_failure() -> None:
        # a Failure, but not the project's: its message is not vetted either
        raise Failure(f"request rejected for api_key={SECRET}")

    run = materialize(
        [duplicate_row, foreign_failure], instance=dagster_instance, raise_on_error=False
    )
    assert not run.success

    evaluate(dagster_instance, start)

    (alert,) = webhook.texts(run.run_id)
    assert "step duplicate_row: UniqueViolation (message withheld" in alert, alert
    assert "step foreign_failure: Failure (message withheld" in alert, alert
    for leaked in (SECRET, "sk-proj", "api_key", "document number", "already exists", "DETAIL"):
        assert leaked not in alert


def test_a_third_party_class_named_like_a_project_error_is_not_trusted() -> None:
    """psycopg.DatabaseError and embedding_assets.errors.DatabaseError share a bare name."""
    errors = []
    for exc in (psycopg.DatabaseError(f"DETAIL: Key (body)=({SECRET})"), DatabaseError("no table")):
        try:
            raise exc
        except Exception:
            errors.append(serializable_error_info_from_exc_info(sys.exc_info()))
    theirs, ours = errors
    assert describe_error(theirs).startswith("DatabaseError (message withheld")
    assert SECRET not in describe_error(theirs)
    assert describe_error(ours) == "DatabaseError: no table"
