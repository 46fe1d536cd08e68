-- Every SQL statement the agent runs, by name (parsed by queries.py).
-- The queue's own calls are single calls of pki functions.

-- name: claim_jobs
-- with the names the log lines of a job show: its certificate's main subject, its disthost. The columns of
-- an agent's Job, in its order (Agent.claim: parsed on the claimer thread, whose Python holds the GIL the
-- thread that signs waits for: no column it does not use). overlapped_only: of the agent's kinds only those
-- whose jobs may be claimed while completions are on their way (pki.kinds_to_claim)
SELECT c.id, c.kind, c.certificate, c.instance, c.disthost, c.zone, c.args, c.attempts, c.max_attempts,
       c.lease_token::text, s.name::text AS certificate_name, d.fqdn::text AS disthost_name
  FROM pki.claim_jobs(%(agent)s, pki.kinds_to_claim(%(kinds)s, %(overlapped_only)s), %(max_jobs)s,
                      %(lease)s * interval '1 second') c
  LEFT JOIN pki.main_subjects s ON s.certificate = c.certificate
  LEFT JOIN pki.disthosts d ON d.id = c.disthost;

-- name: claim_selected_jobs
-- an operate_serverPKI run's drain: only the jobs of its selection, and those it requested (pki.claim_jobs);
-- with the names and the columns, and of the kinds, as claim_jobs
SELECT c.id, c.kind, c.certificate, c.instance, c.disthost, c.zone, c.args, c.attempts, c.max_attempts,
       c.lease_token::text, s.name::text AS certificate_name, d.fqdn::text AS disthost_name
  FROM pki.claim_jobs(%(agent)s, pki.kinds_to_claim(%(kinds)s, %(overlapped_only)s), %(max_jobs)s,
                      %(lease)s * interval '1 second',
    pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, %(sel_limit)s, %(sel_no_tlsa)s),
    %(requested)s::bigint[]) c
  LEFT JOIN pki.main_subjects s ON s.certificate = c.certificate
  LEFT JOIN pki.disthosts d ON d.id = c.disthost;

-- name: due_jobs
-- how many jobs of these kinds are due now: what the drain of `serverpki agent` has still to run (its progress bar)
SELECT count(*) FROM pki.jobs WHERE state IN ('queued', 'failed') AND run_after <= pki.now() AND kind = ANY(%(kinds)s);

-- name: due_selected_jobs
-- how many jobs of these kinds an operate_serverPKI run's drain has still to run (its progress bar): as claim_selected_jobs
SELECT count(*) FROM pki.jobs_of_selection(
    pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, %(sel_limit)s, %(sel_no_tlsa)s),
    %(requested)s::bigint[]) s
  JOIN pki.jobs j ON j.id = s.job
 WHERE j.kind = ANY(%(kinds)s);

-- name: extend_lease
SELECT pki.extend_lease(%(job)s, %(token)s::uuid, %(lease)s * interval '1 second');

-- name: release_jobs
-- claimed jobs whose work never took effect, handed back: due again at once, their attempt not counted (Agent._hand_back)
SELECT pki.release_jobs(%(jobs)s::bigint[], %(tokens)s::uuid[]);

-- a job kind's completion function, named by job_kinds.complete_with (job_kinds), with the
-- handler's typed arguments: handlers.Completion.statement fills in the function and the arguments
-- with psycopg.sql identifiers and placeholders (values travel as bind parameters)
-- name: kind_completion
SELECT {function}(job_id => %(job)s, lease_token => %(token)s::uuid{arguments}, report => %(report)s);

-- whether the attempt's completion was stored: done, and claimed by nobody since (a second claim
-- counts another attempt). A completion sent again after a lost connection is refused (SP022)
-- when the first had been committed; this tells that case from a lease lost to another agent
-- name: completion_stored
SELECT EXISTS (SELECT 1 FROM pki.jobs WHERE id = %(job)s AND state = 'done' AND attempts = %(attempt)s);

