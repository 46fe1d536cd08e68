-- 065_jobs_of_selection: which due jobs an operate_serverPKI run works (claim_jobs' sel).

-- jobs_of_selection: the due jobs a run of a selection (-a -i -e -o -s -l -N) may claim.
-- A run of a selection (-a -i -e -o -s -l -N) acts only on its selection; a job is the run's when
--   * its certificate is one the selection acts on (selected_certs, enabled or included by -a/-i);
--     its follow-ups (distribute after issue, publish_tlsa after deploy) are jobs of that certificate;
--   * it goes to a disthost, and the selection lets distribution go there (host_selected: not -s,
--     within -l): a run never connects to a host excluded by -s or outside -l;
--   * it is a publish_tlsa job, and the run does not say -N;
--   * it distributes a CA the selection acts on (selected_cas), or signs its CRL: what its pass
--     enqueued for it (ca_plan_rows, crl_plan_rows);
--   * it is a mail_reminder: it lists many certificates, so only when the selection has them all
--     (a reminder enqueued by `-S -o X` lists X alone; the cron run selects everything);
--   * it concerns the installation, not a certificate a selection can name (-I's issue_local_ca,
--     -X/-Y's encrypt_keys/decrypt_keys, -Z's register_acme): when this run requested it (requested,
--     the job ids its request functions returned), or when the run names no certificate (no -o, -e).
-- DNS zones are no disthosts: -s/-l do not limit TLSA jobs (-N does). Other due jobs wait for a run
-- that selects them, or for `serverpki agent`.
CREATE OR REPLACE FUNCTION pki.jobs_of_selection(sel dd.selection, requested bigint[])
RETURNS TABLE (job bigint) LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    acted_on int[];        -- the certificates the selection acts on (enabled, or included by -a/-i)
    named text[];          -- every certificate the selection names, enabled or not (a reminder's)
    cas int[];             -- the CAs it acts on: a pass enqueues their distribution and CRLs
    whole boolean;         -- the selection names no certificate: it has the installation's jobs too
BEGIN
    PERFORM check_selection(sel);
    SELECT coalesce(array_agg(s.id) FILTER (WHERE s.enabled), '{}'), coalesce(array_agg(s.name), '{}')
      INTO acted_on, named FROM selected_certs(sel) s;
    cas := ARRAY(SELECT ca.id FROM selected_cas(sel) ca WHERE ca.enabled);
    whole := cardinality(coalesce(sel.only_certs, '{}')) = 0 AND cardinality(coalesce(sel.exclude, '{}')) = 0;
    RETURN QUERY
    SELECT j.id FROM jobs j
     WHERE j.state IN ('queued', 'failed') AND j.run_after <= pki.now()
       -- the certificate, or what stands for it
       AND CASE
               WHEN j.certificate = ANY (acted_on) THEN true
               WHEN j.kind IN ('distribute', 'sign_crl') AND j.certificate = ANY (cas) THEN true
               WHEN j.kind = 'mail_reminder' THEN NOT EXISTS (
                   SELECT 1 FROM jsonb_array_elements(coalesce(j.args -> 'certificates', '[]')) e
                    WHERE NOT coalesce(e ->> 'name' = ANY (named), false))
               WHEN j.certificate IS NULL OR NOT EXISTS (
                   SELECT 1 FROM main_subjects s WHERE s.certificate = j.certificate
                      AND s.type NOT IN ('CA', 'reserved')) THEN j.id = ANY (coalesce(requested, '{}')) OR whole
               ELSE false
           END
       -- the disthost
       AND (j.disthost IS NULL OR EXISTS (SELECT 1 FROM disthosts d WHERE d.id = j.disthost
                                            AND host_selected(sel, d.fqdn)))
       -- -N: no TLSA changes
       AND NOT (j.kind = 'publish_tlsa' AND coalesce(sel.no_tlsa, false));
END
$$;
