-- 010_updated: every table's "updated" column is kept by a trigger.

-- set_updated: stamp the row with the transaction's time
CREATE OR REPLACE FUNCTION pki.set_updated()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    NEW.updated := now();
    RETURN NEW;
END
$$;

-- one trigger per table of pki that has an "updated" column, new tables included
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.relname
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'updated' AND NOT a.attisdropped
         WHERE n.nspname = 'pki' AND c.relkind = 'r'
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS set_updated ON pki.%I', t.relname);
        EXECUTE format('CREATE TRIGGER set_updated BEFORE UPDATE ON pki.%I FOR EACH ROW EXECUTE FUNCTION pki.set_updated()', t.relname);
    END LOOP;
END
$$;