-- the completions of several issue_local jobs in one call, together, or each alone when one is refused
-- (Agent._finish_batch): per job the SQLSTATE and message of its refusal, NULL when done
-- name: complete_issue_batch
-- pairs and reports come as one JSON array each (element i: job i's), made arrays here: sent as jsonb[], every
-- backslash of the PEM texts' JSON would be escaped once more for the array literal, in the agent's Python
SELECT states, messages
  FROM pki.complete_issue_batch(%(jobs)s, %(tokens)s::uuid[],
        ARRAY(SELECT e FROM jsonb_array_elements(%(pairs)s::jsonb) WITH ORDINALITY AS a(e, n) ORDER BY n),
        %(cacerts)s::int[],
        ARRAY(SELECT e FROM jsonb_array_elements(%(reports)s::jsonb) WITH ORDINALITY AS a(e, n) ORDER BY n));

-- name: job_kinds
-- each kind's completion function and how the agent may run its jobs (Agent.claim reads them)
SELECT kind, complete_with, concurrency FROM pki.job_kinds;

-- name: fail_job
SELECT pki.fail_job(%(job)s, %(token)s::uuid, %(error)s, %(retry)s, %(retry_after)s * interval '1 second');

-- name: unhandled_due_jobs
-- jobs due now of kinds this agent has no handler for (reported, left queued)
SELECT kind, count(*) FROM pki.jobs WHERE state IN ('queued', 'failed') AND run_after <= pki.now()
   AND NOT (kind = ANY(%(kinds)s)) GROUP BY kind ORDER BY kind;

-- name: job_state
SELECT state, last_error FROM pki.jobs WHERE id = %(job)s;

-- name: issue_requests
-- the certificates issue jobs are for (one job's, or every one of an agent's claimed batch at once): their
-- names, subject type, algorithm, must-staple
SELECT c.id, c.type::text AS cert_type, c.encryption_algo::text AS encryption_algo, c.ocsp_must_staple,
       s.type::text AS subject_type, s.name::text AS name,
       ARRAY(SELECT a.name::text FROM pki.subjects a WHERE a.certificate = c.id AND a.isaltname ORDER BY a.name) AS altnames
  FROM pki.certificates c JOIN pki.subjects s ON s.certificate = c.id AND NOT s.isaltname
 WHERE c.id = ANY(%(certificates)s::int[]);

-- name: local_ca_current
-- the newest issued instance of the local CA: it signs local certificates
SELECT i.id, convert_from(k.cert, 'UTF8') AS cert, convert_from(k.key, 'UTF8') AS key, i.not_after
  FROM pki.certinstances i
  JOIN pki.certificates c ON c.id = i.certificate AND c.type = 'local'
  JOIN pki.subjects s ON s.certificate = c.id AND NOT s.isaltname AND s.type = 'CA'
  JOIN pki.certkeydata k ON k.certinstance = i.id
 WHERE i.state = 'issued' AND k.key IS NOT NULL
 ORDER BY i.id DESC LIMIT 1;

-- name: keys_encrypted
SELECT pki.keys_encrypted() AS keysencrypted;

-- serverpki db status reads the table itself: it must answer for a database of any release
-- name: keys_encrypted_any_release
SELECT keysencrypted FROM pki.revision ORDER BY id DESC LIMIT 1;

-- serverpki db import-legacy: reading a serverPKI 0.9.x database (its pki schema, as the original made it;
-- naive TIMESTAMP columns are read in that server's TimeZone, as the original wrote them)
-- name: legacy_revision
SELECT schemaversion, keysencrypted FROM pki.revision ORDER BY id LIMIT 1;

-- name: legacy_disthosts
SELECT id, fqdn::text AS fqdn, jailroot, remarks FROM pki.disthosts ORDER BY id;

-- name: legacy_jails
SELECT id, name::text AS name, disthost, remarks FROM pki.jails ORDER BY id;

-- name: legacy_places
SELECT id, name::text AS name, cert_file_type::text AS cert_file_type, cert_path, key_path, uid, gid, mode,
       chownboth, pglink, reload_command, remarks
  FROM pki.places ORDER BY id;

-- name: legacy_services
SELECT id, name::text AS name, port, tlsaprefix, remarks FROM pki.services ORDER BY id;

-- name: legacy_certificates
SELECT id, type::text AS type, disabled, authorized_until::timestamptz AS authorized_until,
       encryption_algo::text AS encryption_algo, ocsp_must_staple, created::timestamptz AS created, remarks
  FROM pki.certificates ORDER BY id;

-- name: legacy_subjects
SELECT id, type::text AS type, name::text AS name, isaltname, certificate, remarks
  FROM pki.subjects ORDER BY isaltname, id;

-- name: legacy_certificates_services
SELECT certificate, service FROM pki.certificates_services ORDER BY certificate, service;

-- name: legacy_targets
SELECT id, disthost, jail, place, certificate, remarks FROM pki.targets ORDER BY id;

-- name: legacy_instances
SELECT id, certificate, state::text AS state, ocsp_must_staple, cacert,
       updated::timestamptz AS updated, not_before::timestamptz AS not_before, remarks
  FROM pki.certinstances ORDER BY id;

-- name: legacy_certkeydata
SELECT id, certinstance, encryption_algo::text AS encryption_algo, cert, key, hash
  FROM pki.certkeydata ORDER BY certinstance, encryption_algo;

-- serverpki db import-legacy: writing into our database, as its owner, in one transaction
-- name: import_certificate_count
SELECT count(*) AS n FROM pki.certificates;

-- name: import_stored_key_count
-- keys the target stores besides certificates' (ACME accounts, orders in flight): switching encryption on
-- would leave them in clear under a flag that says encrypted
SELECT (SELECT count(*) FROM pki.job_keys_under_db_passphrase()) + (SELECT count(*) FROM pki.acme_keys_under_db_passphrase()) AS n;

-- name: import_foreign_certificates
-- certificates of the target that are not this import's (same id, same subject name)
SELECT c.id, s.name::text AS name FROM pki.certificates c LEFT JOIN pki.subjects s ON s.certificate = c.id AND NOT s.isaltname
 WHERE NOT EXISTS (SELECT 1 FROM unnest(%(ids)s::int[], %(names)s::text[]) AS l(id, name)
                    WHERE l.id = c.id AND lower(l.name) = lower(s.name::text))
 ORDER BY c.id LIMIT 3;

-- name: import_certificate_present
SELECT c.id, s.name::text AS name FROM pki.certificates c LEFT JOIN pki.subjects s ON s.certificate = c.id AND NOT s.isaltname
 WHERE c.id = %(id)s;

-- name: import_subject_present
SELECT certificate FROM pki.subjects WHERE name = %(name)s;

-- name: import_instance_present
SELECT certificate FROM pki.certinstances WHERE id = %(id)s;

-- name: import_certkeydata_present
SELECT hash FROM pki.certkeydata WHERE certinstance = %(certinstance)s AND encryption_algo = %(encryption_algo)s::dd.cert_encryption_algo;

-- name: import_target_present
SELECT id FROM pki.targets WHERE disthost = %(disthost)s AND jail IS NOT DISTINCT FROM %(jail)s AND place = %(place)s
   AND certificate = %(certificate)s;

-- name: import_certificate_service_present
SELECT 1 FROM pki.certificates_services WHERE certificate = %(certificate)s AND service = %(service)s;

-- name: import_set_context
SELECT pki.set_context(%(reason)s);

-- name: import_keys_encrypted
UPDATE pki.revision SET keysencrypted = true WHERE NOT keysencrypted;

-- sequences first past the legacy ids, so a row given a new id never takes one a later row keeps
-- name: import_sequences_past
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['pki.disthosts', 'pki.jails', 'pki.places', 'pki.services', 'pki.certificates',
                             'pki.certinstances'] LOOP
        EXECUTE format('SELECT setval(pg_get_serial_sequence(%L, ''id''), greatest(coalesce((SELECT max(id) FROM %s), 0), '
                       'coalesce(current_setting(''serverpki.legacy_max_%s'', true)::int, 0), 1))', t, t, split_part(t, '.', 2));
    END LOOP;
END
$$;

-- name: import_legacy_max
SELECT set_config('serverpki.legacy_max_' || %(table)s, %(max)s::text, true);

-- name: import_disthost
INSERT INTO pki.disthosts (id, fqdn, jailroot, remarks)
SELECT CASE WHEN EXISTS (SELECT 1 FROM pki.disthosts WHERE id = %(id)s) THEN nextval('pki.disthosts_id_seq') ELSE %(id)s END,
       %(fqdn)s, %(jailroot)s, %(remarks)s
 WHERE NOT EXISTS (SELECT 1 FROM pki.disthosts WHERE fqdn = %(fqdn)s);

-- name: import_disthost_id
SELECT id FROM pki.disthosts WHERE fqdn = %(fqdn)s;

-- name: import_jail
INSERT INTO pki.jails (id, name, disthost, remarks)
SELECT CASE WHEN EXISTS (SELECT 1 FROM pki.jails WHERE id = %(id)s) THEN nextval('pki.jails_id_seq') ELSE %(id)s END,
       %(name)s, %(disthost)s, %(remarks)s
 WHERE NOT EXISTS (SELECT 1 FROM pki.jails WHERE name = %(name)s);

-- name: import_jail_id
SELECT id, disthost FROM pki.jails WHERE name = %(name)s;

-- name: import_place
INSERT INTO pki.places (id, name, cert_file_type, cert_path, key_path, uid, gid, mode, chownboth, pglink,
                        reload_command, remarks)
SELECT CASE WHEN EXISTS (SELECT 1 FROM pki.places WHERE id = %(id)s) THEN nextval('pki.places_id_seq') ELSE %(id)s END,
       %(name)s, %(cert_file_type)s::dd.place_cert_file_type, %(cert_path)s, %(key_path)s, %(uid)s, %(gid)s, %(mode)s,
       %(chownboth)s, %(pglink)s, %(reload_command)s, %(remarks)s
 WHERE NOT EXISTS (SELECT 1 FROM pki.places WHERE name = %(name)s);

-- name: import_place_id
SELECT id, cert_file_type::text AS cert_file_type, cert_path, key_path, uid, gid, mode, chownboth, pglink, reload_command
  FROM pki.places WHERE name = %(name)s;

-- name: import_service
INSERT INTO pki.services (id, name, port, tlsaprefix, remarks)
SELECT CASE WHEN EXISTS (SELECT 1 FROM pki.services WHERE id = %(id)s) THEN nextval('pki.services_id_seq') ELSE %(id)s END,
       %(name)s, %(port)s, %(tlsaprefix)s, %(remarks)s
 WHERE NOT EXISTS (SELECT 1 FROM pki.services WHERE name = %(name)s AND port = %(port)s);

-- name: import_service_id
SELECT id FROM pki.services WHERE name = %(name)s AND port = %(port)s;

-- name: import_certificate
INSERT INTO pki.certificates (id, type, disabled, authorized_until, encryption_algo, ocsp_must_staple, created, remarks)
VALUES (%(id)s, %(type)s::dd.cert_type, %(disabled)s, %(authorized_until)s, %(encryption_algo)s::dd.cert_encryption_algo,
        %(ocsp_must_staple)s, coalesce(%(created)s, now()), %(remarks)s);

-- name: import_subject
INSERT INTO pki.subjects (type, name, isaltname, certificate, remarks)
VALUES (%(type)s::dd.subject_type, %(name)s, %(isaltname)s, %(certificate)s, %(remarks)s);

-- name: import_certificate_service
INSERT INTO pki.certificates_services (certificate, service) VALUES (%(certificate)s, %(service)s);

-- name: import_target
INSERT INTO pki.targets (disthost, jail, place, certificate, remarks)
VALUES (%(disthost)s, %(jail)s, %(place)s, %(certificate)s, %(remarks)s);

-- an instance enters as 'reserved' (the only state a new row may have) and walks the state machine
-- name: import_instance
INSERT INTO pki.certinstances (id, certificate, state, ocsp_must_staple, cacert, tlsa_published, remarks)
VALUES (%(id)s, %(certificate)s, 'reserved', %(ocsp_must_staple)s, %(cacert)s, %(tlsa_published)s, %(remarks)s);

-- name: import_instance_state
SELECT * FROM pki.import_instance_state(%(id)s, %(state)s::dd.cert_state);

-- name: import_states
SELECT id, state::text AS state FROM pki.certinstances WHERE id = ANY(%(ids)s::int[]);

-- name: import_tlsa_owners_in_dns
-- the original published the TLSA records of its prepublished and deployed instances: every owner the
-- imported certificates configure is taken as in DNS (pki.tlsa_owners_in_dns), so that one that goes is withdrawn
INSERT INTO pki.tlsa_owners_in_dns (owner, certificate)
SELECT DISTINCT o.owner, o.certificate FROM pki.tlsa_owners o
 WHERE EXISTS (SELECT 1 FROM pki.certinstances i WHERE i.certificate = o.certificate AND i.id = ANY(%(ids)s::int[])
                  AND i.tlsa_published IS NOT NULL)
ON CONFLICT (owner) DO NOTHING;

-- name: cert_states
SELECT unnest(enum_range(NULL::dd.cert_state))::text AS state;

-- what the original deployed is on its targets: without these rows the first -S distributes it again
-- name: import_deployment
INSERT INTO pki.deployments (instance, target, job, deployed)
VALUES (%(instance)s, %(target)s, NULL, coalesce(%(deployed)s, pki.now()))
ON CONFLICT (instance, target) DO NOTHING;

-- name: import_ca_current
SELECT pki.ca_current(%(certificate)s) AS id;

-- name: import_certkeydata
INSERT INTO pki.certkeydata (certinstance, encryption_algo, cert, key, key_file_format, file_name_algo)
VALUES (%(certinstance)s, %(encryption_algo)s::dd.cert_encryption_algo, %(cert)s, %(key)s, 'traditional',
        %(file_name_algo)s::dd.cert_encryption_algo);

-- name: import_acme_account
INSERT INTO pki.acme_accounts (directory_url, contact, key, uri) VALUES (%(directory_url)s, NULL, %(key)s, %(uri)s)
ON CONFLICT (directory_url) DO NOTHING;

-- name: import_acme_account_uri
SELECT uri FROM pki.acme_accounts WHERE directory_url = %(directory_url)s;

-- name: stored_keys
SELECT id, convert_from(key, 'UTF8') AS key FROM pki.certkeydata WHERE key IS NOT NULL ORDER BY id;

-- name: export_instance
-- certificate, key and CA certificate of one instance (operate_serverPKI -E)
SELECT s.name::text AS name, s.type::text AS subject_type, k.encryption_algo::text AS algo,
       convert_from(k.cert, 'UTF8') AS cert, convert_from(k.key, 'UTF8') AS key,
       (SELECT convert_from(ck.cert, 'UTF8') FROM pki.certkeydata ck WHERE ck.certinstance = i.cacert ORDER BY ck.id LIMIT 1) AS cacert
  FROM pki.certinstances i
  JOIN pki.subjects s ON s.certificate = i.certificate AND NOT s.isaltname
  JOIN pki.certkeydata k ON k.certinstance = i.id
 WHERE i.id = %(serial)s
 ORDER BY k.encryption_algo;

-- name: db_now
-- the database's clock (pki.now(): tests and the demo travel in time with it)
SELECT pki.now() AS now;

-- name: keys_under_db_passphrase
-- the stored keys -X/-Y (de|en)crypt with the db_encryption_key passphrase: all but the CA's
SELECT id, key FROM pki.keys_under_db_passphrase();

-- name: job_keys_under_db_passphrase
-- the keys of ACME orders in flight, which -X/-Y re-encrypt too
SELECT id, key FROM pki.job_keys_under_db_passphrase();

-- name: acme_keys_under_db_passphrase
-- the ACME account keys, which -X/-Y (de|en)crypt like the other stored keys
SELECT id, key FROM pki.acme_keys_under_db_passphrase();

-- name: newest_encrypted_key
-- one key encrypted with the db_encryption_key passphrase, to prove a passphrase before using it
SELECT id, key FROM pki.keys_under_db_passphrase() WHERE starts_with(key, '-----BEGIN ENCRYPTED PRIVATE KEY-----') ORDER BY id DESC LIMIT 1;

-- name: distribution_files
-- everything a distribute job writes: a row per (target, key pair), with place, CA certificate and chain
SELECT * FROM pki.distribution_files(%(job)s);

-- name: revoke_job_certificates
-- what a revoke job revokes: its rows of pki.revocations (request_revoke), each certificate PEM
SELECT id, certificate, encryption_algo::text AS algo, convert_from(cert, 'UTF8') AS cert, ca_instance, reason, revoked_at
  FROM pki.revocations WHERE job = %(job)s ORDER BY encryption_algo;

-- name: crl_entries
-- what the next CRL of a local CA instance lists: every certificate it issued that was revoked and has not expired
SELECT id, convert_from(cert, 'UTF8') AS cert, reason, revoked_at
  FROM pki.revocations WHERE ca_instance = %(ca)s AND not_after > pki.now() ORDER BY id;

-- name: next_crl
-- the number (rising per CA certificate, across its instances), thisUpdate and lifetime in days of the next CRL of a local CA instance
SELECT coalesce(max(c.number), 0) + 1 AS number, pki.now() AS now, pki.setting_int('crl_days') AS days
  FROM pki.crls c JOIN pki.certinstances i ON i.id = c.ca_instance
 WHERE i.certificate = (SELECT certificate FROM pki.certinstances WHERE id = %(ca)s);

-- name: local_ca_instance
-- one instance of the local CA with its key: the one that signed the certificates a CRL lists
SELECT i.id, convert_from(k.cert, 'UTF8') AS cert, convert_from(k.key, 'UTF8') AS key
  FROM pki.certinstances i JOIN pki.certkeydata k ON k.certinstance = i.id
 WHERE i.id = %(ca)s AND k.key IS NOT NULL;

-- name: newest_crls
-- what a CA's targets get beside its certificate (NULL: none): the newest CRL of each instance of the CA
-- that keeps one (pki.crl_keepers: the current one, and older ones that revoked certificates still valid)
SELECT string_agg(convert_from(n.crl, 'UTF8'), '' ORDER BY k.ca_instance DESC) AS crls
  FROM pki.crl_keepers() k
  JOIN LATERAL (SELECT c.crl FROM pki.crls c WHERE c.ca_instance = k.ca_instance ORDER BY c.number DESC LIMIT 1) n ON true
 WHERE k.ca_cert = (SELECT certificate FROM pki.certinstances WHERE id = %(instance)s);

-- name: acme_account
-- the account at a directory: its key signs every ACME request (issue_acme, register_acme)
SELECT id, directory_url, contact, key, uri FROM pki.acme_accounts WHERE directory_url = %(directory_url)s;

-- name: job_progress
-- how far an earlier attempt of a running job got (pki.save_job_progress)
SELECT coalesce(result, '{}'::jsonb) AS progress FROM pki.jobs WHERE id = %(job)s;

-- name: save_job_progress
SELECT pki.save_job_progress(%(job)s, %(token)s::uuid, %(progress)s);

-- name: tlsa_records
-- the TLSA records of the instances a publish job lists, one per owner and distinct data
SELECT DISTINCT owner, ttl, usage, selector, matching, data
  FROM pki.tlsa_desired
 WHERE certificate = %(certificate)s AND instance = ANY (%(instances)s)
 ORDER BY owner, usage, selector, matching, data;

-- name: tlsa_owners
-- every TLSA owner of a certificate, with the TTL of its RRset (the longest of its services)
SELECT owner, max(ttl) AS ttl FROM pki.tlsa_owners WHERE certificate = %(certificate)s GROUP BY owner ORDER BY owner;

-- name: tlsa_owners_gone
-- the owners at which DNS holds the certificate's records (its jobs reported them) that no certificate
-- configures now (one another certificate configures is left to that one's jobs)
SELECT d.owner FROM pki.tlsa_owners_in_dns d
 WHERE d.certificate = %(certificate)s AND pki.tlsa_owner_holder(d.owner) IS NULL
 ORDER BY d.owner;

-- name: save_job_key
-- the key of an ACME order, stored before the order is placed (pki.save_job_key)
SELECT pki.save_job_key(%(job)s, %(token)s::uuid, %(algo)s, %(key)s);

-- name: job_key
-- the key an earlier attempt stored for its order of this algorithm, or NULL
SELECT pki.job_key(%(job)s, %(token)s::uuid, %(algo)s) AS key;

-- name: reused_key
-- the stored key of this algorithm of the instance whose keys the issue job reuses (args reuse_from), or NULL
SELECT pki.reused_key(%(job)s, %(token)s::uuid, %(algo)s) AS key;

-- The command line's statements (operate_serverPKI); its selection (-a -i -e -o -s -l -N) is bind parameters.
-- Why the pki.selection(...) call is written out in each query, not spliced in: what is here is exactly what runs.

-- name: check_selection
-- unknown names stop the run before anything is done (SP024)
SELECT pki.check_selection(
    pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, %(sel_limit)s, %(sel_no_tlsa)s));

-- name: check_config
-- -n: the configuration problems of the selected certificates
SELECT certificate, problem, hint FROM pki.check_config(
    pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, %(sel_limit)s, %(sel_no_tlsa)s));

-- name: check_warnings
-- -n: what will hurt without being a problem of the configuration (pki.check_warnings)
SELECT certificate, warning, hint FROM pki.check_warnings(
    pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, %(sel_limit)s, %(sel_no_tlsa)s));

