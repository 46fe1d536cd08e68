-- 9910_grants_lifecycle: privileges on the queue, the history and the state machine
-- (after 9900, which resets table privileges).

GRANT SELECT ON pki.jobs, pki.job_kinds, pki.events, pki.state_transitions, pki.deployments TO pki_admin, pki_agent;
GRANT SELECT ON pki.jobs_summary, pki.jobs_overview, pki.expiring, pki.deployed_where, pki.instance_history
    TO pki_admin, pki_agent, pki_report;
-- the report views call the clock
GRANT EXECUTE ON FUNCTION pki.now() TO pki_report;
-- the queue's functions are the agent's; they run as the owner (SECURITY DEFINER)
REVOKE EXECUTE ON FUNCTION pki.claim_jobs(text, text[], int, interval), pki.extend_lease(bigint, text, interval),
    pki.complete_job(bigint, text, jsonb), pki.fail_job(bigint, text, text, boolean, interval),
    pki.requeue_expired_leases() FROM pki_admin;
REVOKE EXECUTE ON FUNCTION pki.revoke_instance(int, text) FROM pki_agent;
GRANT SELECT ON pki.state_diagram TO pki_admin, pki_agent, pki_report;
