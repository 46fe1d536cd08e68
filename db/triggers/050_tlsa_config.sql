-- 050_tlsa_config: a certificate's TLSA owners change by configuration: a TLSA service linked to it or
-- detached, a service's TLSA prefix or port changed, an alt name removed or renamed. The records of its
-- instances in DNS follow in the next run (a publish_tlsa job, which also deletes the RRsets of owners
-- gone: tlsa_owners_in_dns), not only at its next renewal. The operator links a service to the
-- certificate that serves it, so the new records vouch for what is served: no DANE wait comes first. An
-- alt name added is not published so: the instance in service does not carry it (its successor's
-- records come with the successor, which tlsa_unchanged then does not skip). The trigger takes
-- lock_tlsa of the certificates concerned until the transaction ends: keep such configuration changes
-- in short transactions of their own (a longer one may deadlock with a pass, and is then undone).

-- tlsa_owners_changed: enqueue_tlsa for each certificate of the changed rows that tlsa_followed says
-- (in service or with records in DNS; NULL for a certificate removed, which takes its subjects and
-- services with it); statement-level, so a bulk load costs one query
CREATE OR REPLACE FUNCTION pki.tlsa_owners_changed()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    certs int[];
    cert int;
    what text;
BEGIN
    -- the transition tables are the trigger's own: each branch names only those of its table and event
    IF TG_TABLE_NAME = 'services' THEN
        what := 'a TLSA service''s prefix or port';
        certs := ARRAY(SELECT cs.certificate FROM new_rows n JOIN old_rows o ON o.id = n.id
                         JOIN certificates_services cs ON cs.service = n.id
                        WHERE (n.tlsaprefix, n.port) IS DISTINCT FROM (o.tlsaprefix, o.port));
    ELSIF TG_TABLE_NAME = 'subjects' AND TG_OP = 'DELETE' THEN
        what := 'a name removed';
        certs := ARRAY(SELECT o.certificate FROM old_rows o WHERE o.type = 'server');
    ELSIF TG_TABLE_NAME = 'subjects' THEN
        what := 'a name changed';
        certs := ARRAY(SELECT o.certificate FROM new_rows n JOIN old_rows o ON o.id = n.id
                        WHERE o.type = 'server' AND (n.name, n.type, n.certificate) IS DISTINCT FROM (o.name, o.type, o.certificate));
    ELSIF TG_OP = 'INSERT' THEN
        what := 'a TLSA service linked to it';
        certs := ARRAY(SELECT n.certificate FROM new_rows n);
    ELSIF TG_OP = 'DELETE' THEN
        what := 'a TLSA service detached';
        certs := ARRAY(SELECT o.certificate FROM old_rows o);
    ELSE
        what := 'a TLSA service linked or detached';
        certs := ARRAY(SELECT c FROM new_rows n JOIN old_rows o ON o.id = n.id
                         CROSS JOIN LATERAL (VALUES (n.certificate), (o.certificate)) AS both_(c)
                        WHERE (n.certificate, n.service) IS DISTINCT FROM (o.certificate, o.service));
    END IF;
    certs := ARRAY(SELECT DISTINCT c FROM unnest(certs) c WHERE tlsa_followed(c) ORDER BY c);
    IF certs = '{}' THEN
        RETURN NULL;
    END IF;
    PERFORM lock_tlsa_many(certs);    -- the buckets in order (enqueue_tlsa takes each again: held already)
    FOREACH cert IN ARRAY certs LOOP
        PERFORM enqueue_tlsa(cert, format('TLSA configuration of %s changed (%s): its records follow',
                                          (SELECT s.name FROM main_subjects s WHERE s.certificate = cert), what));
    END LOOP;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS tlsa_owners_changed_insert ON pki.certificates_services;
CREATE TRIGGER tlsa_owners_changed_insert AFTER INSERT ON pki.certificates_services
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pki.tlsa_owners_changed();
DROP TRIGGER IF EXISTS tlsa_owners_changed_update ON pki.certificates_services;
CREATE TRIGGER tlsa_owners_changed_update AFTER UPDATE ON pki.certificates_services
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pki.tlsa_owners_changed();
DROP TRIGGER IF EXISTS tlsa_owners_changed_delete ON pki.certificates_services;
CREATE TRIGGER tlsa_owners_changed_delete AFTER DELETE ON pki.certificates_services
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pki.tlsa_owners_changed();
DROP TRIGGER IF EXISTS tlsa_owners_changed_update ON pki.services;
CREATE TRIGGER tlsa_owners_changed_update AFTER UPDATE ON pki.services
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pki.tlsa_owners_changed();
DROP TRIGGER IF EXISTS tlsa_owners_changed_update ON pki.subjects;
CREATE TRIGGER tlsa_owners_changed_update AFTER UPDATE ON pki.subjects
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pki.tlsa_owners_changed();
DROP TRIGGER IF EXISTS tlsa_owners_changed_delete ON pki.subjects;
CREATE TRIGGER tlsa_owners_changed_delete AFTER DELETE ON pki.subjects
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pki.tlsa_owners_changed();
