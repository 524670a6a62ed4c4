"""A failed drift verdict is visible where applications look a space up.

A swapped model leaves the space `active`; `active_spaces` and `active_column(...)` carry
the latest verdict (`drift_status`, `trusted`, ...) so that an application can refuse to
embed its queries with a model that no longer matches. On a real database, with the drift
sensor ticks and the on-demand drift checks driven as the daemon and the UI would.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from conftest import embedded_docs, make_space, resources, run_asset
from dagster import AssetSelection, DagsterInstance, materialize
from openai_server import FakeEmbeddingsServer
from psycopg import sql
from psycopg.rows import dict_row
from test_drift import failed_checks, tick

from embedding_assets.db import migrations
from embedding_assets.db.registry import get_space, record_drift_verdict
from embedding_assets.defs.assets import build_space_assets
from embedding_assets.defs.checks import build_drift_checks
from embedding_assets.defs.keys import target_column_key

VERDICT = (
    "drift_status, drift_checked_at, drift_status_since, drift_failures, drift_detail, trusted"
)
ACTIVE_COLUMN = "embedding_backfills.active_column(regclass, text, text)"
# the columns of `active_spaces` as sql/002 created them, in order
ACTIVE_SPACES_002 = [
    "table_schema",
    "table_name",
    "column_name",
    "space",
    "provider",
    "model",
    "revision",
    "dimensions",
    "normalize",
    "index_name",
    "index_expression",
    "validated_at",
    "activated_at",
]


def model(server: FakeEmbeddingsServer) -> dict[str, object]:
    return {
        "provider": "openai",
        "name": "nomic-embed-text",
        "dimensions": 8,
        "base_url": server.base_url,
        "max_retries": 0,
    }


def looked_up(conn: psycopg.Connection) -> tuple[dict, dict]:
    """The verdict as `active_spaces` and as `active_column('public.docs')` show it."""
    with conn.cursor(row_factory=dict_row) as cur:
        (view,) = cur.execute(
            f"SELECT {VERDICT} FROM embedding_backfills.active_spaces WHERE table_name = 'docs'"
        ).fetchall()
        (function,) = cur.execute(
            f"SELECT {VERDICT} FROM embedding_backfills.active_column('public.docs')"
        ).fetchall()
    return view, function


def verdict(conn: psycopg.Connection) -> dict:
    view, function = looked_up(conn)
    assert view == function  # one verdict, the same through both lookups
    return view


def trusted_columns(conn: psycopg.Connection) -> list[tuple]:
    """What an application that refuses an untrusted model gets."""
    return conn.execute(
        "SELECT column_name FROM embedding_backfills.active_column('public.docs', 'openai',"
        " 'nomic-embed-text') WHERE trusted"
    ).fetchall()


def test_a_swapped_model_shows_failed_in_active_spaces_until_it_is_back(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    with FakeEmbeddingsServer(dims=8, salt="model-a") as server:
        space, _ = embedded_docs(conn, dagster_instance, 600, model=model(server))
        run_asset(space, dagster_instance, "hnsw_index")
        run_asset(space, dagster_instance, "registry")
        never = verdict(conn)
        assert never["drift_status"] is None and never["trusted"] is True  # not checked yet
        first = tick(space, dagster_instance, None)
    ok = verdict(conn)
    assert ok["drift_status"] == "ok" and ok["trusted"] is True
    assert ok["drift_failures"] == [] and ok["drift_detail"] is None
    assert ok["drift_checked_at"] is not None and ok["drift_status_since"] == ok["drift_checked_at"]
    assert trusted_columns(conn) == [("emb",)]

    with FakeEmbeddingsServer(dims=8, salt="model-b") as swapped:
        same = make_space(name=space.name, model=model(swapped))
        result = tick(same, dagster_instance, first.cursor)
    assert list(failed_checks(result)) == ["model_fingerprint"]
    failed = verdict(conn)
    assert failed["drift_status"] == "failed" and failed["trusted"] is False
    assert failed["drift_failures"] == ["model_fingerprint"]
    assert failed["drift_detail"].startswith("model_fingerprint: silent model swap")
    assert failed["drift_status_since"] == failed["drift_checked_at"] > ok["drift_checked_at"]
    # a short reason: no row text, no endpoint address
    assert "document" not in failed["drift_detail"] and "127.0.0.1" not in failed["drift_detail"]
    assert trusted_columns(conn) == []  # the application refuses to embed with this model
    status = conn.execute(
        "SELECT status FROM embedding_backfills.vector_spaces WHERE name = %s", (space.name,)
    ).fetchone()
    assert status == ("active",)  # still the table's active space: the verdict says why not

    # the endpoint is down: still failed, checked again, failing since the swap was found
    down = tick(same, dagster_instance, result.cursor)
    still = verdict(conn)
    assert still["drift_status"] == "failed" and still["trusted"] is False
    assert still["drift_checked_at"] > failed["drift_checked_at"]
    assert still["drift_status_since"] == failed["drift_status_since"]
    assert "could not be computed" in still["drift_detail"]

    with FakeEmbeddingsServer(dims=8, salt="model-a") as restored:
        back = make_space(name=space.name, model=model(restored))
        passed = tick(back, dagster_instance, down.cursor)
    assert failed_checks(passed) == {}
    again = verdict(conn)
    assert again["drift_status"] == "ok" and again["trusted"] is True
    assert again["drift_failures"] == [] and again["drift_detail"] is None
    assert again["drift_status_since"] == again["drift_checked_at"] > still["drift_checked_at"]
    assert trusted_columns(conn) == [("emb",)]


def test_the_on_demand_drift_checks_record_their_verdict_too(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 100)

    def execute_drift_checks() -> None:
        """The UI's "Execute checks" on `<name>/target_column`."""
        materialize(
            [*build_space_assets(space), build_drift_checks(space)],
            selection=AssetSelection.checks_for_assets(target_column_key(space)),
            instance=dagster_instance,
            resources=resources(),
            raise_on_error=False,
        )

    execute_drift_checks()
    record = get_space(conn, space.name)
    assert record is not None and record.drift_status == "ok" and record.trusted

    conn.execute("ALTER TABLE docs ALTER COLUMN emb TYPE vector(32) USING NULL")
    execute_drift_checks()
    record = get_space(conn, space.name)
    assert record is not None and record.drift_status == "failed" and not record.trusted
    assert record.drift_failures == ["config_matches"]
    assert record.drift_detail == (
        "config_matches: the target column has 32 dimensions, the space has 16"
    )


