-- 010_grants: THE allow-list. Every privilege of PUBLIC and of the three group roles on the
-- objects of schema pki is granted here and nowhere else, re-applied last on every upgrade
-- after everything is revoked; tests/test_grants.py compares the catalog with this file, so a
-- new function is callable by nobody (but the owner) until a line below says who may call it.
-- One GRANT per line for functions, with the full signature. docs/security.md says why each
-- role has what it has:
--   pki_admin  - the operator with psql (and the cron run): configuration DML, management
--                functions, the requests of operate_serverPKI
--   pki_agent  - the agent: claims jobs and hands their outcomes to the queue's functions
--   pki_report - reporting views only, never a private key

-- start from nothing
REVOKE ALL ON ALL TABLES IN SCHEMA pki FROM PUBLIC, pki_admin, pki_agent, pki_report;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA pki FROM PUBLIC, pki_admin, pki_agent, pki_report;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pki FROM PUBLIC, pki_admin, pki_agent, pki_report;
-- a function the owner adds by hand later is PUBLIC's to call by PostgreSQL's default: not here
ALTER DEFAULT PRIVILEGES IN SCHEMA pki REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

GRANT USAGE ON SCHEMA pki, dd TO pki_admin, pki_agent, pki_report;
GRANT SELECT ON dd.sqlstates TO pki_admin, pki_agent, pki_report;

-- ===== tables and views =====
-- configuration: the operator's to change (the seed's psql INSERTs), the agent's to read
GRANT SELECT, INSERT, UPDATE, DELETE ON
    pki.certificates, pki.subjects, pki.services, pki.certificates_services,
    pki.disthosts, pki.jails, pki.places, pki.targets
    TO pki_admin;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA pki TO pki_admin;
GRANT SELECT ON pki.settings, pki.revision, pki.schema_migrations, pki.certinstances TO pki_admin;
-- which migrations are applied: every login checks it first (migrate.check_compatible), monitoring too
GRANT SELECT ON pki.schema_migrations TO pki_report;
GRANT UPDATE (value, remarks) ON pki.settings TO pki_admin;
-- certificate data without the private key
GRANT SELECT (id, certinstance, encryption_algo, cert, hash, not_before, not_after, created, updated, remarks,
               key_created, key_renewals)
    ON pki.certkeydata TO pki_admin;
GRANT SELECT ON
    pki.certificates, pki.subjects, pki.services, pki.certificates_services,
    pki.disthosts, pki.jails, pki.places, pki.targets,
    pki.settings, pki.revision, pki.schema_migrations, pki.certinstances, pki.certkeydata
    TO pki_agent;
-- each certificate's main subject (views/005_main_subjects.sql), read by code that runs with their rights
GRANT SELECT ON pki.main_subjects TO pki_admin, pki_agent;
-- the queue, the history and the state machine: read by both, written by the functions only
GRANT SELECT ON pki.jobs, pki.job_kinds, pki.events, pki.state_transitions, pki.deployments TO pki_admin, pki_agent;
-- signs of life and what each channel was told of the alerts (monitoring; written by functions only)
GRANT SELECT ON pki.agent_heartbeats, pki.runs TO pki_admin, pki_agent;
GRANT SELECT ON pki.alert_notices TO pki_admin, pki_agent;
-- ACME accounts: the agent signs with the key; the operator sees the accounts without it
GRANT SELECT ON pki.acme_accounts TO pki_agent;
GRANT SELECT (id, directory_url, contact, uri, created, updated, remarks) ON pki.acme_accounts TO pki_admin;
-- pki.job_keys, pki.event_context and pki.tlsa_wishes: nobody's (the queue's functions read and write them);
-- pki.time_travel: the owner's switch, read through pki.time_travel_enabled()
-- reports: views that show no key material
GRANT SELECT ON pki.certs, pki.certs_ids, pki.inst, pki.jobs_summary, pki.jobs_overview, pki.expiring,
    pki.deployed_where, pki.instance_history, pki.state_diagram, pki.alerts, pki.active_instances
    TO pki_admin, pki_agent, pki_report;
-- what DNS should hold: hashes of certificates, no key material
GRANT SELECT ON pki.tlsa_owners, pki.tlsa_desired TO pki_admin, pki_agent;
-- the owners whose TLSA RRsets hold a certificate's records, as its jobs reported (written by the completion)
GRANT SELECT ON pki.tlsa_owners_in_dns TO pki_admin, pki_agent;
-- what was revoked, by whom, why and when, and the local CA's CRLs: public certificates, no key material
GRANT SELECT ON pki.revocations, pki.crls TO pki_admin, pki_agent;

