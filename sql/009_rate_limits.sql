-- Shared request and token budgets of embedding endpoints: one token bucket per endpoint and
-- model, used by every run that calls it (runs are separate processes, possibly on separate
-- machines; this table is what they share). Each request reserves its cost with one atomic
-- INSERT ... ON CONFLICT DO UPDATE ... RETURNING (embedding_assets/providers/pacing.py): the
-- bucket refills at the budget's rate up to a few seconds' worth, and a level below zero is
-- the queue of reservations ahead, which the caller waits out before it sends. A 429 (or a
-- response that says the budget is spent) moves blocked_until forward for every run at once.
CREATE TABLE IF NOT EXISTS embedding_backfills.rate_limits (
    bucket              text             PRIMARY KEY,  -- '<endpoint> <model>', no credentials
    requests_per_minute integer,                        -- NULL: no request budget
    tokens_per_minute   bigint,                         -- NULL: no token budget
    requests_level      double precision,               -- requests that may go now (< 0: queued)
    tokens_level        double precision,               -- tokens that may go now (< 0: queued)
    blocked_until       timestamptz      NOT NULL DEFAULT '-infinity',
    updated_at          timestamptz      NOT NULL DEFAULT clock_timestamp()
);

COMMENT ON TABLE embedding_backfills.rate_limits IS
    'Token buckets shared by all runs calling one embedding endpoint and model.';
