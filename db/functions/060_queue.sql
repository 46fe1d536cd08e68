-- 060_queue: the job queue, a small verb API that knows nothing of certificates:
-- define_job_kind, enqueue, claim_jobs, extend_lease, fail_job, and for a kind's
-- completion function completing / job_done (save_job_progress / save_job_key for a
-- job that resumes). What a job of a kind does to the certificates, its typed
-- completion and its clean-up after it died, lives in the kind's own file in
-- db/jobs/, which registers them with define_job_kind.

-- without_secrets: a copy of a JSON value without private key material or passphrases
CREATE OR REPLACE FUNCTION pki.without_secrets(doc jsonb)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    out jsonb;
    doc_text text := doc::text;   -- made once: a report with certificates is a few kilobytes of text
BEGIN
    -- nothing to remove (its text names no such field, lower-cased as below, and holds no PEM key): the
    -- value as it is, not rebuilt field by field (a report with certificates took a quarter of a millisecond).
    -- lower(), not ~*: lower() makes a Kelvin sign a 'k' for the field test below, ~* does not
    IF lower(doc_text) !~ '"(key|private_key|passphrase|password|secret|hmac_key|account_key)": '
       AND strpos(doc_text, 'PRIVATE KEY-----') = 0 THEN
        RETURN doc;
    END IF;
    CASE jsonb_typeof(doc)
        WHEN 'object' THEN
            SELECT coalesce(jsonb_object_agg(k, without_secrets(v)), '{}') INTO out
              FROM jsonb_each(doc) AS e(k, v)
             WHERE lower(k) NOT IN ('key', 'private_key', 'passphrase', 'password', 'secret', 'hmac_key', 'account_key');
            RETURN out;
        WHEN 'array' THEN
            SELECT coalesce(jsonb_agg(without_secrets(v)), '[]') INTO out FROM jsonb_array_elements(doc) AS e(v);
            RETURN out;
        WHEN 'string' THEN
            RETURN CASE WHEN doc #>> '{}' LIKE '%PRIVATE KEY-----%' THEN '"(private key removed)"'::jsonb ELSE doc END;
        ELSE
            RETURN doc;
    END CASE;
END
$$;

-- job_attempts: how often a job of this kind may run; at least once, whatever job_max_attempts says
CREATE OR REPLACE FUNCTION pki.job_attempts(kind_max int)
RETURNS int LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$ SELECT greatest(least(kind_max, setting_int('job_max_attempts')), 1) $$;

-- without_key_text: an error text cut off where a PEM private key begins (errors can quote what failed)
CREATE OR REPLACE FUNCTION pki.without_key_text(error text)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$ SELECT regexp_replace(error, '-----BEGIN [A-Z ]*PRIVATE KEY-----.*$', '(private key removed)') $$;

-- define_job_kind: a kind's file in db/jobs/ registers the kind (on every upgrade): complete_with
-- names the function its agent calls with the outcome, pki.<complete_with>(job_id, lease_token, ...);
-- on_dead, pki.<on_dead>(pki.jobs), undoes what waited for a job that failed for good; concurrency, how
-- the agent may run its jobs (job_kinds.concurrency: serial, pooled, overlapped). Attempts and priority
-- are set when the kind is new (an operator may tune them); the rest is the kind's file's, set anew by
-- every upgrade
CREATE OR REPLACE FUNCTION pki.define_job_kind(the_kind text, the_description text, the_max_attempts int, the_priority int,
                                               complete_with text DEFAULT 'complete_job', on_dead text DEFAULT NULL,
                                               concurrency text DEFAULT 'serial')
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    -- exactly one function of the name, SECURITY DEFINER, (job_id bigint, lease_token uuid, ...): the
    -- allow-list grants it to pki_agent by this registration
    IF (SELECT count(*) FILTER (WHERE p.prosecdef AND p.proargtypes[0] = 'bigint'::regtype
                                  AND p.proargtypes[1] = 'uuid'::regtype) || '/' || count(*)
          FROM pg_proc p WHERE p.pronamespace = 'pki'::regnamespace AND p.proname = complete_with) <> '1/1' THEN
        RAISE EXCEPTION 'job kind %: pki.% must be one SECURITY DEFINER function (job_id bigint, lease_token uuid, ...)',
            the_kind, complete_with;
    END IF;
    IF on_dead IS NOT NULL AND to_regprocedure(format('pki.%I(pki.jobs)', on_dead)) IS NULL THEN
        RAISE EXCEPTION 'job kind %: no clean-up function pki.%(pki.jobs)', the_kind, on_dead;
    END IF;
    IF concurrency IS NULL OR concurrency NOT IN ('serial', 'pooled', 'overlapped') THEN
        RAISE EXCEPTION 'job kind %: concurrency % is none of serial, pooled, overlapped (job_kinds.concurrency says what each means)',
            the_kind, coalesce(quote_literal(concurrency), 'NULL');
    END IF;
    INSERT INTO job_kinds AS k (kind, description, max_attempts, priority, complete_with, on_dead, concurrency)
    VALUES (the_kind, the_description, the_max_attempts, the_priority, complete_with, on_dead, concurrency)
    ON CONFLICT (kind) DO UPDATE SET description = EXCLUDED.description, complete_with = EXCLUDED.complete_with,
                                     on_dead = EXCLUDED.on_dead, concurrency = EXCLUDED.concurrency
     WHERE (k.description, k.complete_with, k.on_dead, k.concurrency)
           IS DISTINCT FROM (EXCLUDED.description, EXCLUDED.complete_with, EXCLUDED.on_dead, EXCLUDED.concurrency);
