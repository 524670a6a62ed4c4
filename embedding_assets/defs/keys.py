"""Asset keys of a space: `<name>/<asset>`, in one place."""

from dagster import AssetKey

from ..config import SpaceConfig


def target_column_key(space: SpaceConfig) -> AssetKey:
    return AssetKey([space.name, "target_column"])


def embeddings_key(space: SpaceConfig) -> AssetKey:
    return AssetKey([space.name, "embeddings"])


def hnsw_index_key(space: SpaceConfig) -> AssetKey:
    return AssetKey([space.name, "hnsw_index"])


def registry_key(space: SpaceConfig) -> AssetKey:
    return AssetKey([space.name, "registry"])


def adoption_key(space: SpaceConfig) -> AssetKey:
    return AssetKey([space.name, "adoption"])
