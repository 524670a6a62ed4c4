"""Re-embed one key range: read pages, embed, write, with the three stages overlapped.

Reading the next page and writing the previous batch run on their own connections while
the model embeds the current batch, so a real model is never left waiting on the database.
A hosted endpoint embeds several pages at once (`provider.concurrency`: its requests in
flight); they are written in key order. Queues are bounded (one page ahead, the pages in
flight, two writes behind): memory is flat whatever the range.
Each batch commits on its own; an interrupted run loses at most the batches in flight, and
a re-run skips every row whose vector is already there for the same text and model.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import psycopg

from ..config import SpaceConfig
from ..db.connection import connection
from ..db.destination import destination_of
from ..db.introspect import TableInfo, inspect_table
from ..db.keys import KeyType
from ..db.registry import SpaceRecord, check_registration
from ..errors import DatabaseError, SpaceConflictError
from ..providers import EmbeddingProvider
from .partitions import ALL_KEYS, KeyRange, overlapping_ranges, partition_lock_key, range_filter
from .progress import Progress
from .reader import Page, count_rows, iter_pages
from .target import blocking_indexes, check_fingerprint
from .writer import VectorWriter

log = logging.getLogger(__name__)
WRITES_IN_FLIGHT = 2


@dataclass
class RangeStats:
    rows_scanned: int = 0
    rows_embedded: int = 0
    rows_skipped: int = 0
    rows_empty: int = 0
    rows_truncated: int = 0
    rows_cleared: int = 0
    batches: int = 0
    tokens: int | None = None
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows_scanned / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float | int | None]:
        data: dict[str, float | int | None] = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        data["rows_per_second"] = round(self.rows_per_second, 1)
        return data


def preflight(
    conn: psycopg.Connection, space: SpaceConfig, provider: EmbeddingProvider
) -> tuple[SpaceRecord, TableInfo]:
    """Everything that must hold before the first vector is written; read-only."""
    info = inspect_table(conn, space)  # also rejects a column of another dimension
    if info.target is None or not info.provenance_present:
        raise DatabaseError(
            f"space {space.name!r}: target column {destination_of(space).label} does not "
            f"exist yet; materialize {space.name}/target_column first"
        )
    record = check_registration(conn, space, provider.identity)
    if record is None:
        raise DatabaseError(
            f"space {space.name!r} is not in the registry; materialize {space.name}/target_column"
        )
    blocking = blocking_indexes(conn, space, info, record)
    if blocking:
        raise SpaceConflictError(
            f"space {space.name!r}: index {', '.join(blocking)} exists on "
            f"{destination_of(space).label}; writing into an indexed vector column is "
            "~100x slower. Drop the index (it is rebuilt after the checks pass)"
        )
    check_fingerprint(space, record, provider.fingerprint())
    return record, info


def lock_partitions(
    conn: psycopg.Connection,
    space: SpaceConfig,
    key: KeyType,
    key_range: KeyRange,
    logger: logging.Logger | logging.LoggerAdapter | object = log,
) -> list[KeyRange]:
    """Hold a session advisory lock on every partition the range overlaps.

    Runs may be spread over machines and may group partitions differently (two backfills,
    a sensor run): the same partition is never embedded by two runs at once. A second run
    waits, then finds the rows done and skips them. Locks go in ascending order (no
    deadlock) and are released when the connection closes, also when a run dies.
    """
    partitions = overlapping_ranges(conn, space, key, key_range)
    for partition in partitions:
        lock = partition_lock_key(space, partition.seq)
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock,)).fetchone()
        if not (got and got[0]):
            logger.info(  # type: ignore[attr-defined]
                f"partition {partition.partition_key} of {space.name} is being embedded by "
                "another run; waiting for it to finish"
            )
            conn.execute("SELECT pg_advisory_lock(%s)", (lock,))
    return partitions


def clear_deleted_rows(
    conn: psycopg.Connection, space: SpaceConfig, key: KeyType, key_range: KeyRange, model: int
) -> int:
    """Destination `table`: delete this model's vectors of rows deleted from the source,
    within the range (a run's last step, online or batch); a column has none."""
    in_range = range_filter(key.of_column(space.vector_key_column), key_range, "e")
    return destination_of(space).delete_orphans(conn, in_range, model)


@dataclass
class _Batch:
    ids: list[object]
    vectors: np.ndarray
    hashes: list[bytes]
    clear_ids: list[object]
    skipped: int = 0
    empty: int = 0
    truncated: int = 0
    tokens: int | None = None


def _prepare(page: Page, provider: EmbeddingProvider) -> _Batch:
    """Sort a page into done / blank / to-embed rows and embed the last group.

    Runs on the embedding threads: it touches nothing shared, its counts go back in the
    batch and are added up in key order by the loop."""
    ids: list[object] = []
    texts: list[str] = []
    hashes: list[bytes] = []
    clear: list[object] = []
    skipped = empty = 0
    for row_id, text, digest, done, has_vector in zip(
        page.ids, page.texts, page.hashes, page.done, page.has_vector, strict=True
    ):
        if done:
            skipped += 1
        elif digest is None or text is None:
            empty += 1
            if has_vector:
                clear.append(row_id)
        else:
            ids.append(row_id)
            texts.append(text)
            hashes.append(digest)
    batch = provider.embed(texts)
    return _Batch(ids, batch.vectors, hashes, clear, skipped, empty, batch.truncated, batch.tokens)


def embed_range(
    space: SpaceConfig,
    provider: EmbeddingProvider,
    key_range: KeyRange = ALL_KEYS,
    *,
    database_url: str | None = None,
    logger: logging.Logger | logging.LoggerAdapter | object = log,
    progress_every: float = 5.0,
) -> RangeStats:
    """Embed every row of the key range (default: the whole table) that lacks a current
    vector from this model."""
    stats = RangeStats()
    started = time.monotonic()
    model_key = provider.identity.key
    with (
        connection(database_url, autocommit=True) as read_conn,
        connection(database_url, autocommit=True) as write_conn,
        ThreadPoolExecutor(1, thread_name_prefix="read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="write") as writer_pool,
    ):
        _, info = preflight(read_conn, space, provider)
        key = info.key
        lock_partitions(read_conn, space, key, key_range, logger)
        total = count_rows(read_conn, space, key, key_range)
        progress = Progress(
            total, f"{space.name} keys {key_range.describe()}", logger, progress_every
        )
        writer = VectorWriter(write_conn, space, model_key, key)
        pages = iter_pages(read_conn, space, key, key_range, model_key, space.batch_size)
        pending: deque[tuple[Future[int], int, int]] = deque()

        def drain(limit: int) -> None:
            while len(pending) > limit:
                future, n_embedded, n_rows = pending.popleft()
                future.result()
                stats.rows_embedded += n_embedded
                stats.batches += 1
                progress.advance(n_rows)

        # Up to provider.concurrency pages are embedded at once (a hosted endpoint's requests
        # in flight; 1 for a local model) and written in key order as they complete: memory
        # stays bounded by pages in flight + one read ahead + WRITES_IN_FLIGHT.
        embedding: deque[tuple[Future[_Batch], int]] = deque()
        in_flight = max(1, provider.concurrency)
        embedder = ThreadPoolExecutor(in_flight, thread_name_prefix="embed")

        def finish_oldest() -> None:
            future, n_rows = embedding.popleft()
            batch = future.result()
            stats.rows_skipped += batch.skipped
            stats.rows_empty += batch.empty
            stats.rows_truncated += batch.truncated
            if batch.tokens is not None:
                stats.tokens = (stats.tokens or 0) + batch.tokens
            stats.rows_cleared += len(batch.clear_ids)
            if not batch.ids and not batch.clear_ids:
                progress.advance(n_rows)
                return
            drain(WRITES_IN_FLIGHT - 1)
            write = writer_pool.submit(
                writer.write, batch.ids, batch.vectors, batch.hashes, batch.clear_ids
            )
            pending.append((write, len(batch.ids), n_rows))

        next_page = reader.submit(next, pages, None)
        try:
            while (page := next_page.result()) is not None:
                next_page = reader.submit(next, pages, None)  # read ahead while embedding
                stats.rows_scanned += len(page.ids)
                embedding.append((embedder.submit(_prepare, page, provider), len(page.ids)))
                if len(embedding) >= in_flight:
                    finish_oldest()
            while embedding:
                finish_oldest()
            drain(0)
        finally:
            next_page.cancel()
            # On failure: pages not started are dropped, those in flight finish unwritten.
            embedder.shutdown(wait=True, cancel_futures=True)
        stats.rows_cleared += clear_deleted_rows(write_conn, space, key, key_range, model_key)
    stats.seconds = time.monotonic() - started
    return stats
