-- 0540_requests: the other actions of the seed's command line, taking the same
-- selection as the scheduler. Each enqueues and returns what it enqueued.

-- request_create: -C, issue the selected certificates; with -r N only local ones
-- whose deployed instance expires within N days
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
        SELECT c.id, c.name,
               CASE WHEN remaining_days IS NULL THEN 'requested (-C)'
                    ELSE format('requested (-C -r %s): deployed instance expires %s', remaining_days, act.not_after) END AS why
          FROM selected_certs(sel) c
          LEFT JOIN certinstances act ON act.certificate = c.id AND act.state = 'deployed'
         WHERE c.enabled
           AND (remaining_days IS NULL
                OR (c.type = 'local' AND act.id IS NOT NULL AND act.not_after <= pki.now() + remaining_days * interval '1 day'))
    )
    SELECT e.job, w.name, e.instance, w.why
      FROM enqueue_issue(ARRAY(SELECT id FROM wanted), ARRAY(SELECT NULL::text FROM wanted), ARRAY(SELECT why FROM wanted), sel) e
      JOIN wanted w ON w.id = e.certificate;
END
$$;

-- request_distribute: -D, distribute the issued (currently valid) instances; with -r N only
-- those issued within N days whose certificate's deployed instance expires within N days.
-- A successor of a certificate with TLSA services is held back until its TLSA was
-- published for 2 x TTL (DANE-safe order); the reason says so.
CREATE OR REPLACE FUNCTION pki.request_distribute(sel dd.selection DEFAULT NULL, remaining_days int DEFAULT NULL)
RETURNS TABLE (job bigint, certificate text, instance int, reason text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    sel := checked_selection(sel);
    PERFORM check_range(remaining_days, 0, 3650, 'remaining days (-r)');
    CREATE TEMP TABLE IF NOT EXISTS request_rows (cert int, name text, inst int, ready boolean, why text) ON COMMIT DROP;
    TRUNCATE request_rows;
    INSERT INTO request_rows
    SELECT c.id, c.name, s.id,
           act.id IS NULL OR c.tlsa_ttl IS NULL
               OR (s.state = 'prepublished' AND pki.now() >= s.tlsa_published + 2 * c.tlsa_ttl),
           CASE WHEN act.id IS NULL OR c.tlsa_ttl IS NULL
                     OR (s.state = 'prepublished' AND pki.now() >= s.tlsa_published + 2 * c.tlsa_ttl)
                THEN format('requested (-D%s)', ' -r ' || remaining_days)
                ELSE 'held back: DANE-safe order needs the successor''s TLSA published for 2 x TTL first (operate_serverPKI -S does that)' END
      FROM selected_certs(sel) c
      JOIN LATERAL (SELECT * FROM certinstances i WHERE i.certificate = c.id AND i.state IN ('issued', 'prepublished')
                       AND i.not_before <= pki.now() AND pki.now() < i.not_after ORDER BY i.id DESC LIMIT 1) s ON true
      LEFT JOIN certinstances act ON act.certificate = c.id AND act.state = 'deployed'
     WHERE c.enabled
       AND (remaining_days IS NULL
            OR (s.not_before >= pki.now() - remaining_days * interval '1 day'
                AND act.not_after <= pki.now() + remaining_days * interval '1 day'));
    RETURN QUERY
    SELECT e.job, r.name, e.instance, r.why
      FROM enqueue_distribution(ARRAY(SELECT inst FROM request_rows WHERE ready), sel, 'deploy', 'requested (-D)') e
      JOIN request_rows r ON r.inst = e.instance
    UNION ALL
    SELECT NULL::bigint, r.name, r.inst, r.why FROM request_rows r WHERE NOT r.ready;
    IF remaining_days IS NULL THEN   -- CA certificates' targets (0585); -r N is about local certificates
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
    RETURN QUERY SELECT * FROM request_ca_targets(sel, 'consolidate', 'requested (-K)');   -- CA certificates' targets (0585)
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
