"""Build the HNSW index on a checked space, with CREATE INDEX CONCURRENTLY.

Concurrently, so the table stays writable during a build that can take hours. A concurrent
build that fails or is cancelled leaves an INVALID index behind, which would block the next
attempt (same name) and slow every write: it is detected and dropped before retrying.
Above 2000 dimensions (HNSW's limit for `vector`) the index is on `col::halfvec(d)`; on a
column declared without a dimension, on `col::<storage>(d)`. A `storage: halfvec` space is
indexed as it is stored, with the opclass's halfvec twin (`halfvec_cosine_ops`). Queries
must use the same expression to use the index; `index_expression` says which.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..config import SpaceConfig
from ..db.destination import destination_of
from ..db.introspect import indexes_on_column, inspect_table, relation
from ..errors import DatabaseError
from .index_progress import BuildWatcher, InfoLogger

log = logging.getLogger(__name__)
HNSW_MAX_VECTOR_DIMS = 2000
HNSW_MAX_HALFVEC_DIMS = 4000


@dataclass(frozen=True)
class IndexResult:
    name: str
    created: bool
    dropped_invalid: list[str]
    seconds: float
    size_bytes: int
    expression: str


def index_name(space: SpaceConfig) -> str:
    """`<table>_<column>_hnsw` (of the table holding the vectors), shortened with a digest
    when it would pass 63 bytes."""
    if space.destination == "table":
        name = f"{space.vector_table_name}_hnsw"
    else:
        name = f"{space.table_name}_{space.target_column}_hnsw"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name.encode()[:50].decode(errors='ignore')}_{digest}_hnsw"


def index_expression(space: SpaceConfig, declared_dims: int) -> tuple[sql.Composable, str]:
    """The indexed expression and its opclass, and the text form for documentation."""
    dims = space.model.stored_dimensions
    opclass = space.index.opclass
    column = sql.Identifier(space.target_column)
    if dims > HNSW_MAX_HALFVEC_DIMS:
        raise DatabaseError(
            f"space {space.name!r}: HNSW supports at most {HNSW_MAX_HALFVEC_DIMS} dimensions "
            f"(as halfvec); {dims} cannot be indexed"
        )
    halfvec = space.storage == "halfvec"
    if halfvec:
        opclass = opclass.replace("vector_", "halfvec_")
    if dims > HNSW_MAX_VECTOR_DIMS and not halfvec:
        opclass = opclass.replace("vector_", "halfvec_")
        expr = sql.SQL("(({}::halfvec({})))").format(column, sql.Literal(dims))
        text = f"({space.target_column}::halfvec({dims})) {opclass}"
    elif declared_dims != dims:
        expr = sql.SQL("(({}::{}({})))").format(column, sql.SQL(space.storage), sql.Literal(dims))
        text = f"({space.target_column}::{space.storage}({dims})) {opclass}"
    else:
        expr = column
        text = f"{space.target_column} {opclass}"
    return sql.SQL("{} {}").format(expr, sql.SQL(opclass)), text


def index_definition(
    conn: psycopg.Connection, space: SpaceConfig
) -> tuple[str, sql.Composable, str]:
    """The space's index: name, indexed SQL expression with opclass, and its text form."""
    info = inspect_table(conn, space)
    target = info.target
    if target is None:
        raise DatabaseError(f"space {space.name!r}: {space.target_column} does not exist")
    expression, text = index_expression(space, target.typmod)
    return index_name(space), expression, text


