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

-- keep_tlsa_wishes: for certificates whose publish_tlsa job an agent is running (the caller holds their
-- lock_tlsa), keep the newest request (tlsa_wishes) for that job's completion: its agent has read what to
-- send. certs[n] asks for reasons[n] to prepublish prepublish[n] (NULL: what is wanted, and a successor
-- asked for earlier stays asked for) or, with removes[n], to remove the records. Of a certificate given
-- more than once, as with calls one after the other: the last reason and removal count, and the last
-- successor named (removals come from enqueue_tlsa, one certificate a call). A wish of a job that is not
-- running any more (it died) is replaced, not merged
CREATE OR REPLACE FUNCTION pki.keep_tlsa_wishes(certs int[], reasons text[], prepublish int[], removes boolean[])
RETURNS void LANGUAGE sql
SET search_path = pki, dd, pg_temp
AS $$
    INSERT INTO tlsa_wishes AS w (certificate, job, prepublish, remove, reason)
    SELECT a.cert, a.job, CASE WHEN NOT a.remove THEN a.pre END, a.remove, a.why
      FROM (SELECT u.cert, min(j.id) AS job,
                   (array_agg(u.why ORDER BY u.n DESC))[1] AS why,
                   (array_agg(u.remove ORDER BY u.n DESC))[1] AS remove,
                   (array_agg(u.pre ORDER BY u.n DESC) FILTER (WHERE u.pre IS NOT NULL))[1] AS pre
              FROM unnest(certs, reasons, prepublish, removes) WITH ORDINALITY AS u(cert, why, pre, remove, n)
              JOIN jobs j ON j.kind = 'publish_tlsa' AND j.subject_key = tlsa_subject_key(u.cert) AND j.state = 'running'
             GROUP BY u.cert) a
    ON CONFLICT (certificate) DO UPDATE
       SET prepublish = CASE WHEN NOT EXCLUDED.remove
                             THEN coalesce(EXCLUDED.prepublish, CASE WHEN w.job = EXCLUDED.job THEN w.prepublish END) END,
           job = EXCLUDED.job, remove = EXCLUDED.remove, reason = EXCLUDED.reason, asked = now()
$$;