-- name: certificate_counts
-- -n -v: how many certificates, and the names of the CAs
SELECT count(DISTINCT c.id), array_agg(DISTINCT s.name::text) FILTER (WHERE s.type = 'CA')
  FROM pki.certificates c JOIN pki.subjects s ON s.certificate = c.id AND NOT s.isaltname;

-- name: request_local_ca
-- -I
SELECT job, NULL::text, NULL::int, 'requested (-I)' FROM (SELECT pki.request_local_ca(%(ca_name)s, %(ca_algo)s) AS job) x;

-- name: request_encrypt_keys
-- -X
SELECT pki.request_key_encryption(true), NULL::text, NULL::int, 'requested (-X)';

-- name: request_decrypt_keys
-- -Y
SELECT pki.request_key_encryption(false), NULL::text, NULL::int, 'requested (-Y)';

-- name: request_schedule
-- -S
SELECT NULL::bigint, certificate, instance, action || ': ' || reason FROM pki.schedule(
    pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, %(sel_limit)s, %(sel_no_tlsa)s));

-- name: request_create
-- -C (-r N)
SELECT job, certificate, instance, reason FROM pki.request_create(
    pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, %(sel_limit)s, %(sel_no_tlsa)s),
    %(remaining)s);

-- name: request_distribute
-- -D (-r N)
SELECT job, certificate, instance, reason FROM pki.request_distribute(
    pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, %(sel_limit)s, %(sel_no_tlsa)s),
    %(remaining)s);

