"""`destination: table`: the vectors in a table of their own, the source table left alone.

On the real embedded database, through Dagster: the whole life (target, partitions, the four
checks, index, activation, rollback, retention) with the source table never altered and
never updated; rows deleted from the source vanish from the read path at once, fail
`complete`, and are deleted by the partition run; another model's rows are never written
over; every key type; a destination name that belongs to something else is refused.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from conftest import (
    create_docs,
    execute_checks,
    make_space,
    materialize_partitions,
    materialize_target,
    metadata_of,
    non_empty_count,
    run_asset,
)
from dagster import AssetKey, DagsterInstance

from embedding_assets.config import SpaceConfig
from embedding_assets.errors import ConfigError
from embedding_assets.lifecycle.activation import rollback
from embedding_assets.lifecycle.read_path import search
from embedding_assets.lifecycle.retention import backup_space, drop_retired_space
from embedding_assets.providers import build_provider

DEST = "embedding_backfills.docs_emb"


def table_space(**overrides: object) -> SpaceConfig:
    return make_space(destination="table", **overrides)


def source_state(conn: psycopg.Connection) -> tuple[object, ...]:
    """What altering or updating `docs` would change: its columns, indexes, triggers, size,
    and the tuples it updated or left dead."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    return conn.execute(
        "SELECT (SELECT array_agg(attname ORDER BY attnum) FROM pg_attribute"
        "        WHERE attrelid = 'docs'::regclass AND attnum > 0 AND NOT attisdropped),"
        " (SELECT count(*) FROM pg_index WHERE indrelid = 'docs'::regclass),"
        " (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass),"
        " pg_relation_size('docs'), s.n_tup_upd, s.n_dead_tup"
        " FROM pg_stat_user_tables s WHERE s.relid = 'docs'::regclass"
    ).fetchone()


def dest_rows(conn: psycopg.Connection) -> int:
    return conn.execute(f"SELECT count(*) FROM {DEST}").fetchone()[0]


def activate(space: SpaceConfig, instance: DagsterInstance) -> None:
    run_asset(space, instance, "hnsw_index")
    run_asset(space, instance, "registry")


