-- 060_queue: enqueue, claim, lease, complete and fail jobs. Completing a job
-- applies its outcome (store the certificate, advance the state, enqueue what
-- follows) in the same transaction; the agent decides nothing.

-- without_secrets: a copy of a JSON value without private key material or passphrases
CREATE OR REPLACE FUNCTION pki.without_secrets(doc jsonb)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    out jsonb;
BEGIN
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

-- enqueue_issue: a reserved instance and an issue job for each certificate without an active one;
-- then_action says what follows when it is issued: 'distribute', 'prepublish' or nothing
CREATE OR REPLACE FUNCTION pki.enqueue_issue(p_certs int[], p_then text[], p_reasons text[], sel dd.selection)
RETURNS TABLE (job bigint, certificate int, instance int)
LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    -- once per call: in the INSERT below they would run once per row
    at_now timestamptz := pki.now();
BEGIN
    -- callers in other sessions (-C while cron runs -S) wait here; the check below then sees their jobs
    PERFORM pg_advisory_xact_lock(hashtext('pki.enqueue_issue'));
    PERFORM set_context('issue job enqueued', NULL);
    RETURN QUERY
    WITH kinds AS MATERIALIZED (
        SELECT k.kind, k.priority, job_attempts(k.max_attempts) AS attempts FROM job_kinds k
    ), todo AS (
        SELECT DISTINCT ON (u.cert) u.cert, u.then_action, u.why, c.type, sub.type AS subject_type
          FROM unnest(p_certs, p_then, p_reasons) AS u(cert, then_action, why)
          JOIN certificates c ON c.id = u.cert
          JOIN subjects sub ON sub.certificate = c.id AND NOT sub.isaltname
         WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.subject_key = 'cert:' || u.cert
                              AND j.kind IN ('issue_local', 'issue_acme', 'issue_local_ca')
                              AND j.state IN ('queued', 'running', 'failed'))
    ), inst AS (
        INSERT INTO certinstances (certificate, state)
        SELECT todo.cert, 'reserved' FROM todo
        RETURNING certinstances.id, certinstances.certificate
    ), queued AS (
        INSERT INTO jobs (kind, subject_key, reason, args, certificate, instance, priority, max_attempts, run_after)
        SELECT k.kind, 'cert:' || todo.cert, todo.why,
               jsonb_build_object('then', todo.then_action, 'no_tlsa', coalesce(sel.no_tlsa, false),
                                  'skip_hosts', to_jsonb(coalesce(sel.skip_hosts, '{}')),
                                  'only_hosts', to_jsonb(coalesce(sel.only_hosts, '{}'))),
               todo.cert, inst.id, k.priority, k.attempts, at_now
          FROM todo JOIN inst ON inst.certificate = todo.cert
          JOIN kinds k ON k.kind = CASE WHEN todo.subject_type = 'CA' THEN 'issue_local_ca'
                                            WHEN todo.type = 'LE' THEN 'issue_acme' ELSE 'issue_local' END
        RETURNING jobs.id, jobs.certificate, jobs.instance
    )
    SELECT queued.id, queued.certificate, queued.instance FROM queued;
END
$$;

