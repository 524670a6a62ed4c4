"""Alerts for failed asset checks and failed runs: one webhook POST (and one log line) each.

Plain logic, called by the thin sensor in `embedding_assets.defs.sensors` and by the tests.

Configuration, read from the environment at every sensor evaluation:

- `EMBEDDING_BACKFILLS_ALERT_WEBHOOK`: URL that receives a Slack-compatible JSON body
  (`{"text": ..., "blocks": [...]}`) per alert. Unset or empty: alerts are only logged.
- `EMBEDDING_BACKFILLS_UI_URL`: base URL of the Dagster UI (e.g. `http://127.0.0.1:3000`).
  When set, every alert links to its run: `{base}/runs/{run_id}`.

What alerts: every asset-check evaluation in the instance with `passed == False` (ERROR and
WARN), except the `deferred` evaluations the column checks emit while a backfill is still
running (expected, not a problem), and every RUN_FAILURE event.

Delivery is at-least-once and in order. The cursor is the event log storage id of the last
event handled (ASSET_CHECK_EVALUATION and RUN_FAILURE events share the id sequence), stored as
`{"last_storage_id": n}`. Events are handled in ascending storage id, at most
`MAX_EVENTS_PER_TICK` per evaluation; the cursor moves past an alert only once it was posted
(or logged, without a webhook) and past events that need no alert. When a POST fails the tick
stops, the cursor stays before that alert, and the next tick retries it. With no cursor yet
(first start) the cursor is set to the newest event: history is not replayed.

Messages carry the asset key, check name, severity, a truncated description, whitelisted
counts and ids from the metadata (numbers, lists of numbers, partition keys), and the run.
Never arbitrary metadata values, row text or stack traces.

A failed run names its cause per failed step (the first `MAX_STEP_FAILURES`): the project's
own error found in the step's error chain (an `EmbeddingBackfillError`, or a `Failure` raised
by this package), as "ClassName: message". Dagster wraps a raw exception in
DagsterExecutionStepExecutionError, whose message says nothing, so the chain is walked
(`cause`, `context`). Any other error is named by class only: psycopg messages carry DETAIL
lines with row values and HTTP clients may echo inputs or keys, while the project's own
messages are written to be safe to show.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    EventLogRecord,
    EventRecordsFilter,
    Failure,
    RunStatusChangeRecordsFilter,
)
from dagster._core.events import JobFailureData
from dagster._core.execution.plan.objects import StepFailureData
from dagster._utils.error import SerializableErrorInfo

from ..errors import EmbeddingBackfillError

ENV_WEBHOOK = "EMBEDDING_BACKFILLS_ALERT_WEBHOOK"
ENV_UI_URL = "EMBEDDING_BACKFILLS_UI_URL"
MAX_EVENTS_PER_TICK = 100
POST_TIMEOUT_SECONDS = 10.0
DESCRIPTION_CHARS = 300
FAILURE_MESSAGE_CHARS = 200
MAX_STEP_FAILURES = 3

# Metadata keys of the column checks (and of the deferred evaluations) worth an alert.
# Only numbers, lists of numbers and partition keys are ever copied from them.
METADATA_KEYS = (
    "example_ids",
    "partitions_to_rerun",
    "partitions_pending",
    "rows_missing",
    "rows_stale",
    "vectors_without_text",
    "vectors_other_model",
    "distinct_model_keys",
    "vectors_wrong_dimension",
    "dimensions_found",
    "configured_dimension",
    "zero_vectors",
    "not_unit_norm",
    # drift checks on <name>/target_column
    "declared_dimension",
    "registered_dimension",
    "min_cosine",
)
_MAX_LIST_ITEMS = 10
# Partition keys (`00003_150000`, `00003_9f1c02aa`) and uuid ids are safe to quote; text ids
# are the operator's data and stay out of alerts (the run's metadata has them).
_PARTITION_KEY = re.compile(
    r"^([0-9]{5}_[A-Za-z0-9_~-]{1,20}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
)
_MAX_NAMES_LISTED = 5
_MAX_CHAIN = 20  # error infos looked at per step; Dagster truncates deeper chains anyway
_MAX_CLASSES_NAMED = 3
_PACKAGE = __name__.split(".")[0]  # "embedding_assets"
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_FRAME_FILE = re.compile(r'File "([^"]+)"')
_FAILURE_NAME = f"{Failure.__module__}.{Failure.__qualname__}"

logger = logging.getLogger(__name__)

PostFn = Callable[[str, Mapping[str, Any]], None]


class AlertDeliveryError(Exception):
    """The webhook did not accept an alert (HTTP error, connection error, timeout)."""


@dataclass(frozen=True)
class AlertSettings:
    webhook_url: str | None = None
    ui_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AlertSettings:
        env = os.environ if environ is None else environ
        return cls(
            webhook_url=env.get(ENV_WEBHOOK, "").strip() or None,
            ui_url=env.get(ENV_UI_URL, "").strip().rstrip("/") or None,
        )


@dataclass(frozen=True)
class Alert:
    storage_id: int
    kind: str  # "check" | "run"
    run_id: str
    text: str

    def payload(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": self.text}}],
        }


@dataclass
class AlertTick:
    """The outcome of one evaluation: the cursor to store and what happened."""

    cursor: str
    events_seen: int = 0
    delivered: list[Alert] = field(default_factory=list)
    error: str | None = None  # set when a POST failed; the cursor stays before that alert

    def summary(self) -> str:
        if self.error:
            return (
                f"delivered {len(self.delivered)} alerts, then the webhook failed ({self.error});"
                " will retry"
            )
        if not self.delivered:
            return f"no new alerts ({self.events_seen} events checked)"
        return f"delivered {len(self.delivered)} alerts ({self.events_seen} events checked)"


# --- cursor ---------------------------------------------------------------------------------


def format_cursor(storage_id: int) -> str:
    return json.dumps({"last_storage_id": int(storage_id)})


def parse_cursor(cursor: str | None) -> int | None:
    """The last handled storage id, or None when there is no (usable) cursor yet."""
    if not cursor:
        return None
    try:
        value = json.loads(cursor)["last_storage_id"]
    except (ValueError, KeyError, TypeError):
        return None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def latest_storage_id(instance: DagsterInstance) -> int:
    """The newest event log storage id (0 when empty): a cursor that skips all history."""
    storage = instance.event_log_storage
    try:
        return int(storage.get_maximum_record_id() or 0)
    except NotImplementedError:  # run-sharded SQLite storage: look at the two event types
        newest = [r.storage_id for r in _fetch(instance, None, 1, ascending=False)]
        return max(newest, default=0)


# --- reading events -------------------------------------------------------------------------


def _fetch(
    instance: DagsterInstance, after: int | None, limit: int, *, ascending: bool = True
) -> list[EventLogRecord]:
    """Failed-run and check-evaluation records after `after`, ordered by storage id.

    Two queries (one per event type), each limited; the first `limit` of their merge are
    exactly the first `limit` events of both types after `after`.
    """
    checks = instance.event_log_storage.get_event_records(
        EventRecordsFilter(event_type=DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after),
        limit=limit,
        ascending=ascending,
    )
    failures = instance.fetch_run_status_changes(
        RunStatusChangeRecordsFilter(DagsterEventType.RUN_FAILURE, after_storage_id=after),
        limit=limit,
        ascending=ascending,
    ).records
    merged = sorted([*checks, *failures], key=lambda r: r.storage_id, reverse=not ascending)
    return merged[:limit]


# --- messages -------------------------------------------------------------------------------


def _truncate(text: str | None, limit: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _safe_scalar(value: object) -> int | float | str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and _PARTITION_KEY.match(value):
        return value
    return None


def safe_metadata(metadata: Mapping[str, Any]) -> dict[str, object]:
    """Whitelisted keys whose values are numbers, or lists of numbers / partition keys."""
    out: dict[str, object] = {}
    for key in METADATA_KEYS:
        if key not in metadata:
            continue
        raw = getattr(metadata[key], "value", metadata[key])
        if isinstance(raw, list | tuple):
            items = [_safe_scalar(v) for v in raw]
            if not items or any(v is None for v in items):
                continue
            shown: object = items[:_MAX_LIST_ITEMS]
            if len(items) > _MAX_LIST_ITEMS:
                shown = [*items[:_MAX_LIST_ITEMS], f"+{len(items) - _MAX_LIST_ITEMS} more"]
            out[key] = shown
        elif (scalar := _safe_scalar(raw)) is not None and not isinstance(scalar, str):
            out[key] = scalar
    return out


def _run_ref(run_id: str, ui_url: str | None) -> str:
    if not run_id:  # reported by a sensor (the drift sensors), outside any run
        return "none (reported by a sensor)"
    return f"<{ui_url}/runs/{run_id}|{run_id}>" if ui_url else run_id


def _is_deferred(metadata: Mapping[str, Any]) -> bool:
    value = metadata.get("deferred")
    return getattr(value, "value", value) is True


def _run_scope(instance: DagsterInstance | None, run_id: str) -> str:
    """What a run was for ("" when unknown): job names like __ASSET_JOB say nothing.

    "assets: a/b, ..." for runs launched with an asset selection (UI, backfills, sensors),
    else "steps: ..." (e.g. in-process `materialize`, whose asset selection is empty).
    """
    run = instance.get_run_by_id(run_id) if instance is not None else None
    if run is None:
        return ""
    if run.asset_selection:
        label, names = "assets", sorted(k.to_user_string() for k in run.asset_selection)
    elif run.step_keys_to_execute:
        label, names = "steps", sorted(run.step_keys_to_execute)
    else:
        return ""
    if len(names) > _MAX_NAMES_LISTED:
        names = [*names[:_MAX_NAMES_LISTED], f"+{len(names) - _MAX_NAMES_LISTED} more"]
    return f"{label}: {', '.join(names)}"


# --- the cause of a failed run --------------------------------------------------------------


def _project_error_names() -> frozenset[str]:
    """Qualified names of EmbeddingBackfillError and its subclasses (loaded ones included).

    Qualified, not bare: psycopg has a DatabaseError too, and its message is not ours.
    """
    names: set[str] = set()
    pending: list[type] = [EmbeddingBackfillError]
    while pending:
        cls = pending.pop()
        names.add(f"{cls.__module__}.{cls.__qualname__}")
        pending.extend(cls.__subclasses__())
    return frozenset(names)


def _qualified_name(error: SerializableErrorInfo) -> str:
    """The class's module path, from the "pkg.mod.Cls: text" message (bare for builtins)."""
    if not error.cls_name:
        return ""
    first = error.message.split("\n", 1)[0]
    match = re.match(rf"((?:[A-Za-z_]\w*\.)*{re.escape(error.cls_name)})(?::|$)", first)
    return match.group(1) if match else error.cls_name


