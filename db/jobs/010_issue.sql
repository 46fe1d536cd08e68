-- 010_issue: issue_local, issue_acme and issue_local_ca jobs: a new instance of a certificate.
-- enqueue_issue reserves the instance; complete_issue stores what the agent issued after the
-- checks of functions/110_result_checks.sql (and ACME's chain, functions/130_acme.sql);
-- issue_dead gives the reserved instance up when no attempt is left.

-- enqueue_issue: a reserved instance and an issue job for each certificate without an active one;
-- then_action says what follows when it is issued: 'distribute', 'prepublish', 'rollover' (the
-- emergency rollover after a key compromise, revoke_rollover: both at once) or nothing
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
        SELECT DISTINCT ON (u.cert) u.cert, u.then_action, u.why, c.type, sub.type AS subject_type, kr.reuse_from, kr.note
          FROM unnest(p_certs, p_then, p_reasons) AS u(cert, then_action, why)
          JOIN certificates c ON c.id = u.cert
          JOIN main_subjects sub ON sub.certificate = c.id
          -- whether the new instance keeps its predecessor's keys (125_key_reuse): decided here, the agent executes it
          CROSS JOIN LATERAL key_reuse(u.cert) kr
         WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.subject_key = cert_subject_key(u.cert)
                              AND j.kind IN ('issue_local', 'issue_acme', 'issue_local_ca')
                              AND j.state IN ('queued', 'running', 'failed'))
    ), inst AS (
        INSERT INTO certinstances (certificate, state)
        SELECT todo.cert, 'reserved' FROM todo
        RETURNING certinstances.id, certinstances.certificate
    ), queued AS (
        INSERT INTO jobs (kind, subject_key, reason, args, certificate, instance, priority, max_attempts, run_after)
        SELECT k.kind, cert_subject_key(todo.cert), todo.why || coalesce('; ' || todo.note, ''),
               jsonb_build_object('then', todo.then_action, 'no_tlsa', coalesce(sel.no_tlsa, false),
                                  'skip_hosts', to_jsonb(coalesce(sel.skip_hosts, '{}')),
                                  'only_hosts', to_jsonb(coalesce(sel.only_hosts, '{}')))
                   || jsonb_strip_nulls(jsonb_build_object('reuse_from', todo.reuse_from)),
               todo.cert, inst.id, k.priority, k.attempts, at_now
          FROM todo JOIN inst ON inst.certificate = todo.cert
          JOIN kinds k ON k.kind = CASE WHEN todo.subject_type = 'CA' THEN 'issue_local_ca'
                                            WHEN todo.type = 'LE' THEN 'issue_acme' ELSE 'issue_local' END
        RETURNING jobs.id, jobs.certificate, jobs.instance
    )
    SELECT queued.id, queued.certificate, queued.instance FROM queued;
END
$$;