-- asked_prepublication: the successor a certificate's TLSA records were asked to prepublish and are not
-- yet: a kept wish of a job not done (keep_tlsa_wishes) or a pending job's, while it is still issued.
-- NULL: none. A plain request keeps it, as a later one of the same kind would. The caller holds lock_tlsa
CREATE OR REPLACE FUNCTION pki.asked_prepublication(cert int)
RETURNS int LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT max(i.id) FROM certinstances i
     WHERE i.certificate = cert AND i.state = 'issued'
       AND i.id IN (SELECT w.prepublish FROM tlsa_wishes w JOIN jobs j ON j.id = w.job AND j.state IN ('queued', 'running', 'failed')
                     WHERE w.certificate = cert
                    UNION ALL
                    SELECT (j.args ->> 'prepublish')::int FROM jobs j
                     WHERE j.kind = 'publish_tlsa' AND j.subject_key = tlsa_subject_key(cert) AND j.state IN ('queued', 'failed'))
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
    -- an agent at it takes no new args: this wish waits for its completion (a successor to prepublish, a
    -- changed configuration, a removal: its re-check compares only the instances). Before the pending job
    -- is looked for: a job that fails meanwhile is found pending below
    PERFORM keep_tlsa_wishes(ARRAY[cert], ARRAY[p_reason], ARRAY[prepublish], ARRAY[remove]);
    IF prepublish IS NULL AND NOT remove THEN
        -- a plain wish keeps a prepublication asked for and not done yet
        prepublish := asked_prepublication(cert);
    END IF;
    wanted := CASE WHEN remove THEN '[]'::jsonb ELSE tlsa_wanted(cert, prepublish) END;
    new_args := jsonb_build_object('instances', wanted, 'prepublish', prepublish, 'remove', remove);
    job_id := enqueue('publish_tlsa', tlsa_subject_key(cert), p_reason, new_args, cert);
    IF job_id IS NULL THEN
        -- one is pending: give it the newest wish unless an agent is at it (then its completion re-checks)
        UPDATE jobs SET args = new_args, reason = p_reason
         WHERE kind = 'publish_tlsa' AND subject_key = tlsa_subject_key(cert) AND state IN ('queued', 'failed')
        RETURNING id INTO job_id;
    END IF;
    IF job_id IS NOT NULL THEN
        -- the pending job carries the newest wish: a kept one is done with
        DELETE FROM tlsa_wishes w WHERE w.certificate = cert;
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
    -- a running job's wish waits for its completion (as in enqueue_tlsa)
    SELECT keep_tlsa_wishes(certs, reasons, prepublish, array_fill(false, ARRAY[cardinality(certs)]));
    WITH k AS MATERIALIZED (
        SELECT priority, job_attempts(max_attempts) AS attempts, pki.now() AS now FROM job_kinds WHERE kind = 'publish_tlsa'
    ), todo AS MATERIALIZED (
        SELECT u.cert, u.why, jsonb_build_object('instances', w.ids, 'prepublish', u.pre, 'remove', false) AS args
          -- of a certificate given twice the last reason and successor named count; a plain wish keeps a
          -- prepublication asked for and not done yet (as in enqueue_tlsa)
          FROM (SELECT v.cert, (array_agg(v.why ORDER BY v.n DESC))[1] AS why,
                       coalesce((array_agg(v.pre ORDER BY v.n DESC) FILTER (WHERE v.pre IS NOT NULL))[1],
                                asked_prepublication(v.cert)) AS pre
                  FROM unnest(certs, reasons, prepublish) WITH ORDINALITY AS v(cert, why, pre, n)
                 WHERE v.cert IS NOT NULL
                 GROUP BY v.cert) u
          -- tlsa_wanted(cert, pre), for all at once
          CROSS JOIN LATERAL (SELECT coalesce(jsonb_agg(i.id ORDER BY i.id), '[]') AS ids FROM certinstances i
                               WHERE i.certificate = u.cert AND (i.state IN ('deployed', 'prepublished') OR i.id = u.pre)) w
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
    ), settled AS (
        -- the pending jobs carry the newest wishes: kept ones are done with (as in enqueue_tlsa)
        DELETE FROM tlsa_wishes w
         WHERE w.certificate IN (SELECT queued.certificate FROM queued UNION ALL SELECT renewed.certificate FROM renewed)
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
    kept int;
    wish tlsa_wishes;
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
    -- what was asked for while the agent worked (keep_tlsa_wishes): the successor only if it still is one.
    -- A wish of another job (one that died) goes too: what it asked is asked again by the pass
    DELETE FROM tlsa_wishes w WHERE w.certificate = j.certificate RETURNING w.* INTO wish;
    IF wish.job = j.id THEN
        kept := (SELECT i.id FROM certinstances i WHERE i.id = wish.prepublish AND i.certificate = j.certificate AND i.state = 'issued');
        PERFORM enqueue_tlsa(j.certificate, format('%s (asked while job %s ran)', wish.reason, j.id), kept, wish.remove);
    ELSIF NOT coalesce((j.args ->> 'remove')::boolean, false) AND tlsa_wanted(j.certificate) <> (j.args -> 'instances')
       AND tlsa_wanted(j.certificate) <> '[]'::jsonb THEN
        PERFORM enqueue_tlsa(j.certificate, format('the wanted TLSA set changed while job %s ran', j.id));
    END IF;
END
$$;

SELECT pki.define_job_kind('publish_tlsa', 'make the TLSA RRsets of a certificate''s names what the job lists', 8, 15,
                           'complete_publish_tlsa');
