-- 090_check_config: operate_serverPKI -n, the problems of the configuration that
-- the row triggers cannot see (they are about how rows fit together).

-- check_config: one row per problem of the selected certificates (all when sel is NULL): the object
-- it concerns (a certificate's name, or 'local CA'), the problem, the fix; no rows: a sound configuration
CREATE OR REPLACE FUNCTION pki.check_config(sel dd.selection DEFAULT NULL)
RETURNS TABLE (certificate text, problem text, hint text)
LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    sel := coalesce(sel, selection(true));
    PERFORM check_selection(sel);
    RETURN QUERY
    WITH c AS (SELECT * FROM selected_certs(sel)),
         subj AS (SELECT s.certificate, s.type FROM main_subjects s)
    SELECT c.name, 'an ACME (LE) certificate for a client subject'::text,
           'ACME CAs issue server certificates; make it a local certificate'::text
      FROM c JOIN subj ON subj.certificate = c.id WHERE c.type = 'LE' AND subj.type = 'client'
    UNION ALL
    SELECT c.name, 'no targets: it will never be deployed', format('add one with SELECT add_target(%L, disthost, jail, place)', c.name)
      FROM c WHERE NOT EXISTS (SELECT 1 FROM targets t WHERE t.certificate = c.id)
    UNION ALL
    SELECT c.name, 'TLSA services on a client certificate are never looked up', format('SELECT remove_service(%L, service, port)', c.name)
      FROM c JOIN subj ON subj.certificate = c.id WHERE subj.type = 'client' AND c.tlsa_ttl IS NOT NULL
    UNION ALL
    SELECT c.name, format('place "%s" is ''cert only'' but has a key_path, which is ignored', p.name),
           'set key_path to NULL or choose another cert_file_type'
      FROM c JOIN targets t ON t.certificate = c.id JOIN places p ON p.id = t.place
     WHERE p.cert_file_type = 'cert only' AND p.key_path IS NOT NULL
    UNION ALL
    SELECT 'local CA'::text, 'local certificates are configured, but there is no local CA certificate',
           'issue one with operate_serverPKI -I'
     WHERE EXISTS (SELECT 1 FROM c WHERE c.type = 'local')
       AND NOT EXISTS (SELECT 1 FROM certinstances i JOIN main_subjects s ON s.certificate = i.certificate
                        JOIN certificates cc ON cc.id = i.certificate
                        WHERE s.type = 'CA' AND cc.type = 'local' AND i.state = 'issued');
END
$$;

-- config_problems: check_config of every certificate with the owner's rights, for pki.alerts, which
-- pki_report reads too (a monitoring login sees the problems, not the tables they come from)
CREATE OR REPLACE FUNCTION pki.config_problems()
RETURNS TABLE (certificate text, problem text, hint text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$ SELECT p.certificate, p.problem, p.hint FROM check_config(NULL) p $$;

-- check_warnings: one row per warning of the selected certificates (all when sel is NULL): what
-- does not stop serverPKI but will hurt (current ACME practice, windows that do not fit a
-- certificate's lifetime); -n prints them after the problems and exits 0 if there are no problems
CREATE OR REPLACE FUNCTION pki.check_warnings(sel dd.selection DEFAULT NULL)
RETURNS TABLE (certificate text, warning text, hint text)
LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    sel := coalesce(sel, selection(true));
    PERFORM check_selection(sel);
    RETURN QUERY
    SELECT NULL::text, NULL::text, NULL::text WHERE false;
END
$$;
