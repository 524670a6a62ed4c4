"""`plan`: what building a space would do, and cost, before anything is written.

Runs the read-only validations of `<name>/target_column` (pgvector, table, key, text,
target column, index, registry, fingerprint) against the live database and counts the
work: rows, empty rows, rows already done (the writer's own definition, `page_query`),
partitions, batches, tokens, money, time and disk. Every statement runs in a READ ONLY
transaction: no extension, migration, column, registry row or Dagster event is created.

Time comes from embedding a short sample of real rows with the configured provider (for
a hosted model, that sample is sent to the endpoint and billed: `sample_size=0` skips it).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql

from ..config import ModelConfig, SpaceConfig
from ..db.introspect import TableInfo, inspect_table, space_sql, table_ident
from ..db.keys import KeyType
from ..db.migrations import check_pgvector
from ..db.registry import SpaceRecord, check_registration, registry_exists
from ..errors import ConfigError, EmbeddingBackfillError
from ..pipeline.partitions import ALL_KEYS, partition_of, recorded_ranges
from ..pipeline.reader import done_predicate, page_query
from ..pipeline.target import check_fingerprint, indexes_blocking_writes
from ..providers import SENTINEL_TEXTS, EmbeddingProvider, build_provider
from ..providers.openai_batch import COMPLETION_WINDOW_HOURS, MAX_INPUTS_PER_BATCH
from . import NoProgress, Progress, read_only_connection
from .endpoint import Endpoint, endpoint_of
from .index_estimate import IndexEstimate, estimate_index
from .storage import StorageEstimate, estimate_storage
from .tokens import token_counter

# The Batch API bills half the list price.
BATCH_PRICE_FACTOR = 0.5
# List prices in USD per 1M input tokens (OpenAI, 2025). Check the pricing page before
# trusting a large estimate; an unlisted hosted model is reported as unknown, not free.
PRICES_USD_PER_MILLION_TOKENS: dict[str, float] = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
}
DEFAULT_TIME_SAMPLE = 64
DEFAULT_TOKEN_SAMPLE = 2000
# TABLESAMPLE REPEATABLE seed: the same rows every time, so estimates move only with the data
_SAMPLE_SEED = 4242


@dataclass(frozen=True)
class Finding:
    """One validation: passed or not, and what it found (never row text)."""

    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class RowCounts:
    rows: int
    empty: int  # NULL or blank text, or outside the `where` filter: never embedded
    done: int  # vector present, same text hash, same model key: skipped
    partitions: int  # recorded key ranges (estimated as rows / partition_size before)
    partitions_to_run: int  # of those, ranges holding at least one row to embed
    outside_filter: int = 0  # of the empty rows, those outside the `where` filter

    @property
    def to_embed(self) -> int:
        return self.rows - self.empty - self.done


@dataclass(frozen=True)
class TokenEstimate:
    total: int
    per_row: float
    method: str  # which tokenizer, or "approximate ..."
    exact_tokenizer: bool
    counted_rows: int  # rows whose tokens were counted
    extrapolated: bool  # counted on a random sample, scaled to every row to embed

    def as_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "per_row": round(self.per_row, 2),
            "method": self.method,
            "exact_tokenizer": self.exact_tokenizer,
            "counted_rows": self.counted_rows,
            "extrapolated": self.extrapolated,
        }


@dataclass(frozen=True)
class CostEstimate:
    usd: float | None  # None: unknown price
    usd_per_million_tokens: float | None
    basis: str

    def as_dict(self) -> dict[str, object]:
        return {
            "usd": self.usd,
            "usd_per_million_tokens": self.usd_per_million_tokens,
            "basis": self.basis,
        }


@dataclass(frozen=True)
class TimeEstimate:
    sample_rows: int
    sample_seconds: float
    rows_per_second: float  # what one run is expected to reach (see `bound`)
    seconds: float  # embedding time for every row to embed, one run at a time
    measured_rows_per_second: float = 0.0  # the sample, one request at a time
    in_flight: int = 1  # requests one run keeps in flight (model.max_concurrent_requests)
    # what sets rows_per_second: "measured" (one request at a time), "requests in flight"
    # (measured x in_flight), or the budget that caps it: "tokens_per_minute",
    # "requests_per_minute" (shared by every run of the endpoint)
    bound: str = "measured"

    def as_dict(self) -> dict[str, object]:
        return {
            "sample_rows": self.sample_rows,
            "sample_seconds": round(self.sample_seconds, 4),
            "rows_per_second": round(self.rows_per_second, 2),
            "seconds": round(self.seconds, 3),
            "measured_rows_per_second": round(self.measured_rows_per_second, 2),
            "in_flight": self.in_flight,
            "bound": self.bound,
        }


@dataclass(frozen=True)
class BatchTurnaround:
    """`model.mode: batch`: the backfill waits on the provider's queue, not on a rate.

    Each run packs its rows into batches of at most MAX_INPUTS_PER_BATCH inputs, submits
    them all, then waits; OpenAI finishes each batch within its completion window (24 h),
    usually sooner. So the wall time is about the turnaround times the waves of runs the
    endpoint's pool lets run at once, whatever `TimeEstimate` measured online.
    """

    runs: int  # backfill runs: partitions to run / partitions_per_run
    batches: int  # at least: each run's rows, MAX_INPUTS_PER_BATCH to a batch
    inputs_per_batch: int = MAX_INPUTS_PER_BATCH
    completion_window_hours: int = COMPLETION_WINDOW_HOURS

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def batch_turnaround(space: SpaceConfig, counts: RowCounts) -> BatchTurnaround | None:
    if space.model.mode != "batch" or counts.to_embed == 0:
        return None
    runs = max(1, math.ceil(counts.partitions_to_run / space.partitions_per_run))
    per_run = math.ceil(counts.to_embed / runs)
    return BatchTurnaround(runs, runs * math.ceil(per_run / MAX_INPUTS_PER_BATCH))


@dataclass
class PlanReport:
    space: str
    table: str
    target_column: str
    model: str
    endpoint: Endpoint
    batch_size: int
    pgvector: str | None = None  # installed version
    findings: list[Finding] = field(default_factory=list)
    counts: RowCounts | None = None
    tokens: TokenEstimate | None = None
    cost: CostEstimate | None = None
    time: TimeEstimate | None = None
    storage: StorageEstimate | None = None
    index: IndexEstimate | None = None
    turnaround: BatchTurnaround | None = None  # model.mode: batch

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def batches(self) -> int | None:
        return None if self.counts is None else math.ceil(self.counts.to_embed / self.batch_size)

    def as_dict(self) -> dict[str, object]:
        c = self.counts
        return {
            "space": self.space,
            "table": self.table,
            "target_column": self.target_column,
            "model": self.model,
            "endpoint": self.endpoint.as_dict(),
            "ok": self.ok,
            "pgvector": self.pgvector,
            "findings": [f.as_dict() for f in self.findings],
            "rows": None if c is None else c.rows,
            "rows_empty": None if c is None else c.empty,
            "rows_outside_filter": None if c is None else c.outside_filter,
            "rows_done": None if c is None else c.done,
            "rows_to_embed": None if c is None else c.to_embed,
            "partitions": None if c is None else c.partitions,
            "partitions_to_run": None if c is None else c.partitions_to_run,
            "batch_size": self.batch_size,
            "batches": self.batches,
            "tokens": None if self.tokens is None else self.tokens.as_dict(),
            "cost": None if self.cost is None else self.cost.as_dict(),
            "time": None if self.time is None else self.time.as_dict(),
            "storage": None if self.storage is None else self.storage.as_dict(),
            "index": None if self.index is None else self.index.as_dict(),
            "batch_turnaround": None if self.turnaround is None else self.turnaround.as_dict(),
        }


def _pgvector_finding(conn: psycopg.Connection) -> tuple[Finding, str | None]:
    """Installed version; else whether this role could create it (as target_column would)."""
    try:
        version = check_pgvector(conn)
    except EmbeddingBackfillError as err:
        return Finding("pgvector", False, str(err)), None
    if version is not None:
        return Finding("pgvector", True, f"pgvector {version} installed"), version
    row = conn.execute(
        "SELECT v.version, v.superuser, v.trusted,"
        " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
        " has_database_privilege(current_database(), 'CREATE')"
        " FROM pg_available_extensions a JOIN pg_available_extension_versions v"
        " ON v.name = a.name AND v.version = a.default_version WHERE a.name = 'vector'"
    ).fetchone()
    assert row is not None  # check_pgvector raised if it is not available at all
    available, needs_superuser, trusted, is_superuser, may_create = row
    can_create = bool(is_superuser) or (bool(may_create) and (trusted or not needs_superuser))
    missing = f"pgvector is not installed in this database (the server has {available})"
    if can_create:
        return Finding(
            "pgvector",
            True,
            f"{missing}; this role may create it: target_column will run CREATE EXTENSION vector",
        ), None
    return Finding(
        "pgvector",
        False,
        f"{missing} and this role may not create it; ask an administrator to run "
        "CREATE EXTENSION vector in this database",
    ), None


def _table_findings(space: SpaceConfig, info: TableInfo) -> list[Finding]:
    key = info.key
    text = (
        f"text_column {space.text_column}"
        if space.text_column
        else "text_sql is a valid expression"
    )
    dims = space.model.stored_dimensions
    if info.target is None and space.destination == "table":
        target = (
            f"{space.vector_schema}.{space.vector_table_name} absent: target_column creates it "
            f"({space.vector_key_column}, {space.target_column} {space.storage}({dims}),"
            " provenance); "
            f"{space.table} is not altered"
        )
    elif info.target is None:
        target = (
            f"{space.target_column} absent: target_column adds vector({dims}) "
            f"and {space.text_hash_column}, {space.model_key_column}"
        )
    else:
        provenance = "present" if info.provenance_present else "to be added"
        target = (
            f"{space.target_column} exists as {info.target.formatted} (fits the space); "
            f"provenance columns {provenance}"
        )
    return [
        Finding("table", True, f"{space.table} exists"),
        Finding(
            "key",
            True,
            f"{key.column} {key.formatted}, unique"
            + (f" (compared in collation {key.collation})" if key.collation else ""),
        ),
        Finding("text", True, text),
        Finding("target_column", True, target),
    ]


def _rows_subquery(space: SpaceConfig, key: KeyType, provenance: bool) -> sql.Composable:
    """(id, text, non-null when there is text, done, has_vector) for every row.

    With provenance columns this is the reader's `page_query`, so "done" here is exactly
    what a run will skip. Without them (column not added yet) no row is done; emptiness
    comes from the same shared text-hash join either way.
    """
    if provenance:
        return page_query(space, key, ALL_KEYS, True)
    return sql.SQL("SELECT t.{id}, x.txt, h.h, false, false FROM {t} AS t {text_hash}").format(
        **space_sql(space)
    )


def count_rows(
    conn: psycopg.Connection, space: SpaceConfig, key: KeyType, provenance: bool, model_key: int
) -> RowCounts:
    """Exact counts in one scan (it hashes every text, like the checks).

    Before `target_column` laid out the partitions their number is estimated (rows /
    partition_size, as the layout will cut them); afterwards each row to embed is mapped to
    its recorded partition (one probe of the small layout table per such row).
    """
    ranges = recorded_ranges(conn, space)
    to_run = (
        sql.SQL("count(DISTINCT {}) FILTER (WHERE r.h IS NOT NULL AND r.done IS NOT TRUE)").format(
            partition_of(key, space, sql.SQL("r.id"))
        )
        if ranges
        else sql.SQL("NULL::bigint")
    )
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE r.h IS NULL),"
            " count(*) FILTER (WHERE r.done IS TRUE), {to_run}"
            " FROM ({rows}) AS r(id, txt, h, done, has_vector)"
        ).format(to_run=to_run, rows=_rows_subquery(space, key, provenance)),
        {"key": model_key, "limit": None},
    ).fetchone()
    assert row is not None
    rows, empty, done, to_run_count = row
    partitions = len(ranges) if ranges else max(1, -(-int(rows) // space.partition_size))
    work = int(rows) - int(empty) - int(done)
    return RowCounts(
        int(rows),
        int(empty),
        int(done),
        partitions,
        int(to_run_count) if to_run_count is not None else (partitions if work else 0),
        count_outside_filter(conn, space),
    )


def count_outside_filter(conn: psycopg.Connection, space: SpaceConfig) -> int:
    """Rows the space's `where` leaves out (counted among the empty ones too)."""
    if space.where is None:
        return 0
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} AS t WHERE NOT coalesce(({}), false)").format(
            table_ident(space),
            sql.SQL(space.where),  # type: ignore[arg-type]
        )
    ).fetchone()
    return int(row[0]) if row else 0


