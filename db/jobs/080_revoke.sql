-- 080_revoke: revoke jobs (request_revoke, functions/080_requests.sql enqueues one per revoked
-- instance): an ACME certificate is revoked at its CA (RFC 8555 revokeCert with the stored
-- account); a local one goes on a new CRL of the local CA instance that signed it, which its
-- CA targets then get beside the CA certificate (NAME_CA_crl.pem, handlers/distribute.py).

-- job_revocations: the certificates a revoke job revokes (request_revoke names the job in their rows
-- of pki.revocations: they outlive the instance)
CREATE OR REPLACE FUNCTION pki.job_revocations(j pki.jobs)
RETURNS SETOF pki.revocations LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT * FROM revocations r WHERE r.job = j.id ORDER BY r.encryption_algo
$$;

-- complete_revoke: the completion of a revoke job (its agent calls it): the CA revoked the ACME
-- certificates (no arguments), or the agent signed a CRL of the local CA instance ca_instance that
-- lists them: crl (PEM) with its number and validity. The CRL is stored and, when ca_instance is
-- its CA's current instance, distributed to the CA's targets. report: what was revoked where
CREATE OR REPLACE FUNCTION pki.complete_revoke(job_id bigint, lease_token uuid, ca_instance int DEFAULT NULL,
                                               crl text DEFAULT NULL, crl_number bigint DEFAULT NULL,
                                               this_update timestamptz DEFAULT NULL, next_update timestamptz DEFAULT NULL,
                                               report jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := completing(job_id, lease_token, ARRAY['revoke']);
    issuer int;
    newest bigint;
    problem text;
BEGIN
    SELECT min(r.ca_instance) INTO issuer FROM job_revocations(j) r;
    IF issuer IS DISTINCT FROM complete_revoke.ca_instance THEN
        PERFORM raise_error('SP023', format('revoke job %s: its certificates are %s, the result says %s', j.id,
                CASE WHEN issuer IS NULL THEN 'ACME certificates (no CRL)' ELSE 'on the CRL of local CA instance ' || issuer END,
                CASE WHEN complete_revoke.ca_instance IS NULL THEN 'no CRL' ELSE 'a CRL of CA instance ' || complete_revoke.ca_instance END),
            'report a CRL signed by the CA instance that issued them (revocations.ca_instance), or none for ACME certificates');
    END IF;
    IF issuer IS NOT NULL THEN
        -- CRL numbers rise per CA certificate (RFC 5280 5.2.3): a new CA instance (-I) keeps the name
        SELECT max(c.number) INTO newest FROM crls c JOIN certinstances i ON i.id = c.ca_instance
         WHERE i.certificate = (SELECT ca.certificate FROM certinstances ca WHERE ca.id = issuer);
        IF crl IS NULL OR crl_number IS DISTINCT FROM coalesce(newest, 0) + 1
           OR this_update IS NULL OR next_update IS NULL OR next_update <= this_update THEN
            PERFORM raise_error('SP023', format('revoke job %s: the CRL is missing, or its number %s is not the next one (%s)',
                                                j.id, coalesce(crl_number::text, 'NULL'), coalesce(newest, 0) + 1),
                'sign a new CRL with the next number (a CRL was stored meanwhile: retry) and report it');
        END IF;
        problem := check_crl(issuer, crl, crl_number, this_update, next_update);
        IF problem IS NOT NULL THEN
            PERFORM raise_error('SP023', format('revoke job %s: %s', j.id, problem),
                'report the CRL the CA instance signed for exactly the certificates revoked under it');
        END IF;
        INSERT INTO crls (ca_instance, number, this_update, next_update, crl)
        VALUES (issuer, crl_number, this_update, next_update, convert_to(crl, 'UTF8'));
        IF issuer = ca_current((SELECT i.certificate FROM certinstances i WHERE i.id = issuer)) THEN
            -- the CA's targets get the new CRL (a pending distribution of the CA reads it when it runs)
            PERFORM enqueue_distribution(ARRAY[issuer], selection(), 'deploy',
                                         format('revoke job %s: CRL %s of the local CA', j.id, crl_number));
        END IF;
    END IF;
    UPDATE revocations r SET done_at = pki.now() WHERE r.job = j.id AND r.done_at IS NULL;
    IF issuer IS NOT NULL THEN   -- the stored CRL lists them too: a revocation whose own job died is done as well
        UPDATE revocations r SET done_at = pki.now()
         WHERE r.ca_instance = issuer AND r.done_at IS NULL AND r.not_after > pki.now();
    END IF;
    PERFORM job_done(j, report);
END
$$;

SELECT pki.define_job_kind('revoke', 'revoke an instance''s certificates at the ACME CA, or on the local CA''s CRL', 8, 25,
                           'complete_revoke');
