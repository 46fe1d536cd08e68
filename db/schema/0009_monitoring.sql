-- 0009_monitoring: what monitoring reads (pki.metrics, pki.alerts, `serverpki metrics --check`)
-- and the settings of its thresholds, beside the signs of life of agents and runs.

-- agent_heartbeats: the last sign of life of each agent, by [agent] name (claim_jobs notes it on
-- every claim, so an idle `serverpki agent` beats once per poll interval)
CREATE TABLE pki.agent_heartbeats (
    agent       text PRIMARY KEY,               -- the agent's name ([agent] name)
    last_seen   timestamptz NOT NULL,           -- pki.now() of its last claim
    created     dd.created,
    updated     dd.updated,
    remarks     text
);

-- runs: every operate_serverPKI run that acted (not -n), with how it ended
CREATE TABLE pki.runs (
    id          bigserial PRIMARY KEY,
    agent       text NOT NULL,                  -- the run's agent name
    actions     text[] NOT NULL,                -- its actions in the order run, e.g. {-S}
    started     timestamptz NOT NULL,
    finished    timestamptz NOT NULL,
    succeeded   boolean NOT NULL,               -- every job the run performed succeeded
    jobs        jsonb NOT NULL DEFAULT '{}',    -- the outcomes of its jobs by state, e.g. {"done": 3, "dead": 1}
    created     dd.created,
    updated     dd.updated,
    remarks     text
);
CREATE INDEX runs_finished ON pki.runs (finished);

INSERT INTO pki.settings (name, kind, value, description) VALUES
    ('schedule_stale', 'interval', '3 hours',
     'an alert (and metrics --check CRITICAL) when the last successful operate_serverPKI -S run is older'),
    ('acme_lifetime_days', 'integer', '90',
     'the lifetime of the ACME CA''s certificates in days until one was issued (Let''s Encrypt: 90, moving to 45); -n checks pre_publish_days against it');

-- alert_notices: what each channel ('mail', 'webhook') was last told of each alert of pki.alerts;
-- an alert is told again only when its fingerprint changed or alert_repeat has passed
CREATE TABLE pki.alert_notices (
    channel     text NOT NULL,                  -- where it went: 'mail' or 'webhook'
    alert_key   text NOT NULL,                  -- pki.alerts.alert_key
    fingerprint text NOT NULL,                  -- pki.alerts.fingerprint when it was told
    severity    text NOT NULL,                  -- 'warning' or 'critical', when it was told
    summary     text NOT NULL,                  -- the line it was told with
    first_sent  timestamptz NOT NULL,           -- when the channel first heard of it
    last_sent   timestamptz NOT NULL,           -- when the channel last heard of it
    resolved    timestamptz,                    -- when it was told that the alert is gone (NULL: open)
    created     dd.created,
    updated     dd.updated,
    remarks     text,
    PRIMARY KEY (channel, alert_key)
);

INSERT INTO pki.settings (name, kind, value, description) VALUES
    ('alert_expiry_days', 'integer', '14',
     'an alert (warning) when the active instance of a certificate expires within so many days and no successor is on its way'),
    ('alert_expiry_critical_days', 'integer', '3',
     'the same alert becomes critical within so many days'),
    ('alert_failing_attempts', 'integer', '3',
     'an alert when a job has failed so many attempts (a dead job: always)'),
    ('alert_job_days', 'integer', '7',
     'how long a dead or failing job stays an alert after its last attempt, unless a later job of its kind and subject is done first'),
    ('alert_repeat', 'interval', '1 day',
     'an open alert is mailed (and posted) again after this interval even when it did not change');
