"""The `embedding_alerts` sensor: failed checks and failed runs to a webhook and the log.

Thin: the logic, and the environment variables it reads, are in `embedding_assets.sensors.alerts`.
"""

from dagster import (
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from ..sensors.alerts import AlertSettings, process_alerts


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
