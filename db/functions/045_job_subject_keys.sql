-- 045_job_subject_keys: the subject_key of each kind of job. The queue keeps one active job per
-- (kind, subject_key) (index jobs_one_active): a job is found again, and not enqueued twice, by
-- its key, so each format is written here once.
-- IMMUTABLE SQL without a SET clause: the planner inlines them (a SET clause would make each a
-- function call), so "subject_key = tlsa_subject_key(c.id)" is a plain expression and
-- jobs_one_active still serves it. Their bodies name no object of ours, so no search_path is needed.

-- cert_subject_key: the issue jobs of a certificate (issue_local, issue_acme, issue_local_ca)
CREATE OR REPLACE FUNCTION pki.cert_subject_key(cert int)
RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT 'cert:' || cert::text $$;

-- tlsa_subject_key: the publish_tlsa job of a certificate
CREATE OR REPLACE FUNCTION pki.tlsa_subject_key(cert int)
RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT 'tlsa:cert:' || cert::text $$;

-- distribution_subject_key: the distribute job of an instance to a disthost
CREATE OR REPLACE FUNCTION pki.distribution_subject_key(instance int, disthost int)
RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT 'inst:' || instance::text || '/host:' || disthost::text $$;

-- keys_subject_key: the one encrypt_keys / decrypt_keys job (-X / -Y)
CREATE OR REPLACE FUNCTION pki.keys_subject_key()
RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT 'keys'::text $$;

-- acme_account_subject_key: the register_acme job (-Z) for an ACME directory (NULL: the agent's configured one)
CREATE OR REPLACE FUNCTION pki.acme_account_subject_key(directory_url text)
RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT 'acme-account:' || coalesce(directory_url, '(configured)') $$;

-- reminder_subject_key: the mail_reminder job of a scheduler pass (its transaction)
CREATE OR REPLACE FUNCTION pki.reminder_subject_key(txid bigint)
RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT 'reminder:' || txid::text $$;

-- revoke_subject_key: the revoke job of an instance
CREATE OR REPLACE FUNCTION pki.revoke_subject_key(instance int)
RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT 'revoke:inst:' || instance::text $$;
