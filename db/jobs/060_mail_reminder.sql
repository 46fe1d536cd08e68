-- 060_mail_reminder: mail_reminder jobs: the list of local certificates an operator must issue,
-- mailed (the scheduler enqueues them, functions/070_scheduler.sql).

-- reminder_dead: a reminder that could not be sent is due again on the next pass
CREATE OR REPLACE FUNCTION pki.reminder_dead(j pki.jobs)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    UPDATE certificates c SET authorized_until = NULL
      FROM main_subjects s, jsonb_array_elements(coalesce(j.args -> 'certificates', '[]')) e
     WHERE s.certificate = c.id AND s.name = (e ->> 'name')::citext AND c.type = 'local';
END
$$;

-- its outcome is a report (to whom it went): the queue's complete_job completes it
SELECT pki.define_job_kind('mail_reminder', 'mail the list of local certificates that must be issued', 5, 0,
                           'complete_job', 'reminder_dead');
