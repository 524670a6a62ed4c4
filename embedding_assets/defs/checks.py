"""Blocking whole-column checks on `<name>/embeddings`, and the gate that reads them.

The four checks share one scan (`checks.column.evaluate_column`). They are unpartitioned:
Dagster runs them once per run, so a backfill evaluates them several times. A run that
leaves partitions unmaterialized does not scan at all: the column cannot be complete yet,
and scanning 10M rows per backfill run would cost more than the backfill. Those
evaluations are WARN "deferred"; the run that lands the last partition does the full scan.

`complete` fails with WARN, the others with ERROR. An incomplete column is a normal state
while partitions are re-run (after new rows, edited texts, or the same data re-embedded):
it must keep the index and the activation closed, not fail every run that is fixing it.
A wrong dimension, a foreign model or a zero vector is corruption: ERROR fails the run.

A blocking check only stops downstream steps in its own run; `require_checks_passed` is
the guard the index and the activation run inside their own step, in any run, and it
requires every check to have passed, whatever its severity, in the newest evaluation
since the latest write (by evaluation time: runs finish out of their start order).
"""

import time
from collections.abc import Callable, Iterator

import psycopg
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetRecordsFilter,
    DagsterInstance,
    Failure,
    MetadataValue,
    multi_asset_check,
)

from ..checks.column import evaluate_column
from ..checks.gate import decide
from ..config import SpaceConfig
from ..db.registry import SpaceRecord, get_space
from ..drift.identity import CONFIG_MATCHES, MODEL_FINGERPRINT, identity_verdicts
from .check_history import evaluations_after, runs_evaluating
from .keys import embeddings_key, target_column_key
from .partitions import id_range_partitions_name
from .resources import EmbeddingModelsResource, PostgresResource

CHECK_NAMES = ("uniform_dimension", "complete", "one_model", "sane_vectors")
_DESCRIPTIONS = {
    "uniform_dimension": "Declared column dimension and every stored vector match the space.",
    "complete": "Every row with text has a vector computed from its current text.",
    "one_model": "Every vector was written by this space's model identity.",
    "sane_vectors": "No zero vectors; unit norms when the space normalises.",
}


def check_keys(space: SpaceConfig) -> list[AssetCheckKey]:
    return [AssetCheckKey(embeddings_key(space), name) for name in CHECK_NAMES]


def pending_partitions(instance: DagsterInstance, space: SpaceConfig) -> list[str]:
    """Partitions of the space not materialized yet (the backfill is still going)."""
    known = instance.get_dynamic_partitions(id_range_partitions_name(space))
    done = instance.get_materialized_partitions(embeddings_key(space))
    return sorted(set(known) - set(done))


def registered(conn: psycopg.Connection, space: SpaceConfig) -> SpaceRecord:
    """The space's registry record; a check of an unregistered space fails, saying why."""
    record = get_space(conn, space.name)
    if record is None:
        raise Failure(
            f"space {space.name!r} is not registered; materialize {space.name}/target_column"
        )
    return record


def build_space_checks(space: SpaceConfig):  # type: ignore[no-untyped-def]
    @multi_asset_check(
        specs=[
            AssetCheckSpec(
                name, asset=embeddings_key(space), blocking=True, description=_DESCRIPTIONS[name]
            )
            for name in CHECK_NAMES
        ],
        name=f"{space.name}__column_checks",
        description=f"Whole-column checks of {space.table}.{space.target_column}, one scan.",
    )
    def column_checks(
        context: AssetCheckExecutionContext, postgres: PostgresResource
    ) -> Iterator[AssetCheckResult]:
        pending = pending_partitions(context.instance, space)
        if pending:
            reason = (
                f"deferred: {len(pending)} partitions are not materialized yet; the whole-column "
                "scan runs in the run that materializes the last one"
            )
            for name in CHECK_NAMES:
                yield AssetCheckResult(
                    check_name=name,
                    passed=False,
                    severity=AssetCheckSeverity.WARN,
                    description=reason,
                    metadata={
                        "deferred": True,
                        "partitions_pending": len(pending),
                        "first_pending": pending[0],
                    },
                )
            return
        with postgres.connect() as conn:
            record = registered(conn, space)
            # Before the scan's snapshot: the gate only trusts scans that began after the
            # latest write (a write during the scan may be missing from it).
            scan_started_at = time.time()
            report = evaluate_column(conn, space, record.model_key)
        for name in CHECK_NAMES:
            verdict = report.verdicts[name]
            yield AssetCheckResult(
                check_name=name,
                passed=verdict.passed,
                severity=AssetCheckSeverity.WARN
                if name == "complete"
                else AssetCheckSeverity.ERROR,
                description=verdict.description,
                metadata={
                    "deferred": False,
                    "scan_started_at": MetadataValue.float(scan_started_at),
                    **verdict.metadata,
                },
            )

    return column_checks


