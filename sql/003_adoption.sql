-- Adopted spaces: columns that already held vectors when the project met them. They have no
-- per-row provenance; their model was verified on a sample at adoption.
ALTER TABLE embedding_backfills.vector_spaces
    ADD COLUMN IF NOT EXISTS adopted boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS adoption_report jsonb;
