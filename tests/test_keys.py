"""Every supported key over its whole range: integers at both ends and negative, uuid v4 and
v7, text with the characters Dagster keys must avoid, char(n); layouts that stay balanced,
complete and stable; text compared in its index's collation."""

from __future__ import annotations

import re

import psycopg
import pytest
from conftest import (
    execute_checks,
    make_space,
    materialize_partitions,
    materialize_target,
    run_asset,
)
from dagster import DagsterInstance
from psycopg import sql

from embedding_assets.config import SpaceConfig
from embedding_assets.db.introspect import inspect_table
from embedding_assets.defs.partitions import id_range_partitions_name
from embedding_assets.pipeline.partitions import partition_of, range_filter, recorded_ranges
from embedding_assets.reports.plan import count_outside_filter

# Generators for N keys of each kind, as SQL over generate_series(1, N) g.
KEY_KINDS = {
    "uuid v4": ("uuid", "gen_random_uuid()"),
    "uuid v7": ("uuid", "uuidv7()"),
    # 21 characters of [A-Za-z0-9_-], like a nanoid
    "nanoid": (
        "text",
        "translate(substr(encode(sha256((g || random()::text)::bytea), 'base64'), 1, 21),"
        " '+/', '_-')",
    ),
    "sparse bigint": ("bigint", "g * 7919 - 5000000"),
}


def create_keyed(conn: psycopg.Connection, key_type: str, ids_sql: str, rows: int) -> None:
    conn.execute(f"CREATE TABLE docs (id {key_type} PRIMARY KEY, body text)")
    add_rows(conn, ids_sql, 1, rows)


def add_rows(conn: psycopg.Connection, ids_sql: str, first: int, last: int) -> None:
    conn.execute(
        f"INSERT INTO docs SELECT {ids_sql}, 'document ' || g || ' on topic ' || (g %% 7)"
        " FROM generate_series(%s::int, %s::int) g",
        (first, last),
    )


def range_sizes(conn: psycopg.Connection, space: SpaceConfig) -> list[int]:
    key = inspect_table(conn, space).key
    return [
        conn.execute(
            sql.SQL("SELECT count(*) FROM docs AS t WHERE {}").format(range_filter(key, r))
        ).fetchone()[0]
        for r in recorded_ranges(conn, space)
    ]


def partition_by_row(conn: psycopg.Connection, space: SpaceConfig) -> dict[str, str]:
    key = inspect_table(conn, space).key
    query = sql.SQL("SELECT id::text, {} FROM docs").format(
        partition_of(key, space, sql.SQL("docs.id"))
    )
    return dict(conn.execute(query).fetchall())


@pytest.mark.parametrize("kind", sorted(KEY_KINDS))
def test_layout_is_balanced_complete_and_stable(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, kind: str
) -> None:
    key_type, ids_sql = KEY_KINDS[kind]
    create_keyed(conn, key_type, ids_sql, 2000)
    space = make_space(partition_size=200)
    materialize_target(space, dagster_instance)

    sizes = range_sizes(conn, space)
    assert sum(sizes) == 2000  # complete: every row in exactly one range
    assert len(sizes) == 10 and max(sizes) <= 2 * (sum(sizes) / len(sizes))
    before = partition_by_row(conn, space)

    add_rows(conn, ids_sql, 2001, 3000)  # a thousand more, wherever this kind puts them
    materialize_target(space, dagster_instance)

    after = partition_by_row(conn, space)
    assert {k: after[k] for k in before} == before  # stable: no covered row moved
    sizes = range_sizes(conn, space)
    assert sum(sizes) == 3000
    assert max(sizes) <= 2 * (sum(sizes) / len(sizes)), sizes
    keys = dagster_instance.get_dynamic_partitions(id_range_partitions_name(space))
    assert keys == sorted(keys) == [r.partition_key for r in recorded_ranges(conn, space)]


# Each: the key's SQL type, literal keys (the edges of the type and awkward text), and the
# kind of text the key is.
EDGE_KEYS = {
    "bigint": (
        "bigint",
        ["-9223372036854775808", "-9223372036854775807", "-1", "0", "1", "9223372036854775807"],
    ),
    "smallint": ("smallint", ["-32768", "-1", "0", "32767"]),
    "integer": ("integer", ["-2147483648", "0", "2147483647"]),
    "uuid": (
        "uuid",
        ["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"],
    ),
    "text": (
        "text",
        ["a,b", "[x]", "*", "with space", "żółw", "...", "", " ", "😀", "a" * 500, "it's"],
    ),
    "varchar": ("varchar(40)", ["v,1", "v[2]", "v*3", "v...4"]),
    "char": ("char(21)", ["V1StGXR8_Z5jdHi6B-myT", "short", "x"]),
}


