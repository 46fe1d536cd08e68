-- 050_tlsa_config: a certificate's TLSA owners grow by configuration of its services (a TLSA service
-- linked to it, a service's TLSA prefix or port changed): the records of its instances in DNS follow in
-- the next run (a publish_tlsa job), not only at its next renewal. The operator links a service to the
-- certificate that serves it, so the new records vouch for what is served: no DANE wait comes first. An
-- alt name is not published so: the instance in service does not carry it (its successor's records come
-- with the successor). Owners that go are not withdrawn yet (docs/lifecycle.md, "Not yet"). The trigger
-- takes lock_tlsa of the certificates concerned until the transaction ends: keep such configuration
-- changes in short transactions of their own (a longer one may deadlock with a pass, and is then undone).

-- tlsa_owners_grew: enqueue_tlsa for each certificate of the changed rows that has records in DNS
-- (a deployed or prepublished instance); statement-level, so a bulk load costs one query
CREATE OR REPLACE FUNCTION pki.tlsa_owners_grew()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    certs int[];
    cert int;
BEGIN
    -- the transition tables are the trigger's own: each branch names only those of its table and event
    IF TG_TABLE_NAME = 'services' THEN
        certs := ARRAY(SELECT cs.certificate FROM new_rows n JOIN old_rows o ON o.id = n.id
                         JOIN certificates_services cs ON cs.service = n.id
                        WHERE (n.tlsaprefix, n.port) IS DISTINCT FROM (o.tlsaprefix, o.port));
    ELSIF TG_OP = 'INSERT' THEN
        certs := ARRAY(SELECT n.certificate FROM new_rows n);
    ELSE
        certs := ARRAY(SELECT n.certificate FROM new_rows n JOIN old_rows o ON o.id = n.id
                        WHERE (n.certificate, n.service) IS DISTINCT FROM (o.certificate, o.service));
    END IF;
    certs := ARRAY(SELECT DISTINCT c FROM unnest(certs) c
                    WHERE EXISTS (SELECT 1 FROM certinstances i WHERE i.certificate = c AND i.state IN ('deployed', 'prepublished'))
                    ORDER BY c);
    IF certs = '{}' THEN
        RETURN NULL;
    END IF;
    PERFORM lock_tlsa_many(certs);    -- the buckets in order (enqueue_tlsa takes each again: held already)
    FOREACH cert IN ARRAY certs LOOP
        PERFORM enqueue_tlsa(cert, format('TLSA configuration of %s changed (%s): its records follow',
                                          (SELECT s.name FROM main_subjects s WHERE s.certificate = cert),
                                          CASE TG_TABLE_NAME WHEN 'services' THEN 'a TLSA service''s prefix or port'
                                                             ELSE 'a TLSA service linked to it' END));
    END LOOP;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS tlsa_owners_grew_insert ON pki.certificates_services;
CREATE TRIGGER tlsa_owners_grew_insert AFTER INSERT ON pki.certificates_services
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pki.tlsa_owners_grew();
DROP TRIGGER IF EXISTS tlsa_owners_grew_update ON pki.certificates_services;
CREATE TRIGGER tlsa_owners_grew_update AFTER UPDATE ON pki.certificates_services
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pki.tlsa_owners_grew();
DROP TRIGGER IF EXISTS tlsa_owners_grew_update ON pki.services;
CREATE TRIGGER tlsa_owners_grew_update AFTER UPDATE ON pki.services
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pki.tlsa_owners_grew();
