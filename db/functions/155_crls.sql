-- 155_crls: the local CA's certificate revocation lists after they are signed. A revoke job
-- (jobs/080_revoke.sql) signs one when it revokes a local certificate; a sign_crl job
-- (jobs/090_sign_crl.sql) signs the next one before the newest reaches its nextUpdate, because a
-- relying party that checks CRLs rejects every certificate of the CA once the CRL is stale.

-- crl_subject_key: the sign_crl job of a local CA instance
CREATE OR REPLACE FUNCTION pki.crl_subject_key(ca_instance int)
RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT 'crl:inst:' || ca_instance::text $$;

-- store_crl: a CRL that job j reports for local CA instance issuer, checked (pki.check_crl), stored
-- and, when issuer is its CA's current instance, sent to the CA's targets. Every unexpired
-- revocation under issuer is done then: the CRL lists it (check_crl made sure).
-- SP028 when another CRL of the same CA took the number meanwhile: the job signs again (the agent
-- retries it); anything else that does not fit is SP023
CREATE OR REPLACE FUNCTION pki.store_crl(j pki.jobs, issuer int, crl text, crl_number bigint,
                                         this_update timestamptz, next_update timestamptz)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    ca_cert int := (SELECT i.certificate FROM certinstances i WHERE i.id = issuer);
    newest bigint;
    problem text;
BEGIN
    -- CRL numbers rise per CA certificate (RFC 5280 5.2.3; a new CA instance, -I, keeps the name):
    -- the CA's row serialises the CRLs of a CA, so two jobs never store the same number
    PERFORM 1 FROM certificates c WHERE c.id = ca_cert FOR UPDATE;
    SELECT max(c.number) INTO newest FROM crls c JOIN certinstances i ON i.id = c.ca_instance
     WHERE i.certificate = ca_cert;
    IF crl IS NULL OR crl_number IS NULL OR crl_number < 1 OR crl_number > coalesce(newest, 0) + 1
       OR this_update IS NULL OR next_update IS NULL OR next_update <= this_update THEN
        PERFORM raise_error('SP023', format('%s job %s: the CRL is missing, or its number %s is not the next one (%s)',
                                            j.kind, j.id, coalesce(crl_number::text, 'NULL'), coalesce(newest, 0) + 1),
            'sign a new CRL with the next number and report it');
    END IF;
    IF crl_number <= coalesce(newest, 0) THEN
        PERFORM raise_error('SP028', format('%s job %s: CRL number %s of local CA instance %s was taken by another CRL '
                                            'of the same CA meanwhile (the newest is %s)', j.kind, j.id, crl_number, issuer, newest),
            'nothing to do: the agent signs the CRL again with the next number when it retries the job');
    END IF;
    problem := check_crl(issuer, crl, crl_number, this_update, next_update);
    IF problem IS NOT NULL THEN
        PERFORM raise_error('SP023', format('%s job %s: %s', j.kind, j.id, problem),
            'report the CRL the CA instance signed for exactly the certificates revoked under it');
    END IF;
    INSERT INTO crls (ca_instance, number, this_update, next_update, crl)
    VALUES (issuer, crl_number, this_update, next_update, convert_to(crl, 'UTF8'));
    IF issuer = ca_current(ca_cert) THEN
        -- the CA's targets get the new CRL (a pending distribution of the CA reads it when it runs)
        PERFORM enqueue_distribution(ARRAY[issuer], selection(), 'deploy',
                                     format('%s job %s: CRL %s of the local CA', j.kind, j.id, crl_number));
    END IF;
    -- the stored CRL lists them: a revocation whose own job died is done as well
    UPDATE revocations r SET done_at = pki.now()
     WHERE r.ca_instance = issuer AND r.done_at IS NULL AND r.not_after > pki.now();
END
$$;

-- crls_due: the local CA instances whose newest CRL must be followed by a new one: the instance's
-- certificate is still valid and less than a third of crl_days is left to the CRL's nextUpdate
-- (a cron run every hour has days to do it; a late CRL is an alert, views/050_alerts.sql)
CREATE OR REPLACE FUNCTION pki.crls_due()
RETURNS TABLE (ca_cert int, ca_instance int, number bigint, next_update timestamptz)
LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT i.certificate, n.ca_instance, n.number, n.next_update
      FROM (SELECT DISTINCT ON (c.ca_instance) c.ca_instance, c.number, c.next_update
              FROM crls c ORDER BY c.ca_instance, c.number DESC) n
      JOIN certinstances i ON i.id = n.ca_instance
     WHERE i.state NOT IN ('revoked', 'archived') AND i.not_after > pki.now()
       AND n.next_update - pki.now() < setting_int('crl_days') * interval '1 day' / 3
$$;

-- crl_plan_rows: the scheduler's rows for CRLs, in plan_rows' columns: 'sign CRL' for each local CA
-- instance of a selected CA whose newest CRL is due (crls_due), 'wait' while its sign_crl job is pending
CREATE OR REPLACE FUNCTION pki.crl_plan_rows(sel dd.selection)
RETURNS TABLE (certificate_id int, certificate text, instance int, action text, reason text, then_action text)
LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT ca.id, ca.name, d.ca_instance,
           CASE WHEN p.id IS NULL THEN 'sign CRL' ELSE 'wait' END,
           CASE WHEN p.id IS NULL
                THEN format('CRL: CRL %s of CA instance %s reaches its nextUpdate %s; sign the next one', d.number, d.ca_instance, d.next_update)
                ELSE format('CRL: the next CRL of CA instance %s is being signed (%s job %s%s)', d.ca_instance, p.state, p.id,
                            ': ' || p.last_error) END,
           NULL::text
      FROM crls_due() d
      JOIN selected_cas(sel) ca ON ca.id = d.ca_cert
      LEFT JOIN jobs p ON p.kind = 'sign_crl' AND p.instance = d.ca_instance
                      AND p.state IN ('queued', 'running', 'failed')
     ORDER BY ca.name, d.ca_instance
$$;