def build_hnsw_index(conn: psycopg.Connection, space: SpaceConfig) -> IndexResult:
    """Create the index unless a valid one exists; `conn` must be autocommit."""
    settings = space.index
    name, expression, text = index_definition(conn, space)
    info = inspect_table(conn, space)
    assert info.vectors_oid is not None  # index_definition checked the column exists
    dropped: list[str] = []
    for existing in indexes_on_column(conn, info.vectors_oid, space.target_column):
        if not existing.valid:
            # Left by an interrupted CONCURRENTLY build: useless, and it blocks the name.
            conn.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                    sql.Identifier(space.vector_schema, existing.name)
                )
            )
            dropped.append(existing.name)
            log.warning("dropped INVALID index %s left by an interrupted build", existing.name)
    started = time.monotonic()
    existing_valid = {
        i.name for i in indexes_on_column(conn, info.vectors_oid, space.target_column)
    }
    created = name not in existing_valid
    if created:
        conn.execute(
            sql.SQL("SET maintenance_work_mem = {}").format(
                sql.Literal(settings.maintenance_work_mem)
            )
        )
        conn.execute(
            sql.SQL("SET max_parallel_maintenance_workers = {}").format(
                sql.Literal(settings.max_parallel_maintenance_workers)
            )
        )
        conn.execute(
            sql.SQL(
                "CREATE INDEX CONCURRENTLY {name} ON {t} USING hnsw ({expr})"
                " WITH (m = {m}, ef_construction = {ef})"
            ).format(
                name=sql.Identifier(name),
                t=destination_of(space).relation,
                expr=expression,
                m=sql.Literal(space.index.m),
                ef=sql.Literal(space.index.ef_construction),
            )
        )
    index = relation(conn, space.vector_schema, name)
    size = conn.execute("SELECT pg_relation_size(%s)", (index[0],)).fetchone() if index else None
    return IndexResult(
        name=name,
        created=created,
        dropped_invalid=dropped,
        seconds=time.monotonic() - started,
        size_bytes=int(size[0]) if size else 0,
        expression=text,
    )


def index_is_valid(conn: psycopg.Connection, space: SpaceConfig, name: str) -> bool:
    index = relation(conn, space.vector_schema, name)
    if index is None:
        return False
    row = conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = %s", (index[0],))
    return bool((valid := row.fetchone()) and valid[0])


#: pgvector's NOTICE when the graph outgrows maintenance_work_mem: the build goes on, slower.
_SPILL = re.compile(r"hnsw graph no longer fits into maintenance_work_mem after ([0-9]+) tuples")


@dataclass(frozen=True)
class BuildFigures:
    """What an operator wants to know after a (watched) build, for the metadata."""

    phase_seconds: dict[str, float]
    progress_samples: int
    maintenance_work_mem: str  # as the builder's session had it (SHOW)
    index_tuples: int  # pg_class.reltuples of the index after the build
    graph_spilled_after: int | None  # tuples, when the graph outgrew maintenance_work_mem

    def as_metadata(self) -> dict[str, object]:
        return {
            "phase_seconds": self.phase_seconds,
            "progress_samples": self.progress_samples,
            "maintenance_work_mem_used": self.maintenance_work_mem,
            "index_tuples": self.index_tuples,
            # pgvector's notice: the graph outgrew maintenance_work_mem and the rest of the
            # build went slower, on disk. The tuple count only when that happened.
            "graph_spilled": self.graph_spilled_after is not None,
            **(
                {"graph_spilled_after_tuples": self.graph_spilled_after}
                if self.graph_spilled_after is not None
                else {}
            ),
        }


def build_hnsw_index_watched(
    conn: psycopg.Connection,
    space: SpaceConfig,
    connect: Callable[[], psycopg.Connection],
    logger: InfoLogger,
    *,
    interval: float = 5.0,
) -> tuple[IndexResult, BuildFigures]:
    """`build_hnsw_index` while a watcher on its own connection (`connect()`) logs the
    build's progress every `interval` seconds; returns the final figures too."""
    spills: list[int] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        if match := _SPILL.search(diag.message_primary or ""):
            spills.append(int(match.group(1)))
            logger.info(
                f"index build: the graph outgrew maintenance_work_mem after "
                f"{int(match.group(1)):,} tuples; the rest builds on disk, much slower "
                "(raise index.maintenance_work_mem; `plan` says how much it needs)"
            )

    conn.add_notice_handler(on_notice)
    try:
        with BuildWatcher(connect, conn.info.backend_pid, logger, interval=interval) as watcher:
            result = build_hnsw_index(conn, space)
    finally:
        conn.remove_notice_handler(on_notice)
    mwm = conn.execute("SHOW maintenance_work_mem").fetchone()
    tuples = conn.execute(
        "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
        (sql.Identifier(space.schema_name, result.name).as_string(conn),),
    ).fetchone()
    figures = BuildFigures(
        phase_seconds=watcher.timeline.phase_seconds(),
        progress_samples=len(watcher.timeline.samples),
        maintenance_work_mem=str(mwm[0]) if mwm else "",
        index_tuples=max(int(tuples[0]), 0) if tuples and tuples[0] is not None else 0,
        graph_spilled_after=spills[0] if spills else None,
    )
    return result, figures
