-- 015_describe: the installer's COMMENT ON, so that psql's \df+, \dv+ document our functions and views.

-- describe: give a function (each of its overloads) or a view of schema pki its description; the
-- installer (agent/serverpki/migrate.py) calls it with the comment above each CREATE in db/
CREATE OR REPLACE FUNCTION pki.describe(object_kind text, object_name text, description text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    f regprocedure;
BEGIN
    IF object_kind = 'VIEW' THEN
        EXECUTE format('COMMENT ON VIEW pki.%I IS %L', object_name, description);
        RETURN;
    END IF;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'pki'::regnamespace AND p.proname = object_name LOOP
        EXECUTE format('COMMENT ON FUNCTION %s IS %L', f, description);
    END LOOP;
END
$$;
