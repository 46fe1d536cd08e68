-- 020_distribute: distribute jobs: an instance's files to the targets on one disthost, then the
-- reload. The instance is deployed when every target of its certificate has it.

-- enqueue_distribution: one job per (instance, disthost) for the instance's targets on the selected hosts;
-- missing_only: only the targets that have no deployment of the instance yet (a CA's targets, 150_ca_targets)
CREATE OR REPLACE FUNCTION pki.enqueue_distribution(p_instances int[], sel dd.selection, p_mode text, p_reason text,
                                                    missing_only boolean DEFAULT false)
RETURNS TABLE (job bigint, instance int, disthost int)
LANGUAGE sql
SET search_path = pki, dd, pg_temp
AS $$
    -- clock and attempts once per call (materialized), not once per row
    WITH k AS MATERIALIZED (
        SELECT priority, job_attempts(max_attempts) AS attempts, pki.now() AS now FROM job_kinds WHERE kind = 'distribute'
    )
    INSERT INTO jobs (kind, subject_key, reason, args, certificate, instance, disthost, priority, max_attempts, run_after)
    SELECT 'distribute', distribution_subject_key(i.id, t.disthost), p_reason,
           jsonb_build_object('mode', p_mode, 'no_tlsa', coalesce(sel.no_tlsa, false),
                              'targets', jsonb_agg(t.id ORDER BY t.id)),
           i.certificate, i.id, t.disthost, k.priority, k.attempts, k.now
      FROM certinstances i
      JOIN targets t ON t.certificate = i.certificate
      JOIN disthosts d ON d.id = t.disthost
      CROSS JOIN k
     WHERE i.id = ANY (p_instances) AND host_selected(sel, d.fqdn)
       AND NOT (missing_only AND EXISTS (SELECT 1 FROM deployments dep WHERE dep.instance = i.id AND dep.target = t.id))
     GROUP BY i.id, i.certificate, t.disthost, k.priority, k.attempts, k.now
    ON CONFLICT (kind, subject_key) WHERE state IN ('queued', 'running', 'failed') DO NOTHING
    RETURNING jobs.id, jobs.instance, jobs.disthost
$$;

-- complete_distribute: the completion of a distribute job (its agent calls it): record the targets
-- served; promote the instance when every target has it. report: the files, links, drift and reloads
CREATE OR REPLACE FUNCTION pki.complete_distribute(job_id bigint, lease_token uuid, report jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := completing(job_id, lease_token, ARRAY['distribute']);
    inst certinstances;
    old_active int;   -- the instance replaced, when the TLSA records stay as they are
BEGIN
    SELECT * INTO inst FROM certinstances WHERE id = j.instance FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM raise_error('SP023', format('job %s: instance %s is gone', j.id, j.instance),
            'the instance was cleaned up meanwhile; fail the job without retry');
    END IF;
    INSERT INTO deployments (instance, target, job, deployed)
    SELECT inst.id, t.id, j.id, pki.now()
      FROM jsonb_array_elements_text(j.args -> 'targets') a JOIN targets t ON t.id = a::int
    ON CONFLICT (instance, target) DO UPDATE SET job = EXCLUDED.job, deployed = EXCLUDED.deployed;
    IF inst.state IN ('issued', 'prepublished') AND NOT is_ca_cert(inst.certificate)   -- a CA stays issued (150_ca_targets)
       AND NOT EXISTS (SELECT 1 FROM targets t WHERE t.certificate = inst.certificate
                         AND NOT EXISTS (SELECT 1 FROM deployments d WHERE d.instance = inst.id AND d.target = t.id)) THEN
        -- a key reused (125_key_reuse): DNS holds this instance's records since the active one's were
        -- published; they are its own from now on, so the guard lets it go live and no UPDATE follows
        old_active := (SELECT i.id FROM certinstances i WHERE i.certificate = inst.certificate AND i.state = 'deployed'
                         AND i.id <> inst.id ORDER BY i.id DESC LIMIT 1);
        IF tlsa_unchanged(old_active, inst.id) THEN
            UPDATE certinstances SET tlsa_published = least(tlsa_published, (SELECT o.tlsa_published FROM certinstances o
                                                                             WHERE o.id = old_active))
             WHERE id = inst.id;
        ELSE
            old_active := NULL;
        END IF;
        -- promote first, so the DANE-safe guard (SP021) still sees the old active instance
        PERFORM set_context(format('distribute job %s: on every target', j.id), j.id);
        UPDATE certinstances SET state = 'deployed' WHERE id = inst.id;
        PERFORM set_context(format('job %s: successor %s deployed to every target', j.id, inst.id), j.id);
        UPDATE certinstances SET state = 'expired' WHERE certificate = inst.certificate AND state = 'deployed' AND id <> inst.id;
        UPDATE certinstances SET tlsa_published = NULL WHERE id = old_active;
        -- a new local instance is live: the next reminder is due before it expires
        UPDATE certificates SET authorized_until = NULL WHERE id = inst.certificate AND type = 'local';
        -- unless DNS holds just that already (the emergency rollover after a key compromise published
        -- the successor's records alone before deploying it): no second UPDATE with the same records
        IF tlsa_ttl(inst.certificate) IS NOT NULL AND NOT coalesce((j.args ->> 'no_tlsa')::boolean, false)
           AND (tlsa_wanted(inst.certificate) IS DISTINCT FROM
                    (SELECT coalesce(jsonb_agg(i.id ORDER BY i.id), '[]') FROM certinstances i
                      WHERE i.certificate = inst.certificate AND i.tlsa_published IS NOT NULL)
                OR EXISTS (SELECT 1 FROM jobs p WHERE p.kind = 'publish_tlsa' AND p.certificate = inst.certificate
                              AND p.state IN ('queued', 'running', 'failed'))) THEN
            PERFORM enqueue_tlsa(inst.certificate, format('instance %s deployed: TLSA holds the active instance only', inst.id));
        END IF;
    END IF;
    PERFORM job_done(j, report);
END
$$;

-- pooled: one disthost each (subject_key), so the jobs of one claim run at once
SELECT pki.define_job_kind('distribute', 'copy an instance to the targets on one disthost and reload', 8, 10,
                           'complete_distribute', concurrency => 'pooled');
