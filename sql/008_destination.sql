-- Destinations: a space's vectors live in columns of its table (`destination: column`) or in
-- a table of their own (`destination: table`). vector_schema / vector_table name the relation
-- that holds the vector column; NULL for spaces registered before this file (their vectors are
-- in the table itself). Applications read the table's read view (sql/007), which hides this.

ALTER TABLE embedding_backfills.vector_spaces
    ADD COLUMN IF NOT EXISTS destination  text NOT NULL DEFAULT 'column'
        CHECK (destination IN ('column', 'table')),
    ADD COLUMN IF NOT EXISTS vector_schema text,
    ADD COLUMN IF NOT EXISTS vector_table  text;

UPDATE embedding_backfills.vector_spaces
SET vector_schema = table_schema, vector_table = table_name
WHERE vector_schema IS NULL;

-- One destination table belongs to one space.
CREATE UNIQUE INDEX IF NOT EXISTS vector_spaces_one_space_per_destination
    ON embedding_backfills.vector_spaces (vector_schema, vector_table)
    WHERE destination = 'table';

CREATE OR REPLACE VIEW embedding_backfills.active_spaces AS
SELECT table_schema, table_name, column_name, name AS space, provider, model, revision,
       dimensions, "normalize", index_name, index_expression, validated_at, activated_at,
       drift_status, drift_checked_at, drift_status_since, drift_failures, drift_detail,
       drift_status IS DISTINCT FROM 'failed' AS trusted,
       destination, vector_schema, vector_table
FROM embedding_backfills.vector_spaces
WHERE status = 'active';
