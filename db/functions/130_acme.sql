-- 130_acme: ACME accounts (-Z) and the issuer of an ACME certificate.
-- complete_register_acme (db/jobs/050_register_acme.sql) stores an account; an
-- ACME order's chain and authorized_until go through apply_acme_chain (called by
-- complete_issue).

-- request_acme_account: -Z, a register_acme job for the directory (the agent's [acme]
-- directory_url when NULL); returns it, or the one already pending
CREATE OR REPLACE FUNCTION pki.request_acme_account(directory_url text DEFAULT NULL, contact text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    key text := acme_account_subject_key(directory_url);
    job_id bigint;
BEGIN
    IF directory_url IS NOT NULL AND directory_url !~ '^https://[^/ ]+' THEN
        PERFORM raise_error('SP011', format('ACME directory URL "%s" is not an https:// URL', directory_url),
            'give the CA''s directory, e.g. https://acme-v02.api.letsencrypt.org/directory, or NULL for [acme] directory_url');
    END IF;
    IF contact IS NOT NULL THEN
        PERFORM check_printable(contact, 'ACME contact', 254);
    END IF;
    job_id := enqueue('register_acme', key, 'requested (-Z)',
                      jsonb_strip_nulls(jsonb_build_object('directory_url', directory_url, 'contact', contact)));
    IF job_id IS NULL THEN
        job_id := active_job('register_acme', key);
        RAISE NOTICE 'an ACME registration is pending already: job %', job_id;
    END IF;
    RETURN job_id;
END
$$;

-- apply_acme_chain: an ACME order's outcome (complete_issue): authorized_until (when the order's
-- authorizations expire, clamped by the checks) and chain (the issuer first, PEM). The issuer
-- becomes an issued instance of an LE certificate of subject type CA named after the issuer's CN
-- (created on first use; an instance with the same certificate hash is reused). issuer_facts: the
-- chain's first certificate as check_issued_result parsed it. Returns that instance, the cacert
CREATE OR REPLACE FUNCTION pki.apply_acme_chain(j pki.jobs, chain text[], cacert int, authorized_until timestamptz,
                                                issuer_facts jsonb)
RETURNS int LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    issuer_pem text := chain[1];
    issuer record;
    subj subjects;
    ca_cert int;
    ca_inst int;
BEGIN
    IF authorized_until IS NOT NULL THEN
        UPDATE certificates c SET authorized_until = apply_acme_chain.authorized_until WHERE c.id = j.certificate;
    END IF;
    IF chain IS NULL THEN
        RETURN cacert;
    END IF;
    IF issuer_pem IS NULL THEN
        PERFORM raise_error('SP023', format('job %s: "chain" must be a list of PEM certificates, the issuer first', j.id),
            'report the certificates that follow the leaf in the CA''s chain');
    END IF;
    IF cacert IS NOT NULL THEN
        PERFORM raise_error('SP023', format('job %s: a result with "chain" names its issuer by the chain, not by "cacert"', j.id),
            'leave cacert out; the database stores the issuer');
    END IF;
    -- parsed, and verified link by link from the leaf, by check_issued_result (110_result_checks)
    SELECT * INTO issuer FROM jsonb_to_record(issuer_facts) AS f(subject_cn text, algo text, hash text, is_ca boolean);
    IF NOT coalesce(issuer.is_ca, false) OR issuer.subject_cn IS NULL OR issuer.algo IS NULL THEN
        PERFORM raise_error('SP023', format('job %s: the first certificate of the chain ("%s") is not a CA certificate with a common name',
                j.id, issuer.subject_cn),
            'report the issuer of the leaf first');
    END IF;
    -- agents completing in parallel: one at a time stores an issuer (the others then find it)
    PERFORM pg_advisory_xact_lock(hashtext('pki.apply_acme_chain'));
    -- the issuer stored before: the same certificate (hash) under a CA subject
    SELECT i.id INTO ca_inst
      FROM certkeydata k
      JOIN certinstances i ON i.id = k.certinstance
      JOIN main_subjects s ON s.certificate = i.certificate AND s.type = 'CA'
     WHERE k.hash = issuer.hash
     ORDER BY i.id LIMIT 1;
    IF ca_inst IS NULL THEN
        SELECT * INTO subj FROM subjects s WHERE s.name = issuer.subject_cn::citext;
        IF FOUND THEN
            IF subj.isaltname OR subj.type <> 'CA'
               OR (SELECT c.type FROM certificates c WHERE c.id = subj.certificate) IS DISTINCT FROM 'LE' THEN
                PERFORM raise_error('SP023', format('job %s: the issuer "%s" has the name of a subject that is not an ACME CA', j.id, issuer.subject_cn),
                    'rename the other subject; the ACME CA''s certificate is named after the issuer''s common name');
            END IF;
            ca_cert := subj.certificate;
        ELSE
            INSERT INTO certificates (type, encryption_algo, remarks)
            VALUES ('LE', issuer.algo::dd.cert_encryption_algo, format('issuer of ACME certificates (job %s)', j.id))
            RETURNING id INTO ca_cert;
            INSERT INTO subjects (type, name, isaltname, certificate) VALUES ('CA', issuer.subject_cn, false, ca_cert);
        END IF;
        PERFORM set_context(format('job %s: issuer "%s" of an ACME certificate stored', j.id, issuer.subject_cn), j.id);
        INSERT INTO certinstances (certificate, state) VALUES (ca_cert, 'reserved') RETURNING id INTO ca_inst;
        INSERT INTO certkeydata (certinstance, encryption_algo, cert, key)
        VALUES (ca_inst, issuer.algo::dd.cert_encryption_algo, convert_to(issuer_pem, 'UTF8'), NULL);
        UPDATE certinstances SET state = 'issued' WHERE id = ca_inst;
        PERFORM set_context(format('%s job %s done', j.kind, j.id), j.id);
    END IF;
    RETURN ca_inst;
END
$$;
