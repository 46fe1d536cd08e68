-- 170_metrics: what monitoring scrapes, in the Prometheus text exposition format 0.0.4
-- (`serverpki metrics`, node_exporter's textfile collector; docs/metrics.md lists every metric).

-- prom_escape: a label value as it stands between the double quotes of the text format: backslash,
-- double quote and newline escaped (a plain expression, so the planner inlines it: no search_path of
-- its own, so pg_catalog's replace, not citext's, by name)
CREATE OR REPLACE FUNCTION pki.prom_escape(value text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(coalesce(value, ''), E'\\', E'\\\\'),
                                                   '"', E'\\"'), E'\n', E'\\n') $$;

-- prom_value: a sample value as the text format spells it (+Inf, -Inf, NaN; otherwise the shortest
-- exact decimal, which pki.metrics pins with extra_float_digits)
CREATE OR REPLACE FUNCTION pki.prom_value(value double precision)
RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN value = 'Infinity' THEN '+Inf' WHEN value = '-Infinity' THEN '-Inf'
                  WHEN value = 'NaN' THEN 'NaN' ELSE value::text END $$;

-- metrics: every metric of serverPKI as one text in the Prometheus text format 0.0.4: per certificate
-- (disabled ones too) its active instance's expiry (pki.active_instances), days left and state; jobs by
-- kind and state; the last operate_serverPKI -S run (pki.runs); each agent's last heartbeat; the open
-- alerts (pki.alerts) by severity. Families whose labels come from a fixed list (job kind x state,
-- severity, certificate state) always show every series, 0 where none, so no series vanishes. The clock
-- is pki.now(). SECURITY DEFINER for pki_report, which may not read the tables: it shows no key material.
CREATE OR REPLACE FUNCTION pki.metrics()
RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pki, dd, pg_temp
SET extra_float_digits = 1
AS $$
WITH knobs AS (
    SELECT pki.now() AS now, pki.setting_int('alert_expiry_days') * interval '1 day' AS expiry
), families (ord, name, type, help) AS (VALUES
    (1, 'serverpki_certificate_expiration_timestamp_seconds', 'gauge',
        'not_after of the certificate''s active instance (the deployed one lasting longest; for a CA the issued one), as a Unix timestamp'),
    (2, 'serverpki_certificate_days_left', 'gauge',
        'days until the certificate''s active instance expires (negative: expired)'),
    (3, 'serverpki_certificate_state', 'gauge',
        'the certificate''s state, 1 for the state it is in: valid, expiring (within alert_expiry_days, no successor on its way), renewing (a successor on its way), expired (the active instance is past not_after), missing (no active instance)'),
    (4, 'serverpki_jobs', 'gauge',
        'jobs in the queue by kind and state'),
    (5, 'serverpki_schedule_last_run_timestamp_seconds', 'gauge',
        'when the last operate_serverPKI -S run finished, as a Unix timestamp'),
    (6, 'serverpki_schedule_last_run_age_seconds', 'gauge',
        'seconds since the last operate_serverPKI -S run finished (+Inf: never)'),
    (7, 'serverpki_schedule_last_run_success', 'gauge',
        '1 if every job the last operate_serverPKI -S run performed succeeded, else 0'),
    (8, 'serverpki_schedule_last_success_timestamp_seconds', 'gauge',
        'when the last successful operate_serverPKI -S run finished, as a Unix timestamp'),
    (9, 'serverpki_schedule_last_success_age_seconds', 'gauge',
        'seconds since the last successful operate_serverPKI -S run finished (+Inf: never)'),
    (10, 'serverpki_agent_heartbeat_timestamp_seconds', 'gauge',
        'when the agent last claimed jobs (serverpki agent once per poll interval), as a Unix timestamp'),
    (11, 'serverpki_agent_heartbeat_age_seconds', 'gauge',
        'seconds since the agent last claimed jobs'),
    (12, 'serverpki_alerts', 'gauge',
        'alerts open (the view pki.alerts) by severity')
), certs AS (
    SELECT s.name::text AS name, a.instance, a.not_after,
           CASE WHEN a.instance IS NULL THEN 'missing'
                WHEN a.not_after <= k.now THEN 'expired'
                WHEN a.renewing THEN 'renewing'
                WHEN a.not_after - k.now <= k.expiry THEN 'expiring'
                ELSE 'valid' END AS state,
           format('certificate="%s",type="%s",disabled="%s"', pki.prom_escape(s.name), c.type, c.disabled::text) AS labels
      FROM pki.certificates c
      JOIN pki.main_subjects s ON s.certificate = c.id
      LEFT JOIN pki.active_instances a ON a.certificate = c.id
     CROSS JOIN knobs k
), last_run AS (
    SELECT r.finished, r.succeeded FROM pki.runs r WHERE '-S' = ANY (r.actions) ORDER BY r.finished DESC, r.id DESC LIMIT 1
), schedule AS (
    -- one row, NULLs when operate_serverPKI -S never ran (or never succeeded)
    SELECT (SELECT l.finished FROM last_run l) AS last_run, (SELECT l.succeeded FROM last_run l) AS last_succeeded,
           (SELECT max(r.finished) FROM pki.runs r WHERE '-S' = ANY (r.actions) AND r.succeeded) AS last_success
), samples (family, key, sub, line) AS (
    SELECT 1, c.name, 0, format('{%s,serial="%s"} %s', c.labels, c.instance, prom_value(extract(epoch FROM c.not_after)::float8))
      FROM certs c WHERE c.instance IS NOT NULL
    UNION ALL
    SELECT 2, c.name, 0, format('{%s,serial="%s"} %s', c.labels, c.instance,
                                prom_value(round(extract(epoch FROM c.not_after - k.now) / 86400, 3)::float8))
      FROM certs c, knobs k WHERE c.instance IS NOT NULL
    UNION ALL
    SELECT 3, c.name, st.ord::int, format('{%s,state="%s"} %s', c.labels, st.state, (st.state = c.state)::int)
      FROM certs c
     CROSS JOIN unnest(ARRAY['valid', 'expiring', 'renewing', 'expired', 'missing']) WITH ORDINALITY st(state, ord)
    UNION ALL
    SELECT 4, jk.kind, st.ord::int, format('{kind="%s",state="%s"} %s', prom_escape(jk.kind), st.state, coalesce(n.jobs, 0))
      FROM pki.job_kinds jk
     CROSS JOIN unnest(enum_range(NULL::dd.job_state)) WITH ORDINALITY st(state, ord)
      LEFT JOIN (SELECT j.kind, j.state, count(*) AS jobs FROM pki.jobs j GROUP BY j.kind, j.state) n
             ON n.kind = jk.kind AND n.state = st.state
    UNION ALL
    SELECT 5, '', 0, ' ' || prom_value(extract(epoch FROM s.last_run)::float8) FROM schedule s WHERE s.last_run IS NOT NULL
    UNION ALL
    SELECT 6, '', 0, ' ' || prom_value(coalesce(extract(epoch FROM k.now - s.last_run)::float8, 'Infinity')) FROM schedule s, knobs k
    UNION ALL
    SELECT 7, '', 0, ' ' || s.last_succeeded::int FROM schedule s WHERE s.last_run IS NOT NULL
    UNION ALL
    SELECT 8, '', 0, ' ' || prom_value(extract(epoch FROM s.last_success)::float8) FROM schedule s WHERE s.last_success IS NOT NULL
    UNION ALL
    SELECT 9, '', 0, ' ' || prom_value(coalesce(extract(epoch FROM k.now - s.last_success)::float8, 'Infinity')) FROM schedule s, knobs k
    UNION ALL
    SELECT 10, h.agent, 0, format('{agent="%s"} %s', prom_escape(h.agent), prom_value(extract(epoch FROM h.last_seen)::float8))
      FROM pki.agent_heartbeats h
    UNION ALL
    SELECT 11, h.agent, 0, format('{agent="%s"} %s', prom_escape(h.agent), prom_value(extract(epoch FROM k.now - h.last_seen)::float8))
      FROM pki.agent_heartbeats h, knobs k
    UNION ALL
    SELECT 12, sv.severity, 0, format('{severity="%s"} %s', sv.severity, count(a.alert_key))
      FROM unnest(ARRAY['critical', 'warning']) sv(severity)
      LEFT JOIN pki.alerts a ON a.severity = sv.severity
     GROUP BY sv.severity
), rendered AS (
    SELECT s.family, string_agg(f.name || s.line || E'\n', '' ORDER BY s.key COLLATE "C", s.sub) AS lines
      FROM samples s JOIN families f ON f.ord = s.family
     GROUP BY s.family
)
SELECT string_agg(format(E'# HELP %s %s\n# TYPE %s %s\n', f.name, f.help, f.name, f.type) || coalesce(r.lines, ''),
                  '' ORDER BY f.ord)
  FROM families f LEFT JOIN rendered r ON r.family = f.ord
$$;
