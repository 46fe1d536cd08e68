-- 050_alerts: what needs a human, as the database sees it; the runs mail and post what is new
-- there (db/jobs/070_notify_alerts.sql), `serverpki metrics` counts it and --check grades it.

-- alerts: one row per open alert.
--   alert_key    what it is about, stable while the alert lasts ('job:<kind>:<subject>', 'expiry:<cert>',
--                'overdue:<instance>', 'config:<hash>', 'schedule', 'crl:<CA instance>')
--   severity     'warning' or 'critical'
--   summary      one line naming the certificate, disthost or job; unchanged while the alert is the same
--   detail       what changes from run to run (the job's id, attempts, its last error)
--   fingerprint  md5 of severity and summary: a channel is told again when it changes
-- Sources: a dead job, or one failed alert_failing_attempts times, while no later job of its kind and
-- subject is done (for alert_job_days after its last attempt); a certificate whose active instance
-- expires within alert_expiry_days with no successor on its way (critical within
-- alert_expiry_critical_days); an instance still deployed past not_after; each problem of
-- check_config (what -n reports); no operate_serverPKI -S run within schedule_stale; a local CA's CRL
-- with less than a sixth of crl_days left (critical past its nextUpdate).
CREATE VIEW pki.alerts AS
WITH knobs AS (
    -- the settings read as the view's owner (not through setting_int): pki_report reads views only
    SELECT pki.now() AS now,
           max(CASE WHEN s.name = 'alert_failing_attempts' THEN s.value END)::int AS failing,
           max(CASE WHEN s.name = 'alert_job_days' THEN s.value END)::int * interval '1 day' AS job_window,
           max(CASE WHEN s.name = 'alert_expiry_days' THEN s.value END)::int AS expiry_days,
           max(CASE WHEN s.name = 'alert_expiry_days' THEN s.value END)::int * interval '1 day' AS expiry,
           max(CASE WHEN s.name = 'alert_expiry_critical_days' THEN s.value END)::int AS critical_days,
           max(CASE WHEN s.name = 'alert_expiry_critical_days' THEN s.value END)::int * interval '1 day' AS expiry_critical,
           max(CASE WHEN s.name = 'schedule_stale' THEN s.value END)::interval AS schedule_stale,
           max(CASE WHEN s.name = 'crl_days' THEN s.value END)::int * interval '1 day' AS crl_life
      FROM pki.settings s
     WHERE s.name IN ('alert_failing_attempts', 'alert_job_days', 'alert_expiry_days', 'alert_expiry_critical_days',
                      'schedule_stale', 'crl_days')
), troubled AS (
    -- the jobs in trouble since the last done job of their kind and subject; a job's last attempt is
    -- the time of its newest event (pki.now() of the failure: jobs.updated is the wall clock, which
    -- time travel does not move)
    SELECT j.*, t.last_attempt
      FROM pki.jobs j
     CROSS JOIN knobs k
     CROSS JOIN LATERAL (SELECT coalesce(max(e.at), j.finished, j.run_after) AS last_attempt
                           FROM pki.events e WHERE e.job = j.id) t
     WHERE (j.state = 'dead' OR (j.state IN ('queued', 'running', 'failed') AND j.attempts >= k.failing
                                 AND j.last_error IS NOT NULL))
       AND t.last_attempt >= k.now - k.job_window
       AND NOT EXISTS (SELECT 1 FROM pki.jobs d WHERE d.kind = j.kind AND d.subject_key = j.subject_key
                          AND d.state = 'done' AND d.id > j.id)
), troubled_jobs AS (
    -- one alert per kind and subject: the newest job in trouble for the details, and dead if any of
    -- them died (the scheduler enqueues a new job after a dead one: while that one is only failing,
    -- the alert must not fall back to a warning and rise again, each change told)
    SELECT DISTINCT ON (t.kind, t.subject_key) t.*,
           bool_or(t.state = 'dead') OVER (PARTITION BY t.kind, t.subject_key) AS died
      FROM troubled t
     ORDER BY t.kind, t.subject_key, t.id DESC
), active AS (
    -- each enabled certificate's active instance (views/045_active_instances.sql)
    SELECT a.certificate, a.name, a.instance AS id, a.not_after, a.renewing
      FROM pki.active_instances a
     WHERE NOT a.disabled
), last_schedule AS (
    SELECT max(r.finished) AS finished FROM pki.runs r WHERE '-S' = ANY (r.actions)
), found AS (
    SELECT format('job:%s:%s', j.kind, j.subject_key) AS alert_key,
           CASE WHEN j.died THEN 'critical' ELSE 'warning' END AS severity,
           s.name::text AS certificate, j.instance, j.id AS job, d.fqdn::text AS disthost,
           concat_ws(' ', CASE WHEN j.died THEN format('%s job failed for good', j.kind)
                               ELSE format('%s job keeps failing', j.kind) END,
                     CASE WHEN s.name IS NOT NULL THEN format('for certificate %s', s.name) END,
                     CASE WHEN d.fqdn IS NOT NULL THEN format('on disthost %s', d.fqdn) END,
                     CASE WHEN j.zone IS NOT NULL THEN format('in zone %s', j.zone) END,
                     -- a job of the installation (-Z, -X, notify_alerts): its subject says which
                     CASE WHEN s.name IS NULL AND d.fqdn IS NULL AND j.zone IS NULL THEN format('(%s)', j.subject_key) END)
               AS summary,
           format('job %s, %s after %s attempt(s): %s', j.id, j.state, j.attempts,
                  coalesce(j.last_error, 'no error recorded')) AS detail,
           j.last_attempt AS since
      FROM troubled_jobs j
      LEFT JOIN pki.main_subjects s ON s.certificate = j.certificate
      LEFT JOIN pki.disthosts d ON d.id = j.disthost
    UNION ALL
    SELECT format('expiry:%s', a.name),
           CASE WHEN a.not_after - k.now <= k.expiry_critical THEN 'critical' ELSE 'warning' END,
           a.name::text, a.id, NULL::int8, NULL::text,
           format('certificate %s expires within %s days with no successor on its way',
                  a.name, CASE WHEN a.not_after - k.now <= k.expiry_critical
                               THEN k.critical_days ELSE k.expiry_days END),
           format('instance %s expires %s', a.id, a.not_after),
           a.not_after - k.expiry
      FROM active a, knobs k
     WHERE a.not_after > k.now AND a.not_after - k.now <= k.expiry AND NOT a.renewing
    UNION ALL
    SELECT format('overdue:%s', i.id), 'critical', s.name::text, i.id, NULL::int8, NULL::text,
           format('instance %s of certificate %s is deployed past its not_after %s', i.id, s.name, i.not_after),
           NULL::text, i.not_after
      FROM pki.certinstances i
      JOIN pki.certificates c ON c.id = i.certificate AND NOT c.disabled   -- disabled: the operator knows
      JOIN pki.main_subjects s ON s.certificate = i.certificate, knobs k
     WHERE i.state = 'deployed' AND i.not_after <= k.now
    UNION ALL
    SELECT format('config:%s', md5(p.certificate || E'\n' || p.problem)), 'warning', p.certificate, NULL::int4,
           NULL::int8, NULL::text, format('%s: %s; fix: %s', p.certificate, p.problem, p.hint), NULL::text, NULL::timestamptz
      -- one alert per problem (check_config says a problem once per target that has it)
      FROM (SELECT DISTINCT c.certificate, c.problem, c.hint FROM pki.config_problems() c) p
    UNION ALL
    -- a CRL the scheduler did not renew in time (functions/155_crls.sql signs the next one when a
    -- third of crl_days is left): relying parties that check CRLs reject the CA's certificates after it
    SELECT format('crl:%s', n.ca_instance), CASE WHEN n.next_update <= k.now THEN 'critical' ELSE 'warning' END,
           s.name::text, n.ca_instance, NULL::int8, NULL::text,
           CASE WHEN n.next_update <= k.now
                THEN format('the CRL of local CA %s (instance %s) is past its nextUpdate: relying parties that check CRLs reject its certificates',
                            s.name, n.ca_instance)
                ELSE format('the CRL of local CA %s (instance %s) was not renewed in time', s.name, n.ca_instance) END,
           format('CRL %s, nextUpdate %s', n.number, n.next_update), n.next_update
      FROM (SELECT DISTINCT ON (c.ca_instance) c.ca_instance, c.number, c.next_update
              FROM pki.crls c ORDER BY c.ca_instance, c.number DESC) n
      JOIN pki.certinstances i ON i.id = n.ca_instance
      JOIN pki.main_subjects s ON s.certificate = i.certificate, knobs k
     WHERE i.state NOT IN ('revoked', 'archived') AND i.not_after > k.now
       AND n.next_update - k.now < k.crl_life / 6
    UNION ALL
    SELECT 'schedule', CASE WHEN l.finished IS NULL THEN 'warning' ELSE 'critical' END, NULL::text, NULL::int4,
           NULL::int8, NULL::text,
           CASE WHEN l.finished IS NULL THEN 'operate_serverPKI -S has never run: nothing is renewed (add the cron job)'
                ELSE format('operate_serverPKI -S has not run for more than %s: nothing is renewed', k.schedule_stale) END,
           CASE WHEN l.finished IS NOT NULL THEN format('last run finished %s', l.finished) END,
           l.finished
      FROM last_schedule l, knobs k
     WHERE (l.finished IS NULL OR l.finished < k.now - k.schedule_stale)
       AND EXISTS (SELECT 1 FROM pki.certificates c WHERE NOT c.disabled)
)
SELECT f.alert_key, f.severity, f.certificate, f.instance, f.job, f.disthost, f.summary, f.detail, f.since,
       md5(f.severity || E'\n' || f.summary) AS fingerprint
  FROM found f
 ORDER BY f.severity = 'critical' DESC, f.alert_key;
