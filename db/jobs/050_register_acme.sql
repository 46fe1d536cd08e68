-- 050_register_acme: register_acme jobs (-Z): an ACME account at a directory
-- (request_acme_account enqueues them, functions/130_acme.sql).

-- complete_register_acme: the completion of register_acme (its agent calls it): the directory's
-- account, new or replaced; its key in the form the stored keys are in. report: what the CA said
CREATE OR REPLACE FUNCTION pki.complete_register_acme(job_id bigint, lease_token uuid, directory_url text, uri text,
    contact text, key text, report jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := completing(job_id, lease_token, ARRAY['register_acme']);
    encrypted boolean := keys_encrypted();
BEGIN
    IF directory_url IS NULL OR directory_url !~ '^https://' OR uri IS NULL OR uri !~ '^https://' OR key IS NULL THEN
        PERFORM raise_error('SP023', format('job %s: a registration reports the directory''s and the account''s https URLs and the account key', j.id),
            'report the account URL the CA returned and the account key');
    END IF;
    IF key NOT LIKE '-----BEGIN %PRIVATE KEY-----%'
       OR (position('-----BEGIN ENCRYPTED PRIVATE KEY-----' IN key) > 0) IS DISTINCT FROM encrypted THEN
        PERFORM raise_error('SP023', format('job %s: the account key must be a %s PKCS#8 PEM key, as the stored keys are', j.id,
                CASE WHEN encrypted THEN 'encrypted' ELSE 'clear' END),
            'encrypt the account key with the db_encryption_key passphrase when revision.keysencrypted');
    END IF;
    INSERT INTO acme_accounts AS a (directory_url, contact, key, uri)
    VALUES (complete_register_acme.directory_url, complete_register_acme.contact, complete_register_acme.key,
            complete_register_acme.uri)
    ON CONFLICT ON CONSTRAINT acme_accounts_directory_unique
    DO UPDATE SET contact = EXCLUDED.contact, key = EXCLUDED.key, uri = EXCLUDED.uri;
    PERFORM job_done(j, coalesce(report, '{}') || jsonb_build_object('directory_url', directory_url, 'uri', uri, 'contact', contact));
END
$$;

SELECT pki.define_job_kind('register_acme', 'register an ACME account', 3, 30, 'complete_register_acme');
