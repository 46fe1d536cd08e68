-- 070_notify_alerts: notify_alerts jobs: what is new in pki.alerts (views/050_alerts.sql), told to a
-- channel ('mail': one digest mail; 'webhook': one JSON POST), at most one job per channel at a time.
-- pki.alert_notices (schema/0009_monitoring.sql) keeps what each channel was told.
--
-- When a channel counts as told: at COMPLETION, not at enqueue. A mail that never gets out (the relay
-- down for good, a webhook answering 4xx) ends as a dead job; had the enqueue marked its alerts as
-- told, nobody would ever hear of them. So the request only reads alert_notices, the job carries the
-- digest it was made of (args), and complete_notify_alerts writes exactly that digest into
-- alert_notices in the transaction that marks the job done. A dead job needs no clean-up: its alerts
-- stay untold and the next request after the hold-off (alert_digest_due) puts them in a new digest.

-- alert_digest: what a channel is to be told now, one row per alert: 'new' (never told),
-- 'reappeared' (told, told resolved, and back), 'changed' (its fingerprint, i.e. severity or
-- summary, is not the one told), 'repeat' (told unchanged, alert_repeat ago or longer), and
-- 'resolved' (told, not told resolved, and no longer in pki.alerts)
CREATE OR REPLACE FUNCTION pki.alert_digest(the_channel text)
RETURNS TABLE (alert_key text, status text, severity text, summary text, detail text, certificate text,
               instance int, job bigint, disthost text, since timestamptz, fingerprint text)
LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    WITH told AS (
    SELECT a.alert_key,
           CASE WHEN n.alert_key IS NULL THEN 'new'
                WHEN n.resolved IS NOT NULL THEN 'reappeared'
                WHEN n.fingerprint <> a.fingerprint THEN 'changed'
                ELSE 'repeat' END AS status,
           a.severity, a.summary, a.detail, a.certificate, a.instance, a.job, a.disthost, a.since, a.fingerprint
      FROM alerts a
      LEFT JOIN alert_notices n ON n.channel = the_channel AND n.alert_key = a.alert_key
     WHERE n.alert_key IS NULL OR n.resolved IS NOT NULL OR n.fingerprint <> a.fingerprint
        OR n.last_sent <= pki.now() - setting_interval('alert_repeat')
    UNION ALL
    SELECT n.alert_key, 'resolved', n.severity, n.summary, NULL, NULL, NULL, NULL, NULL, n.last_sent, n.fingerprint
      FROM alert_notices n
     WHERE n.channel = the_channel AND n.resolved IS NULL
       AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.alert_key = n.alert_key)
    )
    SELECT * FROM told t ORDER BY t.status = 'resolved', t.severity <> 'critical', t.alert_key
$$;

-- alert_digest_due: whether a channel may get a new notify_alerts job now: not while one is active
-- (the queue keeps one per channel), and not within an hour after one died (a relay that is down or a
-- webhook that answers 4xx is tried once per hourly cron run, not after every drain of `serverpki agent`)
CREATE OR REPLACE FUNCTION pki.alert_digest_due(the_channel text)
RETURNS boolean LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT NOT EXISTS (SELECT 1 FROM jobs j WHERE j.kind = 'notify_alerts' AND j.subject_key = 'alerts:' || the_channel
                          AND (j.state IN ('queued', 'running', 'failed')
                               OR (j.state = 'dead' AND j.finished > pki.now() - interval '1 hour')))
$$;

