"""`status`: where each space stands, from the registry, the table and Dagster.

Per space: registry state, partitions materialized out of those created, the row counts
(rows with text, vectors, missing, stale), the latest evaluation of each column check, and
the indexes on the target column. Reads only; the Dagster instance is passed in so a caller
(or a test) chooses which one.

The counts hash every row's text, so counting them all costs a scan of the table: 17 s at
1M rows, minutes at 10M. Up to `EXACT_MAX_ROWS` (by the planner's estimate) status counts
every row (`checks.column.evaluate_column`, the checks' own scan); above, it counts a
`TABLESAMPLE SYSTEM` sample of about `SAMPLE_ROWS` rows and scales it, so that it answers
in about a second whatever the size. `exact=True` (`status --exact`) always scans.

`status_frames` lays the report out as polars DataFrames (one row per space, partition,
index or check), which the CLI prints with rich or exports as CSV, Parquet or JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
import psycopg
from dagster import DagsterInstance
from psycopg import sql

from ..checks.column import evaluate_column
from ..config import SpaceConfig
from ..db.introspect import column_info, indexes_on_column, relation, space_sql, table_ident
from ..db.registry import SpaceRecord, get_space, registry_exists
from ..defs.check_history import latest_evaluations
from ..defs.checks import CHECK_NAMES
from ..defs.keys import embeddings_key
from ..defs.partitions import id_range_partitions_name
from . import NoProgress, Progress, read_only_connection
from .plan import count_outside_filter


@dataclass(frozen=True)
class CheckState:
    name: str
    state: str  # passed | failed | deferred | never evaluated
    severity: str | None
    evaluated_at: str | None  # ISO 8601, UTC

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state,
            "severity": self.severity,
            "evaluated_at": self.evaluated_at,
        }


@dataclass(frozen=True)
class IndexState:
    name: str
    valid: bool
    method: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "valid": self.valid, "method": self.method}


@dataclass
class SpaceStatus:
    space: str
    table: str
    target_column: str
    model: str
    adopted: bool
    registry: str  # building | active | retired | dropped | unregistered
    column_exists: bool = False
    partitions_total: int | None = None  # None: adopted spaces have no partitions
    partitions_done: int | None = None
    rows: int | None = None
    rows_with_text: int | None = None
    rows_outside_filter: int | None = None  # left out by the space's `where`
    embedded: int | None = None
    missing: int | None = None
    stale: int | None = None  # None: no per-row text hash (adopted column)
    checks: list[CheckState] = field(default_factory=list)
    indexes: list[IndexState] = field(default_factory=list)
    # (partition key, materialized), in key order; exported, summarised as done/total
    partitions: list[tuple[str, bool]] = field(default_factory=list)
    # how the row counts were made: "exact" (every row) or "sample" (scaled estimates)
    counted: str | None = None
    sample_percent: float | None = None  # of the table's pages, when sampled

    def as_dict(self) -> dict[str, object]:
        return {
            "space": self.space,
            "table": self.table,
            "target_column": self.target_column,
            "model": self.model,
            "adopted": self.adopted,
            "registry": self.registry,
            "column_exists": self.column_exists,
            "partitions": {"done": self.partitions_done, "total": self.partitions_total},
            "rows": {
                "total": self.rows,
                "with_text": self.rows_with_text,
                "outside_filter": self.rows_outside_filter,
                "embedded": self.embedded,
                "missing": self.missing,
                "stale": self.stale,
                "counted": self.counted,
                "sample_percent": self.sample_percent,
            },
            "checks": [c.as_dict() for c in self.checks],
            "indexes": [i.as_dict() for i in self.indexes],
        }


@dataclass
class StatusReport:
    spaces: list[SpaceStatus]

    def as_dict(self) -> dict[str, object]:
        return {"spaces": [s.as_dict() for s in self.spaces]}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def check_states(instance: DagsterInstance, space: SpaceConfig) -> list[CheckState]:
    """The newest evaluation of each column check, by evaluation time (as the gate reads)."""
    latest = latest_evaluations(instance, embeddings_key(space), CHECK_NAMES)
    states = []
    for name in CHECK_NAMES:
        evaluation = latest.get(name)
        if evaluation is None:
            states.append(CheckState(name, "never evaluated", None, None))
            continue
        state = "passed" if evaluation.passed else "deferred" if evaluation.deferred else "failed"
        states.append(CheckState(name, state, evaluation.severity, _iso(evaluation.evaluated_at)))
    return states


def partition_states(instance: DagsterInstance, space: SpaceConfig) -> list[tuple[str, bool]]:
    """Each key-range partition of `<name>/embeddings` and whether it is materialized."""
    known = sorted(instance.get_dynamic_partitions(id_range_partitions_name(space)))
    done = set(instance.get_materialized_partitions(embeddings_key(space)))
    return [(key, key in done) for key in known]


def _registry_record(conn: psycopg.Connection, space: SpaceConfig) -> SpaceRecord | None:
    return get_space(conn, space.name) if registry_exists(conn) else None


# Above this many rows (pg_class.reltuples) status samples; the checks' exact scan of 200k
# rows takes ~3 s, of a sample of 50k rows ~0.7 s (measured at 1M rows; README, Scale).
EXACT_MAX_ROWS = 200_000
SAMPLE_ROWS = 50_000


def estimated_rows(conn: psycopg.Connection, space: SpaceConfig) -> float:
    """The planner's row count of the table (-1: never vacuumed nor analysed)."""
    row = conn.execute(
        "SELECT reltuples FROM pg_class WHERE oid = %s::regclass",
        (table_ident(space).as_string(conn),),
    ).fetchone()
    return float(row[0]) if row else -1.0


