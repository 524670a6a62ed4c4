"""Sensors: `embedding_alerts` (failed checks and runs to a webhook) and, per space, the
two drift sensors.

Thin: the logic, and the environment variables it reads, are in `embedding_assets.sensors`.
"""

import time

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ..config import SpaceConfig
from ..sensors.alerts import AlertSettings, process_alerts
from ..sensors.drift import DriftTick, sweep_tick, watch_tick
from .keys import embeddings_key, target_column_key
from .partitions import id_range_partitions, id_range_partitions_name
from .resources import EmbeddingModelsResource, PostgresResource

REASON_TAG = "embedding_backfills/drift"


def build_alert_sensor() -> SensorDefinition:
    @sensor(
        name="embedding_alerts",
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Posts every failed asset check (not the deferred ones) and every failed run to "
            "EMBEDDING_BACKFILLS_ALERT_WEBHOOK (Slack-compatible JSON) and logs it."
        ),
    )
    def embedding_alerts(context: SensorEvaluationContext) -> SkipReason:
        tick = process_alerts(
            context.instance, context.cursor, AlertSettings.from_env(), log=context.log
        )
        if tick.cursor != context.cursor:
            context.update_cursor(tick.cursor)
        return SkipReason(tick.summary())

    return embedding_alerts


def _result(space: SpaceConfig, tick: DriftTick, context: SensorEvaluationContext) -> SensorResult:
    context.log.info(f"{space.name}: {tick.summary()}")
    partitions = id_range_partitions(space)
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=run.run_key,
                asset_selection=[embeddings_key(space)],
                partition_key=run.partition_key,
                asset_check_keys=[],  # upkeep runs skip the whole-column scan
                tags={REASON_TAG: run.reason},
            )
            for run in tick.runs
        ],
        dynamic_partitions_requests=(
            [partitions.build_add_request(tick.partitions_to_add)]
            if tick.partitions_to_add
            else None
        ),
        asset_events=[
            AssetCheckEvaluation(
                asset_key=target_column_key(space),
                check_name=v.name,
                passed=v.passed,
                severity=AssetCheckSeverity.ERROR,
                description=v.description,
                metadata=v.metadata,
            )
            for v in tick.verdicts
        ],
        cursor=tick.cursor,
        skip_reason=None if tick.runs or tick.verdicts else tick.summary(),
    )


def _status(space: SpaceConfig) -> DefaultSensorStatus:
    return (
        DefaultSensorStatus.RUNNING
        if space.drift.sensor_status == "running"
        else DefaultSensorStatus.STOPPED
    )


def build_drift_sensors(space: SpaceConfig) -> list[SensorDefinition]:
    @sensor(
        name=f"{space.name}__drift",
        minimum_interval_seconds=space.drift.interval_seconds,
        default_status=_status(space),
        target=[embeddings_key(space)],
        description=(
            f"Cheap drift checks of {space.table}.{space.target_column}: configuration and "
            "column vs registry, model fingerprint (alerts, no runs); new key ranges, new rows "
            "and the change log (one run per affected partition)."
        ),
    )
    def drift(
        context: SensorEvaluationContext,
        postgres: PostgresResource,
        embedding_models: EmbeddingModelsResource,
    ) -> SensorResult:
        provider = embedding_models.provider(space.model)
        known = set(context.instance.get_dynamic_partitions(id_range_partitions_name(space)))
        with postgres.connect() as conn:
            tick = watch_tick(conn, space, provider, known, context.cursor)
        return _result(space, tick, context)

    @sensor(
        name=f"{space.name}__content_drift",
        minimum_interval_seconds=max(30, space.drift.interval_seconds // 10),
        default_status=_status(space),
        target=[embeddings_key(space)],
        description=(
            f"Missing and stale vectors in {space.table}.{space.target_column}: a sweep starts "
            f"on '{space.drift.content_cron}' (UTC) and hashes {space.drift.sweep_rows_per_tick:,}"
            " rows per tick; one run per partition with drift."
        ),
    )
    def content_drift(
        context: SensorEvaluationContext,
        postgres: PostgresResource,
        embedding_models: EmbeddingModelsResource,
    ) -> SensorResult:
        provider = embedding_models.provider(space.model)
        done = context.instance.get_materialized_partitions(embeddings_key(space))
        with postgres.connect() as conn:
            tick = sweep_tick(conn, space, provider, set(done), context.cursor, time.time())
        return _result(space, tick, context)

    return [drift, content_drift]