@pytest.mark.parametrize("name", sorted(EDGE_KEYS))
def test_every_key_type_through_build_checks_index_and_activation(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, name: str
) -> None:
    key_type, edges = EDGE_KEYS[name]
    conn.execute(f"CREATE TABLE docs (id {key_type} PRIMARY KEY, body text)")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO docs VALUES (%s, %s)",
            [(k, f"edge key text {i}") for i, k in enumerate(edges)],
        )
    if key_type not in ("smallint",):  # fill a few partitions between the edges
        filler = {
            "uuid": "gen_random_uuid()",
            "text": "'row ' || g",
            "varchar(40)": "'row ' || g",
            "char(21)": "'row ' || g",
        }.get(key_type, "g * 1000")
        add_rows(conn, filler, 1, 250)
    space = make_space(partition_size=50)
    materialize_target(space, dagster_instance)
    keys = dagster_instance.get_dynamic_partitions(id_range_partitions_name(space))
    # legal and readable: no `,[]*` or `...`, short enough for the UI's partition list
    assert all(re.fullmatch(r"\d{5}_[A-Za-z0-9_~-]+", k) and len(k) <= 20 for k in keys), keys

    materialize_partitions(space, dagster_instance)
    results = execute_checks(space, dagster_instance)
    assert all(r["passed"] for r in results.values()), results
    total = conn.execute("SELECT count(*), count(emb) FROM docs").fetchone()
    assert total[0] == total[1]  # every row, the edges included, has its vector
    run_asset(space, dagster_instance, "hnsw_index")
    run_asset(space, dagster_instance, "registry")
    status = conn.execute(
        "SELECT status FROM embedding_backfills.vector_spaces WHERE name = %s", (space.name,)
    ).fetchone()
    assert status == ("active",)


def test_wide_vectors_with_text_keys_take_the_out_of_line_write_path(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    conn.execute("CREATE TABLE docs (id char(12) PRIMARY KEY, body text)")
    add_rows(conn, "'k' || g", 1, 120)
    space = make_space(model={"dimensions": 1024}, partition_size=50)
    materialize_target(space, dagster_instance)
    materialize_partitions(space, dagster_instance)
    assert conn.execute("SELECT count(emb), min(vector_dims(emb)) FROM docs").fetchone() == (
        120,
        1024,
    )


def test_text_keys_compare_in_the_collation_of_their_unique_index(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    """The column has one collation, its unique index another: layout, pages, batch bounds
    and partition lookups all compare in the index's (COLLATE in every query), so they use
    the index and agree with each other. (This build has no ICU, so no collation here
    orders differently from "C"; the queries are still the ones a different one gets.)"""
    conn.execute('CREATE TABLE docs (id text COLLATE "C" NOT NULL, body text)')
    conn.execute('CREATE UNIQUE INDEX docs_id ON docs (id COLLATE "pg_c_utf8")')
    add_rows(conn, "(ARRAY['a', 'B', 'b', 'A', 'ä'])[1 + g %% 5] || g", 1, 400)
    space = make_space(partition_size=60)
    materialize_target(space, dagster_instance)
    key = inspect_table(conn, space).key
    assert key.collation == "pg_catalog.pg_c_utf8"
    assert sum(range_sizes(conn, space)) == 400
    materialize_partitions(space, dagster_instance)
    assert conn.execute("SELECT count(emb) FROM docs").fetchone() == (400,)
    assert all(r["passed"] for r in execute_checks(space, dagster_instance).values())


def test_a_row_that_leaves_the_where_filter_loses_its_vector(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    conn.execute("CREATE TABLE docs (id uuid PRIMARY KEY, body text, deleted_at timestamptz)")
    add_rows(conn, "gen_random_uuid()", 1, 300)
    conn.execute("UPDATE docs SET deleted_at = now() WHERE body LIKE 'document 1%%'")
    space = make_space(partition_size=100, where="deleted_at IS NULL")
    materialize_target(space, dagster_instance)
    materialize_partitions(space, dagster_instance)
    live = conn.execute("SELECT count(*) FROM docs WHERE deleted_at IS NULL").fetchone()[0]
    assert conn.execute("SELECT count(emb) FROM docs").fetchone() == (live,)
    complete = execute_checks(space, dagster_instance)["complete"]
    assert complete["passed"] and complete["rows_with_text"] == live  # deleted: not missing
    assert count_outside_filter(conn, space) == 300 - live  # plan and status report them

    conn.execute("UPDATE docs SET deleted_at = now() WHERE body = 'document 42 on topic 0'")
    assert execute_checks(space, dagster_instance)["complete"]["vectors_without_text"] == 1
    materialize_partitions(space, dagster_instance)  # the next run clears it
    assert conn.execute(
        "SELECT emb IS NULL, emb_text_hash IS NULL FROM docs WHERE body = 'document 42 on topic 0'"
    ).fetchone() == (True, True)
    assert all(r["passed"] for r in execute_checks(space, dagster_instance).values())


def test_key_values_that_look_like_sql_or_placeholders_work_as_range_bounds(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    """Bounds go into queries as quoted literals: with one row per partition every key is a
    bound, so a quote, a backslash or a `%s` in one must be quoted, never interpreted."""
    keys = ["it's", "50%off", "%s", "%(key)s", "back\\slash", "'; DROP TABLE docs; --", "{}"]
    conn.execute("CREATE TABLE docs (id text PRIMARY KEY, body text)")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO docs VALUES (%s, %s)", [(k, f"text of {i}") for i, k in enumerate(keys)]
        )
    space = make_space(partition_size=1)
    materialize_target(space, dagster_instance)
    assert len(recorded_ranges(conn, space)) == len(keys)
    runs = materialize_partitions(space, dagster_instance)
    assert [m["rows_embedded"] for m in runs] == [1] * len(keys)  # each range: its one row
    assert conn.execute("SELECT count(emb) FROM docs").fetchone() == (len(keys),)
    assert all(r["passed"] for r in execute_checks(space, dagster_instance).values())