END
$$;

-- kinds_to_claim: of an agent's kinds, those it claims; overlapped_only: while completions of its
-- jobs are on their way (or ahead of them), only the kinds whose jobs depend on nothing those do, which
-- act only inside the agent (job_kinds.concurrency 'overlapped'): a publish_tlsa claimed while an issue
-- completion's follow-up asks it to prepublish the new instance too would run without it. NULL for
-- either argument: no kind (claim_jobs' NULL for every kind is not what an agent means here)
CREATE OR REPLACE FUNCTION pki.kinds_to_claim(kinds text[], overlapped_only boolean)
RETURNS text[] LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT ARRAY(SELECT k.kind FROM job_kinds k
                  WHERE k.kind = ANY (kinds) AND (k.concurrency = 'overlapped' OR NOT overlapped_only)
                  ORDER BY k.kind)
$$;

-- active_job: the job of this kind and subject that is queued, running or failed (jobs_one_active
-- allows one), or NULL: what a request returns when enqueue found one active already
CREATE OR REPLACE FUNCTION pki.active_job(p_kind text, p_subject_key text)
RETURNS bigint LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT j.id FROM jobs j
     WHERE j.kind = p_kind AND j.subject_key = p_subject_key AND j.state IN ('queued', 'running', 'failed')
$$;

-- enqueue: one job, unless one of this kind and subject is active already (then NULL)
CREATE OR REPLACE FUNCTION pki.enqueue(p_kind text, p_subject_key text, p_reason text, p_args jsonb DEFAULT '{}',
    p_certificate int DEFAULT NULL, p_instance int DEFAULT NULL, p_disthost int DEFAULT NULL, p_zone text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO jobs (kind, subject_key, reason, args, certificate, instance, disthost, zone,
                      priority, max_attempts, run_after)
    SELECT p_kind, p_subject_key, p_reason, coalesce(p_args, '{}'), p_certificate, p_instance, p_disthost, p_zone,
           k.priority, job_attempts(k.max_attempts), pki.now()
      FROM job_kinds k WHERE k.kind = p_kind
    ON CONFLICT (kind, subject_key) WHERE state IN ('queued', 'running', 'failed') DO NOTHING
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

-- requeue_expired_leases: running jobs whose agent vanished go back to the queue (or die)
CREATE OR REPLACE FUNCTION pki.requeue_expired_leases()
RETURNS int LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs;
    n int := 0;
BEGIN
    FOR j IN SELECT * FROM jobs WHERE state = 'running' AND locked_until < pki.now()
              ORDER BY id FOR UPDATE SKIP LOCKED LOOP
        PERFORM finish_failed(j, format('lease of agent %s expired at %s', j.locked_by, j.locked_until), true, NULL);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- release_jobs: claimed jobs whose work never took effect, handed back by their agent when its drain ends
-- early (an error, Ctrl-C: the jobs whose handlers had not begun, and those of kinds that act only in the
-- agent whose completions were not sent), are due again at once, their attempt not counted: left to their
-- leases, they would come back only when those run out, an attempt spent (the last one: dead, never run).
-- Only a job still running under the lease token presented; returns how many went back
CREATE OR REPLACE FUNCTION pki.release_jobs(job_ids bigint[], lease_tokens uuid[])
RETURNS int LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs;
    back job_state;
    n int := 0;
BEGIN
    FOR j IN SELECT * FROM jobs WHERE id = ANY (job_ids) AND state = 'running' ORDER BY id FOR UPDATE LOOP
        CONTINUE WHEN j.lease_hash IS DISTINCT FROM lease_hash(lease_tokens[array_position(job_ids, j.id)]);
        back := CASE WHEN j.attempts > 1 THEN 'failed' ELSE 'queued' END;   -- as before the claim: an attempt had gone before
        UPDATE jobs SET state = back, attempts = greatest(j.attempts - 1, 0), locked_by = NULL, locked_until = NULL, lease_hash = NULL
         WHERE id = j.id;
        PERFORM record_job_event(j, back, format('handed back by agent %s before its work took effect; due again, the attempt not counted', j.locked_by));
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- check_lease: a lease the agent asks for must be positive (NULL: the setting job_lease)
CREATE OR REPLACE FUNCTION pki.check_lease(lease interval)
RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    IF lease <= interval '0' THEN
        PERFORM raise_error('SP005', format('lease %s is not positive', lease),
            'ask for a lease such as ''5 minutes'', or NULL for the setting job_lease');
    END IF;
END
$$;

-- lease_hash: what a job keeps of its lease token (the token itself exists only in the agent)
CREATE OR REPLACE FUNCTION pki.lease_hash(token uuid)
RETURNS bytea LANGUAGE sql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$ SELECT sha256(uuid_send(token)) $$;

-- claim_jobs: up to max_jobs due jobs of the given kinds (all kinds when NULL), leased to the
-- agent; each comes with its own unguessable lease token, which every later call about the job
-- must present (the agent name is for people: two agents may well share one).
--
-- sel, requested: an operate_serverPKI run claims only the jobs of its selection (jobs_of_selection,
-- functions/065_jobs_of_selection.sql); NULL (the long-running `serverpki agent`): every due job.
CREATE OR REPLACE FUNCTION pki.claim_jobs(agent text, kinds text[] DEFAULT NULL, max_jobs int DEFAULT 1, lease interval DEFAULT NULL,
                                          sel dd.selection DEFAULT NULL, requested bigint[] DEFAULT NULL)
RETURNS TABLE (id bigint, kind text, certificate int, instance int, disthost int, zone text, subject_key text,
               args jsonb, reason text, state dd.job_state, priority int, attempts int, max_attempts int,
               run_after timestamptz, locked_by text, locked_until timestamptz, lease_token uuid)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    -- read once: in the WHERE below pki.now() (PL/pgSQL, not inlined) ran for every queued job, each claim
    at_now timestamptz := pki.now();
BEGIN
    PERFORM check_required(agent, 'agent name');
    PERFORM check_printable(agent, 'agent name', 200);
    PERFORM check_lease(lease);
    PERFORM requeue_expired_leases();
    -- the agent's sign of life (metrics: serverpki_agent_heartbeat_age_seconds)
    INSERT INTO agent_heartbeats AS h (agent, last_seen) VALUES (claim_jobs.agent, at_now)
    ON CONFLICT ON CONSTRAINT agent_heartbeats_pkey DO UPDATE SET last_seen = EXCLUDED.last_seen
     WHERE h.last_seen < EXCLUDED.last_seen;
    RETURN QUERY
    WITH c AS (
        SELECT j.id, gen_random_uuid() AS token FROM jobs j
         WHERE j.state IN ('queued', 'failed') AND j.run_after <= at_now
           AND (kinds IS NULL OR j.kind = ANY (kinds))
           AND (sel IS NULL OR j.id IN (SELECT s.job FROM jobs_of_selection(sel, requested) s))
         ORDER BY j.priority DESC, j.id
         LIMIT greatest(max_jobs, 0)
           FOR UPDATE OF j SKIP LOCKED
    )
    UPDATE jobs j
       SET state = 'running', attempts = j.attempts + 1, locked_by = agent, lease_hash = lease_hash(c.token),
           locked_until = at_now + coalesce(lease, setting_interval('job_lease'))
      FROM c WHERE j.id = c.id
    RETURNING j.id, j.kind, j.certificate, j.instance, j.disthost, j.zone, j.subject_key, j.args, j.reason, j.state,
              j.priority, j.attempts, j.max_attempts, j.run_after, j.locked_by, j.locked_until, c.token;
END
$$;

-- held_job: the job, locked, if it is running under this lease token; else SP022
CREATE OR REPLACE FUNCTION pki.held_job(job_id bigint, lease_token uuid)
RETURNS pki.jobs LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs;
BEGIN
    SELECT * INTO j FROM jobs WHERE id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM raise_error('SP002', format('no job %s', job_id), 'see SELECT * FROM jobs_overview');
    END IF;
    IF j.state <> 'running' OR lease_token IS NULL OR j.lease_hash IS DISTINCT FROM lease_hash(lease_token) THEN
        PERFORM raise_error('SP022', format('job %s is %s%s, not under the lease presented', job_id, j.state,
                CASE WHEN j.locked_by IS NOT NULL THEN ' under agent ' || j.locked_by ELSE '' END),
            'its lease expired and it went back to the queue, or the token is not the one claim_jobs gave; drop this result, another attempt will redo it');
    END IF;
    RETURN j;
END
$$;

-- extend_lease: keep a claimed job during long work
CREATE OR REPLACE FUNCTION pki.extend_lease(job_id bigint, lease_token uuid, lease interval DEFAULT NULL)
RETURNS timestamptz LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := held_job(job_id, lease_token);
    until timestamptz := pki.now() + coalesce(lease, setting_interval('job_lease'));
BEGIN
    PERFORM check_lease(lease);
    UPDATE jobs SET locked_until = until WHERE id = j.id;
    RETURN until;
END
$$;

-- record_job_event: a job outcome in the history
CREATE OR REPLACE FUNCTION pki.record_job_event(j pki.jobs, outcome dd.job_state, why text)
RETURNS void LANGUAGE sql
SET search_path = pki, dd, pg_temp
AS $$
    INSERT INTO events (at, instance, certificate, job, job_state, reason)
    VALUES (pki.now(), j.instance, j.certificate, j.id, outcome, format('%s job %s: %s', j.kind, j.id, why))
$$;

-- finish_failed: back off and retry, or give up and undo what waited for the job
CREATE OR REPLACE FUNCTION pki.finish_failed(j pki.jobs, error text, retry boolean, retry_after interval)
RETURNS dd.job_state LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    outcome dd.job_state := CASE WHEN retry AND j.attempts < j.max_attempts THEN 'failed' ELSE 'dead' END;
    backoff interval := least(setting_interval('job_backoff') * power(2, greatest(j.attempts - 1, 0)), interval '6 hours');
    hook text;
BEGIN
    error := without_key_text(error);
    UPDATE jobs SET state = outcome, locked_by = NULL, locked_until = NULL, lease_hash = NULL, last_error = left(error, 4000),
                    run_after = pki.now() + coalesce(retry_after, backoff),
                    finished = CASE WHEN outcome = 'dead' THEN pki.now() END
     WHERE id = j.id;
    PERFORM record_job_event(j, outcome, left(error, 1000));
    IF outcome = 'dead' THEN
        DELETE FROM job_keys WHERE job = j.id;   -- the key of an order no attempt will finish (0006_job_keys)
        -- the kind's clean-up of what waited for the job (db/jobs/; define_job_kind checked that it exists)
        hook := (SELECT k.on_dead FROM job_kinds k WHERE k.kind = j.kind);
        IF hook IS NOT NULL THEN
            EXECUTE format('SELECT pki.%I($1)', hook) USING j;
        END IF;
    END IF;
    RETURN outcome;
END
$$;

-- fail_job: the agent reports an error; retry with exponential back-off unless told not to.
-- A retry_after the agent asks for is held between a second and a day: a peer's absurd
-- Retry-After must neither freeze a job for ever nor spin it
CREATE OR REPLACE FUNCTION pki.fail_job(job_id bigint, lease_token uuid, error text, retry boolean DEFAULT true, retry_after interval DEFAULT NULL)
RETURNS dd.job_state LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    RETURN finish_failed(held_job(job_id, lease_token), coalesce(nullif(error, ''), 'unspecified error'), retry,
                         CASE WHEN retry_after IS NOT NULL   -- NULL: the back-off
                              THEN least(greatest(retry_after, interval '1 second'), interval '1 day') END);
END
$$;

-- jobs_done: job_done for several jobs (reports[i]: that of jobs[i]), one statement each for all of them
CREATE OR REPLACE FUNCTION pki.jobs_done(jobs pki.jobs[], reports jsonb[])
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    ids bigint[] := ARRAY(SELECT d.id FROM unnest(jobs) d);
BEGIN
    -- each job found by its key (= ANY): joined with the array, the jobs table was read whole for every batch
    UPDATE pki.jobs j SET state = 'done', locked_by = NULL, locked_until = NULL, lease_hash = NULL, last_error = NULL,
                          result = without_secrets(coalesce(reports[array_position(ids, j.id)], '{}')), finished = pki.now()
     WHERE j.id = ANY (ids);
    DELETE FROM job_keys k WHERE k.job = ANY (ids);
    INSERT INTO events (at, instance, certificate, job, job_state, reason)
    SELECT pki.now(), d.instance, d.certificate, d.id, 'done', format('%s job %s: done', d.kind, d.id)
      FROM unnest(jobs) WITH ORDINALITY AS d ORDER BY d.ordinality;
END
$$;

-- job_done: the queue's half of a completion: the job done, its report kept (without secrets), its
-- order key dropped (it is in certkeydata now), the event recorded. A kind's completion calls it
-- once the outcome is applied, and before it enqueues a follow-up of its own kind and subject
-- (the job must leave the active set first)
CREATE OR REPLACE FUNCTION pki.job_done(j pki.jobs, report jsonb)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    PERFORM jobs_done(ARRAY[j], ARRAY[report]);
END
$$;

-- completing: the job a kind's completion function (db/jobs/) was called for, locked, if it is
-- running under this lease token (else SP022) and of one of the function's kinds (else SP026: an
-- agent of an older release that calls complete_job for every kind gets a retry, not a dead job)
CREATE OR REPLACE FUNCTION pki.completing(job_id bigint, lease_token uuid, kinds text[])
RETURNS pki.jobs LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := held_job(job_id, lease_token);
BEGIN
    IF NOT j.kind = ANY (kinds) THEN
        PERFORM raise_error('SP026', format('job %s is a %s job, not one of %s', j.id, j.kind, array_to_string(kinds, ', ')),
            format('complete it with pki.%s; an agent of an older release must be restarted after serverpki db upgrade',
                   (SELECT k.complete_with FROM job_kinds k WHERE k.kind = j.kind)));
    END IF;
    PERFORM set_context(format('%s job %s done', j.kind, j.id), j.id);
    RETURN j;
END
$$;

-- complete_job: the completion of a kind whose outcome is a report only (define_job_kind's default):
-- the job done, the report kept
CREATE OR REPLACE FUNCTION pki.complete_job(job_id bigint, lease_token uuid, report jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    PERFORM job_done(completing(job_id, lease_token, ARRAY(SELECT k.kind FROM job_kinds k WHERE k.complete_with = 'complete_job')),
                     report);
END
$$;

-- save_job_progress: a running job keeps how far it got (an ACME order's URL, the challenge
-- records it placed) in its result, so a later attempt resumes; never key material
CREATE OR REPLACE FUNCTION pki.save_job_progress(job_id bigint, lease_token uuid, progress jsonb)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := held_job(job_id, lease_token);
BEGIN
    UPDATE jobs SET result = without_secrets(coalesce(progress, '{}')) WHERE id = j.id;
END
$$;

-- save_job_key: the key of an ACME order a running job placed (0006_job_keys), kept
-- from before the order exists until the job is done or dead, so a later attempt finishes the
-- same order with it; only the job's current holder writes or reads it
CREATE OR REPLACE FUNCTION pki.save_job_key(job_id bigint, lease_token uuid, algo text, key text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := held_job(job_id, lease_token);
BEGIN
    IF algo IS NULL OR algo NOT IN ('rsa', 'ec') THEN
        PERFORM raise_error('SP011', format('key algorithm %s is not rsa or ec', coalesce(algo, 'NULL')),
            'save the key of one order: rsa or ec');
    END IF;
    IF key IS NULL OR key NOT LIKE '-----BEGIN %PRIVATE KEY-----%' THEN
        PERFORM raise_error('SP023', format('job %s: the %s order key is not a PEM private key', j.id, algo),
            'save the PKCS#8 PEM of the key the order''s CSR was made with');
    END IF;
    INSERT INTO job_keys (job, encryption_algo, key) VALUES (j.id, algo::dd.cert_encryption_algo, key)
        ON CONFLICT (job, encryption_algo) DO UPDATE SET key = EXCLUDED.key;
END
$$;

-- job_key: the order key save_job_key kept, for the job's current holder only
CREATE OR REPLACE FUNCTION pki.job_key(job_id bigint, lease_token uuid, algo text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := held_job(job_id, lease_token);
BEGIN
    RETURN (SELECT k.key FROM job_keys k WHERE k.job = j.id AND k.encryption_algo::text = algo);
END
$$;
