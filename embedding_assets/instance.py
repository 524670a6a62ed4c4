"""Dagster's own storage on PostgreSQL, with zero setup on a laptop, and a run launcher
whose dead run workers Dagster's run monitoring can see.

`dagster.yaml` names these classes. The storages are dagster-postgres's; the only addition
is where the URL comes from when none is configured: $DAGSTER_POSTGRES_URL, else a `dagster`
database next to $DATABASE_URL, else the embedded server (started on demand). So
`dagster dev`, the demo and the tests all use real Postgres storage, never SQLite.

`ProjectRunLauncher` is Dagster's DefaultRunLauncher (runs in a subprocess of the code
server) plus the health check that run monitoring needs and the default launcher lacks.
Without it a `dagster dev` killed mid-backfill leaves its runs STARTED forever: their code
server and run workers are gone, and nothing ever says so.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, DefaultRunLauncher, Field, StringSource
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.instance.ref import InstanceRef
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import CanCancelExecutionRequest, CanCancelExecutionResult
from dagster._serdes import deserialize_value
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from .config import PROJECT_ROOT
from .db.connection import dagster_storage_url

_CONFIG = {
    "postgres_url": Field(StringSource, is_required=False),
    "should_autocreate_tables": Field(bool, is_required=False, default_value=True),
}


def _url(config_value: dict[str, Any]) -> str:
    return config_value.get("postgres_url") or dagster_storage_url()


class _UrlFromProject:
    """Mixin: dagster-postgres storage whose URL may be omitted from dagster.yaml."""

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return _CONFIG

    @classmethod
    def from_config_value(cls, inst_data, config_value):  # type: ignore[no-untyped-def]
        return cls(
            _url(config_value), config_value.get("should_autocreate_tables", True), inst_data
        )  # type: ignore[call-arg]


class ProjectRunStorage(_UrlFromProject, PostgresRunStorage):
    """Runs, on PostgreSQL."""


class ProjectEventLogStorage(_UrlFromProject, PostgresEventLogStorage):
    """Event log (materializations, check evaluations), on PostgreSQL."""


class ProjectScheduleStorage(_UrlFromProject, PostgresScheduleStorage):
    """Sensor and schedule ticks, on PostgreSQL."""


# A code server that does not answer for this long is taken for dead (and its runs with it);
# shorter blips (a busy server, a network hiccup to a remote one) are not.
DEFAULT_UNREACHABLE_GRACE_SECONDS = 60
_HEALTH_TIMEOUT_SECONDS = 10


class ProjectRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher that answers run monitoring's "is this run's worker alive?".

    A run launched by the default launcher executes in a subprocess of the code server that
    launched it (recorded in the run's gRPC tag). That server knows its live executions, and
    fails a run whose subprocess died. So: the server knows the run, RUNNING; the server
    answers but no longer knows it (a new server on the same address), NOT_FOUND; the
    server does not answer for `unreachable_grace_seconds` (dagster dev was killed),
    NOT_FOUND. Run monitoring then fails the run, and run retries re-execute it.
    """

    def __init__(
        self,
        inst_data=None,  # type: ignore[no-untyped-def]
        unreachable_grace_seconds: int = DEFAULT_UNREACHABLE_GRACE_SECONDS,
    ) -> None:
        super().__init__(inst_data=inst_data)
        self.unreachable_grace_seconds = unreachable_grace_seconds
        self._unreachable_since: dict[str, float] = {}

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "unreachable_grace_seconds": Field(
                int, is_required=False, default_value=DEFAULT_UNREACHABLE_GRACE_SECONDS
            )
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value):  # type: ignore[no-untyped-def]
        return cls(inst_data, config_value.get("unreachable_grace_seconds"))

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        client = self._get_grpc_client_for_termination(run.run_id)
        if client is None:  # not launched by a code server, or finished meanwhile
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no code server recorded")
        try:
            reply = client.can_cancel_execution(
                CanCancelExecutionRequest(run_id=run.run_id), timeout=_HEALTH_TIMEOUT_SECONDS
            )
        except DagsterUserCodeUnreachableError:
            first = self._unreachable_since.setdefault(run.run_id, time.time())
            waited = time.time() - first
            if waited < self.unreachable_grace_seconds:
                return CheckRunHealthResult(
                    WorkerStatus.RUNNING, f"code server unreachable for {waited:.0f}s"
                )
            self._unreachable_since.pop(run.run_id, None)
            return CheckRunHealthResult(
                WorkerStatus.NOT_FOUND,
                f"the code server that launched this run has not answered for {waited:.0f}s; "
                "its run worker is gone (was dagster dev or the code server restarted?)",
            )
        self._unreachable_since.pop(run.run_id, None)
        if deserialize_value(reply, CanCancelExecutionResult).can_cancel:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(
            WorkerStatus.NOT_FOUND, "the code server is not executing this run any more"
        )


def project_instance() -> DagsterInstance:
    """The instance `dagster dev` would use: $DAGSTER_HOME, else the repo's dagster.yaml
    with local artifacts (compute logs) in the git-ignored `.dagster_home/`."""
    if os.environ.get("DAGSTER_HOME"):
        return DagsterInstance.get()
    home = Path(
        os.environ.get("EMBEDDING_BACKFILLS_DAGSTER_HOME") or PROJECT_ROOT / ".dagster_home"
    )
    home.mkdir(parents=True, exist_ok=True)
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home), config_dir=str(PROJECT_ROOT)))
