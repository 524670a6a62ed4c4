"""Dagster definitions: assets, partitions and resources. Logic lives in `pipeline/`."""

from .definitions import build_definitions

__all__ = ["build_definitions"]
