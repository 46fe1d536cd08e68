-- 140_distribution: what a distribute job writes, read in one statement. The agent
-- lays the files out by the place's cert_file_type and writes them over SSH; which
-- instance may still go to the targets is decided here.

-- ca_chain: the certificates above an instance, following certinstances.cacert upwards
-- (the direct issuer first), each as its PEM; at most 8 levels, a loop ends the walk
CREATE OR REPLACE FUNCTION pki.ca_chain(inst int)
RETURNS TABLE (depth int, instance int, pem text)
LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    WITH RECURSIVE up(depth, instance, path) AS (
        SELECT 1, i.cacert, ARRAY[i.id, i.cacert] FROM certinstances i WHERE i.id = inst AND i.cacert IS NOT NULL
        UNION ALL
        SELECT up.depth + 1, ci.cacert, up.path || ci.cacert
          FROM up JOIN certinstances ci ON ci.id = up.instance
         WHERE ci.cacert IS NOT NULL AND NOT ci.cacert = ANY (up.path) AND up.depth < 8
    )
    -- a CA instance holds one pair; its certificate is the link of the chain
    SELECT up.depth, up.instance,
           (SELECT convert_from(k.cert, 'UTF8') FROM certkeydata k WHERE k.certinstance = up.instance ORDER BY k.id LIMIT 1)
      FROM up ORDER BY up.depth
$$;

-- distribution_files: for one distribute job, a row per (target of args.targets on the job's
-- disthost, key pair of the instance): where the files go (disthost, jail, place) and what they
-- hold (subject, pair, CA certificate, CA chain), how the key file is encoded and which algorithm
-- the file names say (0010_imported_key_files: a pair imported from 0.9.x keeps its files). Keys come as stored (maybe encrypted with the
-- db_encryption_key passphrase); a CA certificate comes without its key. Refuses (SP023) an instance that may no longer go out: a
-- 'deploy' needs it issued, prepublished or deployed, a 'consolidate' (-K) needs it deployed,
-- so a late retry never overwrites the files of a successor; a CA's instance (which stays
-- issued) must be its CA's newest issued one (ca_current, 150_ca_targets), in either mode.
CREATE OR REPLACE FUNCTION pki.distribution_files(job_id bigint)
RETURNS TABLE (target int, fqdn text, jailroot text, jail text, place text, cert_file_type text,
               cert_path text, key_path text, uid int, gid int, mode int, chownboth boolean, pglink boolean,
               reload_command text, subject text, subject_type text, cert_type text, instance int,
               algo text, cert text, key text, cacert text, chain text, key_file_format text, file_name_algo text)
LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs;
    inst certinstances;
    wanted dd.cert_state[];
    ca_pem text;
    chain_pem text;
BEGIN
    SELECT * INTO j FROM jobs WHERE id = job_id;
    IF NOT FOUND THEN
        PERFORM raise_error('SP002', format('no job %s', job_id), 'see SELECT * FROM jobs_overview');
    END IF;
    IF j.kind <> 'distribute' THEN
        PERFORM raise_error('SP023', format('job %s is a %s job, not a distribute job', job_id, j.kind),
            'ask for the files of distribute jobs only');
    END IF;
    SELECT * INTO inst FROM certinstances WHERE id = j.instance;
    IF NOT FOUND THEN
        PERFORM raise_error('SP023', format('distribute job %s: its instance is gone', job_id),
            'the instance was cleaned up meanwhile; fail the job without retry');
    END IF;
    wanted := CASE WHEN j.args ->> 'mode' = 'consolidate' THEN ARRAY['deployed']::dd.cert_state[]
                   ELSE ARRAY['issued', 'prepublished', 'deployed']::dd.cert_state[] END;
    IF is_ca_cert(inst.certificate) THEN
        -- a CA instance stays issued; its targets get the newest issued one (150_ca_targets), in either mode
        IF inst.id IS DISTINCT FROM ca_current(inst.certificate) THEN
            PERFORM raise_error('SP023', format('distribute job %s: CA instance %s is %s and not the newest issued instance of its CA (%s) any more',
                    job_id, inst.id, inst.state, coalesce(ca_current(inst.certificate)::text, 'none')),
                'a newer CA instance replaced it meanwhile; fail the job without retry (the next -D, -K or -S brings the new one)');
        END IF;
    ELSIF NOT inst.state = ANY (wanted) THEN
        PERFORM raise_error('SP023', format('distribute job %s: instance %s is %s now, it may not go to the targets (%s)',
                job_id, inst.id, inst.state, coalesce(j.args ->> 'mode', 'deploy')),
            'a successor replaced it meanwhile, or it was revoked; fail the job without retry');
    END IF;
    SELECT string_agg(c.pem, '' ORDER BY c.depth) FILTER (WHERE c.depth = 1),
           string_agg(c.pem, '' ORDER BY c.depth)
      INTO ca_pem, chain_pem
      FROM ca_chain(inst.id) c;
    RETURN QUERY
    SELECT t.id, d.fqdn::text, d.jailroot, jl.name::text, p.name::text, p.cert_file_type::text,
           p.cert_path, p.key_path, p.uid, p.gid, p.mode, p.chownboth, p.pglink,
           p.reload_command, s.name::text, s.type::text, c.type::text, inst.id,
           k.encryption_algo::text, convert_from(k.cert, 'UTF8'),
           -- a CA's own key never leaves the database: its targets get the certificate only
           CASE WHEN s.type = 'CA' THEN NULL ELSE convert_from(k.key, 'UTF8') END,
           coalesce(ca_pem, ''), coalesce(chain_pem, ''),
           k.key_file_format, coalesce(k.file_name_algo, k.encryption_algo)::text
      FROM jsonb_array_elements_text(coalesce(j.args -> 'targets', '[]')) a
      JOIN targets t ON t.id = a::int AND t.certificate = inst.certificate AND t.disthost = j.disthost
      JOIN disthosts d ON d.id = t.disthost
      LEFT JOIN jails jl ON jl.id = t.jail
      JOIN places p ON p.id = t.place
      JOIN certificates c ON c.id = inst.certificate
      JOIN main_subjects s ON s.certificate = c.id
      JOIN certkeydata k ON k.certinstance = inst.id
     ORDER BY t.id, k.encryption_algo;
END
$$;
