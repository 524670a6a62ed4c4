"""The assets of one vector space, `<name>/target_column` and `<name>/embeddings`.

Thin wrappers: the work is done by plain functions in `embedding_assets.pipeline`, which
the tests call without Dagster. These add what the UI needs: partitions, metadata, logs.
"""

from urllib.parse import urlsplit

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    Backoff,
    Config,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)
from pydantic import Field

from ..config import ModelConfig, SpaceConfig
from ..db.destination import destination_of
from ..errors import EmbeddingBackfillError, EndpointUnavailableError
from ..pipeline.backfill import embed_range
from ..pipeline.batch import embed_range_batch
from ..pipeline.partitions import KeyRange, ranges_for_keys, recorded_ranges, span
from ..pipeline.target import prepare_target_column
from ..reports.plan import BATCH_PRICE_FACTOR, PRICES_USD_PER_MILLION_TOKENS
from .keys import embeddings_key, target_column_key
from .partitions import id_range_partitions, id_range_partitions_name
from .resources import EmbeddingModelsResource, PostgresResource

# An endpoint that stayed down through the provider's own retries (seconds of backoff) gets
# minutes more: the step is retried after ~60, 120, 240, 480 s (exponential, with jitter so
# that the runs of one backfill do not all come back at once). Committed batches are skipped
# on retry. Other errors (config, dimension, identity) bypass the policy: they need a person.
EMBEDDING_RETRY_POLICY = RetryPolicy(
    max_retries=4, delay=60, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


def token_cost_usd(model: ModelConfig, tokens: int | None) -> float | None:
    """What the run's tokens cost at the model's list price (half of it in batch mode);
    None for local endpoints and unlisted models."""
    if tokens is None or model.provider != "openai" or model.base_url is not None:
        return None
    price = PRICES_USD_PER_MILLION_TOKENS.get(model.name)
    if price is None:
        return None
    factor = BATCH_PRICE_FACTOR if model.mode == "batch" else 1.0
    return tokens * price * factor / 1_000_000


def endpoint_pool(model: ModelConfig) -> str:
    """The concurrency pool of an embedding endpoint: `embeddings/<where>`.

    Hosted and self-hosted endpoints are keyed by host (all models behind one server share
    its capacity); local models by provider and device (they share this machine).
    """
    if model.provider == "openai":
        host = urlsplit(model.base_url).netloc if model.base_url else "api.openai.com"
        return f"embeddings/{host}"
    return f"embeddings/{model.provider}-{model.device}"


class TargetColumnConfig(Config):
    drop_index: bool = Field(
        default=False,
        description=(
            "Drop an index found on the target column while the space is still `building` "
            "(writes into an indexed vector column are ~100x slower). Default: refuse."
        ),
    )


def _model_metadata(space: SpaceConfig, identity_label: str, model_key: int) -> dict[str, object]:
    return {
        "table": space.table,
        "destination": space.destination,
        # where the vectors are: `schema.table.column` (the table itself, or its own table)
        "vectors": destination_of(space).label,
        "column": space.target_column,
        "model": identity_label,
        "provider": space.model.provider,
        "dimensions": space.model.stored_dimensions,
        "model_key": str(model_key),
    }


def run_key_range(
    context: AssetExecutionContext, space: SpaceConfig, postgres: PostgresResource
) -> KeyRange:
    """The key range of the run's partitions, read from the recorded layout.

    A key typed by hand in the launch dialog is not one of the space's ranges: the run fails
    at once, without retries, and the key is removed so that it does not linger in the
    partition list.
    """
    keys = list(context.partition_keys)
    with postgres.connect() as conn:
        ranges, unknown = ranges_for_keys(conn, space, keys)
        example = next(iter(recorded_ranges(conn, space)), None)
    if not unknown:
        return span(ranges)
    name = id_range_partitions_name(space)
    for key in unknown:
        context.instance.delete_dynamic_partition(name, key)
    hint = f", e.g. {example.partition_key}" if example else ""
    raise Failure(
        f"partition key(s) {', '.join(repr(k) for k in unknown[:5])} are not key ranges of "
        f"space {space.name!r}: its partitions are laid out by {space.name}/target_column "
        f"(<number>_<first key>{hint}). The key(s) were removed; pick existing partitions, "
        f"or materialize {space.name}/target_column to add the ranges of new rows.",
        allow_retries=False,
    )


def build_space_assets(
    space: SpaceConfig, retry_policy: RetryPolicy = EMBEDDING_RETRY_POLICY
) -> list[AssetsDefinition]:
    partitions = id_range_partitions(space)
    description_suffix = (
        f" ({space.model.provider}:{space.model.name}, {space.model.dimensions_label})"
    )

    @asset(
        key=target_column_key(space),
        group_name=space.name,
        kinds={"postgres", "pgvector"},
        description=(
            f"Column {destination_of(space).label} as "
            f"{space.storage}({space.model.stored_dimensions}), "
            f"registered as space {space.name!r}{description_suffix}; lays out the key-range "
            "partitions (every current and future key in exactly one)."
        ),
    )
    def target_column(
        context: AssetExecutionContext,
        config: TargetColumnConfig,
        postgres: PostgresResource,
        embedding_models: EmbeddingModelsResource,
    ) -> MaterializeResult:
        provider = embedding_models.provider(space.model)
        with postgres.connect() as conn:
            result = prepare_target_column(conn, space, provider, drop_index=config.drop_index)
        name = id_range_partitions_name(space)
        known = set(context.instance.get_dynamic_partitions(name))
        # Keys the recorded layout does not have (an earlier layout) would overlap its ranges.
        current = set(result.partition_keys)
        stale = sorted(k for k in known if k not in current)
        for key in stale:
            context.instance.delete_dynamic_partition(name, key)
        if stale:
            context.log.warning(f"removed {len(stale)} partitions of an earlier layout")
        new_keys = [k for k in result.partition_keys if k not in known]
        if new_keys:
            context.instance.add_dynamic_partitions(name, new_keys)
        state = "created" if result.created else "exists"
        context.log.info(
            f"{destination_of(space).label} ready ({state}),"
            f" space {space.name!r} is {result.record.status}; {len(new_keys)} new partitions"
        )
        return MaterializeResult(
            metadata={
                **_model_metadata(space, provider.identity.label(), provider.identity.key),
                "column_created": result.created,
                "registry_status": result.record.status,
                "fingerprint": result.record.fingerprint.get("digest", ""),
                "partitions": len(result.partition_keys),
                "partitions_added": len(new_keys),
                "partitions_removed": len(stale),
                "dropped_indexes": ", ".join(result.dropped_indexes) or "none",
            }
        )

    @asset(
        key=embeddings_key(space),
        deps=[target_column],
        group_name=space.name,
        kinds={"postgres", "pgvector"},
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.multi_run(space.partitions_per_run),
        # One pool per embedding endpoint: a backfill over 1,000 partitions queues its steps
        # instead of opening 1,000 connections to the provider (limits: dagster.yaml).
        pool=endpoint_pool(space.model),
        retry_policy=retry_policy,
        description=(
            f"Vectors in {destination_of(space).label}{description_suffix}, one partition "
            f"per ~{space.partition_size:,} rows of the key. Re-running skips rows already "
            "embedded from the same text by the same model."
        ),
    )
    def embeddings(
        context: AssetExecutionContext,
        postgres: PostgresResource,
        embedding_models: EmbeddingModelsResource,
    ) -> MaterializeResult:
        partitions = context.partition_key_range
        try:
            key_range = run_key_range(context, space, postgres)
            provider = embedding_models.provider(space.model, postgres.url())
            context.log.info(
                f"embedding keys {key_range.describe()} of {space.table} with "
                f"{provider.identity.label()} (partitions {partitions.start}..{partitions.end})"
            )
            run = embed_range_batch if space.model.mode == "batch" else embed_range
            stats = run(space, provider, key_range, database_url=postgres.url(), logger=context.log)
        except EndpointUnavailableError as err:
            context.log.warning(f"{err}; the step is retried per its retry policy")
            raise
        except EmbeddingBackfillError as err:
            raise Failure(str(err), allow_retries=False) from None
        context.log.info(
            f"done: {stats.rows_embedded:,} embedded, {stats.rows_skipped:,} skipped, "
            f"{stats.rows_empty:,} empty of {stats.rows_scanned:,} rows in {stats.seconds:.1f}s "
            f"({stats.rows_per_second:,.0f} rows/s)"
        )
        metadata: dict[str, object] = {
            **_model_metadata(space, provider.identity.label(), provider.identity.key),
            "key_range": key_range.describe(),
            "partitions_in_run": len(context.partition_keys),
            **{k: v for k, v in stats.as_dict().items() if v is not None},
        }
        metadata["rows_per_second"] = MetadataValue.float(float(stats.rows_per_second))
        metadata["mode"] = space.model.mode
        cost = token_cost_usd(space.model, stats.tokens)
        if cost is not None:
            metadata["cost_usd"] = MetadataValue.float(round(cost, 6))
        return MaterializeResult(metadata=metadata)

    return [target_column, embeddings]
