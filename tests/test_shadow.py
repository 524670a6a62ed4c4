"""Shadow validation: the real bundled model against the `hash` provider on the demo corpus,
through Dagster, on real PostgreSQL + pgvector."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import psycopg
import pytest
from conftest import (
    create_docs,
    make_space,
    materialize_partitions,
    materialize_target,
    metadata_of,
    resources,
    run_asset,
)
from dagster import AssetCheckSeverity, DagsterInstance, ExecuteInProcessResult, materialize
from pgvector.psycopg import register_vector
from psycopg import sql

from embedding_assets.config import PROJECT_ROOT, ProjectConfig, SpaceConfig, parse_config
from embedding_assets.db.registry import get_space
from embedding_assets.defs.assets import build_space_assets
from embedding_assets.defs.shadow import NO_REGRESSION, build_shadow_assets, shadow_validation_key
from embedding_assets.demo.seed import LEGACY_COLUMN, LEGACY_MODEL, seed_demo_table
from embedding_assets.errors import ConfigError, SpaceConflictError
from embedding_assets.lifecycle.adoption import adopt_column
from embedding_assets.lifecycle.shadow import (
    middle_slice,
    overlap_at_k,
    recall_at_k,
    reciprocal_rank,
    search_plan,
    top_k,
)
from embedding_assets.providers import build_provider

QUERIES = PROJECT_ROOT / "embedding_assets" / "demo" / "queries.jsonl"
MINILM = {"provider": "sentence-transformers", "name": "all-MiniLM-L6-v2", "dimensions": 384}


def labelled_titles() -> list[str]:
    lines = QUERIES.read_text(encoding="utf-8").splitlines()
    return sorted({t for line in lines if line.strip() for t in json.loads(line)["relevant"]})


def seed_subset(conn: psycopg.Connection, every: int) -> None:
    """The demo table, cut to the labelled rows plus every `every`-th row as distractors:
    the MiniLM embedding stays a few seconds, the search stays a search."""
    seed_demo_table(conn)
    conn.execute(
        "DELETE FROM documents WHERE title <> ALL(%s) AND id %% %s <> 0", (labelled_titles(), every)
    )


def space(name: str, **overrides: object) -> dict[str, object]:
    return {
        "name": f"{name}_{uuid.uuid4().hex[:8]}",  # the Dagster instance is per session
        "table": "public.documents",
        "text_column": "body",
        "partition_size": 10_000,
        "batch_size": 128,
        "drift": {"sensor_status": "stopped"},
        **overrides,
    }


def legacy_space() -> dict[str, object]:
    """The demo's adopted column: what applications query today."""
    return space("legacy", target_column=LEGACY_COLUMN, adopt=True, model=LEGACY_MODEL.model_dump())


def shadow_settings(tmp_path: Path, **overrides: object) -> dict[str, object]:
    return {"queries_file": str(QUERIES), "key_column": "title", "report_dir": str(tmp_path)} | (
        overrides
    )


def build(space: SpaceConfig, instance: DagsterInstance) -> None:
    materialize_target(space, instance)
    materialize_partitions(space, instance)


def run_shadow(
    space: SpaceConfig, project: ProjectConfig, instance: DagsterInstance
) -> ExecuteInProcessResult:
    """Materialize `<name>/shadow_validation` for real on the instance."""
    return materialize(
        [*build_space_assets(space), *build_shadow_assets(space, project)],
        selection=[shadow_validation_key(space)],
        instance=instance,
        resources=resources(),
    )


def check_of(result: ExecuteInProcessResult) -> dict[str, object]:
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == NO_REGRESSION
    return {
        "passed": evaluation.passed,
        "severity": evaluation.severity,
        **{k: getattr(v, "value", v) for k, v in evaluation.metadata.items()},
    }


