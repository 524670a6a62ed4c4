"""The assets that make a space visible: `<name>/hnsw_index` and `<name>/registry`.

Both run the cross-run gate first (`require_checks_passed`): whatever launched them (a UI
backfill that also selected the embeddings, automation, a manual click) they fail unless
the whole-column checks passed after the latest write. The index is requested by
automation once every partition is materialized and the blocking checks passed; activation
stays a deliberate operator action.
"""

from datetime import UTC, datetime

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AutomationCondition,
    Config,
    MaterializeResult,
    asset,
)
from pydantic import Field

from ..config import SpaceConfig
from ..db.connection import connect as connect_database
from ..db.destination import destination_of
from ..db.registry import get_space
from ..lifecycle.activation import activate_space
from ..lifecycle.index import build_hnsw_index_watched
from .checks import require_checks_passed
from .keys import embeddings_key, hnsw_index_key, registry_key
from .resources import PostgresResource


class HnswIndexConfig(Config):
    progress_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often the build's progress (phase, counters, rate, ETA) is logged",
    )


def index_automation_condition() -> AutomationCondition:
    """Request the index when every partition is in and the blocking checks passed."""
    checks_passed = AutomationCondition.all_deps_match(
        AutomationCondition.all_checks_match(AutomationCondition.check_passed(), blocking_only=True)
    )
    return (
        (AutomationCondition.newly_missing() | AutomationCondition.any_deps_updated())
        .since_last_handled()
        .with_label("new data since the last index build")
        & ~AutomationCondition.any_deps_missing().with_label("all partitions materialized")
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
        & checks_passed.with_label("blocking checks passed")
    )


def build_visibility_assets(space: SpaceConfig) -> list[AssetsDefinition]:
    @asset(
        key=hnsw_index_key(space),
        deps=[embeddings_key(space)],
        group_name=space.name,
        kinds={"postgres", "pgvector"},
        automation_condition=index_automation_condition(),
        description=(
            f"HNSW index ({space.index.opclass}, m={space.index.m}, "
            f"ef_construction={space.index.ef_construction}) on "
            f"{destination_of(space).label}, built CONCURRENTLY once the checks passed."
        ),
    )
    def hnsw_index(
        context: AssetExecutionContext, postgres: PostgresResource, config: HnswIndexConfig
    ) -> MaterializeResult:
        gate = require_checks_passed(context.instance, space, context.log.info)
        with postgres.connect() as conn:
            # A second connection watches the build and logs its progress every few seconds.
            result, figures = build_hnsw_index_watched(
                conn,
                space,
                lambda: connect_database(postgres.url(), autocommit=True),
                context.log,
                interval=config.progress_interval_seconds,
            )
        if result.dropped_invalid:
            context.log.warning(f"dropped INVALID index(es): {', '.join(result.dropped_invalid)}")
        context.log.info(
            f"index {result.name} {'built' if result.created else 'already valid'} "
            f"in {result.seconds:.1f}s"
        )
        return MaterializeResult(
            metadata={
                "index_name": result.name,
                "created": result.created,
                "expression": result.expression,
                "build_seconds": round(result.seconds, 3),
                "index_size_bytes": result.size_bytes,
                "opclass": space.index.opclass,
                "m": space.index.m,
                "ef_construction": space.index.ef_construction,
                "maintenance_work_mem": space.index.maintenance_work_mem,
                "max_parallel_maintenance_workers": space.index.max_parallel_maintenance_workers,
                "dropped_invalid_indexes": ", ".join(result.dropped_invalid) or "none",
                **figures.as_metadata(),
                **gate,
            }
        )

    @asset(
        key=registry_key(space),
        deps=[hnsw_index],
        group_name=space.name,
        kinds={"postgres"},
        description=(
            f"Activation: marks space {space.name!r} active for {space.table} in "
            "embedding_backfills.vector_spaces and retires the previously active space, in one "
            "transaction. Requires passed checks and a valid index."
        ),
    )
    def registry(context: AssetExecutionContext, postgres: PostgresResource) -> MaterializeResult:
        gate = require_checks_passed(context.instance, space, context.log.info)
        validated_at = datetime.fromtimestamp(float(gate["checks_evaluated_at"]), UTC)  # type: ignore[arg-type]
        with postgres.connect() as conn:
            switch = activate_space(conn, space, validated_at=validated_at)  # needs a valid index
            record = get_space(conn, space.name)
        assert record is not None
        context.log.info(
            f"space {space.name!r} is active for {space.table}; retired: "
            f"{', '.join(switch.retired) or 'none'}"
        )
        return MaterializeResult(
            metadata={
                "status": record.status,
                "table": space.table,
                "column": space.target_column,
                "vectors": destination_of(space).label,
                "model": record.identity.label(),
                "dimensions": record.dimensions,
                "index_name": record.index_name or "",
                "row_count": record.row_count or 0,
                "retired_spaces": ", ".join(switch.retired) or "none",
                "validated_at": record.validated_at.isoformat() if record.validated_at else "",
                "activated_at": record.activated_at.isoformat() if record.activated_at else "",
            }
        )

    return [hnsw_index, registry]