-- issue_result_checked: the checks of an issue job's result before anything of it is stored (complete_issue;
-- issue_local_results_checked makes them for a batch at once): the reserved instance still there, one pair per key
-- algorithm of the certificate (cert: the job's, all NULL when it is gone), names and issuer read from the
-- certificates (110_result_checks), no key of a revoked certificate. Refusals raise (SP023, SP028);
-- returns the result as the checks completed it
CREATE OR REPLACE FUNCTION pki.issue_result_checked(j pki.jobs, cert pki.certificates, pairs dd.issued_pair[], result jsonb)
RETURNS jsonb LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    algos text[];
    wanted text[];
BEGIN
    IF cert.id IS NULL OR j.instance IS NULL OR NOT EXISTS (SELECT 1 FROM certinstances WHERE id = j.instance AND state = 'reserved') THEN
        PERFORM raise_error('SP023', format('job %s: its certificate or reserved instance is gone', j.id),
            'the certificate was removed meanwhile; fail the job without retry');
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(pairs) p WHERE p.algo IS NULL OR p.cert IS NULL OR p.key IS NULL) THEN
        PERFORM raise_error('SP023', format('job %s: a pair lacks its algo, cert or key', j.id),
            'report each pair as ("rsa"|"ec", "-----BEGIN CERTIFICATE-----...", "-----BEGIN PRIVATE KEY-----...")');
    END IF;
    SELECT array_agg(p.algo ORDER BY p.algo) INTO algos FROM unnest(pairs) p;
    wanted := CASE cert.encryption_algo WHEN 'rsa_plus_ec' THEN ARRAY['ec', 'rsa'] ELSE ARRAY[cert.encryption_algo::text] END;
    IF algos IS DISTINCT FROM wanted THEN
        PERFORM raise_error('SP023', format('job %s: issued pairs %s, the certificate wants %s', j.id, algos, wanted),
            'issue one pair per key algorithm of the certificate');
    END IF;
    -- names, issuer and chain are read from the certificates, not taken from the agent (110_result_checks)
    result := check_issued_result(j, cert, result);
    -- a key of a revoked certificate is never used again (an issue job that read it before the revocation)
    IF EXISTS (SELECT 1 FROM unnest(pairs) p WHERE key_revoked(j.certificate, p.algo, convert_to(p.cert, 'UTF8'))) THEN
        PERFORM raise_error('SP028', format('job %s: a pair has the key of a revoked certificate of %s', j.id, j.certificate),
            'nothing to do: the agent retries the job, whose args no longer name a key to reuse: it makes a new key');
    END IF;
    RETURN result;
END
$$;

-- issue_pairs_storable: the last checks of an issue job's result, once its issuer is known (cacert):
-- that instance exists, and each key is in the form of the stored keys (-X: encrypted, -Y: in clear),
-- the stored form held (FOR KEY SHARE) until the transaction ends. Refusals raise (SP023, SP028)
CREATE OR REPLACE FUNCTION pki.issue_pairs_storable(j pki.jobs, pairs dd.issued_pair[], cacert int)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    encrypted boolean;
    misfit text;
BEGIN
    IF cacert IS NOT NULL AND NOT EXISTS (SELECT 1 FROM certinstances ci WHERE ci.id = issue_pairs_storable.cacert) THEN
        PERFORM raise_error('SP023', format('job %s: cacert %s is not the id of a stored instance', j.id, cacert),
            'give the id of the CA''s instance (SELECT "Serial" FROM inst), or leave cacert out');
    END IF;
    -- a key is stored in the form of the stored keys (-X: encrypted, -Y: in clear): the agent read that form
    -- for its batch, and a re-encryption may have been applied since. The lock keeps a re-encryption's
    -- completion (which locks the row FOR UPDATE) and this one apart. Refused with SP028, which the agent retries
    IF j.kind <> 'issue_local_ca' THEN   -- a CA's key is always encrypted, with the local CA passphrase
        SELECT r.keysencrypted INTO encrypted FROM revision r WHERE r.id = current_revision() FOR KEY SHARE;
        SELECT p.algo INTO misfit FROM unnest(pairs) p
         WHERE (position('-----BEGIN ENCRYPTED PRIVATE KEY-----' IN p.key) > 0) IS DISTINCT FROM coalesce(encrypted, false)
         LIMIT 1;
        IF misfit IS NOT NULL THEN
            PERFORM raise_error('SP028', format('job %s: its %s key is %s, but the stored keys are %s now (-X/-Y applied while it ran)',
                                                j.id, misfit, CASE WHEN encrypted THEN 'in clear' ELSE 'encrypted' END,
                                                CASE WHEN encrypted THEN 'encrypted' ELSE 'in clear' END),
                'nothing to do: the agent retries the job, which stores its keys in the new form');
        END IF;
    END IF;
END
$$;