-- name: request_consolidate_certs
-- -K
SELECT job, certificate, instance, reason FROM pki.request_consolidate_certs(
    pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, %(sel_limit)s, %(sel_no_tlsa)s));

-- name: request_consolidate_tlsa
-- -T
SELECT job, certificate, instance, reason FROM pki.request_consolidate_tlsa(
    pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, %(sel_limit)s, %(sel_no_tlsa)s));

-- name: request_remove_tlsa
-- -R
SELECT job, certificate, instance, reason FROM pki.request_remove_tlsa(
    pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, %(sel_limit)s, %(sel_no_tlsa)s));

-- name: request_revoke
-- --revoke SERIAL [--reason REASON]
SELECT job, certificate, instance, reason FROM pki.request_revoke(%(revoke_serial)s, %(revoke_reason)s);

-- name: request_acme_account
-- -Z
SELECT pki.request_acme_account(%(acme_url)s, %(acme_contact)s), NULL::text, NULL::int, 'requested (-Z)';

-- name: record_run
-- a run that acted says how it ended (pki.runs: the 'schedule' alert and the metrics read it)
SELECT pki.record_run(%(agent)s, %(actions)s, %(started)s, %(succeeded)s, %(jobs)s);

-- name: request_alert_notices
-- what is new in pki.alerts, a notify_alerts job per channel (db/jobs/070_notify_alerts.sql)
SELECT job, certificate, instance, reason FROM pki.request_alert_notices(%(channels)s::text[]);