def sample_texts(
    conn: psycopg.Connection,
    space: SpaceConfig,
    provenance: bool,
    model_key: int,
    n: int,
    to_embed: int,
) -> list[str]:
    """Up to `n` texts of rows a run would embed, the same rows on every call.

    `TABLESAMPLE SYSTEM` reads only the sampled pages (three times the share needed, as not
    every row there needs embedding): the count above already hashed the whole table once.
    A sample that finds nothing (a small or mostly done table) is retried on every page.
    """
    done = done_predicate(space) if provenance else sql.SQL("false")
    query = sql.SQL(
        "SELECT x.txt FROM {t} AS t TABLESAMPLE SYSTEM (%(percent)s) REPEATABLE (%(seed)s)"
        " {text_hash} {vjoin} WHERE h.h IS NOT NULL AND NOT ({done}) LIMIT %(n)s"
    ).format(
        done=done,
        # before target_column ran, a destination table may not exist yet: nothing to join
        **{**space_sql(space), **({} if provenance else {"vjoin": sql.SQL("")})},
    )
    percent = 100.0 if to_embed <= n else min(100.0, 300.0 * n / to_embed)
    params = {"key": model_key, "seed": _SAMPLE_SEED, "n": n}
    texts = [r[0] for r in conn.execute(query, {**params, "percent": percent})]
    if not texts and percent < 100:
        texts = [r[0] for r in conn.execute(query, {**params, "percent": 100.0})]
    return texts