def registry(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT name, status FROM embedding_backfills.vector_spaces"))


def test_metrics_on_known_rankings() -> None:
    assert recall_at_k([5, 1, 9], {1, 2}, 3) == 0.5
    assert recall_at_k([5, 1, 9], {1, 2}, 1) == 0.0
    assert reciprocal_rank([5, 1, 9], {9, 1}, 3) == 0.5
    assert reciprocal_rank([5, 1, 9], {7}, 3) == 0.0
    assert overlap_at_k([1, 2, 3, 4], [4, 3, 8, 9], 4) == 0.5
    text = " ".join(f"w{i}" for i in range(100))
    assert middle_slice(text) == " ".join(f"w{i}" for i in range(34, 66))  # 32 central words
    assert middle_slice("a b c d e f g h") == "c d e f"


def test_real_model_beats_hash_on_the_labelled_demo_queries(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    seed_subset(conn, every=4)
    project = parse_config(
        {
            "spaces": [
                legacy_space(),
                space(
                    "minilm",
                    target_column="embedding_minilm",
                    model=MINILM,
                    shadow=shadow_settings(tmp_path),
                ),
            ]
        }
    )
    legacy, minilm = project.spaces
    adopt_column(conn, legacy, build_provider(legacy.model))  # active: nothing else is
    build(minilm, dagster_instance)
    before = registry(conn)

    result = run_shadow(minilm, project, dagster_instance)
    meta = metadata_of(result, shadow_validation_key(minilm))

    assert (meta["old_space"], meta["new_space"], meta["baseline"]) == (
        legacy.name,
        minilm.name,
        "active",
    )
    assert meta["mode"] == "labelled" and meta["k"] == 10
    assert meta["queries"] + meta["queries_skipped"] == 40 and meta["queries"] >= 35
    assert "hash:legacy-hash" in meta["models"] and "all-MiniLM-L6-v2" in meta["models"]
    # the real model finds the documented function; the hash of a question finds noise
    assert meta["new_recall_at_k"] >= 0.6
    assert meta["new_recall_at_k"] >= meta["old_recall_at_k"] + 0.5
    assert meta["new_mrr"] >= meta["old_mrr"] + 0.3
    assert 0 <= meta["overlap_at_k"] <= 0.2  # two unrelated spaces rank different rows
    assert "| recall@10 |" in meta["summary"]

    check = check_of(result)
    assert check["passed"] is True and check["severity"] == AssetCheckSeverity.WARN
    assert check["new_value"] == meta["new_recall_at_k"] and check["margin"] > 0.5

    # the chart: a PNG file under report_dir, the same bytes inline for the UI
    png = (tmp_path / f"{minilm.name}.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert meta["chart_path"] == str(tmp_path / f"{minilm.name}.png")
    prefix = "![chart](data:image/png;base64,"
    assert meta["chart"].startswith(prefix)
    assert base64.b64decode(meta["chart"][len(prefix) : -1]) == png
    # validation reads: nothing was activated or retired
    assert registry(conn) == before == {legacy.name: "active", minilm.name: "building"}


def test_no_regression_warns_when_the_new_space_retrieves_worse(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    seed_subset(conn, every=8)
    project = parse_config(
        {
            "spaces": [
                space("minilm", target_column="embedding_minilm", model=MINILM),
                space(
                    "hashed",
                    target_column="embedding_hashed",
                    model={"provider": "hash", "name": "new-hash", "dimensions": 384},
                    shadow=shadow_settings(tmp_path, max_regression=0.1),
                ),
            ]
        }
    )
    minilm, hashed = project.spaces
    build(minilm, dagster_instance)
    run_asset(minilm, dagster_instance, "hnsw_index")
    run_asset(minilm, dagster_instance, "registry")  # MiniLM is what applications query
    build(hashed, dagster_instance)

    result = run_shadow(hashed, project, dagster_instance)

    assert result.success  # WARN: the operator decides; the materialization stands
    meta = metadata_of(result, shadow_validation_key(hashed))
    assert (meta["old_space"], meta["new_space"]) == (minilm.name, hashed.name)
    check = check_of(result)
    assert check["passed"] is False and check["severity"] == AssetCheckSeverity.WARN
    assert check["primary_metric"] == "recall_at_k"
    assert check["old_value"] == meta["old_recall_at_k"] >= 0.6
    assert check["new_value"] == meta["new_recall_at_k"] <= 0.1
    assert check["regression"] > check["max_regression"] == 0.1
    assert check["margin"] == pytest.approx(0.1 - check["regression"], abs=1e-3)
    assert check["margin"] < -0.4


def test_self_retrieval_without_labels_and_no_text_in_metadata_or_logs(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    seed_subset(conn, every=4)
    project = parse_config(
        {
            "spaces": [
                legacy_space(),
                space(
                    "minilm",
                    target_column="embedding_minilm",
                    model=MINILM,
                    shadow={"report_dir": str(tmp_path), "sample_size": 60},
                ),
            ]
        }
    )
    legacy, minilm = project.spaces
    adopt_column(conn, legacy, build_provider(legacy.model))
    build(minilm, dagster_instance)

    result = run_shadow(minilm, project, dagster_instance)
    meta = metadata_of(result, shadow_validation_key(minilm))

    assert meta["mode"] == "self_retrieval" and meta["queries"] == 60
    assert meta["primary_metric"] == "hit_at_k"
    assert 0.0 <= meta["overlap_at_k"] <= 1.0
    # a passage from the middle of a docstring leads the real model back to it
    assert meta["new_hit_at_k"] >= 0.7 and meta["old_hit_at_k"] <= 0.2
    assert meta["new_mrr"] > meta["old_mrr"]
    assert check_of(result)["passed"] is True
    # the same rows on a rerun: comparable numbers
    again = metadata_of(
        run_shadow(minilm, project, dagster_instance), shadow_validation_key(minilm)
    )
    assert (again["new_hit_at_k"], again["old_mrr"]) == (meta["new_hit_at_k"], meta["old_mrr"])

    # no row text anywhere: not the documents, not the queries made from them
    bodies = [b for (b,) in conn.execute("SELECT body FROM documents WHERE body IS NOT NULL")]
    known = "Serialize ``obj`` to a JSON formatted ``str``"  # json.dumps
    assert any(known in b for b in bodies)  # real text: its absence below means something
    snippets = {known} | {middle_slice(b) for b in bodies if len(b.split()) >= 8}
    check_meta = {k: str(v) for k, v in check_of(result).items()}
    logs = [e.message for e in dagster_instance.all_logs(result.run_id)]
    shown = [str(v) for v in meta.values()] + list(check_meta.values()) + logs
    leaked = [s for s in snippets if any(s in value for value in shown)]
    assert leaked == []


def test_nothing_to_compare_with_fails_clearly(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    create_docs(conn, 300)
    new = make_space(shadow={"report_dir": str(tmp_path)})
    build(new, dagster_instance)
    project = parse_config({"spaces": [new.model_dump()]})

    with pytest.raises(SpaceConflictError, match="nothing to compare with") as caught:
        run_shadow(new, project, dagster_instance)
    assert "public.docs has no active space" in str(caught.value)
    assert "shadow.compare_to" in str(caught.value)
    assert not (tmp_path / f"{new.name}.png").exists()


def test_a_baseline_missing_from_the_configuration_is_named_with_the_fix(
    conn: psycopg.Connection, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    create_docs(conn, 300)
    old = make_space(target_column="emb_old", model={"name": "old-model"})
    build(old, dagster_instance)
    run_asset(old, dagster_instance, "hnsw_index")
    run_asset(old, dagster_instance, "registry")
    new = make_space(target_column="emb_new", shadow={"report_dir": str(tmp_path)})
    build(new, dagster_instance)
    assert get_space(conn, old.name).status == "active"  # type: ignore[union-attr]

    # the old space's model must come from the configuration: without it, no guessing
    only_new = parse_config({"spaces": [new.model_dump()]})
    with pytest.raises(ConfigError, match=f"{old.name!r}.*not in the configuration") as caught:
        run_shadow(new, only_new, dagster_instance)
    assert "embedding_backfills.yaml" in str(caught.value)

    # configured with another model than the one that wrote the column: refused, not mixed
    wrong = old.model_copy(update={"model": old.model.model_copy(update={"name": "other"})})
    mixed = parse_config({"spaces": [wrong.model_dump(), new.model_dump()]})
    with pytest.raises(SpaceConflictError, match="registered for hash:old-model"):
        run_shadow(new, mixed, dagster_instance)


def test_above_2000_dims_the_search_uses_the_halfvec_index(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    create_docs(conn, 200)
    wide = make_space(target_column="emb_wide", model={"name": "wide", "dimensions": 2048})
    build(wide, dagster_instance)
    run_asset(wide, dagster_instance, "hnsw_index")
    run_asset(wide, dagster_instance, "registry")
    record = get_space(conn, wide.name)
    assert record is not None and "::halfvec(2048)" in (record.index_expression or "")

    plan = search_plan(conn, wide, record)
    query = build_provider(wide.model).embed(["document number 7 about topic 0"]).vectors
    register_vector(conn)
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # only an unusable index scans the table
        explain = sql.SQL("EXPLAIN {}").format(plan.query(5))
        lines = [r[0] for r in conn.execute(explain, (query[0],))]
    assert any(f"Index Scan using {record.index_name}" in line for line in lines), lines
    assert len(top_k(conn, plan, query, 5)[0]) == 5


def test_demo_reset_after_an_activated_space_drops_its_read_view_too(
    conn: psycopg.Connection,
) -> None:
    """`demo --reset` after a finished demo: activation left `documents_embedding`, a view
    on the table, and the reset must not stop at it."""
    seed_demo_table(conn)
    conn.execute("CREATE VIEW documents_embedding AS SELECT id FROM documents")
    conn.execute("UPDATE documents SET body = 'changed' WHERE id = 1")

    rows = seed_demo_table(conn, reset=True)

    assert rows > 0
    assert conn.execute("SELECT to_regclass('documents_embedding')").fetchone() == (None,)
    assert conn.execute("SELECT body FROM documents WHERE id = 1").fetchone() != ("changed",)
