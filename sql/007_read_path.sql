-- The read path: one view per table, `<schema>.<table>_embedding (id, embedding, space,
-- provider, model, dimensions)`, that always shows the table's active space. It is created or
-- replaced by embedding_assets.lifecycle.read_path in the same transaction as every activation
-- and rollback. This table records which relation is the project's read view of which table,
-- so that a relation of the same name the project did not create is never replaced.

CREATE TABLE IF NOT EXISTS embedding_backfills.read_views (
    table_schema text        NOT NULL,
    table_name   text        NOT NULL,
    view_name    text        NOT NULL,  -- in table_schema
    space        text        NOT NULL,  -- the space the view shows
    replaced_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_schema, table_name),
    UNIQUE (table_schema, view_name)
);

COMMENT ON TABLE embedding_backfills.read_views IS
    'The read view of each table (<table>_embedding in its schema) and the space it shows.';

-- SELECT embedding_backfills.read_view('public.documents');  -- public.documents_embedding
CREATE OR REPLACE FUNCTION embedding_backfills.read_view(p_table regclass)
RETURNS regclass
LANGUAGE sql STABLE AS $$
    SELECT to_regclass(format('%I.%I', v.table_schema, v.view_name))
    FROM embedding_backfills.read_views AS v
    JOIN pg_class AS c ON c.oid = p_table
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE v.table_schema = n.nspname AND v.table_name = c.relname
$$;

COMMENT ON FUNCTION embedding_backfills.read_view(regclass) IS
    'The view that shows the active space of a table (NULL before its first activation).';
