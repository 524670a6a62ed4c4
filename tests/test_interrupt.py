"""Kill a run mid-partition: the re-run completes it and redoes no committed batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psycopg
from conftest import create_docs, make_space, non_empty_count

from embedding_assets.pipeline.backfill import embed_range
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import build_provider

# A child process embeds slowly (the hash provider plus a pause per batch, standing in for a
# real model) so that the test can kill it for real, with SIGKILL, half way through.
CHILD = textwrap.dedent(
    """
    import sys, time
    from embedding_assets.config import parse_config
    from embedding_assets.pipeline.backfill import embed_range
    from embedding_assets.providers.hash import HashProvider

    class SlowHash(HashProvider):
        def _embed(self, texts):
            time.sleep(0.05)
            return super()._embed(texts)

    space = parse_config({"spaces": [%(space)s]}).spaces[0]
    embed_range(space, SlowHash(space.model), database_url=sys.argv[1])
    """
)


def test_killed_run_resumes_without_redoing_committed_batches(
    conn: psycopg.Connection, db_url: str
) -> None:
    create_docs(conn, 3000)
    space = make_space(batch_size=25)
    provider = build_provider(space.model)
    prepare_target_column(conn, space, provider)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD % {"space": space.model_dump(mode="json")}, db_url],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            written = conn.execute("SELECT count(emb) FROM docs").fetchone()[0]
            if written >= 400 or child.poll() is not None:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the child finished before it could be interrupted"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()

    done_before = conn.execute("SELECT count(emb) FROM docs").fetchone()[0]
    expected = non_empty_count(conn)
    assert 0 < done_before < expected
    # every row is all-or-nothing: a vector never stands without its provenance
    torn = conn.execute(
        "SELECT count(*) FROM docs WHERE (emb IS NULL) <> (emb_text_hash IS NULL)"
        " OR (emb IS NULL) <> (emb_model_key IS NULL)"
    ).fetchone()[0]
    assert torn == 0

    stats = embed_range(space, provider, database_url=db_url)

    assert stats.rows_embedded == expected - done_before  # only what was not committed
    assert stats.rows_skipped == done_before
    assert conn.execute("SELECT count(emb) FROM docs").fetchone()[0] == expected
