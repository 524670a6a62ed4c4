"""A real `dagster dev` (webserver + daemon) for tests that act the way the UI does.

The UI talks to the webserver only through GraphQL; so does this harness. Starting a backfill
with `launchPartitionBackfill` exercises what `dagster.materialize` skips: the backfill
daemon splitting the partitions into runs (`BackfillPolicy`), the QueuedRunCoordinator
dequeuing them, and the run launcher executing each one in its own subprocess.

    config = write_spaces_config(tmp_path / "spaces.yaml", space)   # from make_space()
    env = dagster_dev_env(db_url, config)  # DATABASE_URL, DAGSTER_POSTGRES_URL, the config
    with running_dagster_dev(env, tmp_path) as dev:
        backfill_id = dev.launch_partition_backfill([[name, "embeddings"]], partition_keys)
        status = dev.wait_for_backfill(backfill_id)
        runs = dev.backfill_runs(backfill_id)

Dagster's storage is the repo's `dagster.yaml` (Postgres, URL from $DAGSTER_POSTGRES_URL),
copied into a temporary DAGSTER_HOME; point $DAGSTER_POSTGRES_URL at the database of the
in-process `dagster_instance` fixture and both see the same runs, events and dynamic
partitions. Every failure raises `DagsterDevError` with the tail of the `dagster dev` log.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from embedding_assets.config import SpaceConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
DAGSTER_BIN = Path(sys.executable).parent / "dagster"

#: Variables `running_dagster_dev` insists on: without them `dagster dev` would fall back
#: to the project's own embedded server and `embedding_backfills.yaml`.
REQUIRED_ENV = ("DATABASE_URL", "DAGSTER_POSTGRES_URL", "EMBEDDING_BACKFILLS_CONFIG")

BACKFILL_TAG = "dagster/backfill"
PARTITION_TAG = "dagster/partition"
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"

#: BulkActionStatus values after which a backfill no longer changes.
TERMINAL_BACKFILL_STATUSES = frozenset(
    {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
)
SUCCESSFUL_BACKFILL_STATUSES = frozenset({"COMPLETED", "COMPLETED_SUCCESS"})
TERMINAL_RUN_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELED"})

# --- GraphQL documents (the UI sends the same mutation, with the same input type) ---------

# The UI's PythonErrorFragment, trimmed: the message, the stack and the chained causes.
# `DagsterDev.graphql` appends it to any document that spreads `...PythonErrorFields`.
PYTHON_ERROR_FRAGMENT = """
fragment PythonErrorFields on PythonError {
  message
  stack
  errorChain { error { message } }
}
"""

VERSION_QUERY = "query Version { version }"

WORKSPACE_QUERY = """
query WorkspaceStatus {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { repositories { name } }
          ... on PythonError { ...PythonErrorFields }
        }
      }
    }
    ... on PythonError { ...PythonErrorFields }
  }
}
"""

LAUNCH_PARTITION_BACKFILL_MUTATION = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId launchedRunIds }
    ... on PythonError { ...PythonErrorFields }
    ... on Error { message }
  }
}
"""

CANCEL_PARTITION_BACKFILL_MUTATION = """
mutation CancelPartitionBackfill($backfillId: String!) {
  cancelPartitionBackfill(backfillId: $backfillId) {
    __typename
    ... on CancelBackfillSuccess { backfillId }
    ... on PythonError { ...PythonErrorFields }
    ... on Error { message }
  }
}
"""

BACKFILL_QUERY = """
query PartitionBackfill($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill {
      id
      status
      numPartitions
      partitionNames
      error { ...PythonErrorFields }
    }
    ... on PythonError { ...PythonErrorFields }
    ... on Error { message }
  }
}
"""

BACKFILL_RUNS_QUERY = """
query BackfillRuns($filter: RunsFilter!) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
    ... on PythonError { ...PythonErrorFields }
    ... on Error { message }
  }
}
"""

RUN_ERRORS_QUERY = """
query RunErrors($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      eventConnection {
        events {
          __typename
          ... on MessageEvent { message level }
          ... on ErrorEvent { error { ...PythonErrorFields } }
        }
      }
    }
    ... on PythonError { message }
    ... on Error { message }
  }
}
"""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def format_error(error: Mapping[str, Any], *, stack: bool = True) -> str:
    """A GraphQL error member (PythonError, or any `Error`) as text: message, causes, stack."""
    parts = [str(error.get("message", "")).strip()]
    parts += [
        f"caused by: {link['error']['message'].strip()}" for link in error.get("errorChain") or []
    ]
    frames = "".join(error.get("stack") or []).rstrip() if stack else ""
    if frames:
        parts.append(frames)
    return "\n".join(parts)


