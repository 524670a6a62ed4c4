-- Activation, retention and the lookup applications use. Applied once, in order, by
-- embedding_assets.db.migrations.

ALTER TABLE embedding_backfills.vector_spaces
    DROP CONSTRAINT IF EXISTS vector_spaces_status_check;
ALTER TABLE embedding_backfills.vector_spaces
    ADD CONSTRAINT vector_spaces_status_check
    CHECK (status IN ('building', 'active', 'retired', 'dropped'));

ALTER TABLE embedding_backfills.vector_spaces
    ADD COLUMN IF NOT EXISTS index_expression text,
    ADD COLUMN IF NOT EXISTS backup_path      text,
    ADD COLUMN IF NOT EXISTS backed_up_at     timestamptz,
    ADD COLUMN IF NOT EXISTS dropped_at       timestamptz;

-- What applications query: the active space of each table, by model identity.
CREATE OR REPLACE VIEW embedding_backfills.active_spaces AS
SELECT table_schema, table_name, column_name, name AS space, provider, model, revision,
       dimensions, "normalize", index_name, index_expression, validated_at, activated_at
FROM embedding_backfills.vector_spaces
WHERE status = 'active';

-- SELECT * FROM embedding_backfills.active_column('public.documents');
-- SELECT * FROM embedding_backfills.active_column('public.documents', 'openai', 'text-embedding-3-small');
-- Never by dimension: two models of the same dimension are two different spaces.
CREATE OR REPLACE FUNCTION embedding_backfills.active_column(
    p_table regclass, p_provider text DEFAULT NULL, p_model text DEFAULT NULL)
RETURNS TABLE (column_name text, space text, provider text, model text, revision text,
               dimensions integer, "normalize" boolean, index_expression text)
LANGUAGE sql STABLE AS $$
    SELECT s.column_name, s.name, s.provider, s.model, s.revision, s.dimensions, s."normalize",
           s.index_expression
    FROM embedding_backfills.vector_spaces AS s
    JOIN pg_class AS c ON c.oid = p_table
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE s.status = 'active' AND s.table_schema = n.nspname AND s.table_name = c.relname
      AND (p_provider IS NULL OR s.provider = p_provider)
      AND (p_model IS NULL OR s.model = p_model)
$$;
