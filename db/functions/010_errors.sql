-- 010_errors: the registry of our SQLSTATEs and the one way we raise them.
-- Every refusal names the offending value (MESSAGE) and what to do (HINT).

INSERT INTO dd.sqlstates (code, name, meaning) VALUES
    ('SP001', 'invalid_name',        'a host, subject, jail, place or service name breaks its syntax rules'),
    ('SP002', 'not_found',           'a name given to a function or a selection is not in the configuration'),
    ('SP003', 'duplicate',           'the object exists already (names are unique, case-insensitively)'),
    ('SP004', 'invalid_path',        'a path is not absolute, contains ".." or "." or control characters'),
    ('SP005', 'out_of_range',        'a number is outside its range (port, mode, uid, gid, TTL, setting)'),
    ('SP006', 'invalid_tlsa_prefix', 'a TLSA prefix is not of the form "_PORT._PROTO.{}. TTL IN TLSA U S M"'),
    ('SP007', 'structure',           'a rule between rows is broken (jail needs jailroot, one subject per certificate, ...)'),
    ('SP008', 'invalid_certificate', 'stored certificate data is not a parsable certificate, or disagrees with its key, hash or instance'),
    ('SP009', 'missing_value',       'a required argument is NULL or empty'),
    ('SP010', 'in_use',              'the object is still referenced; remove the references first'),
    ('SP011', 'invalid_value',       'a value is not one of the allowed values of its kind (enum, setting)'),
    ('SP012', 'read_only',           'the row or column may not be changed this way'),
    ('SP020', 'illegal_transition',  'a change of certinstances.state that the state machine does not allow'),
    ('SP021', 'dane_order',          'a successor would be deployed before its TLSA records were published for 2 x TTL'),
    ('SP022', 'lease_lost',          'the job is not running under this lease (it expired, the job finished, or the token is not the claim''s)'),
    ('SP023', 'bad_job_result',      'a job result lacks what its kind must report, or does not fit the job'),
    ('SP024', 'bad_selection',       'a selection names certificates or disthosts that are not in the configuration, or contradicts itself'),
    ('SP025', 'clock_locked',        'a session set pki.now, but the database owner has not enabled time travel for this database'),
    ('SP026', 'wrong_completion',    'a job was reported done through the completion function of another job kind'),
    ('SP027', 'not_revocable',       'the instance cannot be revoked: a CA''s instance, one not in service, or one revoked already'),
    ('SP028', 'changed_meanwhile',   'what a job read changed before its result arrived (a CRL number taken, a revocation, -X/-Y): nothing stored, the agent retries it'),
    ('SP029', 'tlsa_in_dns',         'a certificate to be removed has TLSA records in DNS, or a publish_tlsa job that may write some')
ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, meaning = EXCLUDED.meaning;

-- raise_error: raise one of our SQLSTATEs with a message and a hint
CREATE OR REPLACE FUNCTION pki.raise_error(code text, message text, hint text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM dd.sqlstates s WHERE s.code = raise_error.code) THEN
        RAISE EXCEPTION 'internal: unregistered SQLSTATE % (%)', code, message;
    END IF;
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message, HINT = hint;
END
$$;
