"""`embedding-backfills plan`: a dry run on a real database that counts exactly and writes
nothing, also when pgvector is missing or the table is partly embedded."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from conftest import create_docs, make_space, non_empty_count
from dagster_dev import write_spaces_config
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

from embedding_assets.cli import app
from embedding_assets.config import IndexConfig, SpaceConfig
from embedding_assets.pipeline.backfill import embed_range
from embedding_assets.pipeline.partitions import KeyRange
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import build_provider
from embedding_assets.reports.index_estimate import estimate_index, memory_bytes
from embedding_assets.reports.storage import estimate_storage


def snapshot(conn: psycopg.Connection) -> dict[str, object]:
    """Everything plan could change: relations, columns, extensions, our schema, registry
    rows, the data."""
    registry = conn.execute("SELECT to_regclass('embedding_backfills.vector_spaces')").fetchone()
    # Not the pg_temp_N schemas: a closed session's temp tables (the writer's COPY staging
    # table) are dropped by its backend a moment after the client has gone.
    user_objects = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"
    return {
        "relations": conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE "
            + user_objects
            + " ORDER BY 1, 2"
        ).fetchall(),
        "columns": conn.execute(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE a.attnum > 0 AND NOT a.attisdropped AND " + user_objects + " ORDER BY 1, 2"
        ).fetchall(),
        "extensions": conn.execute(
            "SELECT extname, extversion FROM pg_extension ORDER BY 1"
        ).fetchall(),
        "schema": conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'embedding_backfills'"
        ).fetchone(),
        "registry": registry[0] is not None
        and conn.execute("SELECT count(*) FROM embedding_backfills.vector_spaces").fetchall(),
        "data": conn.execute(
            "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM docs t"
        ).fetchone(),
    }


def expected_counts(conn: psycopg.Connection, partition_size: int) -> tuple[int, int, int]:
    """(rows, empty rows, occupied partitions), straight from SQL."""
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE btrim(coalesce(body, '')) = ''),"
        " count(DISTINCT id / %s) FROM docs",
        (partition_size,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def run_plan(
    space: SpaceConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, dict, str]:
    """Invoke the CLI twice (--json and tables); return exit code, JSON and human output."""
    config = write_spaces_config(tmp_path / "spaces.yaml", space)
    monkeypatch.setenv("EMBEDDING_BACKFILLS_CONFIG", str(config))
    runner = CliRunner()
    as_json = runner.invoke(app, ["plan", space.name, "--json", *args])
    human = runner.invoke(app, ["plan", space.name, *args])
    assert as_json.exception is None or isinstance(as_json.exception, SystemExit), repr(
        as_json.exception
    )
    assert as_json.exit_code == human.exit_code, human.output
    return as_json.exit_code, json.loads(as_json.stdout), human.output


def finding(report: dict, name: str) -> dict:
    return next(f for f in report["findings"] if f["name"] == name)


def test_plan_counts_exactly_and_writes_nothing(
    conn: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_docs(conn, 1200)
    space = make_space(batch_size=50, partition_size=500)
    before = snapshot(conn)

    code, report, human = run_plan(space, tmp_path, monkeypatch)

    assert snapshot(conn) == before
    assert code == 0, human
    rows, empty, partitions = expected_counts(conn, 500)
    assert (rows, empty, partitions) == (1200, 144, 3)  # ids 1..1200: 120 NULL, 24 blank
    assert report["rows"] == rows
    assert report["rows_empty"] == empty
    assert report["rows_done"] == 0
    assert report["rows_to_embed"] == non_empty_count(conn) == rows - empty
    assert report["partitions"] == report["partitions_to_run"] == partitions
    assert report["batches"] == -(-(rows - empty) // 50)
    assert finding(report, "target_column")["detail"].startswith("emb absent")
    assert finding(report, "pgvector")["ok"] and report["pgvector"]
    # hash provider: tokens are whitespace words, counted on every row (fewer than the sample)
    words = conn.execute(
        "SELECT sum(array_length(regexp_split_to_array(btrim(body), '\\s+'), 1)) FROM docs"
        " WHERE btrim(coalesce(body, '')) <> ''"
    ).fetchone()[0]
    assert report["tokens"]["total"] == words
    assert report["tokens"]["extrapolated"] is False
    assert report["cost"]["usd"] == 0.0 and report["endpoint"]["kind"] == "local"
    assert report["time"]["sample_rows"] == 64 and report["time"]["rows_per_second"] > 0
    assert report["storage"]["wal_bytes"] > report["storage"]["added_bytes"] > 0
    # column destination: every UPDATE leaves one dead row version until vacuum
    assert report["storage"]["dead_tuples"] == rows - empty
    table_bytes = conn.execute("SELECT pg_table_size('docs')").fetchone()[0]
    storage = report["storage"]
    assert storage["wal_with_vacuum_bytes"] == (
        storage["wal_bytes"] + table_bytes + storage["peak_bytes"]
    )
    index = report["index"]
    assert index["rows"] == rows - empty and index["dimensions"] == 16
    assert index["seconds"] > 0 and index["size_bytes"] >= 8192
    assert (
        0
        < index["maintenance_work_mem_needed_bytes"]
        < index["maintenance_work_mem_configured_bytes"]
        == 1024**3
    )
    assert index["fits_in_memory"] is True
    assert "ready" in human and "1,056" in human  # rows to embed, as a person reads it
    assert "index build time" in human and "dead tuples" in human


def set_max_wal_size(conn: psycopg.Connection, db_url: str, value: str | None) -> None:
    """ALTER SYSTEM (RESET when None) and wait until a new session sees it: the reload is
    asynchronous."""
    if value is None:
        conn.execute("ALTER SYSTEM RESET max_wal_size")
    else:
        conn.execute(sql.SQL("ALTER SYSTEM SET max_wal_size = {}").format(sql.Literal(value)))
    conn.execute("SELECT pg_reload_conf()")
    wanted = conn.execute(
        "SELECT pg_size_bytes(coalesce(%s, (SELECT boot_val || unit FROM pg_settings"
        " WHERE name = 'max_wal_size')))",
        (value,),
    ).fetchone()[0]
    for _ in range(100):
        with psycopg.connect(db_url) as fresh:
            now = fresh.execute("SELECT pg_size_bytes(current_setting('max_wal_size'))")
            if now.fetchone()[0] == wanted:
                return
        time.sleep(0.05)
    raise AssertionError(f"max_wal_size never became {value}")


def test_plan_tells_to_raise_max_wal_size_when_the_backfill_would_force_checkpoints(
    conn: psycopg.Connection, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 5M rows the 1GB default started 34 checkpoints and cost 1.75x the WAL; plan warns."""
    create_docs(conn, 12_000)
    space = make_space(model={"dimensions": 2000}, partition_size=5000)
    code, report, human = run_plan(space, tmp_path, monkeypatch)
    storage = report["storage"]
    assert code == 0, human
    assert storage["max_wal_size_bytes"] == 1024**3  # PostgreSQL's default
    assert storage["checkpoints_requested"] == 0
    assert "no checkpoint started by WAL volume" in human

    set_max_wal_size(conn, db_url, "32MB")  # a small server's setting
    try:
        code, report, human = run_plan(space, tmp_path, monkeypatch)
    finally:
        set_max_wal_size(conn, db_url, None)
    storage = report["storage"]
    assert code == 0, human  # advice, not a failed check
    assert storage["max_wal_size_bytes"] == 32 * 1024**2
    expected = storage["wal_with_vacuum_bytes"] // (32 * 1024**2)
    assert storage["checkpoints_requested"] == expected >= 2
    assert f"~{expected:,} checkpoints" in human and "raise max_wal_size" in human


