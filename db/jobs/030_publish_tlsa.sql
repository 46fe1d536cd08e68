-- 030_publish_tlsa: publish_tlsa jobs: make a certificate's TLSA RRsets hold the records of the
-- instances tlsa_wanted names (views/020_tlsa.sql computes them), by RFC 2136 updates.

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
-- one after its publish_tlsa job (enqueue_tlsa, enqueue_tlsa_many, complete_publish_tlsa): whoever
-- comes second reads what the first committed. Take it after the certificate's certinstances rows
-- (the other way round is a lock cycle); several: with lock_tlsa_many. The lock is one of 1,024
-- buckets (cert mod 1024), not one per certificate: a pass that prepublishes 35,000 certificates
-- would else hold 35,000 locks and exhaust the lock table (max_locks_per_transaction)
CREATE OR REPLACE FUNCTION pki.lock_tlsa(cert int)
RETURNS void LANGUAGE sql
SET search_path = pki, dd, pg_temp
AS $$ SELECT pg_advisory_xact_lock(hashtext('pki.tlsa'), cert % 1024) $$;

-- lock_tlsa_many: lock_tlsa of several certificates, their buckets in ascending order (every
-- transaction that takes more than one takes them so: no lock cycle)
CREATE OR REPLACE FUNCTION pki.lock_tlsa_many(certs int[])
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pki.tlsa'), b.bucket)
       FROM (SELECT DISTINCT c % 1024 AS bucket FROM unnest(certs) c WHERE c IS NOT NULL ORDER BY 1) b;
END
$$;

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
    job_id := enqueue('publish_tlsa', tlsa_subject_key(cert), p_reason, new_args, cert);
    IF job_id IS NULL THEN
        -- one is pending: give it the newest wish unless an agent is at it (then its completion re-checks)
        UPDATE jobs SET args = new_args, reason = p_reason
         WHERE kind = 'publish_tlsa' AND subject_key = tlsa_subject_key(cert) AND state IN ('queued', 'failed')
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
    -- lock_tlsa for each (lock_tlsa_many), in a statement of its own: the next one's snapshot
    -- then sees what a running job's completion committed meanwhile (as in enqueue_tlsa)
    SELECT lock_tlsa_many(certs);
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
        SELECT 'publish_tlsa', tlsa_subject_key(todo.cert), todo.why, todo.args, todo.cert, k.priority, k.attempts, k.now
          FROM todo CROSS JOIN k
        ON CONFLICT (kind, subject_key) WHERE state IN ('queued', 'running', 'failed') DO NOTHING
        RETURNING jobs.id, jobs.certificate
    ), renewed AS (
        -- one is pending: give it the newest wish unless an agent is at it (then its completion re-checks);
        -- this statement's snapshot does not see the rows inserted above, only the ones that conflicted
        UPDATE jobs j SET args = todo.args, reason = todo.why
          FROM todo
         WHERE j.kind = 'publish_tlsa' AND j.subject_key = tlsa_subject_key(todo.cert) AND j.state IN ('queued', 'failed')
        RETURNING j.id, j.certificate
    )
    SELECT queued.id, queued.certificate FROM queued
    UNION ALL
    SELECT renewed.id, renewed.certificate FROM renewed
$$;

-- complete_publish_tlsa: the completion of a publish_tlsa job (its agent calls it): the records are
-- out; count the DANE wait from now; prepublish the successor. report: the zones and updates sent
CREATE OR REPLACE FUNCTION pki.complete_publish_tlsa(job_id bigint, lease_token uuid, report jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := completing(job_id, lease_token, ARRAY['publish_tlsa']);
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
    -- after the certinstances updates: a transaction that holds those rows may be waiting for it; and
    -- before the job's row: an enqueue_tlsa holding it may be waiting for that row) orders this check
    -- with a concurrent enqueue_tlsa that skipped this running job: one sees the other's work
    PERFORM lock_tlsa(j.certificate);
    -- done before the re-check: a follow-up of this kind and certificate needs the job out of the active set
    PERFORM job_done(j, report);
    IF NOT coalesce((j.args ->> 'remove')::boolean, false) AND tlsa_wanted(j.certificate) <> (j.args -> 'instances')
       AND tlsa_wanted(j.certificate) <> '[]'::jsonb THEN
        PERFORM enqueue_tlsa(j.certificate, format('the wanted TLSA set changed while job %s ran', j.id));
    END IF;
END
$$;

SELECT pki.define_job_kind('publish_tlsa', 'make the TLSA RRsets of a certificate''s names what the job lists', 8, 15,
                           'complete_publish_tlsa');