def table_bytes(conn: psycopg.Connection, table_oid: int) -> int:
    """Heap and TOAST bytes (no indexes): what a vacuum pass after the backfill re-logs."""
    row = conn.execute("SELECT pg_table_size(%s::oid)", (table_oid,)).fetchone()
    return int(row[0]) if row else 0


def max_wal_size_bytes(conn: psycopg.Connection) -> int:
    """The server's max_wal_size: how much WAL starts a checkpoint."""
    row = conn.execute("SELECT pg_size_bytes(current_setting('max_wal_size'))").fetchone()
    return int(row[0]) if row else 0


def heap_bytes_per_row(conn: psycopg.Connection, table_oid: int, rows: int) -> int:
    row = conn.execute("SELECT pg_relation_size(%s::oid)", (table_oid,)).fetchone()
    return int(row[0]) // rows if row and rows else 0


def estimate_cost(model: ModelConfig, endpoint: Endpoint, tokens: int | None) -> CostEstimate:
    """Local and self-hosted endpoints bill nothing per token; hosted ones at list price."""
    if endpoint.kind != "public-cloud":
        where = "in-process model" if endpoint.host == "in-process" else "self-hosted endpoint"
        return CostEstimate(0.0, 0.0, f"{where}: no per-token price")
    price = PRICES_USD_PER_MILLION_TOKENS.get(model.name)
    if price is None:
        return CostEstimate(None, None, f"unknown: no list price for {model.name!r}")
    basis = "list price"
    if model.mode == "batch":
        price, basis = price * BATCH_PRICE_FACTOR, "Batch API price"
    usd = None if tokens is None else tokens * price / 1_000_000
    return CostEstimate(usd, price, f"{basis} {price:g} USD per 1M tokens")


