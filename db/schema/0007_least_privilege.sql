-- 0007_least_privilege: what no session of the login roles may forge (docs/security.md).

-- time_travel: whether sessions of this database may move pki.now() with SET pki.now.
-- Off on every install; only the schema owner can turn it on (tests and the demo do):
--   UPDATE pki.time_travel SET enabled = true;
CREATE TABLE pki.time_travel (
    enabled   boolean NOT NULL DEFAULT false,
    only_row  boolean PRIMARY KEY DEFAULT true CONSTRAINT time_travel_one_row CHECK (only_row)
);
INSERT INTO pki.time_travel (enabled) VALUES (false);

-- event_context: the reason and job that the state transitions of a transaction are recorded
-- with, written by pki.set_context (owner code only) and read by the record_transition trigger.
-- A row per backend, valid only for the transaction that wrote it: a session setting a GUC
-- can no longer forge the history. Unlogged: it never outlives its transaction's meaning.
CREATE UNLOGGED TABLE pki.event_context (
    backend_pid int PRIMARY KEY,
    xact        xid8 NOT NULL,
    reason      text NOT NULL,
    job         int8
);

-- a claim's lease token: the agent gets it once (claim_jobs), the job keeps its SHA-256, so
-- reading pki.jobs (or jobs_overview's locked_by) gives nobody the right to finish a job
ALTER TABLE pki.jobs ADD COLUMN lease_hash bytea;
ALTER TABLE pki.jobs ADD CONSTRAINT jobs_lease_hash_when_running CHECK (lease_hash IS NULL OR state = 'running');
