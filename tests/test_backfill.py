"""Re-embedding through real Dagster materializations against a real PostgreSQL."""

from __future__ import annotations

import hashlib

import numpy as np
import psycopg
from conftest import (
    create_docs,
    embedded_docs,
    make_space,
    materialize_partitions,
    materialize_target,
    non_empty_count,
    totals,
)
from dagster import DagsterInstance
from psycopg import sql

from embedding_assets.db.introspect import inspect_table
from embedding_assets.defs.partitions import id_range_partitions_name
from embedding_assets.pipeline.partitions import KeyRange
from embedding_assets.pipeline.reader import iter_pages, page_query
from embedding_assets.providers import build_provider


def test_every_non_empty_row_gets_a_vector_of_the_configured_dimension(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 1200)
    space = make_space()
    target = materialize_target(space, dagster_instance)
    assert target["column_created"] is True
    assert target["registry_status"] == "building"
    keys = sorted(dagster_instance.get_dynamic_partitions(id_range_partitions_name(space)))
    # ids 1..1200, 500 rows a partition: <seq>_<first key>, text order = key order
    assert keys == ["00000_min", "00001_501", "00002_1001"]

    runs = materialize_partitions(space, dagster_instance)

    expected = non_empty_count(conn)
    assert totals(runs, "rows_scanned") == 1200
    assert totals(runs, "rows_embedded") == expected
    assert totals(runs, "rows_empty") == 1200 - expected
    assert all(m["dimensions"] == 16 and m["rows_per_second"] > 0 for m in runs)
    rows = conn.execute(
        "SELECT count(*) FILTER (WHERE emb IS NOT NULL),"
        " count(*) FILTER (WHERE emb IS NOT NULL AND vector_dims(emb) <> 16),"
        " count(*) FILTER (WHERE emb IS NOT NULL AND btrim(coalesce(body,'')) = ''),"
        " count(DISTINCT emb_model_key)"
        " FROM docs"
    ).fetchone()
    assert rows == (expected, 0, 0, 1)


def test_provenance_records_text_hash_and_model_identity(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 60)
    provider = build_provider(space.model)
    for body, digest, key, vector in conn.execute(
        "SELECT body, emb_text_hash, emb_model_key, emb::real[] FROM docs WHERE emb IS NOT NULL"
    ):
        assert digest == hashlib.sha256(body.encode()).digest()
        assert key == provider.identity.key
        expected = provider.embed([body]).vectors[0]
        assert np.allclose(np.asarray(vector, dtype=np.float32), expected, atol=1e-6)


def test_second_run_skips_everything(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 700)
    before = conn.execute("SELECT sum(xmin::text::bigint) FROM docs").fetchone()

    again = materialize_partitions(space, dagster_instance)

    assert totals(again, "rows_embedded") == 0
    assert totals(again, "rows_skipped") == non_empty_count(conn)
    # nothing was rewritten: no row got a new tuple version
    assert conn.execute("SELECT sum(xmin::text::bigint) FROM docs").fetchone() == before


def test_changed_text_is_reembedded_and_blanked_text_loses_its_vector(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 300)
    old = dict(conn.execute("SELECT id, emb::text FROM docs WHERE id IN (1, 2, 3)").fetchall())
    conn.execute("UPDATE docs SET body = body || ' (edited)' WHERE id IN (1, 2)")
    conn.execute("UPDATE docs SET body = '' WHERE id = 3")

    again = materialize_partitions(space, dagster_instance)

    assert totals(again, "rows_embedded") == 2
    assert totals(again, "rows_cleared") == 1
    new = dict(conn.execute("SELECT id, emb::text FROM docs WHERE id IN (1, 2, 3)").fetchall())
    assert new[1] != old[1] and new[2] != old[2]
    assert new[3] is None
    body, digest = conn.execute("SELECT body, emb_text_hash FROM docs WHERE id = 1").fetchone()
    assert digest == hashlib.sha256(body.encode()).digest()


