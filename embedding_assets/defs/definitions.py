"""Assemble the code location: one group of assets per configured space, shared resources."""

from __future__ import annotations

from dagster import Definitions

from ..config import ProjectConfig, load_config
from .assets import build_space_assets
from .resources import EmbeddingModelsResource, PostgresResource


def build_definitions(config: ProjectConfig | None = None) -> Definitions:
    project = config or load_config()
    assets = [a for space in project.spaces for a in build_space_assets(space)]
    return Definitions(
        assets=assets,
        resources={
            "postgres": PostgresResource(),
            "embedding_models": EmbeddingModelsResource(),
        },
    )