def measure_throughput(
    provider: EmbeddingProvider,
    texts: list[str],
    batch_size: int,
    rows_to_embed: int,
    model: ModelConfig | None = None,
    tokens_per_row: float | None = None,
) -> TimeEstimate:
    """Embed `texts` in batch_size calls after one warm-up call; extrapolate to every row.

    The sample goes one request at a time (a plan must not spend much of a hosted budget),
    but a run keeps `provider.concurrency` requests in flight: the run's rate is the
    measured one times that, assuming the endpoint serves them (measured: 7.9x at 8 in
    flight, `benchmarks/hosted_throughput.py`), and no more than the endpoint's configured
    `tokens_per_minute` and `requests_per_minute` allow.
    """
    provider.embed(SENTINEL_TEXTS[:1])  # first-call costs (connection, lazy init) excluded
    started = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        provider.embed(texts[i : i + batch_size])
    seconds = max(time.perf_counter() - started, 1e-9)
    measured = len(texts) / seconds
    in_flight = max(1, provider.concurrency)
    rate, bound = measured * in_flight, "measured" if in_flight == 1 else "requests in flight"
    caps: list[tuple[float, str]] = []
    if model is not None and model.tokens_per_minute and tokens_per_row:
        caps.append((model.tokens_per_minute / 60 / tokens_per_row, "tokens_per_minute"))
    if model is not None and model.requests_per_minute:
        rows_per_request = min(batch_size, model.max_inputs_per_request)
        caps.append((model.requests_per_minute / 60 * rows_per_request, "requests_per_minute"))
    for cap, name in caps:
        if cap < rate:
            rate, bound = cap, name
    return TimeEstimate(len(texts), seconds, rate, rows_to_embed / rate, measured, in_flight, bound)