-- enqueue_distribution: one job per (instance, disthost) for the instance's targets on the selected hosts;
-- missing_only: only the targets that have no deployment of the instance yet (a CA's targets, 150_ca_targets)
CREATE OR REPLACE FUNCTION pki.enqueue_distribution(p_instances int[], sel dd.selection, p_mode text, p_reason text,
                                                    missing_only boolean DEFAULT false)
RETURNS TABLE (job bigint, instance int, disthost int)
LANGUAGE sql
SET search_path = pki, dd, pg_temp
AS $$
    -- clock and attempts once per call (materialized), not once per row
    WITH k AS MATERIALIZED (
        SELECT priority, job_attempts(max_attempts) AS attempts, pki.now() AS now FROM job_kinds WHERE kind = 'distribute'
    )
    INSERT INTO jobs (kind, subject_key, reason, args, certificate, instance, disthost, priority, max_attempts, run_after)
    SELECT 'distribute', format('inst:%s/host:%s', i.id, t.disthost), p_reason,
           jsonb_build_object('mode', p_mode, 'no_tlsa', coalesce(sel.no_tlsa, false),
                              'targets', jsonb_agg(t.id ORDER BY t.id)),
           i.certificate, i.id, t.disthost, k.priority, k.attempts, k.now
      FROM certinstances i
      JOIN targets t ON t.certificate = i.certificate
      JOIN disthosts d ON d.id = t.disthost
      CROSS JOIN k
     WHERE i.id = ANY (p_instances) AND host_selected(sel, d.fqdn)
       AND NOT (missing_only AND EXISTS (SELECT 1 FROM deployments dep WHERE dep.instance = i.id AND dep.target = t.id))
     GROUP BY i.id, i.certificate, t.disthost, k.priority, k.attempts, k.now
    ON CONFLICT (kind, subject_key) WHERE state IN ('queued', 'running', 'failed') DO NOTHING
    RETURNING jobs.id, jobs.instance, jobs.disthost
$$;

-- tlsa_wanted: the instances whose TLSA records a certificate's names should carry now
CREATE OR REPLACE FUNCTION pki.tlsa_wanted(cert int, also int DEFAULT NULL)
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT coalesce(jsonb_agg(i.id ORDER BY i.id), '[]')
      FROM certinstances i
     WHERE i.certificate = cert AND (i.state IN ('deployed', 'prepublished') OR i.id = also)
$$;

-- lock_tlsa: one transaction at a time records a TLSA wish for the certificate or re-checks
-- one after its publish_tlsa job (enqueue_tlsa, enqueue_tlsa_many, apply_tlsa_published): whoever
-- comes second reads what the first committed. Take it after the certificate's certinstances rows
-- (the other way round is a lock cycle); several: in ascending order
CREATE OR REPLACE FUNCTION pki.lock_tlsa(cert int)
RETURNS void LANGUAGE sql
SET search_path = pki, dd, pg_temp
AS $$ SELECT pg_advisory_xact_lock(hashtext('pki.tlsa'), cert) $$;

-- enqueue_tlsa: make a certificate's TLSA RRsets hold what tlsa_wanted says (or nothing: remove);
-- prepublish names the successor that becomes 'prepublished' when the records are out
CREATE OR REPLACE FUNCTION pki.enqueue_tlsa(cert int, p_reason text, prepublish int DEFAULT NULL, remove boolean DEFAULT false)
RETURNS bigint LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    wanted jsonb;
    new_args jsonb;
    job_id bigint;
BEGIN
    -- a running job's completion re-checks under the same lock: it sees this wish, or this sees it done
    PERFORM lock_tlsa(cert);
    wanted := CASE WHEN remove THEN '[]'::jsonb ELSE tlsa_wanted(cert, prepublish) END;
    new_args := jsonb_build_object('instances', wanted, 'prepublish', prepublish, 'remove', remove);
    job_id := enqueue('publish_tlsa', 'tlsa:cert:' || cert, p_reason, new_args, cert);
    IF job_id IS NULL THEN
        -- one is pending: give it the newest wish unless an agent is at it (then its completion re-checks)
        UPDATE jobs SET args = new_args, reason = p_reason
         WHERE kind = 'publish_tlsa' AND subject_key = 'tlsa:cert:' || cert AND state IN ('queued', 'failed')
        RETURNING id INTO job_id;
    END IF;
    RETURN job_id;
END
$$;

-- enqueue_tlsa_many: enqueue_tlsa for many certificates in one statement (the scheduler's prepublish);
-- certs[n] gets reasons[n] and prepublishes prepublish[n] (NULL: none); returns the jobs enqueued or updated
CREATE OR REPLACE FUNCTION pki.enqueue_tlsa_many(certs int[], reasons text[], prepublish int[])
RETURNS TABLE (job bigint, certificate int)
LANGUAGE sql
SET search_path = pki, dd, pg_temp
AS $$
    -- lock_tlsa for each, in ascending order, in a statement of its own: the next one's snapshot
    -- then sees what a running job's completion committed meanwhile (as in enqueue_tlsa)
    SELECT lock_tlsa(x.cert) FROM (SELECT DISTINCT u.cert FROM unnest(certs) u(cert) WHERE u.cert IS NOT NULL ORDER BY u.cert) x;
    WITH k AS MATERIALIZED (
        SELECT priority, job_attempts(max_attempts) AS attempts, pki.now() AS now FROM job_kinds WHERE kind = 'publish_tlsa'
    ), todo AS MATERIALIZED (
        SELECT DISTINCT ON (u.cert) u.cert, u.why,
               jsonb_build_object('instances', w.ids, 'prepublish', u.pre, 'remove', false) AS args
          FROM unnest(certs, reasons, prepublish) AS u(cert, why, pre)
          -- tlsa_wanted(cert, pre), for all at once
          CROSS JOIN LATERAL (SELECT coalesce(jsonb_agg(i.id ORDER BY i.id), '[]') AS ids FROM certinstances i
                               WHERE i.certificate = u.cert AND (i.state IN ('deployed', 'prepublished') OR i.id = u.pre)) w
         WHERE u.cert IS NOT NULL
         ORDER BY u.cert
    ), queued AS (
        INSERT INTO jobs (kind, subject_key, reason, args, certificate, priority, max_attempts, run_after)
        SELECT 'publish_tlsa', 'tlsa:cert:' || todo.cert, todo.why, todo.args, todo.cert, k.priority, k.attempts, k.now
          FROM todo CROSS JOIN k
        ON CONFLICT (kind, subject_key) WHERE state IN ('queued', 'running', 'failed') DO NOTHING
        RETURNING jobs.id, jobs.certificate
    ), renewed AS (
        -- one is pending: give it the newest wish unless an agent is at it (then its completion re-checks);
        -- this statement's snapshot does not see the rows inserted above, only the ones that conflicted
        UPDATE jobs j SET args = todo.args, reason = todo.why
          FROM todo
         WHERE j.kind = 'publish_tlsa' AND j.subject_key = 'tlsa:cert:' || todo.cert AND j.state IN ('queued', 'failed')
        RETURNING j.id, j.certificate
    )
    SELECT queued.id, queued.certificate FROM queued
    UNION ALL
    SELECT renewed.id, renewed.certificate FROM renewed
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
-- sel: the selection of an operate_serverPKI run (-a -i -e -o -s -l -N); NULL (the long-running
-- `serverpki agent`): every due job. A run acts only on its selection; a job is the run's when
--   * its certificate is one the selection acts on (selected_certs, enabled or included by -a/-i);
--     its follow-ups (distribute after issue, publish_tlsa after deploy) are jobs of that certificate;
--   * it goes to a disthost, and the selection lets distribution go there (host_selected: not -s,
--     within -l): a run never connects to a host excluded by -s or outside -l;
--   * it is a publish_tlsa job, and the run does not say -N;
--   * it is a mail_reminder: it lists many certificates, so only when the selection has them all
--     (a reminder enqueued by `-S -o X` lists X alone; the cron run selects everything);
--   * it concerns the installation, not a certificate a selection can name (-I's issue_local_ca,
--     -X/-Y's encrypt_keys/decrypt_keys, -Z's register_acme): when this run requested it (requested,
--     the job ids its request functions returned), or when the run names no certificate (no -o, -e).
-- DNS zones are no disthosts: -s/-l do not limit TLSA jobs (-N does). Other due jobs wait for a run
-- that selects them, or for `serverpki agent`.
CREATE OR REPLACE FUNCTION pki.claim_jobs(agent text, kinds text[] DEFAULT NULL, max_jobs int DEFAULT 1, lease interval DEFAULT NULL,
                                          sel dd.selection DEFAULT NULL, requested bigint[] DEFAULT NULL)
RETURNS TABLE (id bigint, kind text, certificate int, instance int, disthost int, zone text, subject_key text,
               args jsonb, reason text, state dd.job_state, priority int, attempts int, max_attempts int,
               run_after timestamptz, locked_by text, locked_until timestamptz, lease_token uuid)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    acted_on int[];        -- the certificates the selection acts on (enabled, or included by -a/-i)
    named text[];          -- every certificate the selection names, enabled or not (a reminder's)
    whole boolean;         -- the selection names no certificate: it has the installation's jobs too
BEGIN
    PERFORM check_required(agent, 'agent name');
    PERFORM check_printable(agent, 'agent name', 200);
    PERFORM check_lease(lease);
    IF sel IS NOT NULL THEN
        PERFORM check_selection(sel);
        SELECT coalesce(array_agg(s.id) FILTER (WHERE s.enabled), '{}'), coalesce(array_agg(s.name), '{}')
          INTO acted_on, named FROM selected_certs(sel) s;
        whole := cardinality(coalesce(sel.only_certs, '{}')) = 0 AND cardinality(coalesce(sel.exclude, '{}')) = 0;
    END IF;
    PERFORM requeue_expired_leases();
    RETURN QUERY
    WITH c AS (
        SELECT j.id, gen_random_uuid() AS token FROM jobs j
         WHERE j.state IN ('queued', 'failed') AND j.run_after <= pki.now()
           AND (kinds IS NULL OR j.kind = ANY (kinds))
           AND (sel IS NULL OR (
                -- the certificate, or what stands for it
                CASE
                    WHEN j.certificate = ANY (acted_on) THEN true
                    WHEN j.kind = 'mail_reminder' THEN NOT EXISTS (
                        SELECT 1 FROM jsonb_array_elements(coalesce(j.args -> 'certificates', '[]')) e
                         WHERE NOT coalesce(e ->> 'name' = ANY (named), false))
                    WHEN j.certificate IS NULL OR NOT EXISTS (
                        SELECT 1 FROM subjects s WHERE s.certificate = j.certificate AND NOT s.isaltname
                           AND s.type NOT IN ('CA', 'reserved')) THEN j.id = ANY (coalesce(requested, '{}')) OR whole
                    ELSE false
                END
                -- the disthost
                AND (j.disthost IS NULL OR EXISTS (SELECT 1 FROM disthosts d WHERE d.id = j.disthost
                                                     AND host_selected(sel, d.fqdn)))
                -- -N: no TLSA changes
                AND NOT (j.kind = 'publish_tlsa' AND coalesce(sel.no_tlsa, false))))
         ORDER BY j.priority DESC, j.id
         LIMIT greatest(max_jobs, 0)
           FOR UPDATE OF j SKIP LOCKED
    )
    UPDATE jobs j
       SET state = 'running', attempts = j.attempts + 1, locked_by = agent, lease_hash = lease_hash(c.token),
           locked_until = pki.now() + coalesce(lease, setting_interval('job_lease'))
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
BEGIN
    error := without_key_text(error);
    UPDATE jobs SET state = outcome, locked_by = NULL, locked_until = NULL, lease_hash = NULL, last_error = left(error, 4000),
                    run_after = pki.now() + coalesce(retry_after, backoff),
                    finished = CASE WHEN outcome = 'dead' THEN pki.now() END
     WHERE id = j.id;
    PERFORM record_job_event(j, outcome, left(error, 1000));
    IF outcome = 'dead' THEN  -- the key of an order no attempt will finish (0006_job_keys)
        DELETE FROM job_keys WHERE job = j.id;
    END IF;
    IF outcome = 'dead' AND j.kind IN ('issue_local', 'issue_acme', 'issue_local_ca') THEN
        PERFORM set_context(format('issue job %s failed for good', j.id), j.id);
        DELETE FROM certinstances WHERE id = j.instance AND state = 'reserved';
    END IF;
    -- a reminder that could not be sent is due again on the next pass
    IF outcome = 'dead' AND j.kind = 'mail_reminder' THEN
        UPDATE certificates c SET authorized_until = NULL
          FROM subjects s, jsonb_array_elements(coalesce(j.args -> 'certificates', '[]')) e
         WHERE s.certificate = c.id AND NOT s.isaltname AND s.name = (e ->> 'name')::citext AND c.type = 'local';
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

-- complete_job: apply the job's outcome and mark it done, in one transaction
CREATE OR REPLACE FUNCTION pki.complete_job(job_id bigint, lease_token uuid, result jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := held_job(job_id, lease_token);
BEGIN
    result := coalesce(result, '{}');
    PERFORM set_context(format('%s job %s done', j.kind, j.id), j.id);
    CASE j.kind
        WHEN 'issue_local', 'issue_acme', 'issue_local_ca' THEN PERFORM apply_issued(j, result);
        WHEN 'distribute' THEN PERFORM apply_distributed(j, result);
        WHEN 'publish_tlsa' THEN PERFORM apply_tlsa_published(j, result);
        WHEN 'encrypt_keys', 'decrypt_keys' THEN PERFORM apply_keys_reencrypted(j, result);
        WHEN 'register_acme' THEN PERFORM apply_acme_registered(j, result);
        ELSE NULL;  -- reminders: nothing to advance
    END CASE;
    UPDATE jobs SET state = 'done', locked_by = NULL, locked_until = NULL, lease_hash = NULL, last_error = NULL,
                    result = without_secrets(complete_job.result), finished = pki.now()
     WHERE id = j.id;
    DELETE FROM job_keys WHERE job = j.id;   -- the key is in certkeydata now
    PERFORM record_job_event(j, 'done', 'done');
END
$$;

-- apply_issued: store the pairs, reserved -> issued, then what the job said follows
CREATE OR REPLACE FUNCTION pki.apply_issued(j pki.jobs, result jsonb)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    cert certificates;
    algos text[];
    wanted text[];
    bad_pair bigint;
    pair jsonb;
    stored_error text;
    stored_hint text;
    sel dd.selection;
BEGIN
    SELECT * INTO cert FROM certificates WHERE id = j.certificate;
    IF NOT FOUND OR j.instance IS NULL OR NOT EXISTS (SELECT 1 FROM certinstances WHERE id = j.instance AND state = 'reserved') THEN
        PERFORM raise_error('SP023', format('job %s: its certificate or reserved instance is gone', j.id),
            'the certificate was removed meanwhile; fail the job without retry');
    END IF;
    IF jsonb_typeof(result -> 'pairs') IS DISTINCT FROM 'array' THEN
        PERFORM raise_error('SP023', format('job %s: result lacks "pairs" (a list of {algo, cert, key})', j.id),
            'report every issued key/certificate pair');
    END IF;
    SELECT min(n) INTO bad_pair FROM jsonb_array_elements(result -> 'pairs') WITH ORDINALITY AS e(p, n)
     WHERE jsonb_typeof(p) IS DISTINCT FROM 'object'
        OR jsonb_typeof(p -> 'algo') IS DISTINCT FROM 'string'
        OR jsonb_typeof(p -> 'cert') IS DISTINCT FROM 'string'
        OR jsonb_typeof(p -> 'key') IS DISTINCT FROM 'string';
    IF bad_pair IS NOT NULL THEN
        PERFORM raise_error('SP023', format('job %s: pair %s of the result must be {"algo": text, "cert": PEM text, "key": PEM text}',
                j.id, bad_pair),
            'report each pair as {"algo": "rsa"|"ec", "cert": "-----BEGIN CERTIFICATE-----...", "key": "-----BEGIN PRIVATE KEY-----..."}');
    END IF;
    SELECT array_agg(p ->> 'algo' ORDER BY p ->> 'algo') INTO algos FROM jsonb_array_elements(result -> 'pairs') p;
    wanted := CASE cert.encryption_algo WHEN 'rsa_plus_ec' THEN ARRAY['ec', 'rsa'] ELSE ARRAY[cert.encryption_algo::text] END;
    IF algos IS DISTINCT FROM wanted THEN
        PERFORM raise_error('SP023', format('job %s: issued pairs %s, the certificate wants %s', j.id, algos, wanted),
            'issue one pair per key algorithm of the certificate');
    END IF;
    -- names, issuer and chain are read from the certificates, not taken from the agent (110_result_checks)
    result := check_issued_result(j, cert, result);
    -- an ACME result names its issuer by the chain (stored as a CA instance) and its authorizations' expiry (130_acme)
    IF result ?| ARRAY['chain', 'authorized_until'] THEN
        result := apply_acme_chain(j, result);
    END IF;
    IF result ? 'cacert' AND jsonb_typeof(result -> 'cacert') <> 'null' THEN
        IF coalesce(result ->> 'cacert', '') !~ '^[0-9]{1,9}$'
           OR NOT EXISTS (SELECT 1 FROM certinstances ci WHERE ci.id = (result ->> 'cacert')::int) THEN
            PERFORM raise_error('SP023', format('job %s: cacert %s is not the id of a stored instance', j.id, result -> 'cacert'),
                'give the id of the CA''s instance (SELECT "Serial" FROM inst), or leave cacert out');
        END IF;
    END IF;
    -- the certkeydata trigger checks each clear key against its certificate; its refusal is the job's
    BEGIN
        FOR pair IN SELECT p FROM jsonb_array_elements(result -> 'pairs') p LOOP
            INSERT INTO certkeydata (certinstance, encryption_algo, cert, key)
            VALUES (j.instance, (pair ->> 'algo')::dd.cert_encryption_algo, convert_to(pair ->> 'cert', 'UTF8'),
                    convert_to(pair ->> 'key', 'UTF8'));
        END LOOP;
    EXCEPTION WHEN SQLSTATE 'SP008' THEN
        GET STACKED DIAGNOSTICS stored_error = MESSAGE_TEXT, stored_hint = PG_EXCEPTION_HINT;
        PERFORM raise_error('SP023', format('job %s: the %s pair cannot be stored: %s', j.id, pair ->> 'algo',
                regexp_replace(stored_error, '^plpy\.Error: ', '')),
            stored_hint);
    END;
    UPDATE certinstances SET state = 'issued', cacert = (result ->> 'cacert')::int,
                             ocsp_must_staple = cert.ocsp_must_staple
     WHERE id = j.instance;
    sel := ROW(false, '{}', '{}', '{}',
               ARRAY(SELECT jsonb_array_elements_text(coalesce(j.args -> 'skip_hosts', '[]'))),
               ARRAY(SELECT jsonb_array_elements_text(coalesce(j.args -> 'only_hosts', '[]'))),
               coalesce((j.args ->> 'no_tlsa')::boolean, false));
    CASE j.args ->> 'then'
        WHEN 'distribute' THEN
            PERFORM enqueue_distribution(ARRAY[j.instance], sel, 'deploy', format('issued by job %s: distribute', j.id));
        WHEN 'prepublish' THEN
            IF NOT sel.no_tlsa THEN
                PERFORM enqueue_tlsa(j.certificate, format('issued by job %s: prepublish TLSA', j.id), j.instance);
            END IF;
        ELSE NULL;
    END CASE;
END
$$;

-- apply_distributed: record the targets served; promote when every target has the instance
CREATE OR REPLACE FUNCTION pki.apply_distributed(j pki.jobs, result jsonb)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    inst certinstances;
BEGIN
    SELECT * INTO inst FROM certinstances WHERE id = j.instance FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM raise_error('SP023', format('job %s: instance %s is gone', j.id, j.instance),
            'the instance was cleaned up meanwhile; fail the job without retry');
    END IF;
    INSERT INTO deployments (instance, target, job, deployed)
    SELECT inst.id, t.id, j.id, pki.now()
      FROM jsonb_array_elements_text(j.args -> 'targets') a JOIN targets t ON t.id = a::int
    ON CONFLICT (instance, target) DO UPDATE SET job = EXCLUDED.job, deployed = EXCLUDED.deployed;
    IF inst.state IN ('issued', 'prepublished') AND NOT is_ca_cert(inst.certificate)   -- a CA stays issued (150_ca_targets)
       AND NOT EXISTS (SELECT 1 FROM targets t WHERE t.certificate = inst.certificate
                         AND NOT EXISTS (SELECT 1 FROM deployments d WHERE d.instance = inst.id AND d.target = t.id)) THEN
        -- promote first, so the DANE-safe guard (SP021) still sees the old active instance
        PERFORM set_context(format('distribute job %s: on every target', j.id), j.id);
        UPDATE certinstances SET state = 'deployed' WHERE id = inst.id;
        PERFORM set_context(format('job %s: successor %s deployed to every target', j.id, inst.id), j.id);
        UPDATE certinstances SET state = 'expired' WHERE certificate = inst.certificate AND state = 'deployed' AND id <> inst.id;
        -- a new local instance is live: the next reminder is due before it expires
        UPDATE certificates SET authorized_until = NULL WHERE id = inst.certificate AND type = 'local';
        IF tlsa_ttl(inst.certificate) IS NOT NULL AND NOT coalesce((j.args ->> 'no_tlsa')::boolean, false) THEN
            PERFORM enqueue_tlsa(inst.certificate, format('instance %s deployed: TLSA holds the active instance only', inst.id));
        END IF;
    END IF;
END
$$;

-- apply_tlsa_published: the records are out; count the DANE wait from now; prepublish the successor
CREATE OR REPLACE FUNCTION pki.apply_tlsa_published(j pki.jobs, result jsonb)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    prepublish int := (j.args ->> 'prepublish')::int;
BEGIN
    UPDATE certinstances SET tlsa_published = pki.now()
     WHERE id IN (SELECT a::int FROM jsonb_array_elements_text(j.args -> 'instances') a) AND tlsa_published IS NULL;
    -- instances whose records are no longer in DNS (after a rollover, or -R) lose their date
    UPDATE certinstances SET tlsa_published = NULL
     WHERE certificate = j.certificate AND tlsa_published IS NOT NULL
       AND id NOT IN (SELECT a::int FROM jsonb_array_elements_text(j.args -> 'instances') a);
    IF prepublish IS NOT NULL THEN
        PERFORM set_context(format('publish_tlsa job %s: TLSA of active and successor published', j.id), j.id);
        UPDATE certinstances SET state = 'prepublished' WHERE id = prepublish AND state = 'issued';
    END IF;
    -- what DNS should hold may have changed while the agent worked: publish again. The lock (only now,
    -- after the certinstances updates: a transaction that holds those rows may be waiting for it) orders
    -- this check with a concurrent enqueue_tlsa that skipped this running job: one sees the other's work
    PERFORM lock_tlsa(j.certificate);
    IF NOT coalesce((j.args ->> 'remove')::boolean, false) AND tlsa_wanted(j.certificate) <> (j.args -> 'instances')
       AND tlsa_wanted(j.certificate) <> '[]'::jsonb THEN
        -- the finished job must leave the active set first, so the new one can be inserted
        UPDATE jobs SET state = 'done', locked_by = NULL, locked_until = NULL, lease_hash = NULL WHERE id = j.id;
        PERFORM enqueue_tlsa(j.certificate, format('the wanted TLSA set changed while job %s ran', j.id));
    END IF;
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

-- save_job_key / job_key: the key of an ACME order a running job placed (0006_job_keys), kept
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
