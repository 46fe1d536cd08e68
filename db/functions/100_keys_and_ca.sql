-- 100_keys_and_ca: the local CA (-I) and the encryption of the stored keys (-X, -Y).
-- The requests enqueue; complete_issue (the CA, db/jobs/010_issue.sql) and
-- complete_reencrypt_keys (the keys, db/jobs/040_reencrypt_keys.sql) apply the outcome. The local
-- CA's own key is never touched by -X/-Y: it is always encrypted, with the local CA passphrase, not
-- the database's.

-- current_revision: the row of pki.revision that holds the installation's state (the newest). PL/pgSQL:
-- planned once a session (a SQL function with SET is planned at every call: complete_issue asks once a job)
CREATE OR REPLACE FUNCTION pki.current_revision()
RETURNS int LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    RETURN (SELECT max(r.id) FROM revision r);
END
$$;

-- keys_encrypted: whether the stored keys are encrypted (-X) or in clear (-Y)
CREATE OR REPLACE FUNCTION pki.keys_encrypted()
RETURNS boolean LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$ SELECT r.keysencrypted FROM revision r WHERE r.id = current_revision() $$;

-- keys_under_db_passphrase: the stored private keys that -X/-Y (de|en)crypt with the
-- db_encryption_key passphrase — all but those of CA certificates. Caller's rights:
-- pki_admin may not read keys, so it cannot read them here either.
CREATE OR REPLACE FUNCTION pki.keys_under_db_passphrase()
RETURNS TABLE (id int, key text)
LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT k.id, convert_from(k.key, 'UTF8')
      FROM certkeydata k
      JOIN certinstances i ON i.id = k.certinstance
      JOIN main_subjects s ON s.certificate = i.certificate
     WHERE k.key IS NOT NULL AND s.type <> 'CA'
     ORDER BY k.id
$$;

-- enqueue_local_ca: a reserved instance and an issue_local_ca job for a local CA certificate;
-- returns the new job, or the one already active. SECURITY DEFINER: instances and jobs
-- are written by the database's functions only.
CREATE OR REPLACE FUNCTION pki.enqueue_local_ca(ca_cert int)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    job_id bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM certificates c JOIN main_subjects s ON s.certificate = c.id
                    WHERE c.id = ca_cert AND c.type = 'local' AND s.type = 'CA') THEN
        PERFORM raise_error('SP002', format('no local CA certificate with id %s', ca_cert),
            'SELECT request_local_ca(name, algo) creates the local CA''s certificate and requests its instance');
    END IF;
    SELECT e.job INTO job_id
      FROM enqueue_issue(ARRAY[ca_cert], ARRAY[NULL::text], ARRAY['requested (-I)'], selection()) e;
    IF job_id IS NULL THEN
        job_id := active_job('issue_local_ca', cert_subject_key(ca_cert));
        RAISE NOTICE 'a new local CA is requested already: job %', job_id;
    END IF;
    RETURN job_id;
END
$$;

-- request_local_ca: -I, a new instance of the local CA named the_name, with an 'rsa' or
-- 'ec' key. Its certificate (subject type CA, cert type local) is created on first use;
-- a changed algorithm applies from this instance on. Caller's rights, because creating
-- the certificate is configuration (pki_admin); enqueue_local_ca crosses into the queue.
CREATE OR REPLACE FUNCTION pki.request_local_ca(the_name text, the_algo text DEFAULT 'rsa')
RETURNS bigint LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    algo dd.cert_encryption_algo;
    subj subjects;
    holder certificates;
    ca_cert int;
