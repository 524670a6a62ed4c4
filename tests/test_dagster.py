"""The code location as Dagster sees it: loading, multi-partition runs, logs and metadata."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
from conftest import (
    create_docs,
    make_space,
    materialize_target,
    metadata_of,
    run_asset,
)
from dagster import DagsterInstance
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from embedding_assets.config import PROJECT_ROOT, parse_config
from embedding_assets.defs import build_definitions
from embedding_assets.defs.assets import build_space_assets, embeddings_key
from embedding_assets.defs.partitions import id_range_partitions_name

SPACE_ASSETS = ("target_column", "embeddings", "hnsw_index", "registry", "shadow_validation")


def test_workspace_loads_in_dagster() -> None:
    """What `dagster dev` does first: load workspace.yaml -> definitions.py."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DAGSTER_HOME": ""} | {"PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    defs = build_definitions()
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == {
        "docs_legacy/adoption",
        *(f"docs_minilm/{a}" for a in SPACE_ASSETS),
    }
    checks = {
        f"{k.asset_key.to_user_string()}:{k.name}"
        for k in defs.resolve_asset_graph().asset_check_keys
    }
    assert checks == {
        *(
            f"docs_minilm/embeddings:{c}"
            for c in ("uniform_dimension", "complete", "one_model", "sane_vectors")
        ),
        "docs_minilm/target_column:config_matches",
        "docs_minilm/target_column:model_fingerprint",
        "docs_minilm/shadow_validation:no_regression",
    }
    sensors = {s.name for s in defs.sensors}  # type: ignore[union-attr]
    assert sensors == {"embedding_alerts", "docs_minilm__drift", "docs_minilm__content_drift"}


def test_one_group_of_assets_per_space() -> None:
    base = {
        "table": "t",
        "text_column": "b",
        "model": {"provider": "hash", "name": "h", "dimensions": 8},
    }
    config = parse_config(
        {
            "spaces": [
                {**base, "name": "a", "target_column": "ea"},
                {**base, "name": "b", "target_column": "eb"},
            ]
        }
    )
    specs = {
        s.key.to_user_string(): s.group_name
        for a in build_definitions(config).assets  # type: ignore[union-attr]
        for s in a.specs  # type: ignore[union-attr]
    }
    assert specs == {f"{space}/{asset}": space for space in ("a", "b") for asset in SPACE_ASSETS}


def test_a_backfill_run_over_a_partition_range(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    """BackfillPolicy.multi_run groups partitions into one run with a key range."""
    create_docs(conn, 1400)
    space = make_space()
    materialize_target(space, dagster_instance)
    keys = sorted(dagster_instance.get_dynamic_partitions(id_range_partitions_name(space)))
    tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
    result = run_asset(space, dagster_instance, "embeddings", tags=tags)
    meta = metadata_of(result, embeddings_key(space))
    assert meta["partitions_in_run"] == 3
    assert meta["key_range"] == "[-inf, +inf)"
    assert meta["rows_scanned"] == 1400
    materialized = dagster_instance.get_materialized_partitions(embeddings_key(space))
    assert materialized == set(keys)


def test_logs_and_metadata_carry_no_row_text(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 30)
    secret = "confidential-row-text-7f3a"
    conn.execute("UPDATE docs SET body = %s WHERE id = 7", (secret,))
    space = make_space()
    materialize_target(space, dagster_instance)
    key = sorted(dagster_instance.get_dynamic_partitions(id_range_partitions_name(space)))[0]
    result = run_asset(space, dagster_instance, "embeddings", partition_key=key)
    records = dagster_instance.all_logs(result.run_id)
    text = "\n".join(str(r.dagster_event) + (r.user_message or "") for r in records)
    assert "rows_embedded" in text  # the metadata is there...
    assert secret not in text  # ...the row text is not
    assert "document number" not in text


def test_each_endpoint_has_its_own_concurrency_pool() -> None:
    from embedding_assets.defs.assets import endpoint_pool

    openai_small = make_space(
        model={"provider": "openai", "name": "text-embedding-3-small", "dimensions": 8}
    )
    ollama = make_space(
        model={
            "provider": "openai",
            "name": "bge-m3",
            "dimensions": 8,
            "base_url": "http://gpu-box:11434/v1",
        }
    )
    local = make_space(model={"provider": "sentence-transformers", "name": "x", "dimensions": 8})
    assert endpoint_pool(openai_small.model) == "embeddings/api.openai.com"
    assert endpoint_pool(ollama.model) == "embeddings/gpu-box:11434"
    assert endpoint_pool(local.model) == "embeddings/sentence-transformers-cpu"
    embeddings = next(a for a in build_space_assets(ollama) if embeddings_key(ollama) in a.keys)
    assert embeddings.op.pool == "embeddings/gpu-box:11434"
