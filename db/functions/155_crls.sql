-- 155_crls: the local CA's certificate revocation lists after they are signed. A revoke job
-- (jobs/080_revoke.sql) signs one when it revokes a local certificate; a sign_crl job
-- (jobs/090_sign_crl.sql) signs the next one before the newest reaches its nextUpdate, because a
-- relying party that checks CRLs rejects every certificate of the CA once the CRL is stale.

-- crl_subject_key: the sign_crl job of a local CA instance
CREATE OR REPLACE FUNCTION pki.crl_subject_key(ca_instance int)
RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT 'crl:inst:' || ca_instance::text $$;

-- store_crl: a CRL that job j reports for local CA instance issuer, checked (pki.check_crl: exactly
-- the revocations up to listed_through, the last one the job read), stored, and sent to the CA's
-- targets (they get the newest CRL of each CA instance that keeps one: distribution's newest_crls).
-- Those revocations are done then. SP028, and nothing stored, when the CRL's number was taken by
-- another CRL of the same CA meanwhile, or a revocation under issuer arrived after the job read
-- them: the agent retries the job, which signs again. Anything else that does not fit is SP023.
CREATE OR REPLACE FUNCTION pki.store_crl(j pki.jobs, issuer int, crl text, crl_number bigint,
                                         this_update timestamptz, next_update timestamptz, listed_through bigint)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    ca_cert int := (SELECT i.certificate FROM certinstances i WHERE i.id = issuer);
    newest bigint;
    later int;
    problem text;
BEGIN
    -- CRL numbers rise per CA certificate (RFC 5280 5.2.3; a new CA instance, -I, keeps the name):
    -- one CRL of a CA is stored at a time, so two jobs never store the same number
    PERFORM pg_advisory_xact_lock(hashtext('pki.store_crl'), ca_cert);
    SELECT max(c.number) INTO newest FROM crls c JOIN certinstances i ON i.id = c.ca_instance
     WHERE i.certificate = ca_cert;
    IF crl IS NULL OR crl_number IS NULL OR crl_number < 1 OR crl_number > coalesce(newest, 0) + 1 OR listed_through IS NULL THEN
        PERFORM raise_error('SP023', format('%s job %s: the CRL, its number or the last revocation it lists is missing, '
                                            'or its number %s is not the next one (%s)',
                                            j.kind, j.id, coalesce(crl_number::text, 'NULL'), coalesce(newest, 0) + 1),
            'sign a new CRL with the next number and report it with listed_through');
    END IF;
    IF this_update IS NULL OR next_update IS NULL OR next_update <= this_update THEN
        PERFORM raise_error('SP023', format('%s job %s: the CRL''s nextUpdate %s is not after its thisUpdate %s',
                                            j.kind, j.id, coalesce(next_update::text, 'NULL'), coalesce(this_update::text, 'NULL')),
            'the setting crl_days must be at least 1 (UPDATE settings SET value = ''30'' WHERE name = ''crl_days'')');
    END IF;
    SELECT min(r.id) INTO later FROM revocations r
     WHERE r.ca_instance = issuer AND r.not_after > pki.now() AND r.id > listed_through;
    IF crl_number <= coalesce(newest, 0) OR later IS NOT NULL THEN
        PERFORM raise_error('SP028', format('%s job %s: %s', j.kind, j.id,
                CASE WHEN later IS NOT NULL
                     THEN format('revocation %s under local CA instance %s arrived while the CRL was signed', later, issuer)
                     ELSE format('CRL number %s of local CA instance %s was taken by another CRL of the same CA meanwhile '
                                 '(the newest is %s)', crl_number, issuer, newest) END),
            'nothing to do: the agent signs the CRL again, with every revocation and the next number, when it retries the job');
    END IF;
    problem := check_crl(issuer, crl, crl_number, this_update, next_update, listed_through);
    IF problem IS NOT NULL THEN
        PERFORM raise_error('SP023', format('%s job %s: %s', j.kind, j.id, problem),
            'report the CRL the CA instance signed for exactly the certificates revoked under it');
    END IF;
    INSERT INTO crls (ca_instance, number, this_update, next_update, crl)
    VALUES (issuer, crl_number, this_update, next_update, convert_to(crl, 'UTF8'));
    -- the CA's targets get it (a pending distribution of the CA reads it when it runs)
    PERFORM enqueue_distribution(ARRAY[ca_current(ca_cert)], selection(), 'deploy',
                                 format('%s job %s: CRL %s of the local CA', j.kind, j.id, crl_number))
      WHERE ca_current(ca_cert) IS NOT NULL;
    UPDATE revocations r SET done_at = pki.now()
     WHERE r.ca_instance = issuer AND r.done_at IS NULL AND r.not_after > pki.now() AND r.id <= listed_through;
END
$$;

-- crl_keepers: the local CA instances that keep a CRL: of each local CA that ever signed a CRL (it
-- revoked something; relying parties check its CRLs since), the current instance and every valid
-- older instance under which an unexpired certificate is revoked. Their targets get the newest CRL
-- of each (agent query newest_crls), the scheduler keeps them fresh (crls_due)
CREATE OR REPLACE FUNCTION pki.crl_keepers()
RETURNS TABLE (ca_cert int, ca_instance int)
LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT i.certificate, i.id
      FROM certinstances i
     WHERE is_ca_cert(i.certificate) AND i.state NOT IN ('revoked', 'archived', 'reserved') AND i.not_after > pki.now()
       AND EXISTS (SELECT 1 FROM crls c JOIN certinstances o ON o.id = c.ca_instance WHERE o.certificate = i.certificate)
       AND (i.id = ca_current(i.certificate)
            OR EXISTS (SELECT 1 FROM revocations r WHERE r.ca_instance = i.id AND r.not_after > pki.now()))
$$;

-- crls_due: the CRL keepers whose CRL must be signed (again): no CRL yet (the current instance after
-- -I) or less than a third of its newest CRL's lifetime left; late_at: when it is late (a sixth
-- left: an alert, views/050_alerts.sql). SECURITY DEFINER: the alerts view reads it for
-- pki_report, which reads no CRLs or revocations itself
CREATE OR REPLACE FUNCTION pki.crls_due()
RETURNS TABLE (ca_cert int, ca_instance int, number bigint, next_update timestamptz, late_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
    SELECT k.ca_cert, k.ca_instance, n.number, n.next_update, n.next_update - (n.next_update - n.this_update) / 6
      FROM crl_keepers() k
      LEFT JOIN LATERAL (SELECT c.number, c.this_update, c.next_update FROM crls c
                          WHERE c.ca_instance = k.ca_instance ORDER BY c.number DESC LIMIT 1) n ON true
     WHERE n.number IS NULL OR n.next_update - pki.now() < (n.next_update - n.this_update) / 3
$$;

-- crl_plan_rows: the scheduler's rows for CRLs, in plan_rows' columns: 'sign CRL' for each CA
-- instance of a selected, enabled local CA whose CRL is due (crls_due), 'wait' while its sign_crl
-- job is pending. Nothing to read while no CA has signed a CRL (most fleets): the join read the CAs
-- before it knew no CRL was due (a scan of every subject, 8 ms at 100,000 certificates)
CREATE OR REPLACE FUNCTION pki.crl_plan_rows(sel dd.selection)
RETURNS TABLE (certificate_id int, certificate text, instance int, action text, reason text, then_action text)
LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
SET jit = off
AS $$
    SELECT ca.id, ca.name, d.ca_instance, r.d[1], r.d[2], NULL::text
      FROM crls_due() d
      JOIN selected_cas(sel) ca ON ca.id = d.ca_cert AND ca.enabled
      LEFT JOIN jobs p ON p.kind = 'sign_crl' AND p.instance = d.ca_instance
                      AND p.state IN ('queued', 'running', 'failed')
      -- one decision, {action, reason}, as plan_rows decides
      CROSS JOIN LATERAL (SELECT CASE
           WHEN p.id IS NOT NULL
               THEN ARRAY['wait', format('CRL: the next CRL of CA instance %s is being signed (%s job %s%s)', d.ca_instance,
                                         p.state, p.id, ': ' || p.last_error)]
           WHEN d.number IS NULL
               THEN ARRAY['sign CRL', format('CRL: CA instance %s (the current one) has no CRL yet; sign one', d.ca_instance)]
           ELSE ARRAY['sign CRL', format('CRL: CRL %s of CA instance %s%s reaches its nextUpdate %s; sign the next one',
                                         d.number, d.ca_instance,
                                         CASE WHEN d.ca_instance <> ca.instance
                                              THEN ' (an older instance, which signed revoked certificates)' ELSE '' END,
                                         d.next_update)]
      END) r(d)
     WHERE EXISTS (SELECT 1 FROM crls)   -- a CRL keeper's CA signed one (crl_keepers); evaluated once
     ORDER BY ca.name, d.ca_instance
$$;
