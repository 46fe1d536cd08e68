-- retired: functions whose signature changed, dropped before db/functions creates their
-- successors (the first step of every upgrade after the versioned migrations). CREATE OR REPLACE
-- cannot change arguments or a return type, and an old overload left behind would stay callable:
-- every retired signature is listed here for good (DROP ... IF EXISTS is a no-op on a fresh
-- install), with the release that retired it.
--
-- The convention: the commit that changes a function's arguments or return type (or removes the
-- function) adds the old signature's DROP here (a conditional one when only the return type
-- changed, as below). tests/test_migrate.py enforces it: the db/ of every commit that changed db/,
-- upgraded to this tree, must hold exactly the functions of a fresh install, signature for signature
-- (test_no_old_signature_survives_an_upgrade_from_any_commit; the first commit's with the whole
-- schema in test_upgrade_from_the_first_release_equals_fresh_install), and an old overload without
-- its line here is named by that comparison (test_a_changed_signature_survives_an_upgrade_unless_retired).

-- 1.0: the queue's calls about a claimed job present its lease token, not the agent's name
DROP FUNCTION IF EXISTS pki.held_job(bigint, text);
DROP FUNCTION IF EXISTS pki.extend_lease(bigint, text, interval);
DROP FUNCTION IF EXISTS pki.complete_job(bigint, text, jsonb);
DROP FUNCTION IF EXISTS pki.fail_job(bigint, text, text, boolean, interval);
DROP FUNCTION IF EXISTS pki.save_job_progress(bigint, text, jsonb);
DROP FUNCTION IF EXISTS pki.save_job_key(bigint, text, text, text);
DROP FUNCTION IF EXISTS pki.job_key(bigint, text, text);
-- 1.0: enqueue_distribution takes missing_only (the CA targets' distribution uses it)
DROP FUNCTION IF EXISTS pki.enqueue_distribution(int[], dd.selection, text, text);
-- 1.0: pki.now() raises SP025 itself
DROP FUNCTION IF EXISTS pki.clock_locked();
-- 1.0: claim_jobs returns the lease token with each job (it returned SETOF pki.jobs)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE oid = to_regprocedure('pki.claim_jobs(text, text[], int, interval)')
                 AND prorettype = 'pki.jobs'::regtype) THEN
        DROP FUNCTION pki.claim_jobs(text, text[], int, interval);
    END IF;
END
$$;
-- 1.0: claim_jobs takes the run's selection and the jobs it requested (a run acts only on its selection)
DROP FUNCTION IF EXISTS pki.claim_jobs(text, text[], int, interval);
-- 1.0: check_result_certs returns the refusal (problem, hint) as values besides the leaf's not_after and issuer
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE oid = to_regprocedure(
                   'pki.check_result_certs(bigint, text, text, text, text[], jsonb, text, int, jsonb)')
                 AND NOT 'problem' = ANY(proargnames)) THEN
        DROP FUNCTION pki.check_result_certs(bigint, text, text, text, text[], jsonb, text, int, jsonb);
    END IF;
END
$$;
-- 1.0: check_result_certs checks the results of a batch in one call (arrays, a row per result)
DROP FUNCTION IF EXISTS pki.check_result_certs(bigint, text, text, text, text[], jsonb, text, int, jsonb);

-- 1.0: add_cert returns a table of its own, not the row type of the view certs (views are dropped
-- and re-created by every upgrade, and nothing may depend on them)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE oid = to_regprocedure('pki.add_cert(text, text, text, text, boolean, text, text, integer, text, text, text)')
                 AND prorettype = to_regtype('pki.certs')) THEN
        DROP FUNCTION pki.add_cert(text, text, text, text, boolean, text, text, integer, text, text, text);
    END IF;
END
$$;

-- 1.0: each job kind has its own typed completion (db/jobs/); the generic complete_job with a JSON
-- result and the kinds' apply_* functions are gone
DO $$
BEGIN   -- complete_job(bigint, uuid, jsonb) is now the queue's completion of a report-only kind
    IF EXISTS (SELECT 1 FROM pg_proc WHERE oid = to_regprocedure('pki.complete_job(bigint, uuid, jsonb)')
                 AND proargnames[3] = 'result') THEN
        DROP FUNCTION pki.complete_job(bigint, uuid, jsonb);
    END IF;
END
$$;
DROP FUNCTION IF EXISTS pki.apply_issued(pki.jobs, jsonb);
DROP FUNCTION IF EXISTS pki.apply_distributed(pki.jobs, jsonb);
DROP FUNCTION IF EXISTS pki.apply_tlsa_published(pki.jobs, jsonb);
DROP FUNCTION IF EXISTS pki.apply_keys_reencrypted(pki.jobs, jsonb);
DROP FUNCTION IF EXISTS pki.apply_acme_registered(pki.jobs, jsonb);
DROP FUNCTION IF EXISTS pki.check_reencrypted(pki.jobs, jsonb, int[], text, boolean);
DROP FUNCTION IF EXISTS pki.apply_acme_chain(pki.jobs, jsonb);

-- 1.0: distribution_files returns each pair's key file format and file name algorithm (0010_imported_key_files)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE oid = to_regprocedure('pki.distribution_files(bigint)')
                 AND NOT 'key_file_format' = ANY(proargnames)) THEN
        DROP FUNCTION pki.distribution_files(bigint);
    END IF;
END
$$;
-- 1.0: revocation is one request, request_revoke (--revoke): it revokes at the CA or on the CRL too
DROP FUNCTION IF EXISTS pki.revoke_instance(int, text);
-- 1.0: a CRL is reported with the last revocation it lists (listed_through): store_crl checks exactly those
DROP FUNCTION IF EXISTS pki.check_crl(int, text, bigint, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS pki.store_crl(pki.jobs, int, text, bigint, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS pki.complete_revoke(bigint, uuid, int, text, bigint, timestamptz, timestamptz, jsonb);
DROP FUNCTION IF EXISTS pki.complete_sign_crl(bigint, uuid, int, text, bigint, timestamptz, timestamptz, jsonb);
-- 1.0: crls_due returns when a CRL is late (late_at) and its CA certificate
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE oid = to_regprocedure('pki.crls_due()') AND NOT 'late_at' = ANY(proargnames)) THEN
        DROP FUNCTION pki.crls_due();
    END IF;
END
$$;
-- 1.0: selected_certs returns the certificate's own disabled flag and whether a TLSA record is end-entity (tlsa_ee)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE oid = to_regprocedure('pki.selected_certs(dd.selection)') AND NOT 'tlsa_ee' = ANY(proargnames)) THEN
        DROP FUNCTION pki.selected_certs(dd.selection);
    END IF;
END
$$;
-- 1.0: the configuration trigger of TLSA owners also withdraws the ones that go (tlsa_owners_changed);
-- its triggers first (named, never CASCADE), triggers/050_tlsa_config.sql makes the new ones
DROP TRIGGER IF EXISTS tlsa_owners_grew_insert ON pki.certificates_services;
DROP TRIGGER IF EXISTS tlsa_owners_grew_update ON pki.certificates_services;
DROP TRIGGER IF EXISTS tlsa_owners_grew_update ON pki.services;
DROP FUNCTION IF EXISTS pki.tlsa_owners_grew();
-- 1.0: define_job_kind takes the kind's concurrency (job_kinds.concurrency, migration 0021)
DROP FUNCTION IF EXISTS pki.define_job_kind(text, text, int, int, text, text);
