"""Assemble the code location: one group of assets per configured space, shared resources."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from ..config import ProjectConfig, load_config
from .adoption import build_adoption_assets
from .assets import build_space_assets
from .checks import build_drift_checks, build_space_checks
from .jobs import drop_retired_vector_space, rollback_vector_space
from .resources import EmbeddingModelsResource, PostgresResource
from .sensors import build_alert_sensor, build_drift_sensors
from .shadow import build_shadow_assets
from .visibility import build_visibility_assets


def build_definitions(config: ProjectConfig | None = None) -> Definitions:
    project = config or load_config()
    built = [s for s in project.spaces if not s.adopt]
    assets = [
        *(a for s in built for a in (*build_space_assets(s), *build_visibility_assets(s))),
        *(a for s in project.spaces if s.adopt for a in build_adoption_assets(s)),
        *(a for s in built for a in build_shadow_assets(s, project)),
    ]
    return Definitions(
        assets=assets,
        asset_checks=[
            *(build_space_checks(s) for s in built),
            *(build_drift_checks(s) for s in built),
        ],
        jobs=[rollback_vector_space, drop_retired_vector_space],
        sensors=[build_alert_sensor(), *(d for s in built for d in build_drift_sensors(s))],
        resources={
            "postgres": PostgresResource(),
            "embedding_models": EmbeddingModelsResource(),
        },
        # Steps run in the run's own process. The multiprocess default spawned a fresh
        # interpreter per step (the embeddings, then the checks), ~2.5 s of CPU each: 8 s of
        # a 9.5 s run over 50,000 rows (benchmarks/scale.py, "fixed cost per run"). A run's
        # steps are sequential anyway; pools, step retries and run monitoring work the same.
        executor=in_process_executor,
    )