class ChecksNotPassed(Failure):
    """The gate is closed: activation or indexing would expose unchecked data."""


# How long the index or activation waits for checks a running run will still evaluate: a
# whole-column scan takes minutes at 10M rows (README, "Checks").
CHECKS_WAIT_SECONDS = 3600.0
CHECKS_POLL_SECONDS = 5.0


def require_checks_passed(
    instance: DagsterInstance,
    space: SpaceConfig,
    log: Callable[[str], None] | None = None,
    *,
    wait_seconds: float = CHECKS_WAIT_SECONDS,
    poll_seconds: float = CHECKS_POLL_SECONDS,
) -> dict[str, object]:
    """Fail unless the checks passed on the column as it is now (rules: `checks.gate`).

    When the only thing missing is verdicts that a run still going will record (a UI
    backfill starts the index as soon as the last partition is written, while that run
    scans the column), wait for that run, up to `wait_seconds`, instead of failing.
    Returns metadata describing the evaluations the decision rested on.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        latest = instance.fetch_materializations(AssetRecordsFilter(embeddings_key(space)), limit=1)
        if not latest.records:
            raise ChecksNotPassed(f"{space.name}/embeddings has never been materialized")
        last_write = latest.records[0]
        decision = decide(
            CHECK_NAMES,
            evaluations_after(instance, embeddings_key(space), CHECK_NAMES, last_write.storage_id),
            last_write_at=last_write.timestamp,
            pending_partitions=pending_partitions(instance, space),
        )
        if decision.open or not decision.only_unevaluated or time.monotonic() >= deadline:
            break
        running = runs_evaluating(instance, embeddings_key(space), decision.unevaluated)
        if not running:
            break
        if log is not None:
            log(
                f"waiting for run {', '.join(r[:8] for r in running)} to evaluate "
                f"{', '.join(decision.unevaluated)} on {space.name}/embeddings"
            )
        time.sleep(poll_seconds)
    if not decision.open:
        raise ChecksNotPassed(
            f"space {space.name!r} is not validated, refusing to expose it: "
            + "; ".join(decision.problems)
            + f". Materialize the missing {space.name}/embeddings partitions or execute the "
            "checks on it, then retry.",
            metadata={"problems": decision.problems},
        )
    return {
        "checks_evaluated_at": decision.checks_evaluated_at,
        "last_write_at": last_write.timestamp,
        "checks_run_ids": ", ".join(sorted({e.run_id for e in decision.deciding.values()})),
    }


def build_drift_checks(space: SpaceConfig):  # type: ignore[no-untyped-def]
    """`config_matches` and `model_fingerprint` on `<name>/target_column`.

    The `<name>__drift` sensor records their evaluations whenever a verdict changes; these
    definitions make them visible in the UI and executable on demand ("Execute checks").
    """

    @multi_asset_check(
        specs=[
            AssetCheckSpec(
                CONFIG_MATCHES,
                asset=target_column_key(space),
                description="Configured model and dimension match the registry and the column.",
            ),
            AssetCheckSpec(
                MODEL_FINGERPRINT,
                asset=target_column_key(space),
                description="The model returns the registered vectors for the sentinel texts.",
            ),
        ],
        name=f"{space.name}__drift_checks",
        description=f"Configuration drift and silent model swaps of space {space.name!r}.",
    )
    def drift_checks(
        postgres: PostgresResource, embedding_models: EmbeddingModelsResource
    ) -> Iterator[AssetCheckResult]:
        provider = embedding_models.provider(space.model)
        with postgres.connect() as conn:
            record = registered(conn, space)
            verdicts = identity_verdicts(conn, space, provider, record)
        for verdict in verdicts:
            yield AssetCheckResult(
                check_name=verdict.name,
                passed=verdict.passed,
                severity=AssetCheckSeverity.ERROR,
                description=verdict.description,
                metadata=verdict.metadata,
            )

    return drift_checks