-- store_issued_pairs: the checked pairs of issue jobs stored, in one statement for all the jobs (pairs[i]: those
-- of jobs[i], as a JSON array of {algo, cert, key}); the certkeydata trigger parses each certificate and checks
-- each clear key against it (SP008). PL/pgSQL: its plan kept for the session (a SQL function with SET is planned
-- at every call, once per batch)
CREATE OR REPLACE FUNCTION pki.store_issued_pairs(jobs pki.jobs[], pairs jsonb[])
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    INSERT INTO certkeydata (certinstance, encryption_algo, cert, key, key_created)
    SELECT (jobs[i]).instance, p.algo::dd.cert_encryption_algo, convert_to(p.cert, 'UTF8'), convert_to(p.key, 'UTF8'),
           pki.now()
      FROM generate_subscripts(jobs, 1) AS i
     CROSS JOIN LATERAL jsonb_populate_recordset(NULL::dd.issued_pair, pairs[i]) WITH ORDINALITY AS p
     ORDER BY i, p.ordinality;
END
$$;

-- continue_reused_keys: a key reused by an issue job (its reuse_from, key_reuse) keeps its age and renewals,
-- read from the public keys of the certificates, not taken from the agent's word; one statement for all the jobs
CREATE OR REPLACE FUNCTION pki.continue_reused_keys(jobs pki.jobs[])
RETURNS void LANGUAGE sql
SET search_path = pki, dd, pg_temp
AS $$
    UPDATE certkeydata k SET key_created = coalesce(p.key_created, p.not_before), key_renewals = p.key_renewals + 1
      FROM unnest(jobs) AS u, certkeydata p
     WHERE (u.args ->> 'reuse_from') IS NOT NULL
       AND k.certinstance = u.instance AND p.certinstance = (u.args ->> 'reuse_from')::int
       AND p.encryption_algo = k.encryption_algo AND tlsa_data(p.cert, 1, 0) = tlsa_data(k.cert, 1, 0)
$$;

-- issue_followup: what an issue job's args said follows once its instance is issued ('then'):
-- distribute it, prepublish its TLSA records, or both at once after a key compromise (rollover)
CREATE OR REPLACE FUNCTION pki.issue_followup(j pki.jobs)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    sel dd.selection := ROW(false, '{}', '{}', '{}',
               ARRAY(SELECT jsonb_array_elements_text(coalesce(j.args -> 'skip_hosts', '[]'))),
               ARRAY(SELECT jsonb_array_elements_text(coalesce(j.args -> 'only_hosts', '[]'))),
               coalesce((j.args ->> 'no_tlsa')::boolean, false));
    active int;
BEGIN
    CASE j.args ->> 'then'
        WHEN 'distribute' THEN
            PERFORM enqueue_distribution(ARRAY[j.instance], sel, 'deploy', format('issued by job %s: distribute', j.id));
        WHEN 'prepublish' THEN
            active := (SELECT i.id FROM certinstances i WHERE i.certificate = j.certificate AND i.state = 'deployed'
                        ORDER BY i.id DESC LIMIT 1);
            IF tlsa_unchanged(active, j.instance) THEN
                -- key reused: its TLSA records are in DNS already, nothing to prepublish; when the active
                -- instance is due (rule 7), it is deployed at once, else a later pass does it
                IF pki.now() >= (SELECT i.not_after FROM certinstances i WHERE i.id = active) - setting_interval('expire_grace') THEN
                    PERFORM enqueue_distribution(ARRAY[j.instance], sel, 'deploy', format('issued by job %s: key reused, '
                                                 'the TLSA records do not change: distribute without the DANE-safe wait', j.id));
                END IF;
            ELSIF NOT sel.no_tlsa THEN
                PERFORM enqueue_tlsa(j.certificate, format('issued by job %s: prepublish TLSA', j.id), j.instance);
            END IF;
        WHEN 'rollover' THEN
            -- the active instance was revoked for a key compromise: its TLSA records go and this one's
            -- come in one publish_tlsa job (enqueued first: it runs before the distribution), and the
            -- instance is deployed at once: no DANE wait, the old key must stop being trusted now
            IF NOT sel.no_tlsa AND tlsa_ttl(j.certificate) IS NOT NULL THEN
                PERFORM enqueue_tlsa(j.certificate, format('issued by job %s after a key compromise: the successor''s TLSA '
                                                           'in, the revoked instance''s out', j.id), j.instance);
            END IF;
            PERFORM enqueue_distribution(ARRAY[j.instance], sel, 'deploy',
                                         format('issued by job %s after a key compromise: distribute at once', j.id));
        ELSE NULL;
    END CASE;