-- The report grids (reports.py): each selects exactly the seed's columns, in its order.
-- %(only)s: the -o names, or none for every certificate.

-- name: report_meta
-- -n -v: the certificates' configuration
SELECT "Subject", "Cert Name", "Type", "Algo", "OCSP m st", "authorized", "Alt Name", "TLSA", "Port",
       "Dist Host", "Jail", "Place"
  FROM pki.certs
 WHERE cardinality(%(only)s::citext[]) = 0 OR "Cert Name" = ANY(%(only)s::citext[]);

-- name: report_instances
-- -n -v: the certificates' instances
SELECT "Serial", "Cert Name", "Type", "State", "CI CA", "OCSP m st", "not before", "not after", "ALGO", "Hash",
       "updated"
  FROM pki.inst
 WHERE cardinality(%(only)s::citext[]) = 0 OR "Cert Name" = ANY(%(only)s::citext[]);

-- name: report_instances_grid
-- -n -v as text: report_instances with its timestamps as the grid shows them, made by the server (pki.grid_time)
SELECT "Serial", "Cert Name", "Type", "State", "CI CA", "OCSP m st", pki.grid_time("not before") AS "not before",
       pki.grid_time("not after") AS "not after", "ALGO", "Hash", pki.grid_time("updated") AS "updated"
  FROM pki.inst
 WHERE cardinality(%(only)s::citext[]) = 0 OR "Cert Name" = ANY(%(only)s::citext[]);