def test_the_whole_life_leaves_the_source_table_alone(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    create_docs(conn, 1200)
    before = source_state(conn)
    space = table_space(retention={"backup_dir": str(tmp_path), "delay_hours": 0})
    target = materialize_target(space, dagster_instance)
    runs = materialize_partitions(space, dagster_instance)
    assert sum(int(m["rows_embedded"]) for m in runs) == non_empty_count(conn)
    assert dest_rows(conn) == non_empty_count(conn)
    checks = execute_checks(space, dagster_instance)
    assert all(c["passed"] for c in checks.values()), checks
    activate(space, dagster_instance)

    # nothing about the source table changed: no column, index or trigger, no write at all
    assert source_state(conn) == before
    assert target["destination"] == "table" and target["vectors"] == f"{DEST}.emb"
    index = conn.execute(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass"
        " AND NOT indisprimary",
        (DEST,),
    ).fetchall()
    assert index == [("embedding_backfills.docs_emb_hnsw",)]

    # the read view serves the space with the destination's HNSW index
    # a table this small is cheaper to sort; what is shown is that the index can serve it
    conn.execute("SET enable_seqscan = off")
    conn.execute("SET enable_sort = off")
    plan = "\n".join(
        r[0]
        for r in conn.execute(
            "EXPLAIN SELECT id FROM docs_embedding ORDER BY embedding <=> "
            "(SELECT embedding FROM docs_embedding WHERE id = 17) LIMIT 5"
        )
    )
    conn.execute("RESET enable_seqscan")
    conn.execute("RESET enable_sort")
    assert "docs_emb_hnsw" in plan, plan
    result = search(conn, "docs", "document number 17 about topic 3", k=3, config=_project(space))
    assert result.hits[0].id == 17 and result.space == space.name

    # a re-run writes nothing, and still does not touch the source
    again = materialize_partitions(space, dagster_instance)
    assert sum(int(m["rows_embedded"]) for m in again) == 0
    assert source_state(conn) == before


def _project(*spaces: SpaceConfig):  # type: ignore[no-untyped-def]
    from embedding_assets.config import ProjectConfig

    return ProjectConfig.model_construct(spaces=list(spaces))


def test_deleted_rows_vanish_from_the_read_path_fail_complete_and_are_deleted_by_the_run(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 1200)
    space = table_space()
    materialize_target(space, dagster_instance)
    materialize_partitions(space, dagster_instance)
    activate(space, dagster_instance)
    conn.execute("DELETE FROM docs WHERE id IN (3, 4, 1101)")

    # applications never find a deleted row, not even before any run
    visible = conn.execute("SELECT count(*) FROM docs_embedding WHERE id IN (3, 4, 1101)")
    assert visible.fetchone() == (0,)
    assert dest_rows(conn) == non_empty_count(conn) + 3

    complete = execute_checks(space, dagster_instance)["complete"]
    assert not complete["passed"]
    assert complete["vectors_of_deleted_rows"] == 3
    assert complete["partitions_to_rerun"] == ["00000_min", "00002_1001"]
    assert complete["example_ids"] == [3, 4, 1101]

    for partition in complete["partitions_to_rerun"]:
        result = run_asset(space, dagster_instance, "embeddings", partition_key=partition)
        cleared = metadata_of(result, AssetKey([space.name, "embeddings"]))["rows_cleared"]
        assert cleared == (2 if partition == "00000_min" else 1)
    assert dest_rows(conn) == non_empty_count(conn)
    assert all(c["passed"] for c in execute_checks(space, dagster_instance).values())


def test_edits_blanks_and_another_models_rows(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 600)
    space = table_space()
    materialize_target(space, dagster_instance)
    materialize_partitions(space, dagster_instance)
    key = build_provider(space.model).identity.key
    conn.execute("UPDATE docs SET body = 'an edited body' WHERE id = 7")
    conn.execute("UPDATE docs SET body = '   ' WHERE id = 8")
    # a row another model wrote into this space's table: never overwritten, never deleted
    conn.execute(f"UPDATE {DEST} SET emb_model_key = 42 WHERE id IN (9, 11)")
    conn.execute("UPDATE docs SET body = 'edited under another model' WHERE id = 9")
    conn.execute("DELETE FROM docs WHERE id = 11")
    old9 = conn.execute(f"SELECT emb::text FROM {DEST} WHERE id = 9").fetchone()

    # the partition run's own checks fail on row 9 (`one_model`), after it wrote
    result = run_asset(
        space, dagster_instance, "embeddings", partition_key="00000_min", raise_on_error=False
    )
    # rows 7 and 9 are embedded; only 7 is written (9's row belongs to the other model)
    assert metadata_of(result, AssetKey([space.name, "embeddings"]))["rows_embedded"] == 2
    rows = dict(conn.execute(f"SELECT id, emb_model_key FROM {DEST} WHERE id IN (7, 8, 9, 11)"))
    assert rows == {7: key, 9: 42, 11: 42}  # 8 lost its vector with its text
    assert conn.execute(f"SELECT emb::text FROM {DEST} WHERE id = 9").fetchone() == old9
    checks = execute_checks(space, dagster_instance)
    assert not checks["one_model"]["passed"]
    assert checks["one_model"]["example_ids"] == [9]


@pytest.mark.parametrize(
    ("id_type", "key_sql"),
    [
        ("uuid", "md5(g::text)::uuid"),
        ('text COLLATE "C"', "'k,[]*é' || lpad(g::text, 5, '0')"),
        # the type's minimum and maximum, negatives and positives interleaved
        ("smallint", "(CASE WHEN g % 2 = 0 THEN 32769 - g ELSE g - 32769 END)::smallint"),
    ],
)
def test_every_key_type(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, id_type: str, key_sql: str
) -> None:
    conn.execute(f"CREATE TABLE docs (id {id_type} PRIMARY KEY, body text)")
    conn.execute(
        f"INSERT INTO docs SELECT {key_sql}, 'text of row ' || g FROM generate_series(1, 600) g"
        " ON CONFLICT DO NOTHING"
    )
    space = table_space(partition_size=150)
    materialize_target(space, dagster_instance)
    materialize_partitions(space, dagster_instance)
    assert all(c["passed"] for c in execute_checks(space, dagster_instance).values())
    assert dest_rows(conn) == conn.execute("SELECT count(*) FROM docs").fetchone()[0]
    # the destination key has the source key's type (and collation)
    assert (
        conn.execute(
            "SELECT format_type(atttypid, atttypmod), attcollation::regcollation::text"
            " FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'id'",
            (DEST,),
        ).fetchone()
        == conn.execute(
            "SELECT format_type(atttypid, atttypmod), attcollation::regcollation::text"
            " FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attname = 'id'"
        ).fetchone()
    )


def test_rollback_and_retention_of_a_destination_table(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    create_docs(conn, 400)
    first = table_space(retention={"backup_dir": str(tmp_path), "delay_hours": 0})
    second = make_space(target_column="emb2")  # the next space: a column, for contrast
    for space in (first, second):
        materialize_target(space, dagster_instance)
        materialize_partitions(space, dagster_instance)
        activate(space, dagster_instance)
    project = _project(first, second)
    assert {r[0] for r in conn.execute("SELECT DISTINCT space FROM docs_embedding")} == {
        second.name
    }
    rollback(conn, project, "public.docs")
    assert {r[0] for r in conn.execute("SELECT DISTINCT space FROM docs_embedding")} == {first.name}
    activate(second, dagster_instance)  # retire `first` again, then back it up and drop it
    backup = backup_space(conn, first)
    assert backup.rows == non_empty_count(conn)
    dropped = drop_retired_space(conn, first)
    assert DEST in dropped
    assert conn.execute("SELECT to_regclass(%s)", (DEST,)).fetchone() == (None,)
    assert conn.execute("SELECT count(emb2) FROM docs").fetchone()[0] == non_empty_count(conn)


def test_a_destination_name_that_belongs_to_something_else_is_refused(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 100)
    conn.execute("CREATE TABLE other (id text PRIMARY KEY, emb vector(16))")
    space = table_space(destination_table="public.other")
    result = run_asset(space, dagster_instance, "target_column", raise_on_error=False)
    assert not result.success
    message = str(result.all_events)
    assert "its key column 'id' is text, not bigint" in message
    assert "set destination_table to a new name" in message
    assert conn.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'docs'"
    ).fetchone() == (2,)
    with pytest.raises(ConfigError, match="destination_key need `destination: table`"):
        make_space(destination_table="x")
    with pytest.raises(ConfigError, match="same destination_table"):
        from embedding_assets.config import parse_config

        parse_config(
            {
                "spaces": [
                    {**_raw(space), "name": "a", "destination_table": "v.t"},
                    {**_raw(space), "name": "b", "target_column": "e2", "destination_table": "v.t"},
                ]
            }
        )


def _raw(space: SpaceConfig) -> dict[str, object]:
    return space.model_dump(exclude_defaults=True)


def test_adopting_a_side_table_keyed_by_another_column(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    """Honcho's shape: `messages(public_id text)`, and `message_embeddings` with its own
    bigint key and the message's id in `message_id`. Adopt it; build the next space in a
    destination table; the read view follows activation; rollback returns to the side table."""
    from pgvector.psycopg import register_vector

    from embedding_assets.lifecycle.adoption import adopt_column

    conn.execute("CREATE TABLE messages (public_id text PRIMARY KEY, content text NOT NULL)")
    conn.execute(
        "INSERT INTO messages SELECT 'msg_' || md5(g::text), 'message ' || g || ' on topic '"
        " || (g % 9) FROM generate_series(1, 300) g"
    )
    conn.execute(
        "CREATE TABLE message_embeddings (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " message_id text NOT NULL UNIQUE REFERENCES messages (public_id),"
        " embedding vector(32))"
    )
    common = {"table": "messages", "id_column": "public_id", "text_column": "content"}
    legacy = make_space(
        **common,
        name="messages_legacy",
        destination="table",
        destination_table="public.message_embeddings",
        destination_key="message_id",
        target_column="embedding",
        adopt=True,
        model={"name": "legacy-32", "dimensions": 32},
    )
    provider = build_provider(legacy.model)
    rows = conn.execute("SELECT public_id, content FROM messages").fetchall()
    register_vector(conn)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO message_embeddings (message_id, embedding) VALUES (%s, %s)",
            list(
                zip([r[0] for r in rows], provider.embed([r[1] for r in rows]).vectors, strict=True)
            ),
        )
    adopted = adopt_column(conn, legacy, provider)
    assert adopted.record.status == "active" and adopted.sample.passed
    served = "SELECT DISTINCT space FROM messages_embedding"
    assert conn.execute(served).fetchall() == [("messages_legacy",)]
    assert conn.execute("SELECT count(*) FROM messages_embedding").fetchone() == (300,)

    new = make_space(**common, name="messages_new", destination="table", target_column="emb")
    materialize_target(new, dagster_instance)
    materialize_partitions(new, dagster_instance)
    activate(new, dagster_instance)
    assert conn.execute(served).fetchall() == [("messages_new",)]
    rollback(conn, _project(legacy, new), "public.messages")
    assert conn.execute(served).fetchall() == [("messages_legacy",)]
    # the side table was only read: every row as it was, no column added
    assert conn.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'message_embeddings'"
    ).fetchone() == (3,)