BEGIN
    PERFORM check_required(the_name, 'local CA name');
    algo := enum_label(coalesce(the_algo, 'rsa'), 'dd.cert_encryption_algo', 'local CA key algorithm');
    IF algo = 'rsa_plus_ec' THEN
        PERFORM raise_error('SP011', format('local CA "%s": a CA has one key, so its algorithm is ''rsa'' or ''ec'', not ''rsa_plus_ec''', the_name),
            'give ''rsa'' or ''ec'' (configuration: local_ca.key_type)');
    END IF;
    SELECT * INTO subj FROM subjects s WHERE s.name = the_name::citext;
    IF FOUND THEN
        SELECT * INTO holder FROM certificates c WHERE c.id = subj.certificate;
        IF subj.isaltname OR subj.type <> 'CA' OR holder.id IS NULL OR holder.type <> 'local' THEN
            PERFORM raise_error('SP003', format('"%s" is in use as %s, not as the name of a local CA', the_name,
                    CASE WHEN subj.isaltname THEN 'an alt name' ELSE format('a %s subject of a %s certificate', subj.type,
                         coalesce(holder.type::text, 'missing')) END),
                'name the local CA otherwise (configuration: local_ca.name), e.g. "Local CA"');
        END IF;
        ca_cert := holder.id;
        IF holder.encryption_algo <> algo THEN
            UPDATE certificates SET encryption_algo = algo WHERE id = ca_cert;
        END IF;
    ELSE
        INSERT INTO certificates (type, encryption_algo) VALUES ('local', algo) RETURNING id INTO ca_cert;
        INSERT INTO subjects (type, name, isaltname, certificate) VALUES ('CA', the_name, false, ca_cert);
    END IF;
    RETURN enqueue_local_ca(ca_cert);
END
$$;

-- request_key_encryption: -X (encrypt true) or -Y (false), an encrypt_keys or decrypt_keys
-- job for the keys of keys_under_db_passphrase(); refused when the keys are in that state
-- already, or the opposite job is pending. Returns the job (the active one if there is one).
CREATE OR REPLACE FUNCTION pki.request_key_encryption(encrypt boolean)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    wanted_kind text := CASE WHEN encrypt THEN 'encrypt_keys' ELSE 'decrypt_keys' END;
    option text := CASE WHEN encrypt THEN '-X' ELSE '-Y' END;
    pending jobs;
    job_id bigint;
BEGIN
    PERFORM check_required(encrypt::text, 'encrypt (true: encrypt the keys, -X; false: decrypt them, -Y)');
    SELECT * INTO pending FROM jobs j
     WHERE j.id = active_job(CASE WHEN encrypt THEN 'decrypt_keys' ELSE 'encrypt_keys' END, keys_subject_key());
    IF FOUND THEN
        PERFORM raise_error('SP012', format('%s: a %s job is pending (job %s)', option, pending.kind, pending.id),
            'let the agent finish it first (SELECT * FROM jobs_overview), then ask again');
    END IF;
    job_id := active_job(wanted_kind, keys_subject_key());
    IF job_id IS NOT NULL THEN
        RAISE NOTICE '%: job % is pending already', option, job_id;
        RETURN job_id;
    END IF;
    IF keys_encrypted() = encrypt THEN
        PERFORM raise_error('SP012', format('%s: the stored keys are %s already', option,
                CASE WHEN encrypt THEN 'encrypted' ELSE 'in clear' END),
            CASE WHEN encrypt THEN 'nothing to do; -Y decrypts them' ELSE 'nothing to do; -X encrypts them' END);
    END IF;
    RETURN enqueue(wanted_kind, keys_subject_key(), format('requested (%s)', option));
END
$$;

-- acme_keys_under_db_passphrase: the ACME account keys, which -X/-Y treat like the other stored keys
CREATE OR REPLACE FUNCTION pki.acme_keys_under_db_passphrase()
RETURNS TABLE (id int, key text)
LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT a.id, a.key FROM acme_accounts a ORDER BY a.id
$$;

-- job_keys_under_db_passphrase: the keys of ACME orders in flight (pki.job_keys), which -X/-Y
-- re-encrypt too; the agent's alone (9920)
CREATE OR REPLACE FUNCTION pki.job_keys_under_db_passphrase()
RETURNS TABLE (id int, key text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
    SELECT k.id, k.key FROM job_keys k ORDER BY k.id
$$;

-- the operator's requests; operate_serverPKI may run under either role. (privileges/010_grants.sql,
-- applied later, grants every function to both; table privileges still keep the agent
-- out of the configuration and pki_admin away from the keys.)
GRANT EXECUTE ON FUNCTION pki.request_local_ca(text, text), pki.enqueue_local_ca(int),
    pki.request_key_encryption(boolean) TO pki_admin, pki_agent;
-- the agent reads the keys it re-encrypts
GRANT EXECUTE ON FUNCTION pki.keys_under_db_passphrase() TO pki_agent;
