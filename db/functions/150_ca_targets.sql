-- 150_ca_targets: CA certificates as targets (a trust file for hosts: the local CA's
-- certificate into /usr/local/share/certs, a PostgreSQL root.crt, an ACME issuer for a
-- chain file of one's own). As in the original serverPKI, a CA's targets get its
-- certificate and the CA instance's state does not change: it stays 'issued'. What went
-- where is recorded in pki.deployments (complete_distribute), and that is what makes the
-- cron run (-S) bring a new CA instance to its targets once.
--
-- Which instance: ca_current, the newest issued instance of the CA; for the local CA the one
-- that signs (the agent's query local_ca_current). The file is "<name>_CA_cert.pem" in the
-- place's cert_path, never a key (distribution_files leaves a CA's key out, the agent lays a
-- CA's row out as that one file whatever the place's cert_file_type; handlers/distribute.py).
--
-- The actions: -D distributes the current instance to every target of the selected CAs (on
-- the selected disthosts), -K compares and rewrites what drifted (a new instance: the file),
-- -S distributes it to the targets that have no deployment of it yet, once (a new instance
-- after -I, or a new target). -r N is about local certificates: -D -r leaves the CAs out.

-- is_ca_cert: whether the certificate is a CA's (subject type CA)
CREATE OR REPLACE FUNCTION pki.is_ca_cert(cert int)
RETURNS boolean LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM main_subjects s WHERE s.certificate = cert AND s.type = 'CA')
$$;

-- ca_current: the instance of a CA its targets get, the newest issued one (NULL: none)
CREATE OR REPLACE FUNCTION pki.ca_current(ca_cert int)
RETURNS int LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT i.id FROM certinstances i WHERE i.certificate = ca_cert AND i.state = 'issued' ORDER BY i.id DESC LIMIT 1
$$;

-- selected_cas: the CA certificates an action works on (selected_certs leaves them out), chosen
-- by -o and -e like certificates; enabled as there (not disabled, or included by -a/-i); with
-- the instance their targets get
CREATE OR REPLACE FUNCTION pki.selected_cas(sel dd.selection)
RETURNS TABLE (id int, name text, enabled boolean, instance int)
LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT c.id, s.name::text,
           NOT c.disabled OR coalesce(sel.all_certs, false) OR s.name = ANY (coalesce(sel.include, '{}')::citext[]),
           ca_current(c.id)
      FROM certificates c
      JOIN main_subjects s ON s.certificate = c.id
     WHERE s.type = 'CA'
       AND (cardinality(coalesce(sel.only_certs, '{}')) = 0 OR s.name = ANY (sel.only_certs::citext[]))
       AND NOT (s.name = ANY (coalesce(sel.exclude, '{}')::citext[]))
$$;

-- ca_plan_rows: the scheduler's rows for CA certificates (plan_rows has none), in plan_rows'
-- columns: 'distribute CA' when targets on the selected disthosts have no deployment of the
-- CA's current instance, 'wait' while its distribution is pending; nothing when all have it. A few CAs,
-- each looked up by index; no JIT (its estimate of 1,000 rows per set-returning function crosses
-- jit_above_cost at large fleets: compiling would take longer than the query)
CREATE OR REPLACE FUNCTION pki.ca_plan_rows(sel dd.selection)
RETURNS TABLE (certificate_id int, certificate text, instance int, action text, reason text, then_action text)
LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
SET jit = off
AS $$
    SELECT ca.id, ca.name, ca.instance, r.d[1], r.d[2], NULL::text
      FROM selected_cas(sel) ca
      CROSS JOIN LATERAL (
            SELECT count(*) AS missing, string_agg(DISTINCT d.fqdn::text, ', ') AS hosts
              FROM targets t JOIN disthosts d ON d.id = t.disthost
             WHERE t.certificate = ca.id AND host_selected(sel, d.fqdn)
               AND NOT EXISTS (SELECT 1 FROM deployments dep WHERE dep.instance = ca.instance AND dep.target = t.id)) m
      LEFT JOIN LATERAL (
            SELECT j.id, j.state, j.last_error FROM jobs j
             WHERE j.instance = ca.instance AND j.kind = 'distribute' AND j.state IN ('queued', 'running', 'failed')
             ORDER BY j.id LIMIT 1) p ON true
      -- one decision, {action, reason}, as plan_rows decides
      CROSS JOIN LATERAL (SELECT CASE
           WHEN p.id IS NULL
               THEN ARRAY['distribute CA', format('CA: instance %s (the newest issued) is not on %s of its targets yet: %s',
                                                  ca.instance, m.missing, m.hosts)]
           ELSE ARRAY['wait', format('CA: the distribution of instance %s is pending (%s job %s%s)', ca.instance, p.state, p.id,
                                     ': ' || p.last_error)]
      END) r(d)
     WHERE ca.enabled AND ca.instance IS NOT NULL AND m.missing > 0
     ORDER BY ca.name
$$;

-- request_ca_targets: -D (mode 'deploy') and -K ('consolidate') for the selected CAs: their
-- current instance to their targets on the selected disthosts, one job per disthost; a CA with
-- targets but no issued instance gets a row without a job saying so. Called by request_distribute
-- and request_consolidate_certs (080_requests), as the owner.
CREATE OR REPLACE FUNCTION pki.request_ca_targets(sel dd.selection, p_mode text, p_reason text)
RETURNS TABLE (job bigint, certificate text, instance int, reason text)
LANGUAGE sql
SET search_path = pki, dd, pg_temp
AS $$
    SELECT e.job, ca.name, e.instance, p_reason || ': the CA''s newest issued instance; its state stays issued'
      FROM selected_cas(sel) ca
      CROSS JOIN LATERAL enqueue_distribution(ARRAY[ca.instance], sel, p_mode, p_reason) e
     WHERE ca.enabled AND ca.instance IS NOT NULL
    UNION ALL
    SELECT NULL::bigint, ca.name, NULL::int, 'CA without an issued instance: nothing to distribute (operate_serverPKI -I issues the local CA)'
      FROM selected_cas(sel) ca
     WHERE ca.enabled AND ca.instance IS NULL AND EXISTS (SELECT 1 FROM targets t WHERE t.certificate = ca.id)
$$;

-- enqueue_ca_targets: the cron run's (-S) distribution of CA instances: one job per (instance,
-- disthost) for the instance's targets on the selected disthosts that have no deployment of it
-- (a host whose targets all have it gets no job: no rewrite, no reload)
CREATE OR REPLACE FUNCTION pki.enqueue_ca_targets(p_instances int[], sel dd.selection)
RETURNS TABLE (job bigint, instance int, disthost int)
LANGUAGE sql
SET search_path = pki, dd, pg_temp
AS $$
    SELECT * FROM enqueue_distribution(p_instances, sel, 'deploy',
                                       'scheduler: the CA''s newest issued instance for its targets', true)
$$;