-- name: report_renew
-- -r N -n (-D -r N -n): the local certificates -C -r N (-D -r N) would act on (pki.renewal_candidates)
SELECT m."Subject", m."Cert Name", m."Type", m."authorized", m."Alt Name", m."TLSA", m."Port", m."Dist Host",
       m."Jail", m."Place"
  FROM pki.certs m
 WHERE m."Cert Name" IN (SELECT certificate FROM pki.renewal_candidates(
    pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, %(sel_limit)s, %(sel_no_tlsa)s),
    %(remaining)s, %(distribute)s));

-- name: report_plan
-- -S -n: what the scheduler would do
SELECT certificate AS "Cert Name", instance AS "Serial", action AS "Action", reason AS "Reason" FROM pki.plan(
    pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, %(sel_limit)s, %(sel_no_tlsa)s));

-- name: jobs_listing
-- serverpki jobs: the queue's jobs, newest first; no states, kinds or certificate: all; limit NULL: no limit
SELECT id, kind, state, certificate, instance, disthost, zone, attempts, max_attempts, run_after, locked_by,
       locked_until, reason, last_error, updated
  FROM pki.jobs_overview
 WHERE (cardinality(%(states)s::text[]) = 0 OR state::text = ANY(%(states)s::text[]))
   AND (cardinality(%(kinds)s::text[]) = 0 OR kind = ANY(%(kinds)s::text[]))
   AND (%(certificate)s::citext IS NULL OR certificate = %(certificate)s::citext)
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: job_states
-- serverpki jobs --state: the states a job can be in
SELECT enum_range(NULL::dd.job_state)::text[];