-- request_alert_notices: for each channel ('mail', 'webhook') a notify_alerts job carrying its digest
-- (alert_digest, without secrets), when the digest is not empty; returns a row per channel that has a
-- job, the one enqueued or the one still active, like the other request_* functions (job, certificate,
-- instance, reason). Under a lock: two runs at once cannot both enqueue the same digest
CREATE OR REPLACE FUNCTION pki.request_alert_notices(channels text[])
RETURNS TABLE (job bigint, certificate text, instance int, reason text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    the_channel text;
    bad text;
    digest jsonb;
    active bigint;
    new_job bigint;
BEGIN
    SELECT coalesce(c, 'NULL') INTO bad FROM unnest(channels) c WHERE c IS NULL OR c NOT IN ('mail', 'webhook') LIMIT 1;
    IF FOUND THEN
        PERFORM raise_error('SP011', format('alert channel %s is not mail or webhook', bad),
            'ask for ARRAY[''mail''], ARRAY[''webhook''] or both');
    END IF;
    -- one request at a time: what one computes from alert_notices, the other must not compute too
    PERFORM pg_advisory_xact_lock(hashtext('pki.request_alert_notices'));
    FOR the_channel IN SELECT DISTINCT c FROM unnest(channels) c ORDER BY 1 LOOP
        active := active_job('notify_alerts', 'alerts:' || the_channel);
        IF active IS NOT NULL THEN
            -- its digest goes first; what changed since is the next request's
            RETURN QUERY SELECT active, NULL::text, NULL::int, format('alerts to %s: job %s is on its way', the_channel, active);
            CONTINUE;
        END IF;
        IF NOT alert_digest_due(the_channel) THEN
            RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::int,
                format('alerts to %s: held back for an hour after its last notify_alerts job died (see jobs_overview)', the_channel);
            CONTINUE;
        END IF;
        SELECT jsonb_agg(to_jsonb(d)) INTO digest FROM alert_digest(the_channel) d;
        CONTINUE WHEN digest IS NULL;
        new_job := enqueue('notify_alerts', 'alerts:' || the_channel,
                           format('%s alert(s) to tell %s', jsonb_array_length(digest), the_channel),
                           -- open: every alert open now by severity, for the digest's subject (a repeat
                           -- digest carries only some of them)
                           without_secrets(jsonb_build_object('channel', the_channel, 'alerts', digest,
                               'open', (SELECT jsonb_build_object('critical', count(*) FILTER (WHERE a.severity = 'critical'),
                                                                  'warning', count(*) FILTER (WHERE a.severity = 'warning'))
                                          FROM alerts a))));
        RETURN QUERY SELECT new_job, NULL::text, NULL::int,
            format('alerts to %s: %s', the_channel,
                   (SELECT string_agg(format('%s %s', n, s), ', ' ORDER BY s)
                      FROM (SELECT e ->> 'status' AS s, count(*) AS n FROM jsonb_array_elements(digest) e GROUP BY 1) x));
    END LOOP;
END
$$;

-- complete_notify_alerts: the digest of the job was told: each alert it carried is now what its
-- channel heard last (first_sent kept while the alert stays open), each resolved one marked resolved
CREATE OR REPLACE FUNCTION pki.complete_notify_alerts(job_id bigint, lease_token uuid, report jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := completing(job_id, lease_token, ARRAY['notify_alerts']);
    the_channel text := j.args ->> 'channel';
BEGIN
    INSERT INTO alert_notices AS n (channel, alert_key, fingerprint, severity, summary, first_sent, last_sent, resolved)
    SELECT the_channel, e ->> 'alert_key', e ->> 'fingerprint', e ->> 'severity', e ->> 'summary', pki.now(), pki.now(), NULL
      FROM (SELECT DISTINCT ON (a ->> 'alert_key') a AS e    -- one row per alert, whatever the digest holds
              FROM jsonb_array_elements(coalesce(j.args -> 'alerts', '[]')) a ORDER BY a ->> 'alert_key') x
     WHERE e ->> 'status' <> 'resolved'
    ON CONFLICT (channel, alert_key) DO UPDATE
       SET fingerprint = EXCLUDED.fingerprint, severity = EXCLUDED.severity, summary = EXCLUDED.summary,
           first_sent = CASE WHEN n.resolved IS NULL THEN n.first_sent ELSE EXCLUDED.first_sent END,
           last_sent = EXCLUDED.last_sent, resolved = NULL;
    UPDATE alert_notices n SET resolved = pki.now(), last_sent = pki.now()
      FROM jsonb_array_elements(coalesce(j.args -> 'alerts', '[]')) e
     WHERE e ->> 'status' = 'resolved' AND n.channel = the_channel AND n.alert_key = e ->> 'alert_key'
       AND n.resolved IS NULL;
    PERFORM job_done(j, report);
END
$$;

SELECT pki.define_job_kind('notify_alerts', 'tell a channel (mail, webhook) what is new in pki.alerts', 5, 40,
                           'complete_notify_alerts');