def plan_space(
    space: SpaceConfig,
    *,
    database_url: str | None = None,
    sample_size: int = DEFAULT_TIME_SAMPLE,
    token_sample: int = DEFAULT_TOKEN_SAMPLE,
    progress: Progress | None = None,
) -> PlanReport:
    """Validate `space` against the live database and estimate its backfill; writes nothing."""
    progress = progress or NoProgress()
    if space.adopt:
        raise ConfigError(
            f"space {space.name!r} is adopted (adopt: true): it writes no vectors, so there "
            f"is no backfill to plan; {space.name}/adoption re-embeds "
            f"{space.adoption.sample_size} sampled rows to verify the column"
        )
    report = PlanReport(
        space=space.name,
        table=space.table,
        target_column=space.target_column,
        model=f"{space.model.provider}:{space.model.name} ({space.model.dimensions_label})",
        endpoint=endpoint_of(space.model),
        batch_size=space.batch_size,
    )
    progress.step("loading the model")
    provider: EmbeddingProvider | None = None
    try:
        provider = build_provider(space.model)
        report.model = provider.identity.label()
        report.findings.append(Finding("model", True, f"{report.model} loaded"))
    except EmbeddingBackfillError as err:
        report.findings.append(Finding("model", False, str(err)))
    try:
        texts = _validate_and_count(
            space, report, provider, database_url, max(token_sample, sample_size), progress
        )
        _estimate(space, report, provider, texts, sample_size, progress)
    finally:
        if provider is not None:
            provider.close()
    return report


