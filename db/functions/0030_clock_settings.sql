-- 0030_clock_settings: the one clock, and typed access to the settings.

-- now: the time every rule compares against; SET pki.now = '...' travels in time
CREATE OR REPLACE FUNCTION pki.now()
RETURNS timestamptz LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$ SELECT coalesce(nullif(current_setting('pki.now', true), '')::timestamptz, now()) $$;

-- setting_int / setting_interval: a settings value of its kind
CREATE OR REPLACE FUNCTION pki.setting_int(setting_name text)
RETURNS int LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$ SELECT value::int FROM pki.settings WHERE name = setting_name AND kind = 'integer' $$;

CREATE OR REPLACE FUNCTION pki.setting_interval(setting_name text)
RETURNS interval LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$ SELECT value::interval FROM pki.settings WHERE name = setting_name AND kind = 'interval' $$;

-- tlsa_ttl: the longest TTL of a certificate's TLSA services (NULL: it has none)
CREATE OR REPLACE FUNCTION pki.tlsa_ttl(cert int)
RETURNS interval LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT max((p).ttl) * interval '1 second'
      FROM (SELECT pki.tlsa_prefix_parts(s.tlsaprefix) AS p
              FROM pki.certificates_services cs JOIN pki.services s ON s.id = cs.service
             WHERE cs.certificate = cert) x
$$;
