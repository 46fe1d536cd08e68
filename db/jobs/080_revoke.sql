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
BEGIN
    SELECT min(r.ca_instance) INTO issuer FROM job_revocations(j) r;
    IF issuer IS DISTINCT FROM complete_revoke.ca_instance THEN
        PERFORM raise_error('SP023', format('revoke job %s: its certificates are %s, the result says %s', j.id,
                CASE WHEN issuer IS NULL THEN 'ACME certificates (no CRL)' ELSE 'on the CRL of local CA instance ' || issuer END,
                CASE WHEN complete_revoke.ca_instance IS NULL THEN 'no CRL' ELSE 'a CRL of CA instance ' || complete_revoke.ca_instance END),
            'report a CRL signed by the CA instance that issued them (revocations.ca_instance), or none for ACME certificates');
    END IF;
    IF issuer IS NOT NULL THEN   -- checked, stored and sent to the CA's targets (functions/155_crls.sql)
        PERFORM store_crl(j, issuer, crl, crl_number, this_update, next_update);
    END IF;
    UPDATE revocations r SET done_at = pki.now() WHERE r.job = j.id AND r.done_at IS NULL;
    PERFORM job_done(j, report);
END
$$;

SELECT pki.define_job_kind('revoke', 'revoke an instance''s certificates at the ACME CA, or on the local CA''s CRL', 8, 25,
                           'complete_revoke');