def _own_text(error: SerializableErrorInfo) -> str:
    """The exception's str(), without the class prefix Python puts before it."""
    qualified = _qualified_name(error)
    text = error.message
    if qualified and text.startswith(qualified):
        text = text[len(qualified) :].removeprefix(":")
    return text.strip()


def _in_package(path: str) -> bool:
    """A file of this package, wherever the run's process had it installed.

    The part after the last `embedding_assets` directory must be one of our files: a
    checkout directory of that name does not make its virtualenv's Dagster ours.
    """
    parts = re.split(r"[/\\]", path)
    if _PACKAGE not in parts:
        return False
    tail = parts[len(parts) - parts[::-1].index(_PACKAGE) :]
    return bool(tail) and _PACKAGE_ROOT.joinpath(*tail).is_file()


def _raised_here(error: SerializableErrorInfo) -> bool:
    """Defined in this package, or raised from one of its frames (the stack's last)."""
    if _qualified_name(error).startswith(f"{_PACKAGE}."):
        return True
    frame = _FRAME_FILE.search(error.stack[-1]) if error.stack else None
    return bool(frame and _in_package(frame.group(1)))


def _chain(error: SerializableErrorInfo | None) -> Iterator[SerializableErrorInfo]:
    """The error, then its causes and contexts, depth first, at most `_MAX_CHAIN` of them."""
    pending = [error] if error else []
    seen = 0
    while pending and seen < _MAX_CHAIN:
        node = pending.pop()
        seen += 1
        yield node
        pending.extend(e for e in (node.context, node.cause) if e is not None)


