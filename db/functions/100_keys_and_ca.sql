-- 100_keys_and_ca: the local CA (-I) and the encryption of the stored keys (-X, -Y).
-- The requests enqueue; complete_job applies the outcome with apply_issued (the CA)
-- and apply_keys_reencrypted (the keys). The local CA's own key is never touched by
-- -X/-Y: it is always encrypted, with the local CA passphrase, not the database's.

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
      JOIN subjects s ON s.certificate = i.certificate AND NOT s.isaltname
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
    IF NOT EXISTS (SELECT 1 FROM certificates c JOIN subjects s ON s.certificate = c.id AND NOT s.isaltname
                    WHERE c.id = ca_cert AND c.type = 'local' AND s.type = 'CA') THEN
        PERFORM raise_error('SP002', format('no local CA certificate with id %s', ca_cert),
            'SELECT request_local_ca(name, algo) creates the local CA''s certificate and requests its instance');
    END IF;
    SELECT e.job INTO job_id
      FROM enqueue_issue(ARRAY[ca_cert], ARRAY[NULL::text], ARRAY['requested (-I)'], selection()) e;
    IF job_id IS NULL THEN
        SELECT j.id INTO job_id FROM jobs j
         WHERE j.subject_key = 'cert:' || ca_cert AND j.kind = 'issue_local_ca'
           AND j.state IN ('queued', 'running', 'failed');
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
     WHERE j.kind IN ('encrypt_keys', 'decrypt_keys') AND j.kind <> wanted_kind AND j.subject_key = 'keys'
       AND j.state IN ('queued', 'running', 'failed');
    IF FOUND THEN
        PERFORM raise_error('SP012', format('%s: a %s job is pending (job %s)', option, pending.kind, pending.id),
            'let the agent finish it first (SELECT * FROM jobs_overview), then ask again');
    END IF;
    SELECT j.id INTO job_id FROM jobs j
     WHERE j.kind = wanted_kind AND j.subject_key = 'keys' AND j.state IN ('queued', 'running', 'failed');
    IF FOUND THEN
        RAISE NOTICE '%: job % is pending already', option, job_id;
        RETURN job_id;
    END IF;
    IF (SELECT r.keysencrypted FROM revision r ORDER BY r.id DESC LIMIT 1) = encrypt THEN
        PERFORM raise_error('SP012', format('%s: the stored keys are %s already', option,
                CASE WHEN encrypt THEN 'encrypted' ELSE 'in clear' END),
            CASE WHEN encrypt THEN 'nothing to do; -Y decrypts them' ELSE 'nothing to do; -X encrypts them' END);
    END IF;
    RETURN enqueue(wanted_kind, 'keys', format('requested (%s)', option));
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

-- check_reencrypted: a list of {"id", "key"} of a key job names each expected id once, each key
-- in the form the job promised; else SP023 naming the first bad entry or the ids that do not fit
CREATE OR REPLACE FUNCTION pki.check_reencrypted(j pki.jobs, items jsonb, expected int[], what text, encrypt boolean)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    bad_entry bigint;
    missing text;
    extra text;
BEGIN
    IF jsonb_typeof(items) IS DISTINCT FROM 'array' THEN
        PERFORM raise_error('SP023', format('job %s: result lacks "%s" (a list of {id, key})', j.id, what),
            format('report every stored key as {"id": id, "key": PEM text} in "%s"', what));
    END IF;
    SELECT min(n) INTO bad_entry FROM jsonb_array_elements(items) WITH ORDINALITY AS e(k, n)
     WHERE jsonb_typeof(k) IS DISTINCT FROM 'object'
        OR jsonb_typeof(k -> 'id') IS DISTINCT FROM 'number' OR (k ->> 'id') !~ '^[0-9]{1,9}$'
        OR jsonb_typeof(k -> 'key') IS DISTINCT FROM 'string'
        OR (position('-----BEGIN ENCRYPTED PRIVATE KEY-----' IN k ->> 'key') > 0) IS DISTINCT FROM encrypt;
    IF bad_entry IS NOT NULL THEN
        PERFORM raise_error('SP023', format('job %s: entry %s of "%s" must be {"id": id, "key": %s PKCS#8 PEM}',
                j.id, bad_entry, what, CASE WHEN encrypt THEN 'encrypted' ELSE 'clear' END),
            CASE WHEN encrypt THEN 'report each key as "-----BEGIN ENCRYPTED PRIVATE KEY-----..."'
                 ELSE 'report each key as "-----BEGIN PRIVATE KEY-----..."' END);
    END IF;
    SELECT string_agg(w::text, ', ' ORDER BY w) INTO missing FROM unnest(expected) w
     WHERE w NOT IN (SELECT (k ->> 'id')::int FROM jsonb_array_elements(items) k);
    SELECT string_agg(k ->> 'id', ', ' ORDER BY (k ->> 'id')::int) INTO extra FROM jsonb_array_elements(items) k
     WHERE NOT ((k ->> 'id')::int = ANY (expected))
        OR (SELECT count(*) FROM jsonb_array_elements(items) o WHERE o ->> 'id' = k ->> 'id') > 1;
    IF missing IS NOT NULL OR extra IS NOT NULL THEN
        PERFORM raise_error('SP023', format('job %s: the result must list every stored key once in "%s" (%s)', j.id, what,
                concat_ws('; ', 'missing: ' || left(missing, 200), 'unknown or repeated: ' || left(extra, 200))),
            format('keys were stored or removed while the job ran; ask again with %s', CASE WHEN encrypt THEN '-X' ELSE '-Y' END));
    END IF;
