"""Assemble the code location: one group of assets per configured space, shared resources."""

from __future__ import annotations

from dagster import Definitions

from ..config import ProjectConfig, load_config
from .assets import build_space_assets
from .checks import build_space_checks
from .jobs import drop_retired_vector_space, rollback_vector_space
from .resources import EmbeddingModelsResource, PostgresResource
from .visibility import build_visibility_assets


def build_definitions(config: ProjectConfig | None = None) -> Definitions:
    project = config or load_config()
    assets = [
        a
        for space in project.spaces
        for a in (*build_space_assets(space), *build_visibility_assets(space))
    ]
    return Definitions(
        assets=assets,
        asset_checks=[build_space_checks(space) for space in project.spaces],
        jobs=[rollback_vector_space, drop_retired_vector_space],
        resources={
            "postgres": PostgresResource(),
            "embedding_models": EmbeddingModelsResource(),
        },
    )