def test_plan_without_pgvector_says_so_and_creates_nothing(
    conn: psycopg.Connection, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn.execute("DROP EXTENSION vector")
    create_docs(conn, 300)
    space = make_space()
    before = snapshot(conn)

    code, report, human = run_plan(space, tmp_path, monkeypatch, "--sample", "0")

    assert snapshot(conn) == before and before["extensions"] == [("plpgsql", "1.0")]
    # a superuser may create it: the backfill would, so plan is not blocked
    assert code == 0
    assert report["pgvector"] is None
    assert "pgvector is not installed in this database" in finding(report, "pgvector")["detail"]
    assert "pgvector is not installed in this database" in human
    assert report["rows"] == 300 and report["time"] is None  # --sample 0: nothing embedded

    # A role that may not create the extension: a failed check, exit 1, still no write.
    role = f"planner_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT SELECT ON docs TO {}").format(sql.Identifier(role)))
    params = conninfo_to_dict(db_url)
    params["user"] = role
    monkeypatch.setenv("DATABASE_URL", make_conninfo(**params))  # type: ignore[arg-type]
    before = snapshot(conn)

    code, report, human = run_plan(space, tmp_path, monkeypatch, "--sample", "0")

    assert snapshot(conn) == before
    assert code == 1
    pgvector = finding(report, "pgvector")
    assert not pgvector["ok"] and "may not create it" in pgvector["detail"]
    assert "not ready" in human


