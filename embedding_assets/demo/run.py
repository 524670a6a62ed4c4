"""The demo, end to end through Dagster: seed, prepare the column, embed every partition.

Runs real materializations on the project's Dagster instance (Postgres storage), so the
runs, partitions and metadata show up in `dagster dev` afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dagster import AssetKey, DagsterInstance, materialize
from psycopg import sql

from ..config import ProjectConfig, SpaceConfig, load_config
from ..db.connection import connection, database_url, redacted
from ..db.introspect import space_sql
from ..defs.adoption import build_adoption_assets
from ..defs.assets import build_space_assets
from ..defs.checks import build_space_checks
from ..defs.keys import (
    adoption_key,
    embeddings_key,
    hnsw_index_key,
    registry_key,
    target_column_key,
)
from ..defs.partitions import id_range_partitions_name
from ..defs.resources import EmbeddingModelsResource, PostgresResource
from ..defs.shadow import NO_REGRESSION, build_shadow_assets, shadow_validation_key
from ..defs.visibility import build_visibility_assets
from ..instance import project_instance
from .seed import seed_demo_table


@dataclass
class PartitionReport:
    key: str
    metadata: dict[str, object]


@dataclass
class DemoReport:
    database: str
    space: str
    rows_in_table: int
    partitions: list[PartitionReport] = field(default_factory=list)
    vectors: int = 0
    rows_with_text: int = 0
    dims: list[int] = field(default_factory=list)
    model_keys: int = 0
    checks: dict[str, bool] = field(default_factory=dict)
    index: dict[str, object] = field(default_factory=dict)
    activation: dict[str, object] = field(default_factory=dict)
    adoption: dict[str, object] = field(default_factory=dict)
    # shadow validation before activation: numeric metadata (no chart) and the WARN check
    shadow: dict[str, object] = field(default_factory=dict)
    shadow_checks: dict[str, bool] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.vectors == self.rows_with_text and self.model_keys <= 1

    def shadow_summary(self) -> str:
        """One line: the shadow validation's metrics, old space vs new."""
        if not self.shadow:
            return "shadow validation: not run"
        s = self.shadow
        k = s["k"]
        names = {"recall_at_k": f"recall@{k}", "hit_at_k": f"hit@{k}", "mrr": f"MRR@{k}"}
        metrics = ", ".join(
            f"{label} {s[f'old_{name}']:.2f} -> {s[f'new_{name}']:.2f}"
            for name, label in names.items()
            if f"old_{name}" in s
        )
        verdict = "passed" if self.shadow_checks.get(NO_REGRESSION) else "FAILED (WARN)"
        return (
            f"shadow validation ({s['queries']} {s['mode']} queries, {s['old_space']} -> "
            f"{s['new_space']}): {metrics}; {NO_REGRESSION} {verdict}"
        )


def _metadata_of(result: object, key: AssetKey) -> dict[str, object]:
    for event in result.get_asset_materialization_events():  # type: ignore[attr-defined]
        mat = event.event_specific_data.materialization
        if mat.asset_key == key:
            return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return {}


def verify_space(space: SpaceConfig, url: str) -> tuple[int, int, list[int], int]:
    """(vectors, rows with text, distinct dimensions, distinct model keys), straight from SQL."""
    text = sql.Identifier("t", space.text_column or "")
    with connection(url, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count({tv}),"
                " count(*) FILTER (WHERE btrim(coalesce({txt}, ''), E' \\t\\r\\n') <> ''),"
                " array_remove(array_agg(DISTINCT vector_dims({tv})), NULL), count(DISTINCT {tk})"
                " FROM {t} AS t {vjoin}"
            ).format(txt=text, **space_sql(space))
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), list(row[2]), int(row[3])


def run_demo(
    config: ProjectConfig | None = None,
    *,
    instance: DagsterInstance | None = None,
    reset: bool = False,
    log_level: str = "WARNING",
) -> DemoReport:
    project = config or load_config()
    space = next(s for s in project.spaces if not s.adopt)
    legacy = next((s for s in project.spaces if s.adopt), None)
    url = database_url()
    with connection(url, autocommit=True) as conn:
        if legacy is None:
            rows = seed_demo_table(conn, schema=space.schema_name, reset=reset)
        else:
            rows = seed_demo_table(
                conn,
                schema=space.schema_name,
                reset=reset,
                legacy_model=legacy.model,
                legacy_column=legacy.target_column,
            )
    report = DemoReport(redacted(url), space.name, rows)

    instance = instance or project_instance()
    assets = [
        *build_space_assets(space),
        *build_visibility_assets(space),
        build_space_checks(space),
        *(build_adoption_assets(legacy) if legacy else []),
        *build_shadow_assets(space, project),
    ]
    resources = {
        "postgres": PostgresResource(database_url=url),
        "embedding_models": EmbeddingModelsResource(),
    }
    quiet = {"loggers": {"console": {"config": {"log_level": log_level}}}}

    def run(
        selection: AssetKey,
        partition_key: str | None = None,
        checks: dict[str, bool] | None = None,
    ) -> dict[str, object]:
        """Materialize one asset; record its check evaluations (default: the column's)."""
        recorded = report.checks if checks is None else checks
        result = materialize(
            assets,
            selection=[selection],
            partition_key=partition_key,
            instance=instance,
            resources=resources,
            run_config=quiet,
        )
        assert result.success
        for evaluation in result.get_asset_check_evaluations():
            recorded[evaluation.check_name] = evaluation.passed
        return _metadata_of(result, selection)

    if legacy is not None:  # what applications query today, registered first
        report.adoption = {"space": legacy.name, **run(adoption_key(legacy))}
    run(target_column_key(space))
    # One run per partition, each with the column checks; the last one scans the column.
    for key in sorted(instance.get_dynamic_partitions(id_range_partitions_name(space))):
        report.partitions.append(PartitionReport(key, run(embeddings_key(space), key)))
    if report.checks and all(report.checks.values()):
        report.index = run(hnsw_index_key(space))
        if legacy is not None or space.shadow.compare_to:
            # Before the switch: how the new space retrieves compared with the one in use.
            # Its WARN check is advice for the operator; the demo activates either way.
            shadow = run(shadow_validation_key(space), checks=report.shadow_checks)
            report.shadow = {k: v for k, v in shadow.items() if k not in ("summary", "chart")}
        report.activation = run(registry_key(space))
    report.vectors, report.rows_with_text, report.dims, report.model_keys = verify_space(space, url)
    return report