END
$$;

-- complete_issue: the completion of an issue job (its agent calls it): store the pairs, reserved ->
-- issued, then what the job said follows. pairs: one (algo, cert, key[, chain]) per key algorithm,
-- PEM text; cacert: the local CA's instance that signed them (issue_local); chain (the issuer
-- first) and authorized_until: an ACME order's (issue_acme); report: what the agent did, kept
CREATE OR REPLACE FUNCTION pki.complete_issue(job_id bigint, lease_token uuid, pairs dd.issued_pair[] DEFAULT '{}',
    cacert int DEFAULT NULL, chain text[] DEFAULT NULL, authorized_until timestamptz DEFAULT NULL,
    report jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := completing(job_id, lease_token, ARRAY['issue_local', 'issue_acme', 'issue_local_ca']);
    -- the checks (110_result_checks) read the outcome in this form; they add what they derive
    result jsonb := jsonb_strip_nulls(jsonb_build_object('pairs', to_jsonb(pairs), 'cacert', cacert,
                        'chain', to_jsonb(chain), 'authorized_until', authorized_until));
    cert certificates;
    pair dd.issued_pair;
    stored_error text;
    stored_hint text;
BEGIN
    SELECT * INTO cert FROM certificates WHERE id = j.certificate;
    result := issue_result_checked(j, cert, pairs, result);
    -- an ACME result names its issuer by the chain (stored as a CA instance) and its authorizations' expiry (130_acme)
    IF chain IS NOT NULL OR authorized_until IS NOT NULL THEN
        cacert := apply_acme_chain(j, chain, cacert, (result ->> 'authorized_until')::timestamptz, result -> 'issuer_facts');
    END IF;
    PERFORM issue_pairs_storable(j, pairs, cacert);
    -- the certkeydata trigger checks each clear key against its certificate; its refusal is the job's
    BEGIN
        FOREACH pair IN ARRAY pairs LOOP
            PERFORM store_issued_pairs(ARRAY[j], ARRAY[jsonb_build_array(to_jsonb(pair))]);
        END LOOP;
    EXCEPTION WHEN SQLSTATE 'SP008' THEN
        GET STACKED DIAGNOSTICS stored_error = MESSAGE_TEXT, stored_hint = PG_EXCEPTION_HINT;
        PERFORM raise_error('SP023', format('job %s: the %s pair cannot be stored: %s', j.id, pair.algo,
                regexp_replace(stored_error, '^plpy\.Error: ', '')),
            stored_hint);
    END;
    PERFORM continue_reused_keys(ARRAY[j]);
    UPDATE certinstances SET state = 'issued', cacert = complete_issue.cacert,
                             ocsp_must_staple = cert.ocsp_must_staple
     WHERE id = j.instance;
    -- the job's report (keys stripped by job_done); what was applied wins over the agent's words
    PERFORM job_done(j, coalesce(report, '{}') || result);
    PERFORM issue_followup(j);
END
$$;

-- complete_issue_batch: the completions of several issue_local jobs of one agent in one call (one round trip,
-- one commit). pairs[i]: job i's pairs as a JSON array of {algo, cert, key}. First all together, each step
-- one statement for all the jobs (complete_issues_together); when any of them is refused, that is undone
-- and each is applied by complete_issue as if alone, in a subtransaction of its own: a refused one changes
-- nothing and leaves the others. Returns for each job, in order, the SQLSTATE and message of its refusal
-- with its hint (NULL: done), for the agent to handle as the refusal of its own completion. The jobs are completed in
-- the order of their TLSA lock buckets (lock_tlsa), whatever order they come in: two batches, or a batch
-- and a pass, take the buckets in the same order and cannot deadlock on them
CREATE OR REPLACE FUNCTION pki.complete_issue_batch(job_ids bigint[], lease_tokens uuid[], pairs jsonb[],
    cacerts int[], reports jsonb[], OUT states text[], OUT messages text[])
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    n int := coalesce(cardinality(job_ids), 0);
    state text;
    message text;
    by_bucket int[];   -- the positions of the jobs in lock-bucket order
    pos int;
    hint text;
BEGIN
    IF cardinality(lease_tokens) IS DISTINCT FROM n OR cardinality(pairs) IS DISTINCT FROM n
       OR cardinality(cacerts) IS DISTINCT FROM n OR cardinality(reports) IS DISTINCT FROM n THEN
        PERFORM raise_error('SP023', format('complete_issue_batch: %s jobs, but %s lease tokens, %s pairs, %s cacerts, %s reports',
                n, cardinality(lease_tokens), cardinality(pairs), cardinality(cacerts), cardinality(reports)),
            'give each array one element per job, in the same order');
    END IF;
    states := array_fill(NULL::text, ARRAY[n]);
    messages := states;
    -- the arrays put in that order in one pass (unnest): each pairs[i] would walk the array from its start
    SELECT array_agg(u.i::int ORDER BY u.bucket, u.cert, u.i), array_agg(u.id ORDER BY u.bucket, u.cert, u.i),
           array_agg(u.token ORDER BY u.bucket, u.cert, u.i), array_agg(u.p ORDER BY u.bucket, u.cert, u.i),
           array_agg(u.ca ORDER BY u.bucket, u.cert, u.i), array_agg(u.r ORDER BY u.bucket, u.cert, u.i)
      INTO by_bucket, job_ids, lease_tokens, pairs, cacerts, reports
      FROM (SELECT a.*, b.cert % 1024 AS bucket, b.cert
              FROM unnest(job_ids, lease_tokens, pairs, cacerts, reports) WITH ORDINALITY AS a(id, token, p, ca, r, i)
              -- each job by its key (a subquery per job, not a join: that read the whole jobs table)
              CROSS JOIN LATERAL (SELECT coalesce((SELECT jb.certificate FROM jobs jb WHERE jb.id = a.id), 0) AS cert OFFSET 0) b) u;
    IF n > 1 THEN
        BEGIN
            PERFORM complete_issues_together(job_ids, lease_tokens, pairs, cacerts, reports);
            RETURN;
        EXCEPTION WHEN OTHERS THEN
            -- one of them was refused: each alone below, which says which. The SQLSTATE only (a message may
            -- quote a result): a batch path that always fails shows in the server log at log_min_messages = debug1
            RAISE DEBUG 'complete_issue_batch: the batch of % was refused together (%): each job alone', n, SQLSTATE;
        END;
    END IF;
    FOR k IN 1 .. n LOOP   -- job_ids[k] (in bucket order) is the job given at position by_bucket[k]
        pos := by_bucket[k];
        BEGIN
            PERFORM complete_issue(job_ids[k], lease_tokens[k],
                ARRAY(SELECT p FROM jsonb_populate_recordset(NULL::dd.issued_pair, coalesce(pairs[k], '[]')) p),
                cacerts[k], NULL, NULL, coalesce(reports[k], '{}'));
            state := NULL;
            message := NULL;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
            message := message || coalesce(' (hint: ' || nullif(hint, '') || ')', '');   -- what says how to mend it
        END;
        states[pos] := state;
        messages[pos] := message;
    END LOOP;
END
$$;

-- complete_issues_together: complete_issue for several issue_local jobs (complete_issue_batch), the same
-- checks and steps, each step taken for all the jobs before the next (the certificates checked one after
-- the other in one statement, stored in one, the jobs done in one): the first refusal raises and undoes all
CREATE OR REPLACE FUNCTION pki.complete_issues_together(job_ids bigint[], lease_tokens uuid[], pairs jsonb[],
    cacerts int[], reports jsonb[])
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    js jobs[];
    results jsonb[];
    staples boolean[];
    j jobs;
BEGIN
    -- the jobs locked (in the order given: complete_issue_batch's, by lock bucket), their results in the form
    -- complete_issue checks, then checked all at once. held_job, not completing: its event context would be
    -- replaced before any transition (each job's is set where its instance is issued, below)
    SELECT array_agg(c.j ORDER BY c.i), array_agg(c.result ORDER BY c.i) INTO js, results
      FROM (SELECT i, held_job(job_ids[i], lease_tokens[i]) AS j,
                   jsonb_strip_nulls(jsonb_build_object('pairs', to_jsonb(ARRAY(SELECT p FROM jsonb_populate_recordset(
                       NULL::dd.issued_pair, coalesce(pairs[i], '[]')) p)), 'cacert', cacerts[i])) AS result
              FROM generate_subscripts(job_ids, 1) AS i
            OFFSET 0) c;
    IF EXISTS (SELECT 1 FROM unnest(js) u WHERE u.kind <> 'issue_local') THEN   -- completing's SP026, said per job
        PERFORM raise_error('SP026', 'complete_issue_batch: a job is not an issue_local job', 'complete it with its kind''s completion');
    END IF;
    PERFORM issue_local_results_checked(js, results);
    PERFORM store_issued_pairs(js, pairs);
    IF EXISTS (SELECT 1 FROM unnest(js) u WHERE (u.args ->> 'reuse_from') IS NOT NULL) THEN   -- else nothing to plan
        PERFORM continue_reused_keys(js);
    END IF;
    -- each transition recorded with its job (the event context: one at a time); what the instances take from
    -- their certificates read for all at once, so that each job's is an UPDATE of one row by its key
    staples := ARRAY(SELECT (SELECT c.ocsp_must_staple FROM certificates c WHERE c.id = u.certificate)
                       FROM unnest(js) WITH ORDINALITY AS u ORDER BY u.ordinality);
    FOR i IN 1 .. cardinality(js) LOOP
        j := js[i];
        PERFORM set_context(format('%s job %s done', j.kind, j.id), j.id);
        UPDATE certinstances SET state = 'issued', cacert = cacerts[i], ocsp_must_staple = staples[i] WHERE id = j.instance;
    END LOOP;
    -- the reports as complete_issue keeps them, the pairs' keys left out here already: without_secrets then
    -- finds nothing to rebuild them for
    PERFORM jobs_done(js, ARRAY(
        SELECT coalesce(r, '{}') || jsonb_set(c, '{pairs}', (SELECT coalesce(jsonb_agg(p - 'key' ORDER BY n), '[]')
                                                             FROM jsonb_array_elements(c -> 'pairs') WITH ORDINALITY AS e(p, n)))
          FROM unnest(reports, results) WITH ORDINALITY AS u(r, c, i) ORDER BY u.i));
    FOREACH j IN ARRAY js LOOP
        IF j.args ->> 'then' IS NOT NULL THEN
            PERFORM set_context(format('%s job %s done', j.kind, j.id), j.id);
            PERFORM issue_followup(j);
        END IF;
    END LOOP;
END
$$;

-- issue_local_results_checked: the checks of issue_result_checked, check_issued_result and issue_pairs_storable for
-- the results of several issue_local jobs (complete_issues_together; results[i] is job i's, in the form complete_issue
-- gives check_issued_result), in one statement for all of them with one call of check_result_certs for all their
-- certificates. Any misfit raises SP023 naming the first such job: complete_issue_batch then completes each job alone,
-- and complete_issue's own checks say what was wrong. The stored form of the keys is held (FOR KEY SHARE) until the
-- transaction ends, as issue_pairs_storable holds it
CREATE OR REPLACE FUNCTION pki.issue_local_results_checked(js pki.jobs[], results jsonb[])
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    encrypted boolean;
    misfit bigint;
BEGIN
    SELECT r.keysencrypted INTO encrypted FROM revision r WHERE r.id = current_revision() FOR KEY SHARE;
    WITH u AS MATERIALIZED (
        SELECT i, js[i] AS j, results[i] AS result, results[i] ->> 'cacert' AS cacert_text,
               ARRAY(SELECT p FROM jsonb_populate_recordset(NULL::dd.issued_pair, coalesce(results[i] -> 'pairs', '[]')) p) AS ps
          FROM generate_subscripts(js, 1) AS i
    ), ca AS (   -- each CA instance named, read once (check_issued_result's query)
        SELECT DISTINCT ON (i.id) i.id, convert_from(k.cert, 'UTF8') AS pem
          FROM certinstances i
          JOIN certificates c ON c.id = i.certificate AND c.type = 'local'
          JOIN main_subjects s ON s.certificate = c.id AND s.type = 'CA'
          JOIN certkeydata k ON k.certinstance = i.id
         WHERE i.id = ANY (ARRAY(SELECT u.cacert_text::int FROM u WHERE u.cacert_text ~ '^[0-9]{1,9}$'))
           AND i.state IN ('issued', 'deployed')
         ORDER BY i.id, k.id
    ), facts AS MATERIALIZED (
        SELECT u.i, (u.j).id AS job, u.ps, u.result, c.id AS cert_id, c.encryption_algo, main.type::text AS subject_type,
               main.name::text AS main_name, ca.id AS ca_id, ca.pem AS ca_pem,
               (SELECT coalesce(jsonb_agg(s.name::text), '[]') FROM subjects s WHERE s.certificate = c.id AND s.isaltname) AS altnames,
               coalesce((SELECT ci.state = 'reserved' FROM certinstances ci WHERE ci.id = (u.j).instance), false) AS reserved
          FROM u
          -- the rows of the jobs found by their keys (LATERAL, a subquery: per job); joined as sets, the planner
          -- (that cannot know how few jobs a batch has) read the whole tables for every batch
          LEFT JOIN LATERAL (SELECT * FROM certificates c WHERE c.id = (u.j).certificate OFFSET 0) c ON true
          -- one row per job: the results of check_result_certs are matched by position
          LEFT JOIN LATERAL (SELECT m.type, m.name FROM main_subjects m WHERE m.certificate = c.id LIMIT 1) main ON true
          LEFT JOIN ca ON u.cacert_text ~ '^[0-9]{1,9}$' AND ca.id = u.cacert_text::int
    ), misfits AS MATERIALIZED (
        SELECT f.i, f.job FROM facts f
         WHERE f.cert_id IS NULL OR NOT f.reserved OR f.ca_pem IS NULL
            -- one complete pair per key algorithm of the certificate
            OR EXISTS (SELECT 1 FROM unnest(f.ps) p WHERE p.algo IS NULL OR p.cert IS NULL OR p.key IS NULL)
            OR ARRAY(SELECT p.algo FROM unnest(f.ps) p ORDER BY p.algo)
               IS DISTINCT FROM CASE f.encryption_algo WHEN 'rsa_plus_ec' THEN ARRAY['ec', 'rsa'] ELSE ARRAY[f.encryption_algo::text] END
            -- each key in the form of the stored keys (-X: encrypted, -Y: in clear)
            OR EXISTS (SELECT 1 FROM unnest(f.ps) p
                        WHERE (position('-----BEGIN ENCRYPTED PRIVATE KEY-----' IN p.key) > 0) IS DISTINCT FROM coalesce(encrypted, false))
            -- (key_revoked called only where the certificate has a revoked one of the algorithm at all: most never had)
            OR EXISTS (SELECT 1 FROM unnest(f.ps) p
                        WHERE CASE WHEN EXISTS (SELECT 1 FROM revocations r WHERE r.certificate = f.main_name
                                                   AND r.encryption_algo::text = p.algo)   -- CASE: in this order
                                   THEN key_revoked(f.cert_id, p.algo, convert_to(p.cert, 'UTF8')) ELSE false END)
    ), certs AS (   -- the certificates (what costs) only when everything else fits
        SELECT r.ord, r.problem FROM check_result_certs(
                ARRAY(SELECT f.job FROM facts f ORDER BY f.i), ARRAY(SELECT 'issue_local' FROM facts f ORDER BY f.i),
                ARRAY(SELECT f.subject_type FROM facts f ORDER BY f.i), ARRAY(SELECT f.main_name FROM facts f ORDER BY f.i),
                ARRAY(SELECT f.altnames FROM facts f ORDER BY f.i), ARRAY(SELECT f.result -> 'pairs' FROM facts f ORDER BY f.i),
                ARRAY(SELECT f.ca_pem FROM facts f ORDER BY f.i), ARRAY(SELECT f.ca_id FROM facts f ORDER BY f.i),
                ARRAY(SELECT NULL::jsonb FROM facts f ORDER BY f.i)) r
         WHERE NOT EXISTS (SELECT 1 FROM misfits)
    )
    SELECT x.job INTO misfit
      FROM (SELECT m.i, m.job FROM misfits m
            UNION ALL
            -- a certificate without its verdict row counts as a misfit, never as checked
            SELECT f.i, f.job FROM facts f LEFT JOIN certs c ON c.ord = f.i
             WHERE c.problem IS NOT NULL OR (c.ord IS NULL AND NOT EXISTS (SELECT 1 FROM misfits))) x
     ORDER BY x.i LIMIT 1;
    IF misfit IS NOT NULL THEN
        PERFORM raise_error('SP023', format('job %s: its result does not fit (complete_issue says why)', misfit),
            'complete the jobs one by one: complete_issue_batch does');
    END IF;
END
$$;

-- issue_dead: an issue job failed for good: the instance it reserved goes. An emergency rollover's
-- ('rollover') was to withdraw the revoked instance's TLSA records with its own: they go now
CREATE OR REPLACE FUNCTION pki.issue_dead(j pki.jobs)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    PERFORM set_context(format('issue job %s failed for good', j.id), j.id);
    DELETE FROM certinstances WHERE id = j.instance AND state = 'reserved';
    IF j.args ->> 'then' = 'rollover' AND tlsa_ttl(j.certificate) IS NOT NULL
       AND NOT coalesce((j.args ->> 'no_tlsa')::boolean, false) THEN
        PERFORM enqueue_tlsa(j.certificate, format('issue job %s of the emergency rollover failed for good: '
                                                   'the revoked instance''s TLSA records are withdrawn', j.id));
    END IF;
END
$$;

-- overlapped: its handler only signs, inside the agent; its completions go together (complete_issue_batch)
SELECT pki.define_job_kind('issue_local', 'issue an instance of a local certificate with the local CA', 3, 20,
                           'complete_issue', 'issue_dead', concurrency => 'overlapped');
SELECT pki.define_job_kind('issue_acme', 'order an instance of an LE certificate (dns-01 over RFC 2136)', 8, 20,
                           'complete_issue', 'issue_dead');
SELECT pki.define_job_kind('issue_local_ca', 'issue a new local CA certificate', 3, 30, 'complete_issue', 'issue_dead');
