-- Storage: a space's vectors are `vector` (float4) or `halfvec` (float2). Part of the space's
-- identity: a halfvec space and a vector space of the same model are two spaces.

ALTER TABLE embedding_backfills.vector_spaces
    ADD COLUMN IF NOT EXISTS storage text NOT NULL DEFAULT 'vector'
        CHECK (storage IN ('vector', 'halfvec'));

CREATE OR REPLACE VIEW embedding_backfills.active_spaces AS
SELECT table_schema, table_name, column_name, name AS space, provider, model, revision,
       dimensions, "normalize", index_name, index_expression, validated_at, activated_at,
       drift_status, drift_checked_at, drift_status_since, drift_failures, drift_detail,
       drift_status IS DISTINCT FROM 'failed' AS trusted,
       destination, vector_schema, vector_table, storage
FROM embedding_backfills.vector_spaces
WHERE status = 'active';