def _sample_counts(
    conn: psycopg.Connection, space: SpaceConfig, percent: float, provenance: bool
) -> tuple[int, int, int, int, int | None, int]:
    """(rows, with text, vectors, missing, stale, outside the filter) of a page sample,
    scaled to the whole table. The same pages on every call (REPEATABLE): two runs of
    status differ only where the table did. Not `evaluate_column` on a sample: missing and
    stale mean the same here (the same `text_hash` join and comparisons), but the checks
    also detoast every vector for its norm and anti-join the whole destination table for
    orphans, which no sample bounds."""
    names = space_sql(space)
    stale = (
        sql.SQL(
            "count(*) FILTER (WHERE {tv} IS NOT NULL AND h.h IS NOT NULL"
            " AND {thc} IS DISTINCT FROM h.h)"
        ).format(**names)
        if provenance
        else sql.SQL("NULL::bigint")
    )
    outside = (
        sql.SQL("count(*) FILTER (WHERE NOT coalesce(({}), false))").format(
            sql.SQL(space.where)  # type: ignore[arg-type]
        )
        if space.where is not None
        else sql.SQL("0::bigint")
    )
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE h.h IS NOT NULL),"
            " count(*) FILTER (WHERE {tv} IS NOT NULL),"
            " count(*) FILTER (WHERE h.h IS NOT NULL AND {tv} IS NULL), {stale}, {outside}"
            " FROM {t} AS t TABLESAMPLE SYSTEM (%(percent)s) REPEATABLE (0)"
            " {text_hash} {vjoin}"
        ).format(stale=stale, outside=outside, **names),
        {"percent": percent},
    ).fetchone()
    assert row is not None
    scale = 100.0 / percent
    rows, with_text, vectors, missing, stale_n, outside_n = (
        None if v is None else round(int(v) * scale) for v in row
    )
    return rows, with_text, vectors, missing, stale_n, outside_n  # type: ignore[return-value]


