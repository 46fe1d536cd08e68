-- 0003_lifecycle: the state machine as data, the event history, the job queue.

-- a job's life in the queue
CREATE TYPE dd.job_state AS ENUM (
    'queued',   -- waiting for run_after
    'running',  -- claimed by an agent, leased until locked_until
    'done',     -- finished; its outcome was applied
    'failed',   -- the last attempt failed; retried after run_after
    'dead'      -- failed for good (max attempts, or an error not worth retrying)
);

-- which certificates and disthosts an action works on: the seed's action modifiers
CREATE TYPE dd.selection AS (
    all_certs   boolean,    -- -a: all certificates, disabled ones too
    include     text[],     -- -i: these even if disabled
    exclude     text[],     -- -e: not these
    only_certs  text[],     -- -o: only these
    skip_hosts  text[],     -- -s: no distribution to these disthosts
    only_hosts  text[],     -- -l: distribution to these disthosts only
    no_tlsa     boolean     -- -N: leave TLSA records alone
);

-- allowed changes of certinstances.state; NULL from = a new row, NULL to = the row is deleted
CREATE TABLE pki.state_transitions (
    id          serial PRIMARY KEY,
    from_state  dd.cert_state,
    to_state    dd.cert_state,
    rule        text NOT NULL,      -- when it happens (LIFECYCLE.md)
    created     dd.created,
    updated     dd.updated,
    remarks     text,
    CONSTRAINT state_transitions_unique UNIQUE NULLS NOT DISTINCT (from_state, to_state)
);
INSERT INTO pki.state_transitions (from_state, to_state, rule) VALUES
    (NULL,           'reserved',     'an issue job is enqueued for the certificate'),
    ('reserved',     'issued',       'the issue job succeeded: certificate and key stored'),
    ('reserved',     NULL,           'the issue job failed for good, or cleanup'),
    ('issued',       'prepublished', 'TLSA RRs of the active AND this instance are published'),
    ('issued',       'deployed',     'distributed to every target of the certificate'),
    ('prepublished', 'deployed',     'distributed to every target of the certificate'),
    ('deployed',     'expired',      'its successor was deployed, or not_after has passed'),
    ('issued',       'expired',      'now >= not_after + expire_grace'),
    ('prepublished', 'expired',      'now >= not_after + expire_grace'),
    ('expired',      'archived',     'next scheduler run'),
    ('archived',     NULL,           'next scheduler run'),
    ('reserved',     'revoked',      'revocation requested'),
    ('issued',       'revoked',      'revocation requested'),
    ('prepublished', 'revoked',      'revocation requested'),
    ('deployed',     'revoked',      'revocation requested'),
    ('revoked',      'archived',     'next scheduler run'),
    -- cleanup (scheduler rules 1 and 4): an older duplicate in the same state, or a useless successor
    ('issued',       NULL,           'cleanup: an older duplicate, or a successor expiring too soon to be useful'),
    ('prepublished', NULL,           'cleanup: an older duplicate in the same state'),
    ('deployed',     NULL,           'cleanup: an older duplicate in the same state'),
    ('expired',      NULL,           'cleanup: an older duplicate in the same state');

-- when the TLSA records of an instance were first seen in DNS (the DANE-safe order counts from here)
ALTER TABLE pki.certinstances ADD COLUMN tlsa_published timestamptz;

-- append-only history: every state transition and every job outcome
CREATE TABLE pki.events (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL,           -- pki.now() when it happened
    instance    int4,                           -- no foreign key: history outlives its rows
    certificate int4,
    from_state  dd.cert_state,
    to_state    dd.cert_state,
    job         int8,
    job_state   dd.job_state,
    reason      text NOT NULL,
    created     dd.created,
    updated     dd.updated,
    remarks     text
);
CREATE INDEX events_instance ON pki.events (instance, id);
CREATE INDEX events_job ON pki.events (job) WHERE job IS NOT NULL;

