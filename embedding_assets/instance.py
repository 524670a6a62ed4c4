"""Dagster's own storage on PostgreSQL, with zero setup on a laptop.

`dagster.yaml` names these classes. They are dagster-postgres's storages; the only addition
is where the URL comes from when none is configured: $DAGSTER_POSTGRES_URL, else a `dagster`
database next to $DATABASE_URL, else the embedded server (started on demand). So
`dagster dev`, the demo and the tests all use real Postgres storage, never SQLite.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, Field, StringSource
from dagster._core.instance.ref import InstanceRef
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
