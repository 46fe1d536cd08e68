-- 0008_job_kind_hooks: a job kind names its completion and its clean-up, functions of the kind's
-- own file in db/jobs/ (which fills these columns with pki.define_job_kind on every upgrade), and
-- the types the agent reports outcomes in (typed arguments of the completions, not free JSON)
ALTER TABLE pki.job_kinds
    -- pki.<complete_with>(job_id, lease_token, ...): the agent reports a job done (complete_job: a report only)
    ADD COLUMN complete_with text NOT NULL DEFAULT 'complete_job',
    ADD COLUMN on_dead text;         -- pki.<on_dead>(pki.jobs): undoes what waited for a job that died

-- an issued key and its certificate, PEM text; chain: an ACME order's certificates after the leaf
CREATE TYPE dd.issued_pair AS (algo text, cert text, key text, chain text[]);
-- a stored key in a new form (-X / -Y): the id of its row and the PEM key
CREATE TYPE dd.stored_key AS (id int8, key text);
