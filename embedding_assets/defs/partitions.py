"""Partitions: one dynamic set of key ranges per space, filled by `<name>/target_column`."""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

from ..config import SpaceConfig


def id_range_partitions_name(space: SpaceConfig) -> str:
    return f"{space.name}_id_ranges"


def id_range_partitions(space: SpaceConfig) -> DynamicPartitionsDefinition:
    return DynamicPartitionsDefinition(name=id_range_partitions_name(space))
