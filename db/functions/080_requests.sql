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
    -- the TLSA locks in ascending order, as the scheduler takes them (lock_tlsa): no deadlock with a pass
    PERFORM lock_tlsa(c.id) FROM (SELECT c.id FROM selected_certs(sel) c WHERE c.enabled AND c.tlsa_ttl IS NOT NULL
                                   ORDER BY c.id) c;
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

-- revoke_instance: mark an instance revoked (the next scheduler run archives it)
CREATE OR REPLACE FUNCTION pki.revoke_instance(instance_id int, why text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    PERFORM check_required(why, 'reason of the revocation');
    PERFORM set_context('revoked: ' || why);
    UPDATE certinstances SET state = 'revoked' WHERE id = instance_id;
    IF NOT FOUND THEN
        PERFORM raise_error('SP002', format('no instance %s', instance_id), 'see SELECT * FROM inst');
    END IF;
END
$$;
