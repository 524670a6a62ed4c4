"""Drift detection: what changed since a space was built, found with bounded queries.

- `identity`: configuration vs registry vs the column's declared type, and the model's
  fingerprint (a silent model swap). Catalog lookups and one 5-text embedding call.
- `rows`: new rows and new key ranges. One index probe for the highest key, one scan of
  the keys above the last range (the layout's extension).
- `content`: missing and stale vectors, by hashing a bounded window of rows per call.
- `changelog`: the optional trigger-based change log, the fast path for large tables.

The sensors in `embedding_assets.sensors.drift` combine them into Dagster ticks.
"""