def test_new_rows_get_new_partitions_and_old_ones_stay(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 400)
    space = make_space()
    materialize_target(space, dagster_instance)
    name = id_range_partitions_name(space)
    assert dagster_instance.get_dynamic_partitions(name) == ["00000_min"]
    # fewer new rows than a partition holds: the last range (open above) takes them
    conn.execute("INSERT INTO docs SELECT g, 'late row ' || g FROM generate_series(5000, 5010) g")
    assert materialize_target(space, dagster_instance)["partitions_added"] == 0
    # a partition's worth: a range of their own, starting at the first new key
    conn.execute("INSERT INTO docs SELECT g, 'later row ' || g FROM generate_series(6000, 6600) g")
    meta = materialize_target(space, dagster_instance)
    assert meta["partitions_added"] == 1
    assert sorted(dagster_instance.get_dynamic_partitions(name)) == ["00000_min", "00001_5000"]
    # no row the first range covered moved: it ends where the new keys begin
    bounds = conn.execute(
        "SELECT partition_key, lower_bound, upper_bound FROM embedding_backfills.key_ranges"
        " WHERE space = %s ORDER BY seq",
        (space.name,),
    ).fetchall()
    assert bounds == [("00000_min", None, "5000"), ("00001_5000", "5000", None)]


def test_wide_vectors_take_the_out_of_line_write_path(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    """Above 495 dims vectors are TOASTed and written by executemany instead of COPY."""
    space, runs = embedded_docs(conn, dagster_instance, 260, model={"dimensions": 1024})
    expected = non_empty_count(conn)
    assert totals(runs, "rows_embedded") == expected
    row = conn.execute(
        "SELECT count(emb), min(vector_dims(emb)), count(DISTINCT emb_model_key) FROM docs"
    ).fetchone()
    assert row == (expected, 1024, 1)
    body, vector = conn.execute("SELECT body, emb::real[] FROM docs WHERE id = 1").fetchone()
    expected_vector = build_provider(space.model).embed([body]).vectors[0]
    assert np.allclose(np.asarray(vector, dtype=np.float32), expected_vector, atol=1e-6)
    assert totals(materialize_partitions(space, dagster_instance), "rows_skipped") == expected


def test_reading_a_page_starts_no_parallel_worker(
    conn: psycopg.Connection, db_url: str, dagster_instance: DagsterInstance
) -> None:
    """A page is a few hundred rows by the key: a parallel worker's startup costs more than
    it saves, on every page of a backfill. Here the planner is made to like parallel plans
    (as it does on a large table's range), and the reader must still read serially."""
    create_docs(conn, 1200)
    space = make_space()
    materialize_target(space, dagster_instance)
    key = inspect_table(conn, space).key
    query = sql.SQL("EXPLAIN ") + page_query(space, key, KeyRange(), True)
    params = {"key": 1, "limit": 100, "after": None}
    with psycopg.connect(db_url, autocommit=True) as reader:
        for setting in (
            "parallel_setup_cost",
            "parallel_tuple_cost",
            "min_parallel_index_scan_size",
            "min_parallel_table_scan_size",
        ):
            reader.execute(sql.SQL("SET {} = 0").format(sql.Identifier(setting)))

        def plan() -> str:
            return "\n".join(str(row[0]) for row in reader.execute(query, params))

        assert "Gather" in plan()  # without the reader's setting, this page would go parallel
        page = next(iter_pages(reader, space, key, KeyRange(), 1, 100))
        assert len(page.ids) == 100
        assert "Gather" not in plan()


def test_a_page_reads_only_its_own_range_of_a_destination_table(
    conn: psycopg.Connection, db_url: str, dagster_instance: DagsterInstance
) -> None:
    """A backfill's later partitions must not re-read the vectors written before them. At 5M
    rows the planner chose a merge join that walked the destination's key from its first
    row on every page (3.5-4.5 s a page at 4.4M rows); here it is made to, on a partition
    after 3,000 embedded rows, and the destination's side must stay within the page's range."""
    from embedding_assets.pipeline.backfill import embed_range

    create_docs(conn, 4000)
    space = make_space(destination="table", partition_size=1000)
    materialize_target(space, dagster_instance)
    embed_range(space, build_provider(space.model), KeyRange(None, "3001"))
    key = inspect_table(conn, space).key
    later = KeyRange("3001", None)
    query = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + page_query(space, key, later, False)
    with psycopg.connect(db_url, autocommit=True) as reader:
        reader.execute("SET enable_nestloop = off")
        reader.execute("SET enable_hashjoin = off")
        plan = reader.execute(query, {"key": 1, "limit": 100, "after": "3500"}).fetchone()[0]

    def nodes(node: dict) -> list[dict]:
        return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]

    every = nodes(plan[0]["Plan"])
    assert any(n["Node Type"] == "Merge Join" for n in every), every
    (scan,) = [n for n in every if n.get("Alias") == "e"]
    assert scan["Actual Rows"] == 0, scan  # nothing is stored after key 3500 yet
    page = next(iter_pages(conn, space, key, later, 1, 100))
    assert page.ids[0] == 3001 and not any(page.done)
