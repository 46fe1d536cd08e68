-- 080_requests: the other actions of the seed's command line, taking the same
-- selection as the scheduler. Each enqueues and returns what it enqueued.

-- renewal_candidates: -r N, the original's "local certificates to be renewed", one source for the
-- action and its listing (-r N -n). Local certificates only (LE ones renew themselves), enabled
-- or included (-a, -i), whose deployed instance expires within N days; instance is that deployed one.
-- With distribute (-D -r N): only those with an instance issued within the last N days (and still
-- valid), which is then the instance returned.
CREATE OR REPLACE FUNCTION pki.renewal_candidates(sel dd.selection, remaining_days int, distribute boolean DEFAULT false)
RETURNS TABLE (certificate_id int, certificate text, instance int, not_after timestamptz, reason text)
LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    sel := checked_selection(sel);
    PERFORM check_required(remaining_days::text, 'remaining days (-r)');
    PERFORM check_range(remaining_days, 0, 3650, 'remaining days (-r)');
    RETURN QUERY
    SELECT c.id, c.name, coalesce(s.id, act.id), act.not_after,
           format('local certificate, deployed instance %s expires %s (within %s days)%s', act.id, act.not_after, remaining_days,
                  CASE WHEN distribute THEN format('; instance %s issued %s (within the last %s days)', s.id, s.not_before, remaining_days)
                       ELSE '' END)
      FROM selected_certs(sel) c
      JOIN certinstances act ON act.certificate = c.id AND act.state = 'deployed'
      LEFT JOIN LATERAL (SELECT * FROM certinstances i WHERE i.certificate = c.id AND i.state IN ('issued', 'prepublished')
                            AND i.not_before <= pki.now() AND pki.now() < i.not_after ORDER BY i.id DESC LIMIT 1) s ON distribute
     WHERE c.enabled AND c.type = 'local'
       AND act.not_after <= pki.now() + remaining_days * interval '1 day'
       AND (NOT distribute OR s.not_before >= pki.now() - remaining_days * interval '1 day')
     ORDER BY c.name;
END
$$;

