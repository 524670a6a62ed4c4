"""One key range through the OpenAI Batch API (`model.mode: batch`): submit, wait, check, write.

Rounds, until no row of the range lacks a current vector:

1. Finish every batch recorded for this space, range and model: poll it until it ends
   (logging its id, status and counts, which the Dagster UI shows while the run waits),
   check every answered line like an online response, and write it with the existing
   VectorWriter, with the text hash recorded when it was submitted.
2. Read the rows still missing with the existing reader (rows written in step 1, and rows
   another run wrote, are done and not sent), pack them into batch files and submit them.
   A failed or expired batch, or the error lines of a completed one, leave their rows
   missing: the next round submits exactly those, no more.

Nothing is paid twice: each file is recorded before its batch is created, and the batch id
as soon as it is; a re-run or a retried step (also after SIGKILL) finds the recorded
batches and waits for them, and a file whose batch was created but not recorded is found
again by listing the batches. Results are written idempotently (same rows, same vectors),
so a run killed while writing just writes them again.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psycopg

from ..config import SpaceConfig
from ..db.connection import connection
from ..db.keys import KeyType
from ..errors import ProviderError
from ..providers import EmbeddingProvider
from ..providers.openai_batch import (
    MAX_INPUTS_PER_BATCH,
    BatchFile,
    BatchStatus,
    OpenAIBatchClient,
)
from .backfill import RangeStats, clear_deleted_rows, lock_partitions, preflight
from .partitions import ALL_KEYS, KeyRange
from .reader import count_rows, iter_pages
from .writer import VectorWriter

log = logging.getLogger(__name__)

# Rounds of re-submission before giving up: each round sends only the rows the previous
# one did not return; rows refused every time (an input the API rejects) end the run.
MAX_ROUNDS = 4


@dataclass(frozen=True)
class _Recorded:
    input_file_id: str
    batch_id: str | None
    status: str


class _Ledger:
    """The `embedding_backfills.batches` rows of one space, range and model."""

    def __init__(
        self, conn: psycopg.Connection, space: SpaceConfig, key_range: str, model_key: int
    ):
        self.conn = conn
        self.scope = {"space": space.name, "range": key_range, "model": model_key}

    def open(self) -> list[_Recorded]:
        rows = self.conn.execute(
            "SELECT input_file_id, batch_id, status FROM embedding_backfills.batches"
            " WHERE space = %(space)s AND key_range = %(range)s AND model_key = %(model)s"
            " AND status <> 'written' ORDER BY created_at, input_file_id",
            self.scope,
        ).fetchall()
        return [_Recorded(r[0], r[1], r[2]) for r in rows]

    def uploaded(self, file_id: str, file: BatchFile) -> None:
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO embedding_backfills.batches (input_file_id, space, key_range,"
                " model_key, status, requests, inputs, tokens) VALUES (%(file)s, %(space)s,"
                " %(range)s, %(model)s, 'uploaded', %(requests)s, %(inputs)s, %(tokens)s)",
                {
                    **self.scope,
                    "file": file_id,
                    "requests": len(file.lines),
                    "inputs": file.inputs,
                    "tokens": file.tokens,
                },
            )
            with self.conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO embedding_backfills.batch_lines (input_file_id, custom_id,"
                    " keys, hashes) VALUES (%s, %s, %s, %s)",
                    [(file_id, line.custom_id, line.keys, line.hashes) for line in file.lines],
                )

    def update(self, file_id: str, status: BatchStatus | None, state: str | None = None) -> None:
        self.conn.execute(
            "UPDATE embedding_backfills.batches SET batch_id = coalesce(%(batch)s, batch_id),"
            " status = %(status)s, completed = %(completed)s, failed = %(failed)s,"
            " updated_at = now() WHERE input_file_id = %(file)s",
            {
                "file": file_id,
                "batch": status.id if status else None,
                "status": state or (status.status if status else "uploaded"),
                "completed": status.completed if status else 0,
                "failed": status.failed if status else 0,
            },
        )

    def lines(self, file_id: str) -> dict[str, tuple[list[str], list[bytes]]]:
        rows = self.conn.execute(
            "SELECT custom_id, keys, hashes FROM embedding_backfills.batch_lines"
            " WHERE input_file_id = %s",
            (file_id,),
        ).fetchall()
        return {r[0]: (list(r[1]), [bytes(h) for h in r[2]]) for r in rows}


def embed_range_batch(
    space: SpaceConfig,
    provider: EmbeddingProvider,
    key_range: KeyRange = ALL_KEYS,
    *,
    database_url: str | None = None,
    logger: logging.Logger | logging.LoggerAdapter | object = log,
    sleep: Callable[[float], None] = time.sleep,
) -> RangeStats:
    """Embed every row of the range that lacks a current vector, through the Batch API."""
    client = OpenAIBatchClient(provider)  # refuses anything but openai
    stats = RangeStats()
    started = time.monotonic()
    model_key = provider.identity.key
    info_log = logger.info  # type: ignore[attr-defined]
    with (
        connection(database_url, autocommit=True) as conn,
        connection(database_url, autocommit=True) as write_conn,
    ):
        _, info = preflight(conn, space, provider)
        key = info.key
        lock_partitions(conn, space, key, key_range, logger)
        # The exact bounds (describe() shortens long keys).
        ledger = _Ledger(conn, space, repr((key_range.lower, key_range.upper)), model_key)
        writer = VectorWriter(write_conn, space, model_key, key)
        stats.rows_scanned = count_rows(conn, space, key, key_range)
        for round_no in range(1, MAX_ROUNDS + 2):
            for recorded in ledger.open():
                _finish(client, ledger, writer, key, recorded, stats, info_log, sleep)
            # The last round only counts: rows refused that often are not sent again.
            submit = (
                functools.partial(
                    _submit, client, ledger, space, round_no=round_no, info_log=info_log
                )
                if round_no <= MAX_ROUNDS
                else None
            )
            missing = _missing_rows(conn, space, key, key_range, model_key, writer, stats, submit)
            if not missing:
                break
            if submit is None:
                raise ProviderError(
                    f"{missing:,} rows of {space.name} keys {key_range.describe()} came "
                    f"back as errors from {MAX_ROUNDS} batches in a row; nothing else is "
                    "missing. Check the batch error files in the OpenAI dashboard"
                )
        stats.rows_skipped = stats.rows_scanned - stats.rows_embedded - stats.rows_empty
        stats.rows_cleared += clear_deleted_rows(write_conn, space, key, key_range, model_key)
    stats.seconds = time.monotonic() - started
    return stats


def _missing_rows(
    conn: psycopg.Connection,
    space: SpaceConfig,
    key: KeyType,
    key_range: KeyRange,
    model_key: int,
    writer: VectorWriter,
    stats: RangeStats,
    submit: Callable[[list[tuple[str, bytes, str]]], None] | None,
) -> int:
    """Count the rows still lacking a current vector and (with `submit`) send them off,
    one batch's worth (MAX_INPUTS_PER_BATCH) at a time: memory stays at one batch of texts
    whatever the range. Blank rows that still have a vector are cleared, as online."""
    pending: list[tuple[str, bytes, str]] = []
    missing = empty = 0
    for page in iter_pages(conn, space, key, key_range, model_key, space.batch_size):
        clear = []
        for row_id, text, digest, done, has_vector in zip(
            page.ids, page.texts, page.hashes, page.done, page.has_vector, strict=True
        ):
            if done:
                continue
            if digest is None or text is None:
                empty += 1
                if has_vector:
                    clear.append(row_id)
            else:
                missing += 1
                pending.append((key.to_text(row_id), digest, text))
        if clear:
            writer.write([], np.zeros((0, space.model.stored_dimensions), np.float32), [], clear)
            stats.rows_cleared += len(clear)
        if len(pending) >= MAX_INPUTS_PER_BATCH:
            if submit is not None:
                submit(pending)
            pending = []
    if pending and submit is not None:
        submit(pending)
    stats.rows_empty = empty
    return missing


def _submit(
    client: OpenAIBatchClient,
    ledger: _Ledger,
    space: SpaceConfig,
    rows: list[tuple[str, bytes, str]],
    round_no: int,
    info_log: Callable[[str], None],
) -> None:
    for file in client.build_files(rows, prefix=uuid.uuid4().hex[:12]):
        file_id = client.upload(file, f"{space.name}.jsonl")
        ledger.uploaded(file_id, file)  # before the batch exists: never paid unrecorded
        status = client.create(file_id, {"space": space.name, "round": str(round_no)})
        ledger.update(file_id, status)
        info_log(
            f"batch {status.id} submitted (round {round_no}): {len(file.lines):,} requests, "
            f"{file.inputs:,} rows, {file.tokens:,} tokens"
        )


def _finish(
    client: OpenAIBatchClient,
    ledger: _Ledger,
    writer: VectorWriter,
    key: KeyType,
    recorded: _Recorded,
    stats: RangeStats,
    info_log: Callable[[str], None],
    sleep: Callable[[float], None],
) -> None:
    """Wait for one recorded batch to end, write what it returned, mark it written."""
    file_id = recorded.input_file_id
    if recorded.batch_id is None:
        # Uploaded, then the run died: created after all, or never (then create it now).
        status = client.find_by_input_file(file_id) or client.create(file_id, {"resumed": "1"})
        ledger.update(file_id, status)
        info_log(f"batch {status.id} found again for file {file_id}")
    else:
        status = client.retrieve(recorded.batch_id)
    poll = client.provider.config.batch_poll_seconds
    while not status.terminal:
        ledger.update(file_id, status)
        info_log(
            f"batch {status.id} {status.status}: {status.completed:,}/{status.total:,} "
            f"requests done, {status.failed:,} failed; next check in {poll:g} s"
        )
        sleep(poll)
        status = client.retrieve(status.id)
    info_log(
        f"batch {status.id} {status.status}: {status.completed:,}/{status.total:,} requests "
        f"done, {status.failed:,} failed"
    )
    if status.output_file_id:
        lines = ledger.lines(file_id)
        sizes = {custom_id: len(keys) for custom_id, (keys, _) in lines.items()}
        output = client.content(status.output_file_id)
        for custom_id, vectors, tokens in client.results(output, sizes):
            keys, hashes = lines[custom_id]
            ids: list[object] = [int(k) for k in keys] if key.kind == "integer" else list(keys)
            stats.rows_embedded += writer.write(ids, vectors, hashes, [])
            stats.batches += 1
            if tokens is not None:
                stats.tokens = (stats.tokens or 0) + tokens
    # Error lines, and the requests an expired or failed batch never ran, stay missing:
    # the next round submits them.
    ledger.update(file_id, status, "written")
