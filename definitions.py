"""The Dagster code location: `dagster dev` (via workspace.yaml) loads `defs` from here."""

from embedding_assets.defs import build_definitions

defs = build_definitions()
