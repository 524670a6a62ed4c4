"""`<name>/adoption`: the one asset of a space declared `adopt: true`.

It writes no vectors: it verifies the existing column (dimensions, sane vectors, the model
claim on a re-embedded sample), reports its coverage, and registers it.
"""

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, asset

from ..config import SpaceConfig
from ..lifecycle.adoption import adopt_column
from .keys import adoption_key
from .resources import EmbeddingModelsResource, PostgresResource


def build_adoption_assets(space: SpaceConfig) -> list[AssetsDefinition]:
    @asset(
        key=adoption_key(space),
        group_name=space.name,
        kinds={"postgres", "pgvector"},
        description=(
            f"Adopts the existing column {space.table}.{space.target_column} as space "
            f"{space.name!r} ({space.model.provider}:{space.model.name}, "
            f"{space.model.dimensions_label}) after re-embedding a sample of "
            f"{space.adoption.sample_size} rows to verify the model. Writes no vectors."
        ),
    )
    def adoption(
        context: AssetExecutionContext,
        postgres: PostgresResource,
        embedding_models: EmbeddingModelsResource,
    ) -> MaterializeResult:
        provider = embedding_models.provider(space.model)
        with postgres.connect() as conn:
            result = adopt_column(conn, space, provider)
        coverage = result.column.verdicts["complete"].metadata
        context.log.info(
            f"adopted {space.table}.{space.target_column} as {result.record.status}: "
            f"{result.sample.describe()}"
        )
        return MaterializeResult(
            metadata={
                "status": result.record.status,
                "model": result.record.identity.label(),
                "dimensions": space.model.stored_dimensions,
                "sample_size": result.sample.sample_size,
                "min_cosine": result.sample.min_cosine,
                "p05_cosine": result.sample.p05_cosine,
                "median_cosine": result.sample.median_cosine,
                "vectors": result.column.vectors,
                "rows_with_text": result.column.rows_with_text,
                "rows_with_text_without_vector": coverage["rows_missing"],
                "index_name": result.index_name or "none",
            }
        )

    return [adoption]
