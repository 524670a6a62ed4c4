"""`embedding-backfills status` on a real database and the real Dagster instance the runs
wrote to: partitions, row counts and check evaluations as an operator reads them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import psycopg
import pytest
from conftest import create_docs, make_space, materialize_target, non_empty_count, run_asset
from dagster import DagsterInstance
from dagster_dev import write_spaces_config
from typer.testing import CliRunner

from embedding_assets.cli import app
from embedding_assets.defs.partitions import id_range_partitions_name


@pytest.fixture
def cli_instance(
    dagster_instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> DagsterInstance:
    """The CLI's `project_instance()` resolves to the fixture's storage (DAGSTER_POSTGRES_URL,
    exported by `dagster_instance`), with its local artifacts kept out of the repo."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("EMBEDDING_BACKFILLS_DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return dagster_instance


def test_status_after_embedding_part_of_a_table(
    conn: psycopg.Connection,
    cli_instance: DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    create_docs(conn, 1200)
    space = make_space(partition_size=500)
    untouched = make_space(target_column="emb_next", model={"name": "next-model"})
    materialize_target(space, cli_instance)
    partitions = sorted(cli_instance.get_dynamic_partitions(id_range_partitions_name(space)))
    run_asset(space, cli_instance, "embeddings", partition_key=partitions[0])
    conn.execute("UPDATE docs SET body = body || ' (edited)' WHERE id = 7")  # stale now
    config = write_spaces_config(tmp_path / "spaces.yaml", space, untouched)
    monkeypatch.setenv("EMBEDDING_BACKFILLS_CONFIG", str(config))
    runner = CliRunner()

    result = runner.invoke(app, ["status", "--json"])

    assert result.exit_code == 0, result.output
    spaces = {s["space"]: s for s in json.loads(result.stdout)["spaces"]}
    status = spaces[space.name]
    with_text = non_empty_count(conn)
    embedded = conn.execute(
        "SELECT count(*) FROM docs WHERE id <= 499 AND btrim(coalesce(body, '')) <> ''"
    ).fetchone()[0]
    assert status["registry"] == "building" and status["column_exists"]
    assert status["partitions"] == {"done": 1, "total": 3}
    assert status["rows"] == {
        "total": 1200,
        "with_text": with_text,
        "outside_filter": 0,
        "embedded": embedded,
        "missing": with_text - embedded,
        "stale": 1,
        "counted": "exact",
        "sample_percent": None,
    }
    # the run left two partitions to go: its checks deferred the scan
    assert {c["name"]: c["state"] for c in status["checks"]} == {
        "uniform_dimension": "deferred",
        "complete": "deferred",
        "one_model": "deferred",
        "sane_vectors": "deferred",
    }
    assert status["indexes"] == [] and status["adopted"] is False
    other = spaces[untouched.name]
    assert other["registry"] == "unregistered" and not other["column_exists"]
    assert other["partitions"] == {"done": 0, "total": 0}
    assert other["rows"]["missing"] is None
    assert [c["state"] for c in other["checks"]] == ["never evaluated"] * 4

    human = runner.invoke(app, ["status", space.name])
    assert human.exit_code == 0, human.output
    assert "1/3" in human.output and f"{with_text - embedded:,}" in human.output
    assert untouched.name not in human.output  # one space asked, one space shown

    # the same tables exported: typed columns, one row per space / partition / check
    parquet = tmp_path / "status.parquet"
    exported = runner.invoke(app, ["status", "--format", "parquet", "--output", str(parquet)])
    assert exported.exit_code == 0, exported.output
    frame = pl.read_parquet(parquet)
    assert frame["space"].to_list() == [space.name, untouched.name]
    mine = frame.row(0, named=True)
    assert (mine["partitions_done"], mine["partitions_total"]) == (1, 3)
    assert (mine["embedded"], mine["missing"], mine["stale"]) == (
        embedded,
        with_text - embedded,
        1,
    )
    assert frame.schema["missing"] == pl.Int64 and frame.row(1, named=True)["missing"] is None
    csv = runner.invoke(app, ["status", space.name, "--format", "csv", "--table", "partitions"])
    assert csv.exit_code == 0, csv.output
    partitions = pl.read_csv(io.StringIO(csv.stdout))
    assert partitions.columns == ["space", "partition", "materialized"]
    assert partitions["partition"].to_list() == sorted(
        cli_instance.get_dynamic_partitions(id_range_partitions_name(space))
    )
    assert partitions["materialized"].to_list() == [True, False, False]
    checks = runner.invoke(app, ["status", space.name, "--format", "json", "--table", "checks"])
    assert checks.exit_code == 0, checks.output
    records = json.loads(checks.stdout)
    assert [(r["check"], r["state"]) for r in records] == [
        (name, "deferred")
        for name in ("uniform_dimension", "complete", "one_model", "sane_vectors")
    ]
    assert all(r["evaluated_at"].endswith("+00:00") for r in records)
    refused = runner.invoke(app, ["status", "--format", "parquet"])
    assert refused.exit_code == 2 and "--output" in refused.output


def test_status_of_a_finished_space_shows_passed_checks_and_the_index(
    conn: psycopg.Connection,
    cli_instance: DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conftest import materialize_partitions

    create_docs(conn, 300)
    space = make_space(partition_size=200)
    materialize_target(space, cli_instance)
    materialize_partitions(space, cli_instance)
    run_asset(space, cli_instance, "hnsw_index")
    run_asset(space, cli_instance, "registry")
    monkeypatch.setenv(
        "EMBEDDING_BACKFILLS_CONFIG", str(write_spaces_config(tmp_path / "s.yaml", space))
    )

    result = CliRunner().invoke(app, ["status", space.name, "--json"])

    assert result.exit_code == 0, result.output
    (status,) = json.loads(result.stdout)["spaces"]
    assert status["registry"] == "active"
    assert status["partitions"] == {"done": 2, "total": 2}
    assert status["rows"]["missing"] == status["rows"]["stale"] == 0
    assert status["rows"]["embedded"] == non_empty_count(conn)
    assert {c["state"] for c in status["checks"]} == {"passed"}
    assert status["indexes"] == [{"name": "docs_emb_hnsw", "valid": True, "method": "hnsw"}]


@pytest.mark.parametrize("destination", ["column", "table"])
def test_status_of_a_large_table_counts_a_sample_and_says_so(
    destination: str,
    conn: psycopg.Connection,
    cli_instance: DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above EXACT_MAX_ROWS status must not scan the whole table (minutes at 10M rows): it
    counts a page sample, scales it, and labels the figures as estimates; --exact scans."""
    import embedding_assets.reports.status as status_module

    create_docs(conn, 30_000)
    space = make_space(partition_size=15_000, destination=destination)
    materialize_target(space, cli_instance)
    first = sorted(cli_instance.get_dynamic_partitions(id_range_partitions_name(space)))[0]
    run_asset(space, cli_instance, "embeddings", partition_key=first)
    # 280 embedded rows edited since, spread over the embedded half: stale
    conn.execute("UPDATE docs SET body = body || ' (edited)' WHERE id % 50 = 1 AND id < 14000")
    conn.execute("ANALYZE docs")
    monkeypatch.setattr(status_module, "EXACT_MAX_ROWS", 10_000)
    monkeypatch.setattr(status_module, "SAMPLE_ROWS", 10_000)
    monkeypatch.setenv(
        "EMBEDDING_BACKFILLS_CONFIG", str(write_spaces_config(tmp_path / "s.yaml", space))
    )
    runner = CliRunner()

    exact = json.loads(runner.invoke(app, ["status", "--json", "--exact"]).stdout)
    sampled = runner.invoke(app, ["status", "--json"])

    assert sampled.exit_code == 0, sampled.output
    (rows,) = (s["rows"] for s in json.loads(sampled.stdout)["spaces"])
    (truth,) = (s["rows"] for s in exact["spaces"])
    assert truth["counted"] == "exact" and truth["stale"] == 280 and truth["total"] == 30_000
    assert rows["counted"] == "sample" and 20 < rows["sample_percent"] < 50
    for name in ("total", "with_text", "embedded", "missing"):
        assert rows[name] == pytest.approx(truth[name], rel=0.25), name
    # Edited rows' new versions cluster in a few pages: a page sample sees them, roughly.
    assert truth["stale"] / 3 < rows["stale"] < truth["stale"] * 3
    assert rows["total"] != truth["total"]  # an estimate, not a disguised full count
    human = runner.invoke(app, ["status", space.name])
    assert human.exit_code == 0 and "estimate" in human.output


def test_status_of_an_unknown_space_is_an_error(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = make_space()
    monkeypatch.setenv(
        "EMBEDDING_BACKFILLS_CONFIG", str(write_spaces_config(tmp_path / "s.yaml", space))
    )
    result = CliRunner().invoke(app, ["status", "nope"])
    assert result.exit_code == 2 and "no space named 'nope'" in result.output
