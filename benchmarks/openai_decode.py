"""Decoding embeddings responses: the client's parsed objects vs the raw base64 body.

Against a fast endpoint most of the main thread's time went into the openai client call:
pydantic response objects, base64 decoded to Python float lists, then one numpy array per
item. The provider now asks for base64 and decodes the raw body into one array per
response. Both paths run here, in one run, against tests/openai_server.py
(FakeEmbeddingsServer on 127.0.0.1, in a child process so its JSON encoding does not share
the GIL with the client being measured):

1. `old: parsed objects`: `client.embeddings.create(...)` (the client asks for base64 and
   turns it into float lists), `np.asarray` per item, `check_vectors` — the previous
   provider's path, kept here as the baseline.
2. `new: raw base64`: `OpenAIProvider.embed` (normalize off), the whole public path,
   including the token fitting of every input.
3. `new: float-list server`: the same against a server that ignores `encoding_format`
   (some OpenAI-compatible servers do); for reference, its JSON floats cost both sides.

Last, the token fitting every `embed` now does (cl100k_base, cut at max_input_tokens):
tokens/s over `--fit-rows` rows of ~600 bytes of mixed text, best of 5.

Each path sends `--requests` requests of `--batch` inputs at `--dims` dimensions, after
`--warmup` untimed ones. Printed: rows/s (wall clock) and the client's main-thread CPU per
request (`time.thread_time`), then the new/old ratios. A measurement, not a test: exits 0.

Run: `.venv/bin/python benchmarks/openai_decode.py [--requests 40] [--batch 128] [--dims 1536]`
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from openai_server import FakeEmbeddingsServer

from embedding_assets.config import ModelConfig
from embedding_assets.providers.base import ModelIdentity, check_vectors
from embedding_assets.providers.openai import OpenAIProvider

MODEL = "text-embedding-3-small"


@dataclass(frozen=True)
class Timing:
    label: str
    rows: int
    wall: float  # seconds
    cpu: float  # main-thread CPU seconds

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall


def serve(dims: int, floats: bool, port_out: Connection, stop: Event) -> None:
    """Child process: the fake endpoint until told to stop."""
    with FakeEmbeddingsServer(dims=dims, ignore_encoding_format=floats) as server:
        port_out.send(server.base_url)
        stop.wait()


def old_path(client: openai.OpenAI, texts: list[str], identity: ModelIdentity) -> np.ndarray:
    """The previous provider: the client's parsed objects, one np.asarray per item."""
    response = client.embeddings.create(model=MODEL, input=texts, dimensions=identity.dimensions)
    by_index = {d.index: d for d in response.data}
    rows = [np.asarray(by_index[i].embedding, dtype=np.float32) for i in range(len(texts))]
    return check_vectors(np.vstack(rows), len(texts), identity)


def timed(label: str, call: Callable[[], object], requests: int, warmup: int, rows: int) -> Timing:
    for _ in range(warmup):
        call()
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(requests):
        call()
    return Timing(label, rows * requests, time.perf_counter() - wall, time.thread_time() - cpu)


def fitting_rate(provider: OpenAIProvider, n_rows: int) -> tuple[float, int]:
    """Best-of-5 seconds to fit `n_rows` ~600-byte rows, and their tokens."""
    rng = random.Random(0)
    vocabulary = ["vector", "PostgreSQL", "embedding", "Zażółć", "東京", "😀", "2026-11-05", "a,b"]
    rows = []
    for _ in range(n_rows):
        row = ""
        while len(row.encode()) < 600:
            row += rng.choice(vocabulary) + " "
        rows.append(row)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        fitted = [provider.token_rules.fit(r, provider.max_tokens) for r in rows]
        best = min(best, time.perf_counter() - started)
    return best, sum(f.tokens for f in fitted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dims", type=int, default=1536)
    parser.add_argument("--fit-rows", type=int, default=1000)
    args = parser.parse_args()

    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    texts = [
        f"row {i}: a paragraph of about a hundred bytes of text, topic {i % 7}"
        for i in range(args.batch)
    ]
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    urls: dict[bool, str] = {}
    children = []
    for floats in (False, True):
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=serve, args=(args.dims, floats, send, stop), daemon=True)
        child.start()
        children.append(child)
        urls[floats] = receive.recv()

    def provider(base_url: str) -> OpenAIProvider:
        config = ModelConfig(
            provider="openai",
            name=MODEL,
            dimensions=args.dims,
            base_url=base_url,
            api_key_env="OPENAI_DECODE_BENCH_KEY",
            normalize=False,
            max_retries=0,
        )
        return OpenAIProvider(config)

    new, new_floats = provider(urls[False]), provider(urls[True])
    client = openai.OpenAI(api_key="not-needed", base_url=urls[False], max_retries=0)
    try:
        run = (args.requests, args.warmup, args.batch)
        old = timed("old: parsed objects", lambda: old_path(client, texts, new.identity), *run)
        fast = timed("new: raw base64", lambda: new.embed(texts), *run)
        floats = timed("new: float-list server", lambda: new_floats.embed(texts), *run)
        fit_seconds, fit_tokens = fitting_rate(new, args.fit_rows)
    finally:
        for closable in (client, new, new_floats):
            closable.close()
        stop.set()
        for child in children:
            child.join(timeout=5)

    print(
        f"{args.requests} requests x {args.batch} inputs x {args.dims} dims "
        f"(+{args.warmup} warm-up), server in a child process on 127.0.0.1"
    )
    print(f"{'path':<26}{'rows/s':>10}{'wall s':>9}{'main-thread CPU ms/request':>29}")
    for t in (old, fast, floats):
        cpu_ms = t.cpu / args.requests * 1000
        print(f"{t.label:<26}{t.rows_per_s:>10,.0f}{t.wall:>9.2f}{cpu_ms:>29.1f}")
    print(
        f"new/old: {fast.rows_per_s / old.rows_per_s:.2f}x rows/s, "
        f"{old.cpu / fast.cpu:.2f}x less main-thread CPU per request"
    )
    print(
        f"token fitting: {args.fit_rows:,} rows of ~600 bytes, {fit_tokens:,} tokens in "
        f"{fit_seconds * 1000:.1f} ms = {fit_tokens / fit_seconds:,.0f} tokens/s "
        f"({args.fit_rows / fit_seconds:,.0f} rows/s)"
    )


if __name__ == "__main__":
    main()
