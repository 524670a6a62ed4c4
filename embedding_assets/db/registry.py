"""The registry of vector spaces (`embedding_backfills.vector_spaces`).

A space is registered once with its model identity; from then on its column belongs to that
identity. Applications look spaces up by table and model, never by dimension.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from ..config import SpaceConfig
from ..errors import SpaceConflictError
from ..providers import Fingerprint, ModelIdentity
from .migrations import apply_migrations


@dataclass(frozen=True)
class SpaceRecord:
    space_id: int
    name: str
    table_schema: str
    table_name: str
    column_name: str
    provider: str
    model: str
    revision: str | None
    dimensions: int
    normalize: bool
    model_key: int
    fingerprint: dict[str, object]
    status: str
    index_name: str | None
    row_count: int | None
    created_at: datetime
    validated_at: datetime | None
    activated_at: datetime | None
    retired_at: datetime | None
    # added by sql/002; defaults keep records readable before it is applied
    index_expression: str | None = None
    backup_path: str | None = None
    backed_up_at: datetime | None = None
    dropped_at: datetime | None = None
    # added by sql/003
    adopted: bool = False
    adoption_report: dict[str, object] | None = None
    # added by sql/005: the latest drift verdict (see `record_drift_verdict`)
    drift_status: str | None = None  # 'ok' | 'failed'; None: never checked
    drift_checked_at: datetime | None = None
    drift_status_since: datetime | None = None
    drift_failures: list[str] | None = None
    drift_detail: str | None = None
    # added by sql/008: where the vector column lives (see db.destination)
    destination: str = "column"
    vector_schema: str | None = None
    vector_table: str | None = None
    # added by sql/011
    storage: str = "vector"
    # added by sql/012: the model's own dimension when `dimensions` is a prefix of it
    truncated_from: int | None = None

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(
            self.provider,
            self.model,
            self.revision,
            self.dimensions,
            self.normalize,
            self.truncated_from,
        )

    @property
    def trusted(self) -> bool:
        """As in `active_spaces.trusted`: false only when the latest drift verdict failed."""
        return self.drift_status != DRIFT_FAILED


_SELECT = "SELECT * FROM embedding_backfills.vector_spaces"

DRIFT_OK = "ok"
DRIFT_FAILED = "failed"
DRIFT_DETAIL_MAX_CHARS = 500

_RECORD_DRIFT = (
    "UPDATE embedding_backfills.vector_spaces SET"
    " drift_status_since = CASE WHEN drift_status IS DISTINCT FROM %(status)s THEN now()"
    "  ELSE drift_status_since END,"
    " drift_status = %(status)s, drift_checked_at = now(),"
    " drift_failures = %(failures)s::text[], drift_detail = %(detail)s"
    " WHERE space_id = %(space_id)s"
)


def get_space(conn: psycopg.Connection, name: str) -> SpaceRecord | None:
    with conn.cursor(row_factory=class_row(SpaceRecord)) as cur:
        return cur.execute(_SELECT + " WHERE name = %s", (name,)).fetchone()


def spaces_of_table(conn: psycopg.Connection, schema: str, table: str) -> list[SpaceRecord]:
    """Every space of a table, newest first."""
    if not registry_exists(conn):
        return []
    with conn.cursor(row_factory=class_row(SpaceRecord)) as cur:
        return cur.execute(
            _SELECT + " WHERE table_schema = %s AND table_name = %s ORDER BY space_id DESC",
            (schema, table),
        ).fetchall()


def get_space_for_column(conn: psycopg.Connection, space: SpaceConfig) -> SpaceRecord | None:
    with conn.cursor(row_factory=class_row(SpaceRecord)) as cur:
        return cur.execute(
            _SELECT + " WHERE table_schema = %s AND table_name = %s AND column_name = %s",
            (space.schema_name, space.table_name, space.target_column),
        ).fetchone()


def registry_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('embedding_backfills.vector_spaces')").fetchone()
    return bool(row and row[0])


def check_registration(
    conn: psycopg.Connection, space: SpaceConfig, identity: ModelIdentity
) -> SpaceRecord | None:
    """Raise if the name or the column is registered to something else; read-only."""
    if not registry_exists(conn):
        return None
    for record in (get_space_for_column(conn, space), get_space(conn, space.name)):
        if record is None:
            continue
        where = f"{record.table_schema}.{record.table_name}.{record.column_name}"
        if record.status == "dropped":
            raise SpaceConflictError(
                f"space {record.name!r} ({where}) was dropped by retention; build the model "
                "again as a new space (new name, new target_column)"
            )
        if record.name != space.name:
            raise SpaceConflictError(
                f"column {where} already belongs to vector space {record.name!r} "
                f"({record.identity.label()}); give space {space.name!r} a new target_column"
            )
        if (record.table_schema, record.table_name, record.column_name) != (
            space.schema_name,
            space.table_name,
            space.target_column,
        ):
            raise SpaceConflictError(
                f"space {space.name!r} is registered for column {where}, not "
                f"{space.table}.{space.target_column}; use a new space name for a new column"
            )
        if (record.destination, record.vector_schema, record.vector_table) != (
            space.destination,
            space.vector_schema,
            space.vector_table_name,
        ) and record.vector_schema is not None:
            raise SpaceConflictError(
                f"space {space.name!r} is registered with its vectors in "
                f"{record.vector_schema}.{record.vector_table} (destination "
                f"{record.destination}), not {space.vector_schema}.{space.vector_table_name} "
                f"(destination {space.destination}); a space's vectors do not move: restore "
                "`destination` / `destination_table`, or build a new space"
            )
        if record.storage != space.storage:
            raise SpaceConflictError(
                f"space {space.name!r} ({where}) stores {record.storage}, but the configuration "
                f"now says `storage: {space.storage}`; a space's storage is part of its "
                "identity: restore it, or build a new space (new name, new target_column)"
            )
        if record.truncated_from != identity.truncated_from:
            stored = _truncation(record.dimensions, record.truncated_from)
            now = _truncation(identity.dimensions, identity.truncated_from)
            raise SpaceConflictError(
                f"space {space.name!r} ({where}) stores {stored}, but the configuration now "
                f"gives {now}; a space's truncation is part of its identity: restore "
                "model.dimensions / truncate_dimensions, or build a new space (new name, new "
                "target_column)"
            )
        if record.model_key != identity.key:
            raise SpaceConflictError(
                f"space {space.name!r} ({where}) was registered for {record.identity.label()}, "
                f"but the configuration now says {identity.label()}. A column holds one "
                "vector space: declare a new space with a new target_column for the new model"
            )
    return get_space(conn, space.name)


def _truncation(dimensions: int, truncated_from: int | None) -> str:
    if truncated_from is None:
        return f"the full {dimensions}-dimensional vectors"
    return f"the first {dimensions} of {truncated_from} dimensions"


def register_space(
    conn: psycopg.Connection,
    space: SpaceConfig,
    identity: ModelIdentity,
    fingerprint: Fingerprint,
) -> SpaceRecord:
    """Insert the space as `building`, or return the existing matching record."""
    existing = check_registration(conn, space, identity)
    if existing is not None:
        return existing
    conn.execute(
        "INSERT INTO embedding_backfills.vector_spaces"
        " (name, table_schema, table_name, column_name, provider, model, revision, dimensions,"
        "  normalize, model_key, fingerprint, status, destination, vector_schema, vector_table,"
        "  storage, truncated_from)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'building', %s, %s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING",
        (
            space.name,
            space.schema_name,
            space.table_name,
            space.target_column,
            identity.provider,
            identity.model,
            identity.revision,
            identity.dimensions,
            identity.normalize,
            identity.key,
            Jsonb(fingerprint.to_json()),
            space.destination,
            space.vector_schema,
            space.vector_table_name,
            space.storage,
            identity.truncated_from,
        ),
    )
    # A concurrent registration of the same space is fine; of another one, it is caught here.
    record = check_registration(conn, space, identity)
    assert record is not None
    return record


def record_drift_verdict(
    conn: psycopg.Connection, space_id: int, failures: Mapping[str, str]
) -> None:
    """Store the latest drift verdict where applications look the space up.

    `failures` maps each failing check to a short reason (empty: every check passed). A
    swapped model leaves the space `active`; this verdict, shown by `active_spaces` and
    `active_column(...)`, is what lets an application refuse to embed its queries with it.
    One single-row UPDATE per evaluation (a drift tick every few minutes): `drift_checked_at`
    always moves, `drift_status_since` only when the status changes.
    """
    detail = "; ".join(f"{name}: {reason}" for name, reason in failures.items())
    params = {
        "space_id": space_id,
        "status": DRIFT_FAILED if failures else DRIFT_OK,
        "failures": list(failures),
        "detail": detail[:DRIFT_DETAIL_MAX_CHARS] or None,
    }
    try:
        with conn.transaction():  # a savepoint when the caller is inside a transaction
            conn.execute(_RECORD_DRIFT, params)
    except psycopg.errors.UndefinedColumn:
        # A registry created before sql/005 (the code was upgraded, no space built since).
        apply_migrations(conn)
        with conn.transaction():
            conn.execute(_RECORD_DRIFT, params)
