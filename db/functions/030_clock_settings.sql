-- 030_clock_settings: the one clock, and typed access to the settings.

-- time_travel_enabled: the owner's switch (pki.time_travel), readable through this function only
CREATE OR REPLACE FUNCTION pki.time_travel_enabled()
RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$ SELECT coalesce((SELECT t.enabled FROM pki.time_travel t), false) $$;

-- now: the time every rule, guard, lease and event compares against. A session may travel in
-- time (SET pki.now = '...') only where the schema owner enabled it for this database
-- (pki.time_travel, off on every install): the roles cannot move the clock of leases and guards.
-- The switch is read only when pki.now is set, so production pays nothing for the check.
CREATE OR REPLACE FUNCTION pki.now()
RETURNS timestamptz LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    IF coalesce(current_setting('pki.now', true), '') = '' THEN
        RETURN now();
    ELSIF pki.time_travel_enabled() THEN
        RETURN current_setting('pki.now')::timestamptz;
    END IF;
    -- raised here, not by raise_error: every role reads the clock, only some may call raise_error
    RAISE EXCEPTION USING ERRCODE = 'SP025',
        MESSAGE = format('pki.now is set to %s, but time travel is not enabled for database %s',
                         current_setting('pki.now', true), current_database()),
        HINT = 'RESET pki.now (check PGOPTIONS); only the schema owner can enable time travel, for tests and demos';
END
$$;

-- setting_int: a settings value of kind integer
CREATE OR REPLACE FUNCTION pki.setting_int(setting_name text)
RETURNS int LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$ SELECT value::int FROM pki.settings WHERE name = setting_name AND kind = 'integer' $$;

-- setting_interval: a settings value of kind interval
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

-- The DANE-safe order: a successor goes live only after its TLSA records were published for
-- 2 x TTL (resolvers may cache the old RRset for one TTL, and the new one for another).
-- No SET search_path on the two below, and plain SQL: the planner inlines them into the
-- scheduler's per-certificate expressions (a SET clause would make each a function call). So
-- every operator is pg_catalog's by name: a caller's search_path must not pick another.

-- dane_safe_after: when a successor whose TLSA records were published at published may go live
CREATE OR REPLACE FUNCTION pki.dane_safe_after(published timestamptz, ttl interval)
RETURNS timestamptz LANGUAGE sql STABLE
AS $$ SELECT published OPERATOR(pg_catalog.+) (2::float8 OPERATOR(pg_catalog.*) ttl) $$;

-- dane_ok: may the successor (in state succ_state) go live at the time at? Yes when there is no
-- active instance to roll over from, no TLSA service (ttl NULL), or it is prepublished and the wait is over
CREATE OR REPLACE FUNCTION pki.dane_ok(has_active boolean, ttl interval, succ_state dd.cert_state,
                                       published timestamptz, at timestamptz)
RETURNS boolean LANGUAGE sql STABLE
AS $$
    SELECT NOT has_active OR ttl IS NULL
        OR (succ_state OPERATOR(pg_catalog.=) 'prepublished'::dd.cert_state
            AND at OPERATOR(pg_catalog.>=) pki.dane_safe_after(published, ttl))
$$;