END
$$;

-- apply_keys_reencrypted: the outcome of encrypt_keys/decrypt_keys, {"keys": [{"id", "key"}...]
-- (certkeydata), "accounts": [{"id", "key"}...] (acme_accounts), "encrypted": bool}; every key
-- must be listed, each in the form the job promised, else SP023 and nothing changes.
-- Keys, account keys and the flag change together.
CREATE OR REPLACE FUNCTION pki.apply_keys_reencrypted(j pki.jobs, result jsonb)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    encrypt boolean := j.kind = 'encrypt_keys';
    in_flight jsonb;
    in_flight_ids int[] := '{}';
BEGIN
    -- one re-encryption at a time; a request waits here until this one is applied
    PERFORM 1 FROM revision r WHERE r.id = (SELECT max(id) FROM revision) FOR UPDATE;
    IF result ? 'encrypted' AND (result -> 'encrypted') IS DISTINCT FROM to_jsonb(encrypt) THEN
        PERFORM raise_error('SP023', format('job %s (%s): result says "encrypted": %s', j.id, j.kind, result -> 'encrypted'),
            format('a %s job reports "encrypted": %s', j.kind, encrypt));
    END IF;
    PERFORM check_reencrypted(j, result -> 'keys', ARRAY(SELECT w.id FROM keys_under_db_passphrase() w), 'keys', encrypt);
    PERFORM check_reencrypted(j, coalesce(result -> 'accounts', '[]'),
                              ARRAY(SELECT a.id FROM acme_keys_under_db_passphrase() a), 'accounts', encrypt);
    UPDATE acme_accounts a SET key = e.k ->> 'key'
      FROM jsonb_array_elements(coalesce(result -> 'accounts', '[]')) AS e(k)
     WHERE a.id = (e.k ->> 'id')::int;
    -- the keys of ACME orders in flight: an order's job may end (and its key go) while this job
    -- runs, so only those still there must be listed, each in the promised form
    in_flight := coalesce(result -> 'job_keys', '[]');
    IF jsonb_typeof(in_flight) = 'array' THEN
        in_flight := coalesce((SELECT jsonb_agg(e.k) FROM jsonb_array_elements(in_flight) e(k)
                                -- a malformed entry stays, for check_reencrypted to name it
                                WHERE (e.k ->> 'id') IS NULL OR (e.k ->> 'id') !~ '^[0-9]{1,9}$'
                                   OR EXISTS (SELECT 1 FROM job_keys jk WHERE jk.id = CASE
                                              WHEN (e.k ->> 'id') ~ '^[0-9]{1,9}$' THEN (e.k ->> 'id')::int END)),
                              '[]');
        in_flight_ids := ARRAY(SELECT jk.id FROM job_keys jk JOIN jsonb_array_elements(in_flight) e(k)
                                   ON jk.id = CASE WHEN (e.k ->> 'id') ~ '^[0-9]{1,9}$' THEN (e.k ->> 'id')::int END);
    END IF;
    PERFORM check_reencrypted(j, in_flight, in_flight_ids, 'job_keys', encrypt);
    UPDATE job_keys jk SET key = e.k ->> 'key'
      FROM jsonb_array_elements(in_flight) AS e(k)
     WHERE jk.id = (e.k ->> 'id')::int;
    -- one statement: the keys (the certkeydata trigger checks each) and the flag
    WITH replaced AS (
        UPDATE certkeydata k SET key = convert_to(e.k ->> 'key', 'UTF8')
          FROM jsonb_array_elements(result -> 'keys') AS e(k)
         WHERE k.id = (e.k ->> 'id')::int
        RETURNING k.id
    )
    UPDATE revision SET keysencrypted = encrypt WHERE id = (SELECT max(id) FROM revision);
END
$$;

-- the operator's requests; operate_serverPKI may run under either role. (privileges/010_grants.sql,
-- applied later, grants every function to both; table privileges still keep the agent
-- out of the configuration and pki_admin away from the keys.)
GRANT EXECUTE ON FUNCTION pki.request_local_ca(text, text), pki.enqueue_local_ca(int),
    pki.request_key_encryption(boolean) TO pki_admin, pki_agent;
-- the agent reads the keys it re-encrypts
GRANT EXECUTE ON FUNCTION pki.keys_under_db_passphrase() TO pki_agent;
