"""With automation on, the index is requested once every partition is in and the checks
passed, and never otherwise."""

from __future__ import annotations

import psycopg
from conftest import (
    create_docs,
    embedded_docs,
    execute_checks,
    make_space,
    materialize_target,
    resources,
    run_asset,
)
from dagster import DagsterInstance, Definitions, evaluate_automation_conditions

from embedding_assets.defs.assets import build_space_assets
from embedding_assets.defs.checks import build_space_checks
from embedding_assets.defs.keys import hnsw_index_key
from embedding_assets.defs.partitions import id_range_partitions_name
from embedding_assets.defs.visibility import build_visibility_assets


def _defs(space) -> Definitions:  # type: ignore[no-untyped-def]
    return Definitions(
        assets=[*build_space_assets(space), *build_visibility_assets(space)],
        asset_checks=[build_space_checks(space)],
        resources=resources(),
    )


def test_index_is_requested_only_when_complete_and_checked(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 1200)
    space = make_space()
    materialize_target(space, dagster_instance)
    keys = sorted(dagster_instance.get_dynamic_partitions(id_range_partitions_name(space)))
    run_asset(space, dagster_instance, "embeddings", partition_key=keys[0])

    tick = evaluate_automation_conditions(_defs(space), dagster_instance)
    assert tick.get_num_requested(hnsw_index_key(space)) == 0  # partitions missing

    for key in keys[1:]:
        run_asset(space, dagster_instance, "embeddings", partition_key=key)
    tick = evaluate_automation_conditions(_defs(space), dagster_instance, cursor=tick.cursor)
    assert tick.get_num_requested(hnsw_index_key(space)) == 1  # complete and checks passed


def test_index_is_not_requested_when_a_check_failed(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    space, _ = embedded_docs(conn, dagster_instance, 600)
    conn.execute("UPDATE docs SET emb_model_key = 7 WHERE id = 1")
    assert not execute_checks(space, dagster_instance)["one_model"]["passed"]

    tick = evaluate_automation_conditions(_defs(space), dagster_instance)

    assert tick.get_num_requested(hnsw_index_key(space)) == 0