def test_status_reads_the_destination_table(
    conn: psycopg.Connection,
    dagster_instance: DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from dagster_dev import write_spaces_config
    from typer.testing import CliRunner

    from embedding_assets.cli import app

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("EMBEDDING_BACKFILLS_DAGSTER_HOME", str(tmp_path / "dagster_home"))
    create_docs(conn, 300)
    space = table_space(partition_size=200)
    materialize_target(space, dagster_instance)
    materialize_partitions(space, dagster_instance)
    activate(space, dagster_instance)
    conn.execute("DELETE FROM docs WHERE id = 1")
    monkeypatch.setenv(
        "EMBEDDING_BACKFILLS_CONFIG", str(write_spaces_config(tmp_path / "s.yaml", space))
    )
    result = CliRunner().invoke(app, ["status", space.name, "--json"])
    assert result.exit_code == 0, result.output
    (status,) = json.loads(result.stdout)["spaces"]
    assert status["rows"]["embedded"] == non_empty_count(conn)
    assert status["rows"]["missing"] == status["rows"]["stale"] == 0
    assert status["indexes"] == [{"name": "docs_emb_hnsw", "valid": True, "method": "hnsw"}]


def test_a_batch_holding_rows_is_written_whole_after_the_fast_copy_is_refused(
    conn: psycopg.Connection, db_url: str
) -> None:
    """The writer COPYs a batch without probing while batches hold nothing: a held row makes
    the primary key refuse it, and the batch must then be written whole, the careful way,
    in one transaction, never over another model's row; and the next new batch is fast again."""
    import numpy as np

    from embedding_assets.db.introspect import relation
    from embedding_assets.db.keys import inspect_key
    from embedding_assets.pipeline.target import prepare_target_column
    from embedding_assets.pipeline.writer import VectorWriter

    create_docs(conn, 50)
    space = table_space()
    provider = build_provider(space.model)
    prepare_target_column(conn, space, provider)
    key = inspect_key(conn, space, relation(conn, "public", "docs")[0])  # type: ignore[index]
    dims = space.model.dimensions

    def batch(ids: list[int], value: float) -> tuple[list[object], np.ndarray, list[bytes]]:
        vectors = np.zeros((len(ids), dims), np.float32)
        vectors[:, 0] = value
        return list(ids), vectors, [bytes([i]) * 32 for i in ids]

    mine = provider.identity.key
    with psycopg.connect(db_url, autocommit=True) as write_conn:
        writer = VectorWriter(write_conn, space, mine, key)
        assert writer.write(*batch([1, 2, 3, 4, 5], 1.0), []) == 5
        conn.execute(f"UPDATE {DEST} SET emb_model_key = 42 WHERE id = 4")  # another model's
        # 3 and 5 are held (re-embedded), 4 is another model's, 6-8 are new; 2 is cleared
        assert writer.write(*batch([3, 4, 5, 6, 7, 8], 2.0), [2]) == 5
        assert writer.write(*batch([9, 10], 3.0), []) == 2

    stored = dict(conn.execute(f"SELECT id, emb_model_key FROM {DEST} ORDER BY id").fetchall())
    assert stored == {
        1: mine,
        3: mine,
        4: 42,
        5: mine,
        6: mine,
        7: mine,
        8: mine,
        9: mine,
        10: mine,
    }
    first = dict(conn.execute(f"SELECT id, (emb::real[])[1] FROM {DEST}").fetchall())
    assert first == {1: 1.0, 3: 2.0, 4: 1.0, 5: 2.0, 6: 2.0, 7: 2.0, 8: 2.0, 9: 3.0, 10: 3.0}