-- Monitoring (monitor.py: serverpki metrics), as the monitoring login pki_reader.

-- name: metrics
-- the Prometheus text exposition format, rendered by the database (pki.metrics)
SELECT pki.metrics();

-- name: open_alerts
-- metrics --check: what needs a human, critical first (the view's order)
SELECT severity, summary, detail FROM pki.alerts;

-- The agent's LISTEN: the notify_jobs trigger wakes it when work is enqueued.

-- name: listen_jobs
LISTEN pki_jobs;

-- Migrations (migrate.py; serverpki db upgrade / status). The migration files themselves run as they are.

-- name: applied_migrations
-- one query, readable by every serverPKI role (privileges/010_grants.sql): check_compatible
SELECT coalesce(array_agg(version ORDER BY version), '{}') FROM pki.schema_migrations;

-- name: migrations_table_exists
SELECT to_regclass('pki.schema_migrations') IS NOT NULL;

-- name: migration_versions
SELECT version FROM pki.schema_migrations ORDER BY version;

-- name: migration_lock
-- one installer at a time per database
SELECT pg_advisory_xact_lock(%(key)s);

-- name: migration_search_path
SET LOCAL search_path = pki, dd, public;

-- name: defer_function_body_checks
SET LOCAL check_function_bodies = off;

-- name: describe
SELECT pki.describe(%(kind)s, %(name)s, %(description)s);

-- name: check_function_bodies
-- once everything is loaded: every function of ours checked as CREATE FUNCTION would have (PL/pgSQL
-- compiled, a LANGUAGE sql body parsed and analyzed), so a broken body stops the upgrade, not a call
SET LOCAL check_function_bodies = on;
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT p.oid, l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
              WHERE p.pronamespace IN ('pki'::regnamespace, 'dd'::regnamespace) AND l.lanname IN ('plpgsql', 'sql')
              ORDER BY p.oid LOOP
        IF f.lanname = 'plpgsql' THEN
            PERFORM plpgsql_validator(f.oid);
        ELSE
            PERFORM fmgr_sql_validator(f.oid);
        END IF;
    END LOOP;
END
$$;

-- name: drop_all_views
-- every view of the schema pki in one statement (so their dependencies on each other do not matter),
-- without CASCADE: an object that depends on a view makes the upgrade fail, naming it. Views of an
-- extension created in pki (the database's search_path starts there) are the extension's, not ours
DO $$
DECLARE
    views text := (SELECT string_agg(c.oid::regclass::text, ', ') FROM pg_class c
                    WHERE c.relkind = 'v' AND c.relnamespace = 'pki'::regnamespace
                      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                         AND d.objid = c.oid AND d.deptype = 'e'));
BEGIN
    IF views IS NOT NULL THEN
        EXECUTE 'DROP VIEW ' || views;
    END IF;
END
$$;

-- name: record_migration
INSERT INTO pki.schema_migrations (version) VALUES (%(version)s);

-- name: update_setting
-- serverpki config import --dsn: one of pki.settings from the old configuration file (pki_admin may; the
-- settings trigger checks the value's kind and range)
UPDATE pki.settings SET value = %(value)s, remarks = %(remarks)s WHERE name = %(name)s;

-- name: update_setting_psql
-- serverpki config import without --dsn prints this for psql, after \set name ... and \set value ...
UPDATE pki.settings SET value = :'value', remarks = 'from serverpki.conf (serverpki config import)' WHERE name = :'name';

-- name: database_search_path
-- per-database settings, which CREATE DATABASE ... TEMPLATE does not copy
DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = pki, dd, public', current_database()); END $$;

-- name: database_log_parameters
-- the server must not log the bind parameters (issued keys) the agent hands the completions, whatever
-- log_statement an operator turns on (an installer without the right to set these leaves them)
DO $$ BEGIN IF has_parameter_privilege('log_parameter_max_length', 'SET') THEN
    EXECUTE format('ALTER DATABASE %I SET log_parameter_max_length = 0', current_database());
    EXECUTE format('ALTER DATABASE %I SET log_parameter_max_length_on_error = 0', current_database());
END IF; END $$;