def test_plan_counts_done_and_stale_rows_of_a_partly_embedded_table(
    conn: psycopg.Connection, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_docs(conn, 1200)
    space = make_space(partition_size=500)
    provider = build_provider(space.model)
    prepare_target_column(conn, space, provider)
    first = KeyRange(None, "500")  # ids below 500, not a whole partition
    embed_range(space, provider, first, database_url=db_url)
    conn.execute("UPDATE docs SET body = body || ' (edited)' WHERE id = 7")  # now stale
    before = snapshot(conn)

    code, report, _ = run_plan(space, tmp_path, monkeypatch, "--sample", "8")

    assert snapshot(conn) == before
    assert code == 0
    done = conn.execute(
        "SELECT count(*) FROM docs WHERE id <= 499 AND id <> 7 AND btrim(coalesce(body, '')) <> ''"
    ).fetchone()[0]
    assert report["rows_done"] == done
    assert report["rows_to_embed"] == non_empty_count(conn) - done
    # the stale row puts partition 0 back to work next to the two never embedded
    assert (report["partitions"], report["partitions_to_run"]) == (3, 3)
    assert finding(report, "registry")["detail"] == "registered as building, same model"
    assert finding(report, "fingerprint")["ok"]
    assert finding(report, "target_column")["detail"].startswith("emb exists as vector(16)")


def test_plan_refuses_an_index_on_a_building_space(
    conn: psycopg.Connection, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_docs(conn, 200)
    space = make_space()
    prepare_target_column(conn, space, build_provider(space.model))
    conn.execute("CREATE INDEX docs_emb_early ON docs USING hnsw (emb vector_cosine_ops)")

    code, report, human = run_plan(space, tmp_path, monkeypatch, "--sample", "0")

    assert code == 1
    index = finding(report, "index")
    assert not index["ok"] and "docs_emb_early" in index["detail"]
    assert "not ready" in human


def test_storage_estimate_toasts_above_495_dims() -> None:
    inline = estimate_storage(rows=1000, dims=384, heap_bytes_per_row=100)
    toasted = estimate_storage(rows=1000, dims=1536, heap_bytes_per_row=100)
    assert not inline.toasted and toasted.toasted
    # 384 dims inline: vector 1544 B + 41 B provenance per row
    assert inline.added_bytes == 1000 * (4 * 384 + 8 + 41)
    # 1536 dims: 18-byte pointer in the row, 6152 B in 4 TOAST chunks of 60 B overhead each
    assert toasted.added_bytes_per_row == 18 + 41 + 6152 + 4 * 60


def test_plan_prices_a_hosted_openai_model_with_its_own_tokenizer(
    conn: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bpe_openai

    create_docs(conn, 300)
    conn.execute("UPDATE docs SET body = body || ' Zażółć gęślą jaźń' WHERE id % 3 = 0")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")  # --sample 0: never used
    space = make_space(model={"provider": "openai", "name": "text-embedding-3-small"})

    code, report, human = run_plan(space, tmp_path, monkeypatch, "--sample", "0")

    assert code == 0, human
    encoding = bpe_openai.get_encoding("cl100k_base")
    texts = [
        r[0] for r in conn.execute("SELECT body FROM docs WHERE btrim(coalesce(body, '')) <> ''")
    ]
    expected = sum(len(encoding.encode_ordinary(t)) for t in texts)
    assert report["tokens"]["total"] == expected and report["tokens"]["exact_tokenizer"]
    assert report["endpoint"] == {"kind": "public-cloud", "host": "api.openai.com"}
    assert report["cost"]["usd"] == pytest.approx(expected * 0.02 / 1_000_000)
    assert "sk-test-secret-123" not in human


def test_an_unknown_tokenizer_is_labelled_approximate() -> None:
    from embedding_assets.reports.tokens import token_counter

    ollama = make_space(
        model={"provider": "openai", "name": "nomic-embed-text", "base_url": "http://x:1/v1"}
    ).model
    counter = token_counter(ollama, None)
    assert counter is not None and not counter.exact and "approximate" in counter.method
    assert counter.count(["abcdefgh", "Zażółć"]) == [2, 3]  # 8 and 10 UTF-8 bytes


def test_plan_for_a_destination_table_writes_nothing_and_estimates_its_disk(
    conn: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_docs(conn, 1200)
    space = make_space(destination="table", batch_size=50, partition_size=500)
    before = snapshot(conn)
    code, report, human = run_plan(space, tmp_path, monkeypatch)
    assert snapshot(conn) == before and code == 0, human
    assert "docs_emb absent" in finding(report, "target_column")["detail"]
    assert "public.docs is not altered" in finding(report, "target_column")["detail"]
    storage = report["storage"]
    assert storage["destination"] == "table" and storage["source_table_growth_bytes"] == 0
    assert storage["peak_bytes"] == storage["added_bytes"]  # no dead row versions anywhere
    assert "source table unchanged" in human
    # an insert-only table is vacuumed too: each new page logged once more, whole
    assert storage["wal_with_vacuum_bytes"] == storage["wal_bytes"] + storage["peak_bytes"]
    assert "WAL with vacuum" in human

    # the estimate, next to what the destination table (heap + primary key) really takes
    prepare_target_column(conn, space, build_provider(space.model))
    embed_range(space, build_provider(space.model), KeyRange(None, "601"))
    code, report, _ = run_plan(space, tmp_path, monkeypatch)
    assert report["rows_done"] == 528  # rows 1..600 with text: read from the destination
    embed_range(space, build_provider(space.model))
    conn.execute("VACUUM embedding_backfills.docs_emb")
    measured = conn.execute(
        "SELECT pg_relation_size('embedding_backfills.docs_emb')"
        " + pg_relation_size('embedding_backfills.docs_emb_pkey')"
    ).fetchone()[0]
    assert 0.75 <= storage["added_bytes"] / measured <= 1.25, (storage, measured)


def test_index_estimate_reproduces_the_measured_curve() -> None:
    """The constants give back the builds the module docstring lists (m=16, ef 64)."""
    default = IndexConfig()
    assert estimate_index(10_000, 384, default).size_bytes == 2_500 * 8192  # 20.5 MB measured
    assert estimate_index(10_000, 1024, default).size_bytes == 10_000 * 8192  # 81.9 MB
    # whole builds by benchmarks/scale.py: within 25%, the 5M one within 5%
    for rows, dims, seconds, within in (
        (5_000_000, 384, 3_528.5, 0.05),
        (100_000, 384, 43.2, 0.25),
        (100_000, 1024, 88.6, 0.25),
    ):
        estimate = estimate_index(rows, dims, default).seconds
        assert abs(estimate / seconds - 1) <= within, (rows, dims, estimate, seconds)
    assert estimate_index(5_000_000, 384, default).size_bytes == 10_240_000_000  # 10,240 MB
    assert 30_000 * 2_200 < estimate_index(30_000, 384, default).memory_bytes < 30_000 * 2_300
    # N log N: ten times the rows take more than ten times as long
    assert (
        estimate_index(1_000_000, 384, default).seconds
        > 10 * estimate_index(100_000, 384, default).seconds
    )
    # a maintenance_work_mem below the graph's size is flagged
    assert not estimate_index(1_000_000, 384, IndexConfig(maintenance_work_mem="1GB")).fits
    assert estimate_index(1_000_000, 384, IndexConfig(maintenance_work_mem="4GB")).fits
    assert memory_bytes("512 MB") == 512 * 1024**2 and memory_bytes("65536") == 64 * 1024**2


@pytest.mark.parametrize(
    ("budget", "bound", "cap"),
    [
        ({}, "requests in flight", None),
        ({"tokens_per_minute": 6_000}, "tokens_per_minute", 6_000 / 60 / 10),  # 10 tokens a row
        ({"requests_per_minute": 6}, "requests_per_minute", 6 / 60 * 16),  # 16 rows a request
    ],
)
def test_plans_time_for_a_hosted_endpoint_counts_requests_in_flight_and_budgets(
    monkeypatch: pytest.MonkeyPatch, budget: dict[str, int], bound: str, cap: float | None
) -> None:
    """The sample goes one request at a time, a run keeps 4 in flight: the run's rate is 4x
    the measured one, unless the endpoint's budget allows less (then exactly that)."""
    from openai_server import FakeEmbeddingsServer

    from embedding_assets.config import ModelConfig
    from embedding_assets.reports.plan import measure_throughput

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-plan")
    with FakeEmbeddingsServer(dims=8) as server:
        model = ModelConfig(
            provider="openai",
            name="nomic-embed-text",
            dimensions=8,
            base_url=server.base_url,
            max_concurrent_requests=4,
            **budget,  # type: ignore[arg-type]
        )
        texts = [f"row {i}" for i in range(64)]
        estimate = measure_throughput(build_provider(model), texts, 16, 10_000, model, 10.0)
        sent = [r.n_inputs for r in server.requests]

    assert sent == [1, 16, 16, 16, 16]  # the warm-up, then the sample one request at a time
    assert estimate.in_flight == 4 and estimate.bound == bound
    expected = cap if cap is not None else estimate.measured_rows_per_second * 4
    assert estimate.rows_per_second == pytest.approx(expected)
    assert estimate.seconds == pytest.approx(10_000 / expected)