@pytest.fixture
def roles(conn: psycopg.Connection) -> Iterator[tuple[str, str]]:
    """Two throwaway roles (roles are per server, shared by every test database)."""
    names = (f"app_{uuid.uuid4().hex[:8]}", f"other_{uuid.uuid4().hex[:8]}")
    for name in names:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
    yield names
    for name in names:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_a_registry_from_before_the_verdict_is_migrated_keeping_its_grants(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, roles: tuple[str, str]
) -> None:
    every = migrations._migration_files()
    before = [p for p in every if p.name < "005"]
    monkeypatch.setattr(migrations, "_migration_files", lambda: before)
    migrations.apply_migrations(conn)
    conn.execute(
        "INSERT INTO embedding_backfills.vector_spaces (name, table_schema, table_name,"
        " column_name, provider, model, dimensions, normalize, model_key, fingerprint, status)"
        " VALUES ('old', 'public', 'docs', 'emb', 'hash', 'h', 16, true, 1, '{}', 'active')"
    )
    conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY)")
    function = sql.SQL(ACTIVE_COLUMN)
    conn.execute(sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM PUBLIC").format(function))
    conn.execute(
        sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(function, sql.Identifier(roles[0]))
    )
    old = get_space(conn, "old")
    assert old is not None and old.drift_status is None and old.trusted  # old rows parse

    # the first verdict written after the upgrade brings the registry up to date
    monkeypatch.setattr(migrations, "_migration_files", lambda: every)
    record_drift_verdict(conn, old.space_id, {"model_fingerprint": "a short reason"})
    assert verdict(conn) | {"drift_checked_at": None, "drift_status_since": None} == {
        "drift_status": "failed",
        "drift_checked_at": None,
        "drift_status_since": None,
        "drift_failures": ["model_fingerprint"],
        "drift_detail": "model_fingerprint: a short reason",
        "trusted": False,
    }
    # columns existing callers read stay in place, new ones come last
    columns = conn.execute(
        "SELECT array_agg(column_name::text ORDER BY ordinal_position)"
        " FROM information_schema.columns"
        " WHERE table_schema = 'embedding_backfills' AND table_name = 'active_spaces'"
    ).fetchone()
    expected = [*ACTIVE_SPACES_002, *VERDICT.split(", ")]
    assert columns is not None and columns[0][: len(expected)] == expected  # later files append
    assert columns[0][len(expected) :] == [
        "destination",
        "vector_schema",
        "vector_table",
        "storage",
        "truncated_from",
    ]
    # the grants survive the function being dropped and created again
    allowed = [
        conn.execute(
            "SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, ACTIVE_COLUMN)
        ).fetchone()
        for role in roles
    ]
    assert allowed == [(True,), (False,)]