-- request_create: -C, issue the selected certificates; with -r N the renewal candidates
CREATE OR REPLACE FUNCTION pki.request_create(sel dd.selection DEFAULT NULL, remaining_days int DEFAULT NULL)
RETURNS TABLE (job bigint, certificate text, instance int, reason text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    sel := checked_selection(sel);
    PERFORM check_range(remaining_days, 0, 3650, 'remaining days (-r)');
    RETURN QUERY
    WITH wanted AS (
        SELECT c.id, c.name, 'requested (-C)' AS why
          FROM selected_certs(sel) c
         WHERE c.enabled AND remaining_days IS NULL
        UNION ALL
        SELECT r.certificate_id, r.certificate, format('requested (-C -r %s): deployed instance expires %s', remaining_days, r.not_after)
          FROM renewal_candidates(sel, remaining_days) r
         WHERE remaining_days IS NOT NULL
    )
    SELECT e.job, w.name, e.instance, w.why
      FROM enqueue_issue(ARRAY(SELECT id FROM wanted), ARRAY(SELECT NULL::text FROM wanted), ARRAY(SELECT why FROM wanted), sel) e
      JOIN wanted w ON w.id = e.certificate;
END
$$;

-- request_distribute: -D, distribute the issued (currently valid) instances; with -r N the renewal
-- candidates (local only). DANE-safe order: a successor of a certificate with TLSA services waits
-- until its TLSA records were published for 2 x TTL. -D publishes them at once (a publish_tlsa job
-- prepublishing it, marked 'deploy': the scheduler then deploys it as soon as the wait is over) and
-- says when it will be deployed. With -N the operator has DNS: it is distributed without the wait.
CREATE OR REPLACE FUNCTION pki.request_distribute(sel dd.selection DEFAULT NULL, remaining_days int DEFAULT NULL)
RETURNS TABLE (job bigint, certificate text, instance int, reason text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    at_now timestamptz := pki.now();
    option text;
BEGIN
    sel := checked_selection(sel);
    option := format('-D%s%s', ' -r ' || remaining_days, CASE WHEN sel.no_tlsa THEN ' -N' END);
    PERFORM check_range(remaining_days, 0, 3650, 'remaining days (-r)');
    -- publish: the TLSA job to enqueue for a held-back successor; not when it is prepublished and the
    -- scheduler deploys it when the wait is over anyway (rule 7 is due, or an earlier -D marked it)
    CREATE TEMP TABLE IF NOT EXISTS distribute_rows (cert int, name text, inst int, ready boolean, publish boolean,
                                                     why text, job bigint) ON COMMIT DROP;
    TRUNCATE distribute_rows;
    INSERT INTO distribute_rows
    SELECT c.id, c.name, s.id, x.dane_ok OR sel.no_tlsa,
           NOT (x.dane_ok OR sel.no_tlsa)
               AND (s.state = 'issued'
                    OR (at_now < act.not_after - setting_interval('expire_grace')
                        AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.certificate = c.id AND j.kind = 'publish_tlsa'
                                           AND j.args ? 'deploy' AND (j.args ->> 'deploy')::int = s.id AND j.state <> 'dead'))),
           CASE WHEN x.dane_ok THEN format('requested (%s)', option)
                WHEN sel.no_tlsa THEN format('requested (%s): deployed without the DANE-safe wait; its TLSA records are left '
                                             'as they are (-N: DNS is the operator''s)', option)
                WHEN s.state = 'prepublished'
                    THEN format('held back: DANE-safe order: its TLSA records were published %s; it will be deployed after %s '
                                '(by the next -S or -D run)', s.tlsa_published, dane_safe_after(s.tlsa_published, c.tlsa_ttl))
                ELSE format('held back: DANE-safe order: its TLSA records are published first; it will be deployed after its '
                            'TLSA records are published and 2 x TTL has passed, about %s (by the next -S or -D run)',
                            dane_safe_after(at_now, c.tlsa_ttl)) END
      FROM selected_certs(sel) c
      JOIN LATERAL (SELECT * FROM certinstances i WHERE i.certificate = c.id AND i.state IN ('issued', 'prepublished')
                       AND i.not_before <= at_now AND at_now < i.not_after ORDER BY i.id DESC LIMIT 1) s ON true
      LEFT JOIN certinstances act ON act.certificate = c.id AND act.state = 'deployed'
      CROSS JOIN LATERAL (SELECT dane_ok(act.id IS NOT NULL, c.tlsa_ttl, s.state, s.tlsa_published, at_now) AS dane_ok) x
     WHERE c.enabled
       AND (remaining_days IS NULL
            OR s.id IN (SELECT r.instance FROM renewal_candidates(sel, remaining_days, true) r));
    -- as the scheduler's prepublish: the TLSA of active and successor; the successor becomes prepublished
    WITH p AS (
        SELECT t.job, t.certificate
          FROM enqueue_tlsa_many(ARRAY(SELECT cert FROM distribute_rows WHERE publish ORDER BY cert),
                                 ARRAY(SELECT format('requested (%s): publish the successor''s TLSA', option)
                                         FROM distribute_rows WHERE publish ORDER BY cert),
                                 ARRAY(SELECT inst FROM distribute_rows WHERE publish ORDER BY cert)) t
    )
    UPDATE distribute_rows r SET job = p.job FROM p WHERE r.cert = p.certificate AND r.publish;
    -- the mark by which the scheduler deploys it once the DANE-safe wait is over (a statement of its
    -- own: it must see the jobs just enqueued)
    UPDATE jobs j SET args = j.args || jsonb_build_object('deploy', r.inst)
      FROM distribute_rows r WHERE j.id = r.job AND r.publish;
    RETURN QUERY
    SELECT e.job, r.name, e.instance, r.why
      FROM enqueue_distribution(ARRAY(SELECT inst FROM distribute_rows WHERE ready), sel, 'deploy',
                                format('requested (%s)', option)) e
      JOIN distribute_rows r ON r.inst = e.instance
    UNION ALL
    SELECT r.job, r.name, r.inst, r.why FROM distribute_rows r WHERE NOT r.ready;
    IF remaining_days IS NULL THEN   -- CA certificates' targets (150_ca_targets); -r N is about local certificates
        RETURN QUERY SELECT * FROM request_ca_targets(sel, 'deploy', 'requested (-D)');
    END IF;
END
$$;

-- request_consolidate_certs: -K, re-distribute the deployed instances; the agent compares
-- each target file's SHA-256 and rewrites only what drifted
CREATE OR REPLACE FUNCTION pki.request_consolidate_certs(sel dd.selection DEFAULT NULL)
RETURNS TABLE (job bigint, certificate text, instance int, reason text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    sel := checked_selection(sel);
    RETURN QUERY
    SELECT e.job, c.name, e.instance, 'requested (-K): bring the targets in line with the database'
      FROM selected_certs(sel) c
      JOIN certinstances i ON i.certificate = c.id AND i.state = 'deployed'
      CROSS JOIN LATERAL enqueue_distribution(ARRAY[i.id], sel, 'consolidate', 'requested (-K)') e
     WHERE c.enabled;
    RETURN QUERY SELECT * FROM request_ca_targets(sel, 'consolidate', 'requested (-K)');   -- CA certificates' targets (150_ca_targets)
END
$$;

-- request_tlsa: -T publishes the wanted TLSA RRsets (deployed and prepublished) again,
-- -R (remove) makes them empty; for the selected certificates with TLSA services
CREATE OR REPLACE FUNCTION pki.request_tlsa(sel dd.selection, remove boolean)
RETURNS TABLE (job bigint, certificate text, instance int, reason text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    option text := CASE WHEN remove THEN '-R (remove TLSA)' ELSE '-T (consolidate TLSA)' END;
    why text := CASE WHEN remove THEN 'requested (-R): remove the TLSA records'
                     ELSE 'requested (-T): TLSA as the database wants it' END;
BEGIN
    sel := checked_selection(sel);
    IF sel.no_tlsa THEN
        PERFORM raise_error('SP024', format('%s and -N (no TLSA changes) contradict each other', option), 'drop one of them');
    END IF;
    -- the TLSA locks as the scheduler takes them (lock_tlsa_many): no deadlock with a pass
    PERFORM lock_tlsa_many(ARRAY(SELECT c.id FROM selected_certs(sel) c WHERE c.enabled AND c.tlsa_ttl IS NOT NULL));
    RETURN QUERY
    SELECT enqueue_tlsa(c.id, why, NULL, remove), c.name, NULL::int, why
      FROM selected_certs(sel) c WHERE c.enabled AND c.tlsa_ttl IS NOT NULL ORDER BY c.id;
END
$$;

-- request_consolidate_tlsa: -T
CREATE OR REPLACE FUNCTION pki.request_consolidate_tlsa(sel dd.selection DEFAULT NULL)
RETURNS TABLE (job bigint, certificate text, instance int, reason text)
LANGUAGE sql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$ SELECT * FROM request_tlsa(sel, false) $$;

-- request_remove_tlsa: -R
CREATE OR REPLACE FUNCTION pki.request_remove_tlsa(sel dd.selection DEFAULT NULL)
RETURNS TABLE (job bigint, certificate text, instance int, reason text)
LANGUAGE sql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$ SELECT * FROM request_tlsa(sel, true) $$;

-- revocation_reasons: the reasons a revocation may give, RFC 5280's CRLReason names of an end-entity
-- certificate that Let's Encrypt accepts too (cACompromise and aACompromise are about CAs,
-- certificateHold is not final, privilegeWithdrawn it refuses; x509util.REVOCATION_REASONS)
CREATE OR REPLACE FUNCTION pki.revocation_reasons()
RETURNS text[] LANGUAGE sql IMMUTABLE
AS $$ SELECT ARRAY['unspecified', 'keyCompromise', 'affiliationChanged', 'superseded', 'cessationOfOperation'] $$;

-- revocable: an instance whose certificate may be revoked: in service, or replaced (expired) but
-- still valid (its key may have leaked)
CREATE OR REPLACE FUNCTION pki.revocable(i pki.certinstances)
RETURNS boolean LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT i.state IN ('issued', 'prepublished', 'deployed') OR (i.state = 'expired' AND i.not_after > pki.now())
$$;

-- record_revocation: request_revoke's record of one instance (checked by it): its certificates in
-- pki.revocations with who, why and when, the instance 'revoked', its revoke job (returned). A local
-- instance whose issuing CA instance is not known here (imported) is on no CRL: its record is done at
-- once and says so, and it has no job (NULL)
CREATE OR REPLACE FUNCTION pki.record_revocation(inst pki.certinstances, cert pki.certificates, name text, why text)
RETURNS bigint LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    revoke_job bigint;
    no_crl boolean := cert.type = 'local' AND inst.cacert IS NULL;
BEGIN
    INSERT INTO revocations (instance, certificate, encryption_algo, cert, ca_instance, not_after, reason, revoked_at,
                             revoked_by, done_at, remarks)
    SELECT inst.id, name, k.encryption_algo, k.cert, CASE WHEN cert.type = 'local' THEN inst.cacert END, k.not_after,
           why, pki.now(), session_user, CASE WHEN no_crl THEN pki.now() END,
           CASE WHEN no_crl THEN 'on no CRL: its issuing CA instance is not known here' END
      FROM certkeydata k WHERE k.certinstance = inst.id;
    PERFORM set_context(format('revoked (%s) by %s with --revoke', why, session_user));
    UPDATE certinstances i SET state = 'revoked' WHERE i.id = inst.id;
    IF no_crl THEN
        RETURN NULL;
    END IF;
    revoke_job := enqueue('revoke', revoke_subject_key(inst.id),
                          format('--revoke %s (%s) by %s: %s', inst.id, why, session_user,
                                 CASE WHEN cert.type = 'local' THEN 'put it on the local CA''s CRL' ELSE 'revoke it at the ACME CA' END),
                          jsonb_build_object('reason', why), cert.id, inst.id);
    UPDATE revocations r SET job = revoke_job WHERE r.instance = inst.id;
    RETURN revoke_job;
END
$$;

-- request_revoke: --revoke SERIAL [--reason REASON], the one rule of a revocation. Refuses (changing
-- nothing) an unknown reason (SP011), an unknown instance (SP002), a CA's instance or one that is not
-- in service (SP027). Else, in one transaction: the instance becomes 'revoked' at once (nothing
-- distributes a revoked instance again: distribution_files, the scheduler and -K take none); each of
-- its certificates is recorded in pki.revocations with who (session_user), why and when (the event
-- says so too); ONE revoke job revokes them at the ACME CA, or puts them on the local CA's CRL
-- (db/jobs/080_revoke.sql); and a publish_tlsa job withdraws its TLSA records (the wanted set no
-- longer holds it). When it was the active (deployed) instance of an enabled certificate, the
-- emergency rollover (revoke_rollover) replaces it in the same run; after a key compromise its
-- publish_tlsa job also withdraws the revoked records (one UPDATE), so none is enqueued here. A
-- revoked instance whose revocation is still pending (its job died) is enqueued again. After a key
-- compromise every other instance of the certificate still valid with the same key is revoked with
-- it (the key is what leaked: an active instance that shares it is replaced, a successor that kept
-- it is revoked, not just given up). Returns the jobs (the revoke jobs first).
CREATE OR REPLACE FUNCTION pki.request_revoke(serial int, revocation_reason text DEFAULT 'unspecified')
RETURNS TABLE (job bigint, certificate text, instance int, reason text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    inst certinstances;
    cert certificates;
    name text;
    pending int;
    why text := coalesce(nullif(revocation_reason, ''), 'unspecified');
    revoke_job bigint;
    tlsa_job bigint;
    rollover record;
    tlsa_in_rollover boolean := false;
    one certinstances;
    active int;
BEGIN
    PERFORM check_required(serial::text, 'the serial of the instance to revoke (--revoke SERIAL)');
    IF NOT why = ANY (revocation_reasons()) THEN
        PERFORM raise_error('SP011', format('%s is no revocation reason', why),
            format('give one of %s (RFC 5280; certificateHold is not offered: a revocation is final)',
                   array_to_string(revocation_reasons(), ', ')));
    END IF;
    -- every instance of its certificate, in one order (a key compromise revokes those with its key too:
    -- two revocations at once must not lock them the other way round)
    PERFORM 1 FROM certinstances i WHERE i.certificate = (SELECT c.certificate FROM certinstances c WHERE c.id = serial)
      ORDER BY i.id FOR UPDATE;
    SELECT * INTO inst FROM certinstances i WHERE i.id = serial;
    IF NOT FOUND THEN
        PERFORM raise_error('SP002', format('no instance with serial %s', serial),
            'see the Serial column of operate_serverPKI -n -v');
    END IF;
    SELECT * INTO cert FROM certificates c WHERE c.id = inst.certificate;
    SELECT s.name::text INTO name FROM main_subjects s WHERE s.certificate = cert.id;
    IF is_ca_cert(cert.id) THEN
        PERFORM raise_error('SP027', format('instance %s is of the CA %s: a CA certificate is not revoked with --revoke', serial, name),
            'replace the local CA with operate_serverPKI -I and issue its certificates again (-C)');
    END IF;
    SELECT count(*) INTO pending FROM revocations r WHERE r.instance = inst.id AND r.done_at IS NULL;
    IF inst.state IN ('revoked', 'archived') AND pending > 0 THEN
        SELECT j.id INTO revoke_job FROM jobs j
         WHERE j.kind = 'revoke' AND j.subject_key = revoke_subject_key(inst.id) AND j.state IN ('queued', 'running', 'failed');
        IF FOUND THEN
            PERFORM raise_error('SP027', format('instance %s of %s is revoked: its revocation is pending as revoke job %s',
                                                serial, name, revoke_job),
                'the next operate_serverPKI -S (or serverpki agent) runs it; see SELECT * FROM jobs_overview');
        END IF;
        -- its revoke job died: try again, with what was recorded (who, why and when stay)
        revoke_job := enqueue('revoke', revoke_subject_key(inst.id),
                              format('--revoke %s again: its revocation is still pending', inst.id),
                              (SELECT jsonb_build_object('reason', min(r.reason)) FROM revocations r WHERE r.instance = inst.id),
                              cert.id, inst.id);
        UPDATE revocations r SET job = revoke_job WHERE r.instance = inst.id AND revoke_job IS NOT NULL;
        RETURN QUERY SELECT revoke_job, name, inst.id, 'revocation still pending: revoke it (again)'::text;
        RETURN;
    END IF;
    IF NOT revocable(inst) THEN
        PERFORM raise_error('SP027', format('instance %s of %s is %s: only an issued, prepublished, deployed, or replaced '
                                            'but still valid instance is revoked', serial, name, inst.state),
            CASE WHEN inst.state IN ('revoked', 'archived')
                 THEN 'it is revoked already: see SELECT * FROM revocations WHERE instance = ' || serial
                 ELSE 'its certificate is no longer valid: there is nothing to revoke; see operate_serverPKI -n -v' END);
    END IF;
    IF cert.type = 'local' AND inst.cacert IS NULL THEN
        PERFORM raise_error('SP027', format('instance %s of %s has no known issuing CA instance: no CRL can list it', serial, name),
            'replace it (-C, then -D) and stop using it; its issuer is not a CA instance of this database');
    END IF;
    -- the instance first, and after a key compromise the others with its key that are still valid (an
    -- imported local one on no CRL, but out of service: the rollover below replaces it when active)
    FOR one IN SELECT * FROM certinstances i
                WHERE i.certificate = cert.id
                  AND (i.id = inst.id OR why = 'keyCompromise' AND revocable(i) AND same_key(i.id, inst.id))
                ORDER BY i.id = inst.id DESC, i.id LOOP
        revoke_job := record_revocation(one, cert, name, why);
        RETURN QUERY SELECT revoke_job, name, one.id,
                            format('revoked (%s): %s%s', why,
                                   CASE WHEN cert.type <> 'local' THEN 'revoked at the ACME CA'
                                        WHEN one.cacert IS NULL THEN 'on no CRL (its issuing CA instance is not known here): stop trusting it'
                                        ELSE 'the local CA''s CRL lists it' END,
                                   CASE WHEN one.id <> inst.id THEN format('; it has the key of instance %s', inst.id) ELSE '' END);
        IF one.state = 'deployed' THEN
            active := one.id;
        END IF;
    END LOOP;
    -- its key is never used again: not by a successor that reused it, nor by an issue to come (125_key_reuse)
    PERFORM forget_revoked_key(cert.id, inst.id);
    -- the emergency rollover: the active instance of an enabled certificate is replaced in this run
    IF active IS NOT NULL AND NOT cert.disabled THEN
        FOR rollover IN SELECT * FROM revoke_rollover(cert.id, active, why) LOOP
            job := rollover.job; certificate := rollover.certificate; instance := rollover.instance; reason := rollover.reason;
            RETURN NEXT;
            -- key compromise: the successor's publish_tlsa job withdraws the revoked records too
            tlsa_in_rollover := tlsa_in_rollover OR (why = 'keyCompromise' AND rollover.instance IS NOT NULL);
        END LOOP;
    END IF;
    IF tlsa_ttl(cert.id) IS NOT NULL AND NOT tlsa_in_rollover THEN
        -- its records leave DNS now: the wanted set (tlsa_wanted) holds no revoked instance
        tlsa_job := enqueue_tlsa(cert.id, format('instance %s revoked: its TLSA records are withdrawn', inst.id));
        RETURN QUERY SELECT tlsa_job, name, inst.id, 'revoked: its TLSA records are withdrawn'::text;
    END IF;
END
$$;

-- revoke_rollover: the emergency rollover (request_revoke): the revoked instance was the active one
-- of an enabled certificate, which has no active instance now. The scheduler's decision for the
-- certificate alone (plan_rows: rule 2/7, no active instance, so no DANE wait) says how it is
-- replaced: its successor (issued or prepublished) is distributed, or one is issued and then
-- distributed; a local certificate too (the revocation is the operator's request, as -C is); an
-- issue job already pending is told to distribute what it issues. After a key compromise
-- (why = 'keyCompromise') the successor's TLSA records go out in the publish_tlsa job that also
-- withdraws the revoked ones (one UPDATE per zone), and it is deployed at once. Returns the jobs,
-- the successor as instance (NULL: the scheduler waits, its reason says why)
CREATE OR REPLACE FUNCTION pki.revoke_rollover(cert_id int, revoked int, why text)
RETURNS TABLE (job bigint, certificate text, instance int, reason text)
LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    name text := (SELECT s.name::text FROM main_subjects s WHERE s.certificate = cert_id);
    sel dd.selection := selection(only_certs => ARRAY[name]);
    compromised boolean := why = 'keyCompromise';
    with_tlsa boolean := tlsa_ttl(cert_id) IS NOT NULL;
    decision record;
    pending jobs;
    succ int;
    job_id bigint;
    told text;
BEGIN
    told := CASE WHEN compromised
                 THEN format('emergency rollover of %s: revoked instance %%s replaced by successor %%s, deployed to every target '
                             'in this run%s; key compromise: DANE wait skipped', name,
                             CASE WHEN with_tlsa THEN ', its TLSA records published and the revoked ones withdrawn in one UPDATE' ELSE '' END)
                 ELSE format('emergency rollover of %s: revoked instance %%s was the active one; successor %%s is deployed to every '
                             'target in this run (no active instance: nothing to wait for)', name) END;
    SELECT j.* INTO pending FROM jobs j
     WHERE j.subject_key = cert_subject_key(cert_id) AND j.kind IN ('issue_local', 'issue_acme')
       AND j.state IN ('queued', 'running', 'failed');
    IF FOUND THEN
        -- its completion reads the job's row: what it issues is the successor
        UPDATE jobs j SET args = j.args || jsonb_build_object('then', CASE WHEN compromised THEN 'rollover' ELSE 'distribute' END)
         WHERE j.id = pending.id;
        RETURN QUERY SELECT pending.id, name, pending.instance, format(told, revoked, pending.instance);
        RETURN;
    END IF;
    SELECT p.action, p.instance, p.reason, p.then_action INTO decision FROM plan_rows(sel) p
     WHERE p.certificate_id = cert_id AND p.action IN ('issue', 'distribute', 'wait');
    IF decision.action = 'distribute' OR (decision.action = 'wait' AND decision.instance IS NOT NULL
                                          AND EXISTS (SELECT 1 FROM certinstances i WHERE i.id = decision.instance
                                                         AND i.state IN ('issued', 'prepublished'))) THEN
        succ := decision.instance;
        IF compromised AND with_tlsa THEN
            -- its records in, the revoked out: one job (tlsa_wanted holds no revoked instance)
            job_id := enqueue_tlsa(cert_id, format('key compromise of instance %s: TLSA of successor %s only', revoked, succ), succ);
            RETURN QUERY SELECT job_id, name, succ, format(told, revoked, succ);
        END IF;
        RETURN QUERY SELECT e.job, name, succ, format(told, revoked, succ)
          FROM enqueue_distribution(ARRAY[succ], sel, 'deploy', format('emergency rollover: instance %s revoked (%s)', revoked, why)) e;
    ELSIF decision.action = 'issue' OR (decision.action = 'wait' AND decision.instance IS NULL) THEN
        -- 'wait' without a successor: a local certificate is issued on request only, and this is one
        RETURN QUERY SELECT e.job, name, e.instance, format(told, revoked, e.instance)
          FROM enqueue_issue(ARRAY[cert_id], ARRAY[CASE WHEN compromised THEN 'rollover' ELSE 'distribute' END],
                             ARRAY[format('emergency rollover: instance %s revoked (%s); issue its successor', revoked, why)], sel) e;
    ELSE
        RETURN QUERY SELECT NULL::bigint, name, NULL::int,
                            format('no emergency rollover of %s: %s', name, coalesce(decision.reason, 'the scheduler plans nothing'));
    END IF;
END
$$;
