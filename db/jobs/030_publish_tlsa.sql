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

-- tlsa_owner_holder: the certificate that configures a TLSA owner name now (pki.tlsa_owners), or NULL;
-- looked up by the owner's name through the subjects' unique index, not by scanning every owner
CREATE OR REPLACE FUNCTION pki.tlsa_owner_holder(the_owner text)
RETURNS int LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT o.certificate
      FROM subjects s JOIN tlsa_owners o ON o.certificate = s.certificate
     WHERE s.name = tlsa_owner_name(the_owner)::citext
       AND o.owner = lower(the_owner)
     LIMIT 1
$$;

-- report_owners: the owner names a publish_tlsa report lists under key, in lower case (none when it is
-- absent); a value that is not a list of owner names is refused (SP023)
CREATE OR REPLACE FUNCTION pki.report_owners(j pki.jobs, report jsonb, key text)
RETURNS text[] LANGUAGE plpgsql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    IF report -> key IS NULL THEN
        RETURN '{}';
    END IF;
    IF jsonb_typeof(report -> key) <> 'array'
       OR EXISTS (SELECT 1 FROM jsonb_array_elements(report -> key) e
                   WHERE jsonb_typeof(e) <> 'string'
                      OR tlsa_owner_name(e #>> '{}') IS NULL) THEN
        PERFORM raise_error('SP023', format('publish_tlsa job %s: its report''s "%s" is not a list of TLSA owner names', j.id, key),
            'report the owners as a JSON array of names such as "_443._tcp.www.example.org."');
    END IF;
    RETURN ARRAY(SELECT lower(e) FROM jsonb_array_elements_text(report -> key) e);
END
$$;

-- tlsa_followed: does a change of the certificate's TLSA owners call for a publish_tlsa job now? An
-- enabled certificate in service does, and one with records in DNS (a published instance, an owner kept);
-- a disabled one whose records -R removed does not get them back
CREATE OR REPLACE FUNCTION pki.tlsa_followed(cert int)
RETURNS boolean LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT (NOT x.disabled AND EXISTS (SELECT 1 FROM certinstances i WHERE i.certificate = x.id AND i.state IN ('deployed', 'prepublished')))
           OR EXISTS (SELECT 1 FROM certinstances i WHERE i.certificate = x.id AND i.tlsa_published IS NOT NULL)
           OR EXISTS (SELECT 1 FROM tlsa_owners_in_dns d WHERE d.certificate = x.id)
      FROM certificates x WHERE x.id = cert
$$;

-- owners_moved: the owners certificate j holds records at (kept, or written now: in_dns) that another
-- certificate configures now, with that certificate (a name moved to it)
CREATE OR REPLACE FUNCTION pki.owners_moved(j pki.jobs, in_dns text[])
RETURNS TABLE (owner text, holder int) LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT h.owner, h.holder
      FROM (SELECT o.owner, tlsa_owner_holder(o.owner) AS holder
              FROM (SELECT d.owner FROM tlsa_owners_in_dns d WHERE d.certificate = j.certificate
                    UNION SELECT unnest(in_dns)) o
             WHERE NOT EXISTS (SELECT 1 FROM tlsa_owners t WHERE t.certificate = j.certificate AND t.owner = o.owner)) h
     WHERE h.holder IS NOT NULL AND h.holder <> j.certificate
$$;

-- keep_owners_in_dns: what a publish_tlsa job of certificate j reported DNS holds now (tlsa_owners_in_dns):
-- the owners it wrote are its own (taken over from another certificate), the ones it withdrew or abandoned
-- (in no zone the primary holds) are gone; one whose zone refused the update stays for the next job. An owner it had that
-- another certificate configures now (a name moved) is that one's to write: when that one is followed
-- (tlsa_followed), the row goes and its job is enqueued; else the row stays ours (our next job withdraws the
-- records if nobody configures the owner then; that one's first job takes it over). An owner it wrote must
-- be one of its own: configured now, kept already, or asked about while the job ran (a wish: its
-- configuration changed); another is refused (SP023): defence in depth, the agent holds the TSIG key. The
-- caller holds lock_tlsa of j's certificate and of the holders of owners_moved (enqueue_tlsa takes them)
CREATE OR REPLACE FUNCTION pki.keep_owners_in_dns(j pki.jobs, report jsonb, in_dns text[])
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    gone text[] := report_owners(j, report, 'withdrawn') || report_owners(j, report, 'abandoned');
    foreign_owner text;
    moved record;
BEGIN
    IF j.certificate IS NULL THEN
        RETURN;
    END IF;
    foreign_owner := (SELECT o FROM unnest(in_dns) o
                       WHERE NOT EXISTS (SELECT 1 FROM tlsa_owners t WHERE t.certificate = j.certificate AND t.owner = o)
                         AND NOT EXISTS (SELECT 1 FROM tlsa_owners_in_dns d WHERE d.certificate = j.certificate AND d.owner = o)
                         AND NOT EXISTS (SELECT 1 FROM tlsa_wishes w WHERE w.certificate = j.certificate AND w.job = j.id)
                       LIMIT 1);
    IF foreign_owner IS NOT NULL THEN
        PERFORM raise_error('SP023', format('publish_tlsa job %s: its report names %s as written, not an owner of its certificate', j.id, foreign_owner),
            'report only the owners of the job''s certificate (pki.tlsa_owners) and those it had (pki.tlsa_owners_in_dns)');
    END IF;
    -- two completions whose certificates swap names would each hold the row the other takes over next
    PERFORM pg_advisory_xact_lock(hashtext('pki.tlsa_owners_in_dns'));
    DELETE FROM tlsa_owners_in_dns d WHERE d.certificate = j.certificate AND d.owner = ANY (gone) AND NOT d.owner = ANY (in_dns);
    INSERT INTO tlsa_owners_in_dns AS d (owner, certificate)
    SELECT DISTINCT o, j.certificate FROM unnest(in_dns) o
    ON CONFLICT (owner) DO UPDATE SET certificate = EXCLUDED.certificate;
    FOR moved IN SELECT m.owner, m.holder FROM owners_moved(j, '{}') m WHERE tlsa_followed(m.holder) ORDER BY m.holder, m.owner LOOP
        DELETE FROM tlsa_owners_in_dns d WHERE d.owner = moved.owner AND d.certificate = j.certificate;
        PERFORM enqueue_tlsa(moved.holder, format('TLSA owner %s came from %s (publish_tlsa job %s): its records follow',
                                                  moved.owner, (SELECT s.name FROM main_subjects s WHERE s.certificate = j.certificate), j.id));
    END LOOP;
END
$$;

-- complete_publish_tlsa: the completion of a publish_tlsa job (its agent calls it): the records are
-- out; count the DANE wait from now; prepublish the successor; keep which owners hold the certificate's
-- records (keep_owners_in_dns: the next job withdraws the ones configured no more). report: the zones and
-- updates sent, the owners in_dns, withdrawn, abandoned (in no zone the primary holds) and not_withdrawn
CREATE OR REPLACE FUNCTION pki.complete_publish_tlsa(job_id bigint, lease_token uuid, report jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := completing(job_id, lease_token, ARRAY['publish_tlsa']);
    prepublish int := (j.args ->> 'prepublish')::int;
    in_dns text[] := report_owners(j, report, 'in_dns');
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
    -- with a concurrent enqueue_tlsa that skipped this running job: one sees the other's work. With it,
    -- in ascending order, the locks of the certificates whose names this one's owners moved to
    PERFORM lock_tlsa_many(j.certificate || ARRAY(SELECT m.holder FROM owners_moved(j, in_dns) m));
    PERFORM keep_owners_in_dns(j, report, in_dns);
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
