-- 9920_grants_acme_tlsa: privileges on the ACME accounts and the TLSA views (after 9900,
-- which resets table privileges). The agent signs with the account key; the operator sees
-- the accounts without it; pki_report sees neither.

GRANT SELECT ON pki.acme_accounts TO pki_agent;
GRANT SELECT (id, directory_url, contact, uri, created, updated, remarks) ON pki.acme_accounts TO pki_admin;
-- what DNS should hold: hashes of certificates, no key material
GRANT SELECT ON pki.tlsa_owners, pki.tlsa_desired TO pki_admin, pki_agent;
-- the progress of a running job is the agent's to write
REVOKE EXECUTE ON FUNCTION pki.save_job_progress(bigint, text, jsonb) FROM pki_admin;
-- the key of an order in flight: the agent's alone, through save_job_key / job_key
REVOKE ALL ON pki.job_keys FROM PUBLIC, pki_admin, pki_agent, pki_report;
REVOKE EXECUTE ON FUNCTION pki.save_job_key(bigint, text, text, text), pki.job_key(bigint, text, text),
    pki.job_keys_under_db_passphrase() FROM PUBLIC, pki_admin, pki_report;
GRANT EXECUTE ON FUNCTION pki.save_job_key(bigint, text, text, text), pki.job_key(bigint, text, text),
    pki.job_keys_under_db_passphrase() TO pki_agent;