def describe_error(
    error: SerializableErrorInfo | None, failure_description: str | None = None
) -> str:
    """The project's own error in the chain as "Class: message", else class names only.

    A `Failure` counts as the project's when this package raised it: plain `Failure` or,
    when Dagster recorded the step's failure data (`failure_description`), any subclass.
    """
    own = _project_error_names()
    failure_text = (failure_description or "").strip()
    foreign: list[str] = []
    for node in _chain(error):
        qualified = _qualified_name(node)
        is_failure = qualified == _FAILURE_NAME or bool(
            failure_text and _own_text(node) == failure_text
        )
        if qualified in own or (is_failure and _raised_here(node)):
            text = _truncate(_own_text(node), FAILURE_MESSAGE_CHARS)
            return f"{node.cls_name}: {text}" if text else f"{node.cls_name}"
        if node.cls_name and not qualified.startswith("dagster") and node.cls_name not in foreign:
            foreign.append(node.cls_name)
    if not foreign and error is not None and error.cls_name:
        foreign = [error.cls_name]  # Dagster's own error, nothing behind it
    if not foreign:
        return ""
    names = " caused by ".join(foreign[:_MAX_CLASSES_NAMED])
    return f"{names} (message withheld: not an error of {_PACKAGE}; see the run's logs)"


def _failed_steps(instance: DagsterInstance, run_id: str) -> tuple[list[str], bool]:
    """A "step <key>: <cause>" line per failed step (the first few); True when more failed."""
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.STEP_FAILURE, limit=MAX_STEP_FAILURES + 1
    ).records
    lines: list[str] = []
    for record in records[:MAX_STEP_FAILURES]:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        data = event.event_specific_data
        if isinstance(data, StepFailureData):
            user = data.user_failure_data
            cause = describe_error(data.error, user.description if user else None)
        else:
            cause = ""
        lines.append(f"step {event.step_key}: {cause or 'failed'}")
    return lines, len(records) > MAX_STEP_FAILURES


