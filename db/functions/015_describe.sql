-- 015_describe: the installer's COMMENT ON, so that psql's \df+, \dv+, \dt+, \d+ and \dT+ document our
-- objects (the descriptions: agent/serverpki/migrate.py, described()).

-- describe: give an object its description: a function of schema pki (each of its overloads) or a
-- view of pki by its name; a TABLE, COLUMN, TYPE, DOMAIN or SCHEMA by its qualified name
-- ('pki.certificates.type'). The installer calls it with the comments of db/ (db/descriptions.md)
CREATE OR REPLACE FUNCTION pki.describe(object_kind text, object_name text, description text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    f regprocedure;
BEGIN
    CASE object_kind
    WHEN 'VIEW' THEN
        EXECUTE format('COMMENT ON VIEW pki.%I IS %L', object_name, description);
    WHEN 'FUNCTION' THEN
        FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
                  WHERE p.pronamespace = 'pki'::regnamespace AND p.proname = object_name LOOP
            EXECUTE format('COMMENT ON FUNCTION %s IS %L', f, description);
        END LOOP;
    WHEN 'TABLE', 'COLUMN', 'TYPE', 'DOMAIN', 'SCHEMA' THEN
        EXECUTE format('COMMENT ON %s %s IS %L', object_kind,
                       (SELECT string_agg(quote_ident(part), '.' ORDER BY n)
                          FROM unnest(parse_ident(object_name)) WITH ORDINALITY AS x(part, n)),
                       description);
    ELSE
        RAISE EXCEPTION 'describe: % is no kind of object the installer describes', object_kind;
    END CASE;
END
$$;
