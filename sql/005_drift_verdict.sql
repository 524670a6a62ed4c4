-- The latest drift verdict of each space (`config_matches` and `model_fingerprint`, written by
-- every evaluation: the `<name>__drift` sensor tick and the on-demand drift checks), and
-- where applications look spaces up. A space stays `active` when its model is swapped: the
-- verdict is what tells an application not to embed its queries with that model.

ALTER TABLE embedding_backfills.vector_spaces
    ADD COLUMN IF NOT EXISTS drift_status       text
        CONSTRAINT vector_spaces_drift_status_check CHECK (drift_status IN ('ok', 'failed')),
    ADD COLUMN IF NOT EXISTS drift_checked_at   timestamptz,
    ADD COLUMN IF NOT EXISTS drift_status_since timestamptz,
    ADD COLUMN IF NOT EXISTS drift_failures     text[],
    ADD COLUMN IF NOT EXISTS drift_detail       text;

COMMENT ON COLUMN embedding_backfills.vector_spaces.drift_status IS
    'Latest drift verdict: ok or failed; NULL until first checked.';
COMMENT ON COLUMN embedding_backfills.vector_spaces.drift_checked_at IS
    'When the drift checks last ran (every drift sensor tick).';
COMMENT ON COLUMN embedding_backfills.vector_spaces.drift_status_since IS
    'When drift_status took its current value.';
COMMENT ON COLUMN embedding_backfills.vector_spaces.drift_failures IS
    'Names of the failing drift checks (config_matches, model_fingerprint); empty when ok.';
COMMENT ON COLUMN embedding_backfills.vector_spaces.drift_detail IS
    'Short reason per failing check; never row text or credentials. NULL when ok.';

-- New columns go at the end: existing callers (SELECT *, positional readers) keep working.
CREATE OR REPLACE VIEW embedding_backfills.active_spaces AS
SELECT table_schema, table_name, column_name, name AS space, provider, model, revision,
       dimensions, "normalize", index_name, index_expression, validated_at, activated_at,
       drift_status, drift_checked_at, drift_status_since, drift_failures, drift_detail,
       drift_status IS DISTINCT FROM 'failed' AS trusted
FROM embedding_backfills.vector_spaces
WHERE status = 'active';

-- Its output columns change, so active_column is dropped and created again; the grants on it
-- are carried over (a dropped function loses them, and PUBLIC would get EXECUTE back). They
-- are kept in a transaction-local setting rather than a temporary table (no TEMP privilege).
SELECT set_config('embedding_backfills.active_column_acl', coalesce(proacl::text, ''), true)
FROM pg_proc
WHERE oid = 'embedding_backfills.active_column(regclass, text, text)'::regprocedure;

DROP FUNCTION embedding_backfills.active_column(regclass, text, text);

-- SELECT column_name FROM embedding_backfills.active_column('public.documents') WHERE trusted;
CREATE FUNCTION embedding_backfills.active_column(
    p_table regclass, p_provider text DEFAULT NULL, p_model text DEFAULT NULL)
RETURNS TABLE (column_name text, space text, provider text, model text, revision text,
               dimensions integer, "normalize" boolean, index_expression text,
               drift_status text, drift_checked_at timestamptz, drift_status_since timestamptz,
               drift_failures text[], drift_detail text, trusted boolean)
LANGUAGE sql STABLE AS $$
    SELECT s.column_name, s.name, s.provider, s.model, s.revision, s.dimensions, s."normalize",
           s.index_expression, s.drift_status, s.drift_checked_at, s.drift_status_since,
           s.drift_failures, s.drift_detail, s.drift_status IS DISTINCT FROM 'failed'
    FROM embedding_backfills.vector_spaces AS s
    JOIN pg_class AS c ON c.oid = p_table
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE s.status = 'active' AND s.table_schema = n.nspname AND s.table_name = c.relname
      AND (p_provider IS NULL OR s.provider = p_provider)
      AND (p_model IS NULL OR s.model = p_model)
$$;

DO $$
DECLARE
    saved text := current_setting('embedding_backfills.active_column_acl', true);
    acl aclitem[] := nullif(saved, '')::aclitem[];
    role_name text;
BEGIN
    IF acl IS NULL THEN  -- default privileges: nothing was granted or revoked
        RETURN;
    END IF;
    REVOKE ALL ON FUNCTION embedding_backfills.active_column(regclass, text, text) FROM PUBLIC;
    FOR role_name IN
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END
        FROM aclexplode(acl) AS a LEFT JOIN pg_roles AS r ON r.oid = a.grantee
        WHERE a.privilege_type = 'EXECUTE' AND (a.grantee = 0 OR r.rolname IS NOT NULL)
    LOOP
        EXECUTE format(
            'GRANT EXECUTE ON FUNCTION embedding_backfills.active_column(regclass, text, text) TO %s',
            role_name);
    END LOOP;
END
$$;

COMMENT ON VIEW embedding_backfills.active_spaces IS
    'The active space of each table, with its latest drift verdict; trusted is false when it failed.';
COMMENT ON FUNCTION embedding_backfills.active_column(regclass, text, text) IS
    'The active space of a table (optionally of one provider and model), with its latest drift '
    'verdict; trusted is false when it failed.';
