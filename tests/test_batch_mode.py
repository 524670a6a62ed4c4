"""`model.mode: batch`: partitions through the OpenAI Batch API against a real 127.0.0.1 server
speaking the Files and Batches endpoints (tests/openai_server.py, FakeBatchAPI).

Proves: results are checked and written with provenance; an expired batch and error lines
re-submit only the rows still missing; a run killed (SIGKILL) while waiting leaves its batch
recorded, and the re-run waits for that batch instead of paying again; plan and metadata
price batch tokens at half the list price.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from conftest import create_docs, make_space, materialize_target, non_empty_count, run_asset
from dagster import DagsterInstance
from openai_server import FakeEmbeddingsServer
from rich.console import Console

from embedding_assets.config import ModelConfig, SpaceConfig
from embedding_assets.defs.partitions import id_range_partitions_name
from embedding_assets.errors import ConfigError
from embedding_assets.reports.endpoint import Endpoint, endpoint_of
from embedding_assets.reports.plan import PlanReport, RowCounts, batch_turnaround, estimate_cost
from embedding_assets.reports.render import render_plan

MODEL = "text-embedding-3-small"
DIMS = 8
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def batch_model(base_url: str, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "provider": "openai",
        "name": MODEL,
        "dimensions": DIMS,
        "base_url": base_url,
        "mode": "batch",
        "batch_poll_seconds": 0.01,
        "max_inputs_per_request": 7,  # several request lines per batch
        "max_retries": 0,
    }
    fields.update(overrides)
    return fields


def _space(base_url: str, **overrides: Any) -> SpaceConfig:
    return make_space(model=batch_model(base_url, **overrides), partition_size=10_000)


def _embeddings_run(space: SpaceConfig, instance: DagsterInstance) -> dict[str, Any]:
    (partition,) = instance.get_dynamic_partitions(id_range_partitions_name(space))
    from conftest import metadata_of
    from dagster import AssetKey

    result = run_asset(space, instance, "embeddings", partition_key=partition)
    return metadata_of(result, AssetKey([space.name, "embeddings"]))


def _check_stored(conn: psycopg.Connection, server: FakeEmbeddingsServer) -> None:
    rows = conn.execute(
        "SELECT body, emb::real[], emb_text_hash = sha256(convert_to(body, 'UTF8'))"
        " FROM docs WHERE emb IS NOT NULL ORDER BY id"
    ).fetchall()
    assert len(rows) == non_empty_count(conn)
    assert all(r[2] for r in rows)  # provenance: the hash of the text that was embedded
    want = np.vstack([server.vector(r[0], MODEL, DIMS) for r in rows])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray([r[1] for r in rows]), want, atol=1e-6)


def _lines_of(server: FakeEmbeddingsServer, batch_id: str) -> list[dict[str, Any]]:
    record = server.batches.records[batch_id]
    raw = server.batches.files[record["input_file_id"]]
    return [json.loads(line) for line in raw.splitlines()]


def _inputs(server: FakeEmbeddingsServer, batch_id: str) -> list[str]:
    return [t for line in _lines_of(server, batch_id) for t in line["body"]["input"]]


def test_batch_mode_needs_the_openai_provider() -> None:
    with pytest.raises(ConfigError, match="mode: batch"):
        make_space(model={"provider": "hash", "name": "h", "dimensions": 8, "mode": "batch"})


def test_a_partition_goes_out_as_one_batch_and_every_row_is_written(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 120)
    with FakeEmbeddingsServer(dims=DIMS) as server:
        space = _space(server.base_url)
        materialize_target(space, dagster_instance)
        online_before = len(server.requests)
        metadata = _embeddings_run(space, dagster_instance)
        (batch_id,) = server.batches.created
        lines = _lines_of(server, batch_id)
        assert all(
            line["url"] == "/v1/embeddings" and len(line["body"]["input"]) <= 7 for line in lines
        )
        assert sorted(_inputs(server, batch_id)) == sorted(
            r[0] for r in conn.execute("SELECT body FROM docs WHERE btrim(coalesce(body,'')) <> ''")
        )
        # Online, only the preflight fingerprint (5 sentinel texts), no row.
        assert [
            r.n_inputs for r in server.requests[online_before:] if r.path.endswith("embeddings")
        ] == [5]
        _check_stored(conn, server)
        assert metadata["mode"] == "batch" and metadata["rows_embedded"] == non_empty_count(conn)
        # A second run finds nothing missing and submits nothing.
        _embeddings_run(space, dagster_instance)
        assert server.batches.created == [batch_id]


@pytest.mark.parametrize("outcome", ["expire", "error_lines"])
def test_an_expired_batch_or_error_lines_resubmit_only_the_missing_rows(
    outcome: str, conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 120)
    with FakeEmbeddingsServer(dims=DIMS) as server:
        space = _space(server.base_url)
        materialize_target(space, dagster_instance)
        server.batches.plan(outcome)  # the first batch; the next ones complete
        _embeddings_run(space, dagster_instance)
        first, second = server.batches.created
        answered = {line["custom_id"] for line in _lines_of(server, first)}
        record = server.batches.records[first]
        assert record["status"] == ("expired" if outcome == "expire" else "completed")
        got_back = json.loads(
            b"[" + b",".join(server.batches.files[record["output_file_id"]].splitlines()) + b"]"
        )
        returned = {
            t for item in got_back for t in _request_inputs(server, first, item["custom_id"])
        }
        resent = _inputs(server, second)
        assert answered and resent
        assert set(resent) == set(_inputs(server, first)) - returned  # exactly the missing rows
        _check_stored(conn, server)


def _request_inputs(server: FakeEmbeddingsServer, batch_id: str, custom_id: str) -> list[str]:
    for line in _lines_of(server, batch_id):
        if line["custom_id"] == custom_id:
            return list(line["body"]["input"])
    raise AssertionError(custom_id)


_WAITER = """
import json, sys
from embedding_assets.config import parse_config
from embedding_assets.pipeline.batch import embed_range_batch
from embedding_assets.providers import build_provider
space = parse_config(json.loads(sys.argv[1])).spaces[0]
embed_range_batch(space, build_provider(space.model))
"""


def test_a_run_killed_while_waiting_is_resumed_without_paying_twice(
    conn: psycopg.Connection, db_url: str, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 60)
    with FakeEmbeddingsServer(dims=DIMS) as server:
        space = _space(server.base_url, batch_poll_seconds=0.2)
        materialize_target(space, dagster_instance)
        server.batches.polls = 10**9  # never ends while the first run waits
        doc = {"spaces": [json.loads(space.model_dump_json())]}
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": db_url}
        waiter = subprocess.Popen([sys.executable, "-c", _WAITER, json.dumps(doc)], env=env)
        try:
            deadline = time.monotonic() + 60
            recorded = None
            while recorded is None and time.monotonic() < deadline and waiter.poll() is None:
                recorded = conn.execute(
                    "SELECT batch_id FROM embedding_backfills.batches"
                    " WHERE space = %s AND batch_id IS NOT NULL",
                    (space.name,),
                ).fetchone()
                time.sleep(0.1)
            assert recorded is not None, "the first run recorded its batch"
            assert waiter.poll() is None, "and is still waiting for it"
        finally:
            waiter.send_signal(signal.SIGKILL)
            waiter.wait()
        assert conn.execute("SELECT count(emb) FROM docs").fetchone() == (0,)
        assert server.batches.created == [recorded[0]]

        server.batches.polls = 0  # the batch ends now
        _embeddings_run(space, dagster_instance)
        assert server.batches.created == [recorded[0]]  # found again, not submitted again
        _check_stored(conn, server)


def test_batch_tokens_cost_half_the_list_price() -> None:
    online = ModelConfig(provider="openai", name=MODEL, dimensions=DIMS)
    batch = ModelConfig(provider="openai", name=MODEL, dimensions=DIMS, mode="batch")
    cloud = endpoint_of(online)
    full, half = estimate_cost(online, cloud, 1_000_000), estimate_cost(batch, cloud, 1_000_000)
    assert full.usd is not None and half.usd == pytest.approx(full.usd / 2)
    assert "Batch API" in half.basis


def test_plan_says_a_batch_backfill_waits_on_turnaround_not_on_a_rate() -> None:
    """120,000 rows in 2 partitions of 100,000, both in one run: 3 batches of <= 50,000."""
    space = make_space(
        model=batch_model("http://127.0.0.1:9"), partition_size=100_000, partitions_per_run=2
    )
    counts = RowCounts(rows=130_000, empty=4_000, done=6_000, partitions=2, partitions_to_run=2)
    turnaround = batch_turnaround(space, counts)
    assert turnaround is not None
    assert (turnaround.runs, turnaround.batches) == (1, 3)
    one_per_run = make_space(
        model=batch_model("http://127.0.0.1:9"), partition_size=100_000, partitions_per_run=1
    )
    split = batch_turnaround(one_per_run, counts)
    assert split is not None and (split.runs, split.batches) == (2, 4)  # 60,000 rows a run
    online = make_space(model=batch_model("http://127.0.0.1:9", mode="online"))
    assert batch_turnaround(online, counts) is None
    report = PlanReport("s", "docs", "emb", MODEL, Endpoint("public-cloud", "x"), 50)
    report.counts, report.turnaround = counts, turnaround
    console = Console(width=400, record=True)
    console.print(render_plan(report))
    text = console.export_text()
    assert "3 batches" in text and "24 h completion window" in text
    assert report.as_dict()["batch_turnaround"] == {
        "runs": 1,
        "batches": 3,
        "inputs_per_batch": 50_000,
        "completion_window_hours": 24,
    }


def test_a_batch_created_but_not_recorded_is_found_by_its_input_file(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    """The run died between creating the batch and recording its id: the re-run lists the
    batches, finds the one made from its recorded file, and does not create another."""
    from embedding_assets.providers import build_provider
    from embedding_assets.providers.openai import OpenAIProvider
    from embedding_assets.providers.openai_batch import OpenAIBatchClient

    create_docs(conn, 40)
    with FakeEmbeddingsServer(dims=DIMS) as server:
        space = _space(server.base_url)
        materialize_target(space, dagster_instance)
        rows = conn.execute(
            "SELECT id::text, sha256(convert_to(body, 'UTF8')), body FROM docs"
            " WHERE btrim(coalesce(body, '')) <> '' ORDER BY docs.id"  # key order, as read
        ).fetchall()
        provider = build_provider(space.model)
        assert isinstance(provider, OpenAIProvider)
        client = OpenAIBatchClient(provider)
        (file,) = client.build_files([(r[0], bytes(r[1]), r[2]) for r in rows], prefix="dead")
        file_id = client.upload(file, "dead.jsonl")
        conn.execute(
            "INSERT INTO embedding_backfills.batches (input_file_id, space, key_range,"
            " model_key, status, requests, inputs, tokens)"
            " VALUES (%s, %s, %s, %s, 'uploaded', %s, %s, %s)",
            (
                file_id,
                space.name,
                repr((None, None)),
                provider.identity.key,
                len(file.lines),
                file.inputs,
                file.tokens,
            ),
        )
        for line in file.lines:
            conn.execute(
                "INSERT INTO embedding_backfills.batch_lines VALUES (%s, %s, %s, %s)",
                (file_id, line.custom_id, line.keys, line.hashes),
            )
        created = client.create(file_id, {})  # ... and the run died before recording it
        provider.close()

        _embeddings_run(space, dagster_instance)
        assert server.batches.created == [created.id]
        _check_stored(conn, server)


def test_batch_mode_into_a_destination_table_deletes_vectors_of_deleted_rows(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 60)
    with FakeEmbeddingsServer(dims=DIMS) as server:
        space = make_space(
            model=batch_model(server.base_url), partition_size=10_000, destination="table"
        )
        materialize_target(space, dagster_instance)
        _embeddings_run(space, dagster_instance)
        stored = "SELECT count(*) FROM embedding_backfills.docs_emb"
        assert conn.execute(stored).fetchone() == (non_empty_count(conn),)
        conn.execute("DELETE FROM docs WHERE id IN (1, 2)")
        metadata = _embeddings_run(space, dagster_instance)
        assert metadata["rows_cleared"] == 2 and len(server.batches.created) == 1
        assert conn.execute(stored).fetchone() == (non_empty_count(conn),)
