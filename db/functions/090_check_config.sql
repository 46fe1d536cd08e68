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
-- certificate's lifetime); -n prints them after the problems and exits 0 if there are no problems.
-- The ACME CA's lifetime is that of the LE certificate it issued last (CAs shorten them: Let's
-- Encrypt moves to 45 days), else the setting acme_lifetime_days; lifetimes are compared in days
-- to one decimal (Let's Encrypt's "90 days" are 90 days less a second)
CREATE OR REPLACE FUNCTION pki.check_warnings(sel dd.selection DEFAULT NULL)
RETURNS TABLE (certificate text, warning text, hint text)
LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    sel := coalesce(sel, selection(true));
    PERFORM check_selection(sel);
    RETURN QUERY
    WITH c AS (SELECT * FROM selected_certs(sel)),
    clock AS (SELECT pki.now() AS now),   -- read once: pki.now() is PL/pgSQL, not once per certificate
    newest AS (         -- the instance issued last of each kind of certificate, with its validity
        -- the highest id of each kind by hashing, then that row: sorting every instance by kind (an enum)
        -- and id was most of check_warnings at 5,000 certificates
        SELECT k.type, k.is_ca, i.not_after,
               trim_scale(round(extract(epoch FROM i.not_after - i.not_before) / 86400, 1)) AS life_days
          FROM (SELECT cc.type, s.type = 'CA' AS is_ca, max(i.id) AS id
                  FROM certinstances i
                  JOIN certificates cc ON cc.id = i.certificate
                  JOIN main_subjects s ON s.certificate = cc.id
                 WHERE i.not_before IS NOT NULL AND i.not_after IS NOT NULL
                   -- the signing local CA is the newest issued instance (ca_current)
                   AND (s.type <> 'CA' OR i.state = 'issued')
                 GROUP BY cc.type, s.type = 'CA') k
          JOIN certinstances i ON i.id = k.id
    ), le AS (          -- the window of rule 9: the scheduler caps pre_publish_days to a third of the lifetime
        SELECT x.*, least(x.pre_days, trim_scale(round(x.life_days / 3, 1))) AS window_days,
               x.pre_days > x.life_days / 3 AS capped
          FROM (SELECT coalesce((SELECT n.life_days FROM newest n WHERE n.type = 'LE' AND NOT n.is_ca),
                                setting_int('acme_lifetime_days')) AS life_days,
                       CASE WHEN EXISTS (SELECT 1 FROM newest n WHERE n.type = 'LE' AND NOT n.is_ca)
                            THEN 'of the LE certificate it issued last' ELSE 'acme_lifetime_days' END AS life_source,
                       setting_int('pre_publish_days') AS pre_days,
                       setting_interval('schedule_stale') AS run_gap) x
    ), dane AS (        -- the DANE-safe wait of each LE certificate with TLSA services, plus one scheduler interval
        SELECT c.name, c.tlsa_ttl, le.*, dane_safe_after(clock.now, c.tlsa_ttl) - clock.now + le.run_gap AS needed
          FROM c CROSS JOIN le CROSS JOIN clock WHERE c.type = 'LE' AND c.tlsa_ttl IS NOT NULL
    ), local_ca AS (    -- how long the local CA still signs, against what local certificates last lived
        SELECT ca.not_after, leaf.life_days, ca.not_after - clock.now AS remaining
          FROM newest ca JOIN newest leaf ON leaf.type = 'local' AND NOT leaf.is_ca CROSS JOIN clock
         WHERE ca.type = 'local' AND ca.is_ca
    )
    SELECT c.name, 'asks for OCSP Must-Staple, which Let''s Encrypt refuses since May 2025: its orders fail '
                   '(unless another ACME CA still accepts it)'::text,
           format('UPDATE certificates SET ocsp_must_staple = false WHERE id = cert_id(%L)', c.name)
      FROM c JOIN certificates cc ON cc.id = c.id
     WHERE c.type = 'LE' AND cc.ocsp_must_staple
       -- one look whether any certificate asks for it (since May 2025 hardly any does) before one for each selected
       AND EXISTS (SELECT 1 FROM certificates staple WHERE staple.ocsp_must_staple)
    UNION ALL
    SELECT 'pre_publish_days'::text,
           format('%s days are more than a third of the %s-day lifetime of the ACME CA''s certificates (%s): the '
                  'scheduler caps the window to %s days, so it issues successors of LE certificates %s days before expiry',
                  le.pre_days, le.life_days, le.life_source, le.window_days, le.window_days),
           format('UPDATE settings SET value = %L WHERE name = ''pre_publish_days'' (the window the scheduler uses)',
                  floor(le.window_days))
      FROM le
     WHERE le.capped AND EXISTS (SELECT 1 FROM c WHERE c.type = 'LE')
    UNION ALL
    SELECT d.name,
           format('its TLSA rollover cannot complete before its active instance expires: the successor is issued '
                  '%s days before (pre_publish_days%s), but the DANE-safe wait of 2 x its TLSA TTL (%s) and a '
                  'scheduler interval (schedule_stale, %s) need %s',
                  d.window_days, CASE WHEN d.capped THEN format(' capped to a third of the %s-day lifetime', d.life_days) ELSE '' END,
                  justify_interval(d.tlsa_ttl), d.run_gap, justify_interval(d.needed)),
           CASE WHEN ceil(extract(epoch FROM d.needed) / 86400) <= d.life_days / 3
                THEN format('raise pre_publish_days: UPDATE settings SET value = %L WHERE name = ''pre_publish_days''',
                            ceil(extract(epoch FROM d.needed) / 86400))
                WHEN d.window_days * interval '1 day' > d.run_gap
                THEN format('lower the TTL of its TLSA services to %s seconds or less (the number in services.tlsaprefix: '
                            'UPDATE services SET tlsaprefix = ... WHERE name = ... AND port = ...)',
                            floor(extract(epoch FROM d.window_days * interval '1 day' - d.run_gap) / 2))
                ELSE 'run operate_serverPKI -S more often than the window, and lower schedule_stale and the TTL of its TLSA services' END
      FROM dane d
     WHERE d.window_days * interval '1 day' < d.needed
    UNION ALL
    SELECT 'local CA'::text,
           CASE WHEN l.remaining <= interval '0'
                THEN format('it expired %s: no local certificate can be issued', l.not_after)
                ELSE format('it expires %s: a local certificate issued now ends with it, after %s days, though the last '
                            'one issued lives %s days', l.not_after,
                            trim_scale(round(extract(epoch FROM l.remaining) / 86400, 1)), l.life_days) END,
           'issue a new local CA with operate_serverPKI -I, then the local certificates with operate_serverPKI -C'::text
      FROM local_ca l
     WHERE EXISTS (SELECT 1 FROM c WHERE c.type = 'local') AND l.remaining < l.life_days * interval '1 day';
END
$$;

-- grid_time: a timestamp as operate_serverPKI's grids show it (reports.cell: in UTC without the zone,
-- microseconds only when it has some, as Python prints them), made by the server for the instance grid of
-- -n -v: loading 18,000 timestamps into Python and printing them again was a tenth of -n -v -a at 5,000
-- certificates. A plain SQL expression (no SET): the planner inlines it
CREATE OR REPLACE FUNCTION pki.grid_time(t timestamptz)
RETURNS text LANGUAGE sql STABLE
AS $$
    SELECT to_char(t AT TIME ZONE 'UTC',
                   CASE WHEN date_trunc('second', t) = t THEN 'YYYY-MM-DD HH24:MI:SS' ELSE 'YYYY-MM-DD HH24:MI:SS.US' END)
$$;
