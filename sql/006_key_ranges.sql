-- The partitions of each space: ranges of its key, laid out by `<name>/target_column` and
-- read by every run, sensor and machine (never computed in process memory, so that all of
-- them agree). Bounds are key values as text, cast to the key's own type when compared;
-- NULL is unbounded, so the first and the last range are open-ended and every current and
-- future key falls in exactly one range.
CREATE TABLE IF NOT EXISTS embedding_backfills.key_ranges (
    space         text        NOT NULL,
    seq           integer     NOT NULL,
    partition_key text        NOT NULL,
    lower_bound   text,       -- inclusive; NULL: below every key
    upper_bound   text,       -- exclusive; NULL: above every key
    covered_max   text,       -- last range only: the highest key it held when laid out
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (space, seq),
    UNIQUE (space, partition_key)
);

COMMENT ON TABLE embedding_backfills.key_ranges IS
    'Partitions of each space: key ranges [lower_bound, upper_bound), in key order by seq.';

-- Keys of any supported type (integers, uuid, text) are logged as text.
ALTER TABLE embedding_backfills.change_log ALTER COLUMN row_id TYPE text;
