-- The change log: row ids whose text changed, written by the triggers that
-- `embedding-backfills changelog install SPACE` puts on a source table (nothing is installed
-- on a source table without that command). The drift sensor consumes it: entries are deleted
-- once the partition runs they caused were handed to Dagster.
CREATE TABLE IF NOT EXISTS embedding_backfills.change_log (
    change_id  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    space      text        NOT NULL,
    row_id     bigint      NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS change_log_space_change_id
    ON embedding_backfills.change_log (space, change_id);

COMMENT ON TABLE embedding_backfills.change_log IS
    'Row ids whose text changed, per space; filled by triggers, consumed by the drift sensor.';
