-- 040_reencrypt_keys: encrypt_keys and decrypt_keys jobs (-X / -Y): every stored key but the
-- CA's in its new form, applied all at once (request_key_encryption enqueues them,
-- functions/100_keys_and_ca.sql).

-- check_reencrypted: the keys a key job reports name each expected id once, each key in the form
-- the job promised; else SP023 naming the first bad entry or the ids that do not fit
CREATE OR REPLACE FUNCTION pki.check_reencrypted(j pki.jobs, items dd.stored_key[], expected int8[], what text, encrypt boolean)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    bad_entry bigint;
    missing text;
    extra text;
BEGIN
    SELECT min(n) INTO bad_entry FROM unnest(items) WITH ORDINALITY AS e(id, key, n)
     WHERE e.id IS NULL OR e.key IS NULL
        OR (position('-----BEGIN ENCRYPTED PRIVATE KEY-----' IN e.key) > 0) IS DISTINCT FROM encrypt;
    IF bad_entry IS NOT NULL THEN
        PERFORM raise_error('SP023', format('job %s: entry %s of "%s" must be (id, %s PKCS#8 PEM)',
                j.id, bad_entry, what, CASE WHEN encrypt THEN 'encrypted' ELSE 'clear' END),
            CASE WHEN encrypt THEN 'report each key as "-----BEGIN ENCRYPTED PRIVATE KEY-----..."'
                 ELSE 'report each key as "-----BEGIN PRIVATE KEY-----..."' END);
    END IF;
    SELECT string_agg(w::text, ', ' ORDER BY w) INTO missing FROM unnest(expected) w
     WHERE w NOT IN (SELECT e.id FROM unnest(items) e);
    SELECT string_agg(e.id::text, ', ' ORDER BY e.id) INTO extra FROM unnest(items) e
     WHERE NOT (e.id = ANY (expected)) OR (SELECT count(*) FROM unnest(items) o WHERE o.id = e.id) > 1;
    IF missing IS NOT NULL OR extra IS NOT NULL THEN
        PERFORM raise_error('SP023', format('job %s: the result must list every stored key once in "%s" (%s)', j.id, what,
                concat_ws('; ', 'missing: ' || left(missing, 200), 'unknown or repeated: ' || left(extra, 200))),
            format('keys were stored or removed while the job ran; ask again with %s', CASE WHEN encrypt THEN '-X' ELSE '-Y' END));
    END IF;
END
$$;

-- complete_reencrypt_keys: the completion of encrypt_keys/decrypt_keys (its agent calls it): keys
-- (certkeydata), accounts (acme_accounts) and job_keys (orders in flight), each (id, key) in its new
-- form; every key must be listed, each in the form the job promised, else SP023 and nothing changes.
-- Keys, account keys and the flag change together
CREATE OR REPLACE FUNCTION pki.complete_reencrypt_keys(job_id bigint, lease_token uuid, keys dd.stored_key[],
    accounts dd.stored_key[] DEFAULT '{}', job_keys dd.stored_key[] DEFAULT '{}', report jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := completing(job_id, lease_token, ARRAY['encrypt_keys', 'decrypt_keys']);
    encrypt boolean := j.kind = 'encrypt_keys';
    in_flight dd.stored_key[];
BEGIN
    -- one re-encryption at a time; a request waits here until this one is applied
    PERFORM 1 FROM revision r WHERE r.id = current_revision() FOR UPDATE;
    PERFORM check_reencrypted(j, coalesce(keys, '{}'), ARRAY(SELECT w.id FROM keys_under_db_passphrase() w), 'keys', encrypt);
    PERFORM check_reencrypted(j, coalesce(accounts, '{}'), ARRAY(SELECT a.id FROM acme_keys_under_db_passphrase() a),
                              'accounts', encrypt);
    UPDATE acme_accounts a SET key = e.key FROM unnest(accounts) e WHERE a.id = e.id;
    -- the keys of ACME orders in flight: an order's job may end (and its key go) while this job
    -- runs, so only those still there must be listed, each in the promised form
    in_flight := ARRAY(SELECT e FROM unnest(complete_reencrypt_keys.job_keys) e
                        WHERE e.id IS NULL OR EXISTS (SELECT 1 FROM pki.job_keys jk WHERE jk.id = e.id));
    PERFORM check_reencrypted(j, in_flight, ARRAY(SELECT e.id FROM unnest(in_flight) e WHERE e.id IS NOT NULL),
                              'job_keys', encrypt);
    UPDATE pki.job_keys jk SET key = e.key FROM unnest(in_flight) e WHERE jk.id = e.id;
    -- one statement: the keys (the certkeydata trigger checks each) and the flag
    WITH replaced AS (
        UPDATE certkeydata k SET key = convert_to(e.key, 'UTF8')
          FROM unnest(keys) e
         WHERE k.id = e.id
        RETURNING k.id
    )
    UPDATE revision SET keysencrypted = encrypt WHERE id = current_revision();
    PERFORM job_done(j, coalesce(report, '{}') || jsonb_build_object('keys', to_jsonb(coalesce(keys, '{}')),
                        'accounts', to_jsonb(coalesce(accounts, '{}')), 'job_keys', to_jsonb(in_flight), 'encrypted', encrypt));
END
$$;

SELECT pki.define_job_kind('encrypt_keys', 'encrypt every stored private key', 3, 40, 'complete_reencrypt_keys');
SELECT pki.define_job_kind('decrypt_keys', 'decrypt every stored private key', 3, 40, 'complete_reencrypt_keys');