def failure_lines(
    instance: DagsterInstance | None, run_id: str, data: object, run_message: str | None
) -> list[str]:
    """What made a run fail: its failed steps' causes, else the run-level error's.

    The steps are read from the event log: a run's RUN_FAILURE event carries no error when
    its steps ran in other processes, and otherwise only the first step's.
    """
    lines, more = _failed_steps(instance, run_id) if instance is not None else ([], False)
    if more:
        lines.append(f"more steps failed than the {MAX_STEP_FAILURES} shown, see the run")
    if lines:
        return lines
    error = data.error if isinstance(data, JobFailureData) else None
    cause = describe_error(error)
    if cause:
        return [cause]
    first = next((s.strip() for s in (run_message or "").splitlines() if s.strip()), "")
    return [_truncate(first, FAILURE_MESSAGE_CHARS)] if first else []


def alert_for(
    record: EventLogRecord, ui_url: str | None = None, instance: DagsterInstance | None = None
) -> Alert | None:
    """The alert an event calls for, or None (passed or deferred check, other event)."""
    entry = record.event_log_entry
    event = entry.dagster_event
    if event is None:
        return None
    if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
        evaluation = event.asset_check_evaluation_data
        if evaluation.passed or _is_deferred(evaluation.metadata):
            return None
        lines = [
            f"Asset check failed: {evaluation.asset_key.to_user_string()} "
            f"/ {evaluation.check_name} ({evaluation.severity.value})",
        ]
        if evaluation.description:
            lines.append(_truncate(evaluation.description, DESCRIPTION_CHARS))
        details = safe_metadata(evaluation.metadata)
        if details:
            lines.append(", ".join(f"{k}: {json.dumps(v)}" for k, v in details.items()))
        lines.append(f"run: {_run_ref(entry.run_id, ui_url)}")
        return Alert(record.storage_id, "check", entry.run_id, "\n".join(lines))
    if event.event_type == DagsterEventType.RUN_FAILURE:
        lines = [f"Run failed: job {event.job_name}"]
        scope = _run_scope(instance, entry.run_id)
        if scope:
            lines.append(scope)
        lines.append(f"run: {_run_ref(entry.run_id, ui_url)}")
        run_message = event.message or entry.user_message
        lines += failure_lines(instance, entry.run_id, event.event_specific_data, run_message)
        return Alert(record.storage_id, "run", entry.run_id, "\n".join(lines))
    return None


# --- delivery -------------------------------------------------------------------------------


def post_webhook(url: str, payload: Mapping[str, Any]) -> None:
    """POST `payload` as JSON; raise AlertDeliveryError unless the server answers 2xx."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=POST_TIMEOUT_SECONDS) as response:
            status = response.status
    except (OSError, ValueError) as exc:  # HTTPError, URLError, timeouts, a malformed URL
        raise AlertDeliveryError(f"{type(exc).__name__}: {exc}") from exc
    if not 200 <= status < 300:
        raise AlertDeliveryError(f"HTTP {status}")


def process_alerts(
    instance: DagsterInstance,
    cursor: str | None,
    settings: AlertSettings | None = None,
    *,
    limit: int = MAX_EVENTS_PER_TICK,
    log: logging.Logger | Any | None = None,
    post: PostFn = post_webhook,
) -> AlertTick:
    """Handle the events after `cursor`; return the new cursor and what was delivered."""
    settings = settings or AlertSettings.from_env()
    log = log or logger
    after = parse_cursor(cursor)
    if after is None:
        start = latest_storage_id(instance)
        log.info(f"embedding alerts: no cursor, starting after storage id {start}")
        return AlertTick(cursor=format_cursor(start))
    records: Sequence[EventLogRecord] = _fetch(instance, after, limit)
    tick = AlertTick(cursor=format_cursor(after), events_seen=len(records))
    for record in records:
        alert = alert_for(record, settings.ui_url, instance)
        if alert is not None:
            if settings.webhook_url:
                try:
                    post(settings.webhook_url, alert.payload())
                except AlertDeliveryError as exc:
                    tick.error = str(exc)
                    log.warning(
                        f"embedding alerts: webhook failed for storage id {alert.storage_id}"
                        f" ({exc}); retrying on the next tick"
                    )
                    return tick
            log.warning(f"embedding alert: {alert.text}")
            tick.delivered.append(alert)
        tick.cursor = format_cursor(record.storage_id)
    return tick