class DagsterDevError(AssertionError):
    """A failure of `dagster dev` or of a GraphQL call; the message ends with the log tail."""


@dataclass(frozen=True)
class RunInfo:
    """One run as GraphQL reports it."""

    run_id: str
    status: str  # RunStatus: QUEUED, STARTING, STARTED, SUCCESS, FAILURE, CANCELED, ...
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def partition_range(self) -> tuple[str, str] | None:
        """(first, last) partition key of the run: a range run, or a single-partition run."""
        start = self.tags.get(PARTITION_RANGE_START_TAG)
        end = self.tags.get(PARTITION_RANGE_END_TAG)
        if start is not None and end is not None:
            return start, end
        key = self.tags.get(PARTITION_TAG)
        return (key, key) if key is not None else None


@dataclass
class DagsterDev:
    """A running `dagster dev`; create it with `running_dagster_dev`."""

    url: str  # http://127.0.0.1:PORT
    dagster_home: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    launched_backfills: list[str] = field(default_factory=list)

    # --- plumbing --------------------------------------------------------------------------

    def log_tail(self, lines: int = 80) -> str:
        """The last lines of the `dagster dev` log (webserver, daemon and code server)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no dagster dev log)"
        return "\n".join(_ANSI.sub("", text).splitlines()[-lines:])

    def fail(self, message: str) -> DagsterDevError:
        """An error carrying the log tail; `raise dev.fail("...")`."""
        return DagsterDevError(
            f"{message}\n--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def graphql(
        self, query: str, variables: Mapping[str, Any] | None = None, *, timeout: float = 30
    ) -> dict[str, Any]:
        """POST a GraphQL document; return `data`. Raise DagsterDevError when the server
        cannot be reached or answers with top-level `errors` (schema validation, resolver
        exceptions). Union error members (PythonError, ...) are data: the caller checks
        `__typename` (the methods below do)."""
        if "...PythonErrorFields" in query and "fragment PythonErrorFields" not in query:
            query += PYTHON_ERROR_FRAGMENT
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as err:
            # The webserver answers 500 when the result holds a PythonError: still a result.
            raw = err.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
            if not isinstance(payload, dict) or "data" not in payload:
                detail = raw.decode("utf-8", errors="replace")[:2000]
                raise self.fail(f"GraphQL HTTP {err.code}: {detail}") from None
        except OSError as err:  # refused, reset, timed out
            code = self.process.poll()
            state = "running" if code is None else f"exited with code {code}"
            raise self.fail(
                f"GraphQL unreachable ({type(err).__name__}: {err}); dagster dev {state}"
            ) from None
        if payload.get("errors"):
            messages = "; ".join(e.get("message", str(e)) for e in payload["errors"])
            raise self.fail(f"GraphQL errors: {messages}")
        return payload["data"]

    def _check_union(self, value: dict[str, Any], expected: str, what: str) -> dict[str, Any]:
        """`value` if its `__typename` is `expected`, else raise with the error it holds."""
        if value["__typename"] != expected:
            detail = format_error(value) if "message" in value else json.dumps(value)[:2000]
            raise self.fail(f"{what}: {value['__typename']}: {detail}")
        return value

    # --- the API tests use -----------------------------------------------------------------

    def repositories(self) -> dict[str, list[str]]:
        """Loaded code locations and their repository names; raise if a location failed."""
        workspace = self.graphql(WORKSPACE_QUERY)["workspaceOrError"]
        self._check_union(workspace, "Workspace", "workspaceOrError")
        loaded: dict[str, list[str]] = {}
        for entry in workspace["locationEntries"]:
            location = entry["locationOrLoadError"]
            if location is None or entry["loadStatus"] != "LOADED":
                continue  # still loading
            self._check_union(location, "RepositoryLocation", f"code location {entry['name']!r}")
            loaded[entry["name"]] = [r["name"] for r in location["repositories"]]
        return loaded

    def launch_partition_backfill(
        self,
        asset_keys: Sequence[Sequence[str]],
        partition_names: Sequence[str] | None = None,
        *,
        all_partitions: bool = False,
        tags: Mapping[str, str] | None = None,
        title: str | None = None,
    ) -> str:
        """Launch an asset backfill as the UI's "Materialize selected" dialog does; return
        its id. `asset_keys` are paths (`[["space", "embeddings"]]`); give
        `partition_names` or `all_partitions=True`. The daemon picks it up on its next tick.
        """
        if (partition_names is None) == (not all_partitions):
            raise ValueError("give exactly one of partition_names or all_partitions=True")
        params: dict[str, Any] = {
            "assetSelection": [{"path": list(key)} for key in asset_keys],
            "fromFailure": False,
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }
        if all_partitions:
            params["allPartitions"] = True
        else:
            params["partitionNames"] = list(partition_names or [])
        if title is not None:
            params["title"] = title
        data = self.graphql(LAUNCH_PARTITION_BACKFILL_MUTATION, {"backfillParams": params})
        result = data["launchPartitionBackfill"]
        self._check_union(result, "LaunchBackfillSuccess", "launchPartitionBackfill")
        backfill_id = str(result["backfillId"])
        self.launched_backfills.append(backfill_id)
        return backfill_id

    def cancel_backfill(self, backfill_id: str) -> None:
        """Mark the backfill CANCELING (the UI's "Cancel backfill"); the daemon cancels its
        runs and sets CANCELED on a later tick."""
        data = self.graphql(CANCEL_PARTITION_BACKFILL_MUTATION, {"backfillId": backfill_id})
        value = data["cancelPartitionBackfill"]
        self._check_union(value, "CancelBackfillSuccess", f"cancel backfill {backfill_id}")

    def cancel_unfinished_backfills(self) -> None:
        """Best effort: cancel what this harness launched and is not finished, so that the
        next `dagster dev` on the same storage does not resume it."""
        for backfill_id in self.launched_backfills:
            with suppress(DagsterDevError, OSError):
                if self.backfill_status(backfill_id) not in TERMINAL_BACKFILL_STATUSES:
                    self.cancel_backfill(backfill_id)

    def backfill(self, backfill_id: str) -> dict[str, Any]:
        """The backfill as GraphQL reports it: id, status, numPartitions, partitionNames,
        error."""
        data = self.graphql(BACKFILL_QUERY, {"backfillId": backfill_id})
        value = data["partitionBackfillOrError"]
        return self._check_union(value, "PartitionBackfill", f"backfill {backfill_id}")

    def backfill_status(self, backfill_id: str) -> str:
        """BulkActionStatus: REQUESTED, COMPLETED_SUCCESS, COMPLETED_FAILED, FAILED, ..."""
        return str(self.backfill(backfill_id)["status"])

    def wait_for_backfill(
        self, backfill_id: str, timeout: float = 240, *, poll_seconds: float = 2
    ) -> str:
        """Poll until the backfill's status is terminal; return it. The backfill daemon
        ticks every 30 s, so the status turns terminal up to ~30 s after its last run ends.
        Raise (with the runs and the log tail) on timeout or if `dagster dev` exits."""
        deadline = time.monotonic() + timeout
        status = "?"
        while time.monotonic() < deadline:
            self.check_alive()
            status = self.backfill_status(backfill_id)
            if status in TERMINAL_BACKFILL_STATUSES:
                return status
            time.sleep(poll_seconds)
        runs = ", ".join(f"{r.run_id[:8]}={r.status}" for r in self.backfill_runs(backfill_id))
        raise self.fail(
            f"backfill {backfill_id} not terminal after {timeout:.0f}s: status {status}; "
            f"runs: {runs or 'none'}"
        )

    def backfill_runs(self, backfill_id: str) -> list[RunInfo]:
        """The runs the daemon created for the backfill (tag dagster/backfill), any status."""
        run_filter = {"tags": [{"key": BACKFILL_TAG, "value": backfill_id}]}
        value = self.graphql(BACKFILL_RUNS_QUERY, {"filter": run_filter})["runsOrError"]
        self._check_union(value, "Runs", "runsOrError")
        return [
            RunInfo(
                run_id=r["runId"],
                status=r["status"],
                tags={t["key"]: t["value"] for t in r["tags"]},
            )
            for r in value["results"]
        ]

    def run_errors(self, run_id: str) -> list[str]:
        """Error and ERROR-level messages of a run's event log (to explain a failed run)."""
        value = self.graphql(RUN_ERRORS_QUERY, {"runId": run_id})["runOrError"]
        self._check_union(value, "Run", f"run {run_id}")
        out: list[str] = []
        for event in value["eventConnection"]["events"]:
            error = event.get("error")
            if error and error.get("message"):
                out.append(f"{event['__typename']}: {format_error(error, stack=False)}")
            elif event.get("level") in {"ERROR", "CRITICAL"} and event.get("message"):
                out.append(f"{event['__typename']}: {event['message'].strip()}")
        return out

    def describe_backfill(self, backfill_id: str) -> str:
        """Status, error and every run with its errors: for assertion messages."""
        backfill = self.backfill(backfill_id)
        lines = [f"backfill {backfill_id}: {backfill['status']}"]
        if backfill.get("error"):
            lines.append(textwrap.indent(f"error: {format_error(backfill['error'])}", "  "))
        for run in self.backfill_runs(backfill_id):
            lines.append(f"  run {run.run_id} {run.status} {run.partition_range}")
            if run.status != "SUCCESS":
                lines.extend(textwrap.indent(e, "    ") for e in self.run_errors(run.run_id))
        return "\n".join(lines)

    def kill(self) -> None:
        """SIGKILL the whole process tree at once, as a crash or `kill -9` would: nothing
        gets to clean up, runs in flight stay STARTED in the storage."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise self.fail(f"dagster dev exited with code {code}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes], grace_seconds: float) -> None:
    """SIGTERM the whole process group (dagster dev, webserver, daemon, code server, run
    workers); SIGKILL whatever is left of it after `grace_seconds`."""
    pgid = process.pid  # start_new_session=True: the group id is the leader's pid
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or it counts as alive
        if not _group_alive(pgid):
            break
        time.sleep(0.2)
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait(timeout=10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def write_spaces_config(path: Path, *spaces: SpaceConfig) -> Path:
    """Write the YAML `dagster dev` loads (EMBEDDING_BACKFILLS_CONFIG): exactly these spaces,
    e.g. the ones `make_space()` returned (each has a unique name)."""
    path.write_text(yaml.safe_dump({"spaces": [s.model_dump(mode="json") for s in spaces]}))
    return path


def dagster_dev_env(db_url: str, config: Path) -> dict[str, str]:
    """The `env` for `running_dagster_dev` in a test: the data database of the `db_url`
    fixture, the Dagster storage of the `dagster_instance` fixture (which exported
    DAGSTER_POSTGRES_URL; request that fixture first) and the spaces file."""
    return {
        "DATABASE_URL": db_url,
        "DAGSTER_POSTGRES_URL": os.environ["DAGSTER_POSTGRES_URL"],
        "EMBEDDING_BACKFILLS_CONFIG": str(config),
    }


@contextmanager
def running_dagster_dev(
    env: Mapping[str, str],
    workdir: Path,
    *,
    startup_timeout: float = 120,
    stop_grace_seconds: float = 15,
    instance_overrides: Mapping[str, Any] | None = None,
) -> Iterator[DagsterDev]:
    """Run `dagster dev -w workspace.yaml` from the repo root until the block exits.

    `env` is added to this process's environment and must set DATABASE_URL,
    DAGSTER_POSTGRES_URL (`postgresql+psycopg2://...`) and EMBEDDING_BACKFILLS_CONFIG.
    DAGSTER_HOME is `workdir/dagster_home` with a copy of the repo's dagster.yaml, its
    top-level sections updated from `instance_overrides` (e.g. shorter run-monitoring
    intervals); the log is `workdir/dagster_dev.log`, appended to, so that a second
    `dagster dev` on the same `workdir` is a restart on the same home and storage. Yields
    once the webserver answers GraphQL and the code location has loaded a repository; on
    exit stops the whole process tree.
    """
    missing = [name for name in REQUIRED_ENV if not env.get(name)]
    if missing:
        raise ValueError(f"running_dagster_dev needs {', '.join(missing)} in env")
    workdir = Path(workdir)
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    instance_config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    for section, value in (instance_overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(instance_config.get(section), dict):
            instance_config[section] = {**instance_config[section], **value}
        else:
            instance_config[section] = value
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
    log_path = workdir / "dagster_dev.log"
    port = _free_port()
    child_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **env,
        "DAGSTER_HOME": str(home),
    }
    command = [
        str(DAGSTER_BIN),
        "dev",
        "-w",
        str(REPO_ROOT / "workspace.yaml"),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = DagsterDev(
        url=f"http://127.0.0.1:{port}", dagster_home=home, log_path=log_path, process=process
    )
    try:
        _wait_until_ready(dev, startup_timeout)
        yield dev
    finally:
        if process.poll() is None:
            dev.cancel_unfinished_backfills()
        _stop(process, stop_grace_seconds)


def _wait_until_ready(dev: DagsterDev, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        dev.check_alive()
        try:
            dev.graphql(VERSION_QUERY, timeout=5)
        except DagsterDevError as err:  # not listening yet
            last = str(err).splitlines()[0]
        else:
            # a location that fails to load raises here at once, with its error
            if any(dev.repositories().values()):
                return
            last = "webserver up, code location not loaded yet"
        time.sleep(0.5)
    raise dev.fail(f"dagster dev not ready after {timeout:.0f}s ({last})")
