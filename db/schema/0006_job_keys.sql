-- 0006_job_keys: the private key of an ACME order in flight. It is stored before the order is
-- placed, so an agent that dies after finalizing loses neither the certificate nor its key:
-- the next attempt downloads the certificate the CA issued for it instead of ordering a
-- second one. Encrypted like every stored key when revision.keysencrypted; gone when the job
-- is done or dead; -X/-Y re-encrypt it with the other keys. Only the agent reads it (9920);
-- pki_report sees nothing.
CREATE TABLE pki.job_keys (
    id              serial PRIMARY KEY,
    job             int8 NOT NULL REFERENCES pki.jobs ON DELETE CASCADE,
    encryption_algo dd.cert_encryption_algo NOT NULL,
    key             text NOT NULL,          -- PKCS#8 PEM, maybe encrypted
    created         dd.created,
    updated         dd.updated,
    remarks         text,
    CONSTRAINT job_keys_one_per_algo UNIQUE (job, encryption_algo),
    CONSTRAINT job_keys_algo CHECK (encryption_algo IN ('rsa', 'ec')),
    CONSTRAINT job_keys_key_is_pem CHECK (key LIKE '-----BEGIN %PRIVATE KEY-----%')
);

-- an agent that dies while it makes the local CA or re-encrypts the keys costs that job an
-- attempt (its lease runs out); with a second one the next run finishes what the operator began
UPDATE pki.job_kinds SET max_attempts = 3 WHERE kind IN ('issue_local_ca', 'encrypt_keys', 'decrypt_keys');