-- kinds of jobs; one handler module in the agent for each
CREATE TABLE pki.job_kinds (
    id              serial PRIMARY KEY,
    kind            text NOT NULL UNIQUE,
    description     text NOT NULL,
    max_attempts    int4 NOT NULL DEFAULT 8,
    priority        int4 NOT NULL DEFAULT 0,
    created         dd.created,
    updated         dd.updated,
    remarks         text
);
INSERT INTO pki.job_kinds (kind, description, max_attempts, priority) VALUES
    ('issue_local',    'issue an instance of a local certificate with the local CA', 3, 20),
    ('issue_acme',     'order an instance of an LE certificate (dns-01 over RFC 2136)', 8, 20),
    ('issue_local_ca', 'issue a new local CA certificate', 1, 30),
    ('register_acme',  'register an ACME account', 3, 30),
    ('distribute',     'copy an instance to the targets on one disthost and reload', 8, 10),
    ('publish_tlsa',   'make the TLSA RRsets of a certificate''s names what the job lists', 8, 15),
    ('mail_reminder',  'mail the list of local certificates that must be issued', 5, 0),
    ('encrypt_keys',   'encrypt every stored private key', 1, 40),
    ('decrypt_keys',   'decrypt every stored private key', 1, 40);

CREATE TABLE pki.jobs (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL REFERENCES pki.job_kinds (kind),
    -- what the job concerns; subject_key keeps one active job per (kind, subject)
    certificate     int4 REFERENCES pki.certificates ON DELETE SET NULL,
    instance        int4 REFERENCES pki.certinstances ON DELETE SET NULL,
    disthost        int4 REFERENCES pki.disthosts ON DELETE SET NULL,
    zone            text,
    subject_key     text NOT NULL,
    args            jsonb NOT NULL DEFAULT '{}',
    reason          text NOT NULL,                  -- why it was enqueued
    state           dd.job_state NOT NULL DEFAULT 'queued',
    priority        int4 NOT NULL DEFAULT 0,
    attempts        int4 NOT NULL DEFAULT 0,
    max_attempts    int4 NOT NULL DEFAULT 8,
    run_after       timestamptz NOT NULL,
    locked_by       text,
    locked_until    timestamptz,
    last_error      text,
    result          jsonb,                          -- never key material
    finished        timestamptz,
    created         dd.created,
    updated         dd.updated,
    remarks         text,
    CONSTRAINT jobs_lease_when_running CHECK ((state = 'running') = (locked_by IS NOT NULL AND locked_until IS NOT NULL)),
    CONSTRAINT jobs_attempts_in_range CHECK (attempts >= 0 AND attempts <= max_attempts)
);
-- one active job per (kind, subject): enqueuing twice is harmless
CREATE UNIQUE INDEX jobs_one_active ON pki.jobs (kind, subject_key) WHERE state IN ('queued', 'running', 'failed');
-- what claim_jobs scans
CREATE INDEX jobs_claimable ON pki.jobs (priority DESC, id) WHERE state IN ('queued', 'failed');
CREATE INDEX jobs_running_lease ON pki.jobs (locked_until) WHERE state = 'running';
CREATE INDEX jobs_certificate ON pki.jobs (certificate, kind, state);
CREATE INDEX jobs_instance ON pki.jobs (instance) WHERE instance IS NOT NULL;

-- which target received which instance (the distribution's outcome)
CREATE TABLE pki.deployments (
    id          serial PRIMARY KEY,
    instance    int4 NOT NULL REFERENCES pki.certinstances ON DELETE CASCADE,
    target      int4 NOT NULL REFERENCES pki.targets ON DELETE CASCADE,
    job         int8 REFERENCES pki.jobs ON DELETE SET NULL,
    deployed    timestamptz NOT NULL,
    created     dd.created,
    updated     dd.updated,
    remarks     text,
    CONSTRAINT deployments_once UNIQUE (instance, target)
);
CREATE INDEX deployments_target ON pki.deployments (target);

INSERT INTO pki.settings (name, kind, value, description) VALUES
    ('job_max_attempts', 'integer', '8', 'attempts of a job before it is dead (a job kind may allow fewer)'),
    ('job_backoff', 'interval', '30 seconds', 'wait after the first failure; doubled after each further one, up to 6 hours'),
    ('job_lease', 'interval', '5 minutes', 'how long a claimed job stays with its agent unless the lease is extended');
