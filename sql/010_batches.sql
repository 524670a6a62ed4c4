-- Batches submitted to the OpenAI Batch API (model.mode: batch), so that a re-run or a retried
-- step finds what its range already paid for instead of paying twice. A row is written right
-- after its file is uploaded, before the batch is created: a run killed in between finds the
-- batch again by its input file (embedding_assets/pipeline/batch.py).
CREATE TABLE IF NOT EXISTS embedding_backfills.batches (
    input_file_id text        PRIMARY KEY,
    batch_id      text        UNIQUE,           -- NULL until the batch is created
    space         text        NOT NULL,
    key_range     text        NOT NULL,         -- the run's exact key bounds, repr((lower, upper))
    model_key     bigint      NOT NULL,
    status        text        NOT NULL,         -- uploaded, the API's status, or written
    requests      integer     NOT NULL,
    inputs        integer     NOT NULL,
    tokens        bigint      NOT NULL,
    completed     integer     NOT NULL DEFAULT 0,
    failed        integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS batches_open
    ON embedding_backfills.batches (space, key_range, model_key) WHERE status <> 'written';

-- Which rows each request line embeds, and the hash of the text that was sent: results are
-- written with the provenance of what was embedded, even if the row changed meanwhile (the
-- drift sweep then finds it stale). Keys as text, like the change log's.
CREATE TABLE IF NOT EXISTS embedding_backfills.batch_lines (
    input_file_id text    NOT NULL REFERENCES embedding_backfills.batches ON DELETE CASCADE,
    custom_id     text    NOT NULL,
    keys          text[]  NOT NULL,
    hashes        bytea[] NOT NULL,
    PRIMARY KEY (input_file_id, custom_id)
);

COMMENT ON TABLE embedding_backfills.batches IS
    'OpenAI Batch API batches per space and key range: found again by re-runs, never paid twice.';
