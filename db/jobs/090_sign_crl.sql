-- 090_sign_crl: sign_crl jobs: the next CRL of a local CA instance before its newest one reaches
-- its nextUpdate (the scheduler enqueues them: functions/155_crls.sql crl_plan_rows). The agent
-- signs it like a revoke job does (handlers/sign_crl.py): every unexpired certificate revoked
-- under the instance, the next number, valid for crl_days.

-- enqueue_sign_crl: a sign_crl job for each of the CA instances (one per instance: jobs_one_active)
CREATE OR REPLACE FUNCTION pki.enqueue_sign_crl(ca_instances int[], why text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    PERFORM enqueue('sign_crl', crl_subject_key(i.id), why, jsonb_build_object('ca_instance', i.id), i.certificate, i.id)
       FROM certinstances i
      WHERE i.id = ANY (ca_instances)
        AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.kind = 'sign_crl' AND j.subject_key = crl_subject_key(i.id)
                           AND j.state IN ('queued', 'running', 'failed'))
      ORDER BY i.id;
END
$$;

-- complete_sign_crl: the completion of a sign_crl job: the CRL the agent signed for the job's CA
-- instance, with its number and validity (stored and sent on by store_crl). report: what it lists
CREATE OR REPLACE FUNCTION pki.complete_sign_crl(job_id bigint, lease_token uuid, ca_instance int,
                                                 crl text, crl_number bigint, this_update timestamptz,
                                                 next_update timestamptz, report jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := completing(job_id, lease_token, ARRAY['sign_crl']);
BEGIN
    IF complete_sign_crl.ca_instance IS DISTINCT FROM j.instance THEN
        PERFORM raise_error('SP023', format('sign_crl job %s is for CA instance %s, the result is a CRL of %s', j.id,
                                            j.instance, coalesce(complete_sign_crl.ca_instance::text, 'none')),
            'report the CRL of the job''s CA instance (jobs.instance)');
    END IF;
    PERFORM store_crl(j, j.instance, crl, crl_number, this_update, next_update);
    PERFORM job_done(j, report);
END
$$;

SELECT pki.define_job_kind('sign_crl', 'sign the next CRL of a local CA instance before the newest one goes stale', 8, 25,
                           'complete_sign_crl');
