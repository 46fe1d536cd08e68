-- 0002_roles: the three group roles of ARCHITECTURE.md. They are cluster-wide,
-- so create them only when missing; operators grant membership to login roles.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pki_admin') THEN
        CREATE ROLE pki_admin NOLOGIN;   -- the operator with psql: configuration
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pki_agent') THEN
        CREATE ROLE pki_agent NOLOGIN;   -- the agent: claims and completes jobs
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pki_report') THEN
        CREATE ROLE pki_report NOLOGIN;  -- reporting views only, never a key
    END IF;
END
$$;
