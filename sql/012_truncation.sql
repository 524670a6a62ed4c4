-- Truncation: a space that stores the first `dimensions` components of a model's longer
-- vectors (Matryoshka) records the model's own dimension here; NULL for the full vectors.
-- Part of the space's identity (and its model_key): a truncated space is not the full one.

ALTER TABLE embedding_backfills.vector_spaces
    ADD COLUMN IF NOT EXISTS truncated_from integer CHECK (truncated_from > dimensions);

CREATE OR REPLACE VIEW embedding_backfills.active_spaces AS
SELECT table_schema, table_name, column_name, name AS space, provider, model, revision,
       dimensions, "normalize", index_name, index_expression, validated_at, activated_at,
       drift_status, drift_checked_at, drift_status_since, drift_failures, drift_detail,
       drift_status IS DISTINCT FROM 'failed' AS trusted,
       destination, vector_schema, vector_table, storage, truncated_from
FROM embedding_backfills.vector_spaces
WHERE status = 'active';