def _validate_and_count(
    space: SpaceConfig,
    report: PlanReport,
    provider: EmbeddingProvider | None,
    database_url: str | None,
    sample_rows: int,
    progress: Progress,
) -> list[str]:
    """The database half: findings, counts, storage, and the texts to sample."""
    findings = report.findings
    with read_only_connection(database_url) as conn:
        progress.step("validating the database")
        finding, report.pgvector = _pgvector_finding(conn)
        findings.append(finding)
        try:
            info = inspect_table(conn, space)
        except EmbeddingBackfillError as err:
            findings.append(Finding("table", False, str(err)))
            return []
        findings.extend(_table_findings(space, info))

        record: SpaceRecord | None = None
        if provider is not None:
            try:
                record = check_registration(conn, space, provider.identity)
                state = (
                    f"registered as {record.status}, same model"
                    if record
                    else "not registered: target_column registers it as building"
                    + ("" if registry_exists(conn) else " (after creating the registry schema)")
                )
                findings.append(Finding("registry", True, state))
            except EmbeddingBackfillError as err:
                findings.append(Finding("registry", False, str(err)))
        if record is not None and provider is not None:
            progress.step("comparing the model's fingerprint")
            try:
                check_fingerprint(space, record, provider.fingerprint())
                findings.append(Finding("fingerprint", True, "matches the registered one"))
            except EmbeddingBackfillError as err:
                findings.append(Finding("fingerprint", False, str(err)))
        if info.target is not None:
            blocking = indexes_blocking_writes(conn, space, info.oid, record)
            findings.append(
                Finding(
                    "index",
                    not blocking,
                    f"index {', '.join(blocking)} on the target column blocks the backfill "
                    "(drop it, or materialize target_column with drop_index: true)"
                    if blocking
                    else "no index blocks writes to the target column",
                )
            )

        provenance = info.target is not None and info.provenance_present
        key = provider.identity.key if provider is not None else 0
        if provenance and provider is None:
            return []  # without the model's key, "done" cannot be decided
        progress.step("counting rows (one scan of the table)")
        try:
            report.counts = count_rows(conn, space, info.key, provenance, key)
        except EmbeddingBackfillError as err:
            findings.append(Finding("partitions", False, str(err)))
            return []
        # The index holds every row with text, embedded now or before.
        indexed = report.counts.rows - report.counts.empty
        report.index = estimate_index(
            indexed, space.model.stored_dimensions, space.index, space.storage
        )
        report.storage = estimate_storage(
            report.counts.to_embed,
            space.model.stored_dimensions,
            heap_bytes_per_row(conn, info.oid, report.counts.rows),
            table_bytes(conn, info.oid),
            destination=space.destination,
            storage=space.storage,
            key_bytes={"integer": 8, "uuid": 16}.get(info.key.kind, 24),
            max_wal_size_bytes=max_wal_size_bytes(conn),
        )
        progress.step("sampling texts to count tokens")
        return sample_texts(conn, space, provenance, key, sample_rows, report.counts.to_embed)


def _estimate(
    space: SpaceConfig,
    report: PlanReport,
    provider: EmbeddingProvider | None,
    texts: list[str],
    sample_size: int,
    progress: Progress,
) -> None:
    """The model half: tokens, cost and time from the sampled texts (which stay here)."""
    counts = report.counts
    if counts is None:
        return
    counter = token_counter(space.model, provider)
    if counter is not None:
        if texts:
            progress.step(f"counting tokens of {len(texts):,} rows")
            per_row = sum(counter.count(texts)) / len(texts)
        else:
            per_row = 0.0
        extrapolated = len(texts) < counts.to_embed
        report.tokens = TokenEstimate(
            round(per_row * counts.to_embed),
            per_row,
            counter.method,
            counter.exact,
            len(texts),
            extrapolated,
        )
    report.cost = estimate_cost(
        space.model, report.endpoint, report.tokens.total if report.tokens else None
    )
    report.turnaround = batch_turnaround(space, counts)
    sample = texts[:sample_size]
    if provider is None or not sample:
        return
    progress.step(f"embedding a sample of {len(sample)} rows to time the model")
    try:
        report.time = measure_throughput(
            provider,
            sample,
            space.batch_size,
            counts.to_embed,
            space.model,
            report.tokens.per_row if report.tokens else None,
        )
    except EmbeddingBackfillError as err:
        report.findings.append(Finding("model", False, str(err)))