def space_status(
    conn: psycopg.Connection,
    instance: DagsterInstance,
    space: SpaceConfig,
    exact: bool = False,
) -> SpaceStatus:
    record = _registry_record(conn, space)
    status = SpaceStatus(
        space=space.name,
        table=space.table,
        target_column=space.target_column,
        model=f"{space.model.provider}:{space.model.name} ({space.model.dimensions_label})",
        adopted=space.adopt,
        registry=record.status if record else "unregistered",
    )
    if not space.adopt:
        status.partitions = partition_states(instance, space)
        status.partitions_done = sum(done for _, done in status.partitions)
        status.partitions_total = len(status.partitions)
        status.checks = check_states(instance, space)
    table = relation(conn, space.vector_schema, space.vector_table_name)  # where vectors live
    if table is None or column_info(conn, table[0], space.target_column) is None:
        return status
    status.column_exists = True
    provenance = not space.adopt and all(
        column_info(conn, table[0], c) is not None
        for c in (space.text_hash_column, space.model_key_column)
    )
    estimate = estimated_rows(conn, space)
    if exact or estimate <= EXACT_MAX_ROWS:  # -1 (never analysed) too: no size to go by
        # The model key only decides `one_model`, which status does not show.
        column = evaluate_column(
            conn, space, record.model_key if record else 0, provenance=provenance
        )
        complete = column.verdicts["complete"].metadata
        status.rows, status.rows_with_text, status.embedded = (
            column.rows,
            column.rows_with_text,
            column.vectors,
        )
        status.rows_outside_filter = count_outside_filter(conn, space)
        status.missing = int(complete["rows_missing"])  # type: ignore[call-overload]
        status.stale = int(complete["rows_stale"]) if provenance else None  # type: ignore[call-overload]
        status.counted = "exact"
    else:
        percent = min(100.0, 100.0 * SAMPLE_ROWS / estimate)
        (
            status.rows,
            status.rows_with_text,
            status.embedded,
            status.missing,
            status.stale,
            status.rows_outside_filter,
        ) = _sample_counts(conn, space, percent, provenance)
        status.counted, status.sample_percent = "sample", round(percent, 3)
    status.indexes = [
        IndexState(i.name, i.valid, i.method)
        for i in indexes_on_column(conn, table[0], space.target_column)
    ]
    return status


def status_report(
    spaces: list[SpaceConfig],
    instance: DagsterInstance,
    *,
    database_url: str | None = None,
    progress: Progress | None = None,
    exact: bool = False,
) -> StatusReport:
    """Status of each space: one scan, or one sample, of its table (see the module doc)."""
    progress = progress or NoProgress()
    report = StatusReport([])
    with read_only_connection(database_url) as conn:
        for space in spaces:
            progress.step(f"scanning {space.table}.{space.target_column} ({space.name})")
            report.spaces.append(space_status(conn, instance, space, exact))
    return report


_SPACE_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "space": pl.String,
    "table": pl.String,
    "target_column": pl.String,
    "model": pl.String,
    "adopted": pl.Boolean,
    "registry": pl.String,
    "column_exists": pl.Boolean,
    "partitions_done": pl.Int64,
    "partitions_total": pl.Int64,
    "rows": pl.Int64,
    "rows_with_text": pl.Int64,
    "rows_outside_filter": pl.Int64,
    "embedded": pl.Int64,
    "missing": pl.Int64,
    "stale": pl.Int64,
    "counted": pl.String,
    "sample_percent": pl.Float64,
}


def status_frames(report: StatusReport) -> dict[str, pl.DataFrame]:
    """The report as four typed tables: spaces, partitions, indexes, checks. Nulls where a
    value does not apply (an adopted space has no partitions nor per-row hashes, an absent
    column no counts)."""
    spaces = pl.DataFrame(
        [{name: getattr(s, name) for name in _SPACE_SCHEMA} for s in report.spaces],
        schema=_SPACE_SCHEMA,
    )
    partitions = pl.DataFrame(
        [(s.space, key, done) for s in report.spaces for key, done in s.partitions],
        schema={"space": pl.String, "partition": pl.String, "materialized": pl.Boolean},
        orient="row",
    )
    indexes = pl.DataFrame(
        [(s.space, i.name, i.valid, i.method) for s in report.spaces for i in s.indexes],
        schema={"space": pl.String, "index": pl.String, "valid": pl.Boolean, "method": pl.String},
        orient="row",
    )
    checks = pl.DataFrame(
        [
            (s.space, c.name, c.state, c.severity, c.evaluated_at)
            for s in report.spaces
            for c in s.checks
        ],
        schema={
            "space": pl.String,
            "check": pl.String,
            "state": pl.String,
            "severity": pl.String,
            "evaluated_at": pl.String,
        },
        orient="row",
    ).with_columns(pl.col("evaluated_at").str.to_datetime(time_zone="UTC"))
    return {"spaces": spaces, "partitions": partitions, "indexes": indexes, "checks": checks}
