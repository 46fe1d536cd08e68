-- 160_runs: the record of operate_serverPKI runs (pki.runs), which monitoring reads: the age of
-- the last scheduler pass (pki.alerts 'schedule', pki.metrics).

-- record_run: a run that acted says how it ended, once, as it exits; runs older than a year are
-- forgotten then (an hourly cron run leaves 8,760 rows a year)
CREATE OR REPLACE FUNCTION pki.record_run(agent text, actions text[], started timestamptz, succeeded boolean,
                                          jobs jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    new_id bigint;
BEGIN
    PERFORM check_required(agent, 'agent name');
    PERFORM check_printable(agent, 'agent name', 200);
    IF jsonb_typeof(jobs) IS DISTINCT FROM 'object' THEN
        PERFORM raise_error('SP011', 'a run''s jobs must be a JSON object of counts by state',
            'pass e.g. {"done": 3, "dead": 1}');
    END IF;
    DELETE FROM runs r WHERE r.finished < pki.now() - interval '1 year';
    INSERT INTO runs (agent, actions, started, finished, succeeded, jobs)
    VALUES (record_run.agent, coalesce(actions, '{}'), least(coalesce(started, pki.now()), pki.now()), pki.now(),
            coalesce(succeeded, false), jobs)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;
