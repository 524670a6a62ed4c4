-- The registry of vector spaces. Applied by embedding_assets.db.migrations, idempotently,
-- once per database, under an advisory lock. Never edit an applied file: add a new one.

CREATE SCHEMA IF NOT EXISTS embedding_backfills;

CREATE TABLE IF NOT EXISTS embedding_backfills.vector_spaces (
    space_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text        NOT NULL UNIQUE,
    table_schema   text        NOT NULL,
    table_name     text        NOT NULL,
    column_name    text        NOT NULL,
    -- model identity: what wrote the vectors, not just their dimension
    provider       text        NOT NULL,
    model          text        NOT NULL,
    revision       text,
    dimensions     integer     NOT NULL CHECK (dimensions > 0),
    normalize      boolean     NOT NULL,
    model_key      bigint      NOT NULL,
    fingerprint    jsonb       NOT NULL,
    status         text        NOT NULL DEFAULT 'building'
                   CHECK (status IN ('building', 'active', 'retired')),
    index_name     text,
    row_count      bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    validated_at   timestamptz,
    activated_at   timestamptz,
    retired_at     timestamptz,
    UNIQUE (table_schema, table_name, column_name)
);

-- At most one active space per table: the column applications query.
CREATE UNIQUE INDEX IF NOT EXISTS vector_spaces_one_active_per_table
    ON embedding_backfills.vector_spaces (table_schema, table_name)
    WHERE status = 'active';

COMMENT ON TABLE embedding_backfills.vector_spaces IS
    'One row per vector space (table, column, model identity); see README "Registry".';