-- ===== functions =====
-- the clock and the settings, read by every view and rule
GRANT EXECUTE ON FUNCTION pki.now() TO pki_admin, pki_agent, pki_report;
GRANT EXECUTE ON FUNCTION pki.time_travel_enabled() TO pki_admin, pki_agent, pki_report;
-- our refusals, raised by code that runs with the caller's rights (validation, the files of a job)
GRANT EXECUTE ON FUNCTION pki.raise_error(text, text, text) TO pki_admin, pki_agent;
GRANT EXECUTE ON FUNCTION pki.setting_int(text) TO pki_admin, pki_agent;
GRANT EXECUTE ON FUNCTION pki.setting_interval(text) TO pki_admin, pki_agent;
GRANT EXECUTE ON FUNCTION pki.tlsa_ttl(integer) TO pki_admin, pki_agent;
-- the DANE-safe wait, inlined into the plan (pki_admin's)
GRANT EXECUTE ON FUNCTION pki.dane_safe_after(timestamp with time zone, interval) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.dane_ok(boolean, interval, dd.cert_state, timestamp with time zone, timestamp with time zone) TO pki_admin;
-- key reuse (125_key_reuse): does a successor keep the active instance's TLSA records (the plan)
GRANT EXECUTE ON FUNCTION pki.tlsa_unchanged(integer, integer) TO pki_admin;
-- TLSA records from stored certificates (the views tlsa_owners and tlsa_desired)
GRANT EXECUTE ON FUNCTION pki.tlsa_prefix_parts(text) TO pki_admin, pki_agent;
GRANT EXECUTE ON FUNCTION pki.tlsa_data(bytea, integer, integer) TO pki_admin, pki_agent;
-- which certificate configures a TLSA owner now (publish_tlsa: the owners gone it withdraws)
GRANT EXECUTE ON FUNCTION pki.tlsa_owner_holder(text) TO pki_admin, pki_agent;
GRANT EXECUTE ON FUNCTION pki.tlsa_owner_name(text) TO pki_admin, pki_agent;

-- validation: the management functions and the configuration triggers run them with the
-- operator's rights (they only read the configuration and raise our SQLSTATEs)

GRANT EXECUTE ON FUNCTION pki.check_required(text, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.unprintable_char(text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.char_name(text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.check_printable(text, text, integer) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.check_host_name(text, text, boolean) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.check_simple_name(text, text, integer) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.check_subject_name(text, dd.subject_type, boolean) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.check_abs_path(text, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.check_range(bigint, bigint, bigint, text, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.check_tlsa_prefix(text, integer) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.refuse_in_use(text, integer[], text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.enum_label(text, regtype, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.cert_id(text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.disthost_id(text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.jail_id(text, integer) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.place_id(text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.service_id(text, integer) TO pki_admin;

-- management: the operator's functions (README, "Managing configuration with psql")
GRANT EXECUTE ON FUNCTION pki.add_cert(text, text, text, text, boolean, text, text, integer, text, text, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.remove_cert(text) TO pki_admin;
-- remove_cert looks up the certificate's active publish_tlsa job as the queue does
GRANT EXECUTE ON FUNCTION pki.active_job(text, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.tlsa_subject_key(integer) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.forget_tlsa_owners(text, text[]) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.disable_cert(text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.enable_cert(text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.set_key_reuse(text, integer, integer) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.add_altname(text, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.remove_altname(text, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.add_service(text, text, integer) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.remove_service(text, text, integer) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.add_target(text, text, text, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.remove_target(text, text, text, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.add_disthost(text, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.remove_disthost(text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.add_jail(text, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.remove_jail(text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.add_place(text, text, text, text, integer, integer, integer, boolean, boolean, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.remove_place(text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.add_tlsa_service(text, integer, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.remove_tlsa_service(text, integer) TO pki_admin;

-- the selection of operate_serverPKI (-a -i -e -o -s -l -N), the plan and the configuration check
GRANT EXECUTE ON FUNCTION pki.selection(boolean, text[], text[], text[], text[], text[], boolean) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.check_selection(dd.selection) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.checked_selection(dd.selection) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.selected_certs(dd.selection) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.host_selected(dd.selection, dd.citext) TO pki_admin;
-- the due jobs of a run's selection: how many its drain has still to run (the progress bar's total)
GRANT EXECUTE ON FUNCTION pki.jobs_of_selection(dd.selection, bigint[]) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.plan_rows(dd.selection) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.plan(dd.selection) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.renewal_candidates(dd.selection, integer, boolean) TO pki_admin;
-- CA certificates as targets (150_ca_targets): which are selected, their plan rows (plan and schedule)
GRANT EXECUTE ON FUNCTION pki.selected_cas(dd.selection) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.ca_plan_rows(dd.selection) TO pki_admin;
-- the local CA's CRLs (155_crls): which instances keep one (the targets get them), which are due (plan
-- rows of plan and schedule; the alerts view reads it)
GRANT EXECUTE ON FUNCTION pki.crls_due() TO pki_admin, pki_agent, pki_report;
GRANT EXECUTE ON FUNCTION pki.crl_keepers() TO pki_admin, pki_agent;
GRANT EXECUTE ON FUNCTION pki.crl_plan_rows(dd.selection) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.check_config(dd.selection) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.check_warnings(dd.selection) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.grid_time(timestamptz) TO pki_admin;

-- the requests of operate_serverPKI: each validates and enqueues as the owner (SECURITY DEFINER)
GRANT EXECUTE ON FUNCTION pki.schedule(dd.selection) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.request_create(dd.selection, integer) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.request_distribute(dd.selection, integer) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.request_consolidate_certs(dd.selection) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.request_tlsa(dd.selection, boolean) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.request_consolidate_tlsa(dd.selection) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.request_remove_tlsa(dd.selection) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.request_local_ca(text, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.enqueue_local_ca(integer) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.request_key_encryption(boolean) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.request_acme_account(text, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.request_revoke(integer, text) TO pki_admin;
GRANT EXECUTE ON FUNCTION pki.revocation_reasons() TO pki_admin;

-- the queue, the agent's: every call about a claimed job presents the claim's lease token
GRANT EXECUTE ON FUNCTION pki.claim_jobs(text, text[], integer, interval, dd.selection, bigint[]) TO pki_agent;
GRANT EXECUTE ON FUNCTION pki.kinds_to_claim(text[], boolean) TO pki_agent;
-- what -n reports, for pki.alerts (which pki_report reads): problems, not the rows behind them
GRANT EXECUTE ON FUNCTION pki.config_problems() TO pki_admin, pki_agent, pki_report;
-- the Prometheus metrics (serverpki metrics; monitoring logins): no key material
GRANT EXECUTE ON FUNCTION pki.metrics() TO pki_admin, pki_agent, pki_report;
GRANT EXECUTE ON FUNCTION pki.record_run(text, text[], timestamp with time zone, boolean, jsonb) TO pki_agent;
-- the runs' and the agent's request to tell what is new in pki.alerts (db/jobs/070_notify_alerts.sql)
GRANT EXECUTE ON FUNCTION pki.request_alert_notices(text[]) TO pki_agent;
GRANT EXECUTE ON FUNCTION pki.extend_lease(bigint, uuid, interval) TO pki_agent;
GRANT EXECUTE ON FUNCTION pki.release_jobs(bigint[], uuid[]) TO pki_agent;
GRANT EXECUTE ON FUNCTION pki.complete_issue_batch(bigint[], uuid[], jsonb[], integer[], jsonb[]) TO pki_agent;
GRANT EXECUTE ON FUNCTION pki.fail_job(bigint, uuid, text, boolean, interval) TO pki_agent;
GRANT EXECUTE ON FUNCTION pki.save_job_progress(bigint, uuid, jsonb) TO pki_agent;
GRANT EXECUTE ON FUNCTION pki.save_job_key(bigint, uuid, text, text) TO pki_agent;
GRANT EXECUTE ON FUNCTION pki.job_key(bigint, uuid, text) TO pki_agent;
-- the stored key an issue job reuses (its args' reuse_from), for the job's holder only
GRANT EXECUTE ON FUNCTION pki.reused_key(bigint, uuid, text) TO pki_agent;
-- whether the stored keys are encrypted (-X): the agent, and -E of operate_serverPKI
GRANT EXECUTE ON FUNCTION pki.current_revision() TO pki_admin, pki_agent;
GRANT EXECUTE ON FUNCTION pki.keys_encrypted() TO pki_admin, pki_agent;
-- what the agent reads to act: the files of a distribute job, the keys -X/-Y re-encrypt
GRANT EXECUTE ON FUNCTION pki.distribution_files(bigint) TO pki_agent;
GRANT EXECUTE ON FUNCTION pki.ca_chain(integer) TO pki_agent;
-- a CA's instance for its targets (150_ca_targets): read by distribution_files (the agent) and the plan (pki_admin)
GRANT EXECUTE ON FUNCTION pki.is_ca_cert(integer) TO pki_admin, pki_agent;
GRANT EXECUTE ON FUNCTION pki.ca_current(integer) TO pki_admin, pki_agent;
GRANT EXECUTE ON FUNCTION pki.keys_under_db_passphrase() TO pki_agent;
GRANT EXECUTE ON FUNCTION pki.acme_keys_under_db_passphrase() TO pki_agent;
GRANT EXECUTE ON FUNCTION pki.job_keys_under_db_passphrase() TO pki_agent;

-- each job kind's completion, the one rule of this file: the function a kind's file in db/jobs/
-- registered with define_job_kind (job_kinds.complete_with) is the agent's, so that a new kind
-- needs no line here (tests/test_grants.py adds these to the lines above)
DO $$
DECLARE
    completion regprocedure;
BEGIN
    FOR completion IN SELECT DISTINCT p.oid::regprocedure FROM pg_proc p JOIN pki.job_kinds k ON k.complete_with = p.proname
                       WHERE p.pronamespace = 'pki'::regnamespace AND p.prosecdef   -- as define_job_kind checked
                         AND p.proargtypes[0] = 'bigint'::regtype AND p.proargtypes[1] = 'uuid'::regtype ORDER BY 1 LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pki_agent', completion);
    END LOOP;
END
$$;
