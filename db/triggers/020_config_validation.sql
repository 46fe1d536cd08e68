-- triggers/020_config_validation: plain INSERT/UPDATE/DELETE on the configuration
-- tables is checked as strictly as the management functions (which rely on
-- these triggers). Unique constraints and foreign keys stay as the backstop;
-- the triggers speak first, with our SQLSTATE and a hint.

-- disthosts: FQDN syntax, unique; jailroot absolute; jailroot kept while jails exist
CREATE OR REPLACE FUNCTION pki.validate_disthost()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM refuse_in_use(format('disthost "%s" is a target of', OLD.fqdn),
            ARRAY(SELECT t.certificate FROM targets t WHERE t.disthost = OLD.id),
            'remove those targets first: SELECT remove_target(cert, disthost, jail, place)');
        RETURN OLD;
    END IF;
    PERFORM check_host_name(NEW.fqdn, 'disthost FQDN');
    PERFORM check_abs_path(NEW.jailroot, 'jailroot');
    PERFORM check_printable(NEW.remarks, 'remarks', 10000);
    IF EXISTS (SELECT 1 FROM disthosts d WHERE d.fqdn = NEW.fqdn AND d.id <> NEW.id) THEN
        PERFORM raise_error('SP003', format('disthost "%s" exists already', NEW.fqdn),
            'pick another FQDN, or UPDATE the existing disthost');
    END IF;
    IF NEW.jailroot IS NULL AND TG_OP = 'UPDATE'
       AND EXISTS (SELECT 1 FROM jails j WHERE j.disthost = NEW.id) THEN
        PERFORM raise_error('SP007', format('disthost "%s" has jails, so it needs a jailroot', NEW.fqdn),
            'delete its jails first, or keep the jailroot');
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS validate_disthost ON pki.disthosts;
CREATE TRIGGER validate_disthost BEFORE INSERT OR UPDATE OR DELETE ON pki.disthosts
    FOR EACH ROW EXECUTE FUNCTION pki.validate_disthost();

-- jails: a safe single path component, unique, on an existing disthost with a jailroot
CREATE OR REPLACE FUNCTION pki.validate_jail()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    host disthosts;
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- when the disthost itself is being deleted, its targets go with it
        PERFORM refuse_in_use(format('jail "%s" is a target of', OLD.name),
            ARRAY(SELECT t.certificate FROM targets t JOIN disthosts d ON d.id = t.disthost WHERE t.jail = OLD.id),
            'remove those targets first: SELECT remove_target(cert, disthost, jail, place)');
        RETURN OLD;
    END IF;
    PERFORM check_simple_name(NEW.name, 'jail name');
    PERFORM check_printable(NEW.remarks, 'remarks', 10000);
    IF NEW.disthost IS NULL THEN
        PERFORM raise_error('SP009', format('jail "%s" needs a disthost', NEW.name),
            'give the id of a disthost with a jailroot: SELECT id, fqdn FROM disthosts WHERE jailroot IS NOT NULL');
    END IF;
    SELECT * INTO host FROM disthosts d WHERE d.id = NEW.disthost;
    IF NOT FOUND THEN
        PERFORM raise_error('SP002', format('jail "%s": no disthost with id %s', NEW.name, NEW.disthost),
            'find the id with SELECT id, fqdn FROM disthosts');
    END IF;
    IF host.jailroot IS NULL THEN
        PERFORM raise_error('SP007', format('jail "%s": disthost "%s" has no jailroot', NEW.name, host.fqdn),
            format('set one first: UPDATE disthosts SET jailroot = ''/usr/jails'' WHERE fqdn = ''%s''', host.fqdn));
    END IF;
    IF EXISTS (SELECT 1 FROM jails j WHERE j.name = NEW.name AND j.id <> NEW.id) THEN
        PERFORM raise_error('SP003', format('jail "%s" exists already', NEW.name),
            'jail names are unique; pick another name');
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.disthost <> OLD.disthost
       AND EXISTS (SELECT 1 FROM targets t WHERE t.jail = NEW.id) THEN
        PERFORM raise_error('SP007', format('jail "%s" has targets on disthost id %s; it cannot move to another disthost', NEW.name, OLD.disthost),
            'remove its targets first');
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS validate_jail ON pki.jails;
CREATE TRIGGER validate_jail BEFORE INSERT OR UPDATE OR DELETE ON pki.jails
    FOR EACH ROW EXECUTE FUNCTION pki.validate_jail();

-- places: name, absolute paths, key mode 0..0770 (nothing for others), uid/gid >= 0, a printable reload command
CREATE OR REPLACE FUNCTION pki.validate_place()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM refuse_in_use(format('place "%s" is used by targets of', OLD.name),
            ARRAY(SELECT t.certificate FROM targets t WHERE t.place = OLD.id),
            'remove those targets first: SELECT remove_target(cert, disthost, jail, place)');
        RETURN OLD;
    END IF;
    PERFORM check_simple_name(NEW.name, 'place name');
    PERFORM check_required(NEW.cert_file_type::text, format('cert_file_type of place "%s"', NEW.name));
    PERFORM check_required(NEW.chownboth::text, format('chownboth of place "%s"', NEW.name));
    PERFORM check_required(NEW.pglink::text, format('pglink of place "%s"', NEW.name));
    PERFORM check_required(NEW.cert_path, format('cert_path of place "%s"', NEW.name));
    PERFORM check_abs_path(NEW.cert_path, format('cert_path of place "%s"', NEW.name));
    PERFORM check_abs_path(NEW.key_path, format('key_path of place "%s"', NEW.name));
    PERFORM check_range(NEW.mode, 0, 511, format('mode of place "%s"', NEW.name),
        'give the key file mode in octal, e.g. 416 for 0640 (SQL: x''1a0''::int or 416)');
    -- the file holds a private key: its group may read it (0640 for ssl-cert), others never
    IF NEW.mode & 7 <> 0 THEN
        PERFORM raise_error('SP011', format('mode %s (0%s%s%s) of place "%s" lets others than owner and group read the private key',
                NEW.mode, (NEW.mode >> 6) & 7, (NEW.mode >> 3) & 7, NEW.mode & 7, NEW.name),
            'give a mode without permissions for others, e.g. 256 (0400), 288 (0440), 384 (0600) or 416 (0640)');
    END IF;
    PERFORM check_range(NEW.uid, 0, 2147483647, format('uid of place "%s"', NEW.name));
    PERFORM check_range(NEW.gid, 0, 2147483647, format('gid of place "%s"', NEW.name));
    PERFORM check_printable(NEW.reload_command, format('reload_command of place "%s"', NEW.name), 1000);
    PERFORM check_printable(NEW.remarks, 'remarks', 10000);
    IF EXISTS (SELECT 1 FROM places p WHERE p.name = NEW.name AND p.id <> NEW.id) THEN
        PERFORM raise_error('SP003', format('place "%s" exists already', NEW.name),
            'pick another name, or UPDATE the existing place');
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS validate_place ON pki.places;
CREATE TRIGGER validate_place BEFORE INSERT OR UPDATE OR DELETE ON pki.places
    FOR EACH ROW EXECUTE FUNCTION pki.validate_place();

-- services: name, port 1..65535, a TLSA prefix for that port
CREATE OR REPLACE FUNCTION pki.validate_service()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM refuse_in_use(format('service %s/%s is used by', OLD.name, OLD.port),
            ARRAY(SELECT cs.certificate FROM certificates_services cs WHERE cs.service = OLD.id),
            'detach it first: SELECT remove_service(cert, service, port)');
        RETURN OLD;
    END IF;
    PERFORM check_simple_name(NEW.name, 'service name');
    IF NEW.port IS NULL THEN
        PERFORM raise_error('SP009', format('service "%s" needs a port', NEW.name),
            'give the port of the service, a number from 1 to 65535, e.g. 443');
    END IF;
    PERFORM check_range(NEW.port, 1, 65535, format('port of service "%s"', NEW.name));
    PERFORM check_tlsa_prefix(NEW.tlsaprefix, NEW.port);
    PERFORM check_printable(NEW.remarks, 'remarks', 10000);
    IF EXISTS (SELECT 1 FROM services s WHERE s.name = NEW.name AND s.port = NEW.port AND s.id <> NEW.id) THEN
        PERFORM raise_error('SP003', format('service %s/%s exists already', NEW.name, NEW.port),
            'see SELECT * FROM services');
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS validate_service ON pki.services;
CREATE TRIGGER validate_service BEFORE INSERT OR UPDATE OR DELETE ON pki.services
    FOR EACH ROW EXECUTE FUNCTION pki.validate_service();

-- subjects: syntax for the subject type; unique; one main subject per certificate, same type as its alt names
CREATE OR REPLACE FUNCTION pki.validate_subject()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    other subjects;
    main subjects;
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- a main subject goes only with its certificate (when the certificate row is gone, the cascade may)
        IF NOT OLD.isaltname AND EXISTS (SELECT 1 FROM certificates c WHERE c.id = OLD.certificate) THEN
            PERFORM raise_error('SP007', format('"%s" is the subject name of its certificate and cannot be deleted alone', OLD.name),
                format('remove the certificate instead: SELECT remove_cert(''%s'')', OLD.name));
        END IF;
        RETURN OLD;
    END IF;
    PERFORM check_required(NEW.type::text, format('type of subject "%s"', NEW.name));
    PERFORM check_required(NEW.isaltname::text, format('isaltname of subject "%s"', NEW.name));
    PERFORM check_subject_name(NEW.name, NEW.type, NEW.isaltname);
    PERFORM check_printable(NEW.remarks, 'remarks', 10000);
    IF TG_OP = 'UPDATE' AND (NEW.certificate IS DISTINCT FROM OLD.certificate OR NEW.isaltname <> OLD.isaltname) THEN
        PERFORM raise_error('SP012', format('subject "%s": its certificate and its alt name flag cannot change', OLD.name),
            'remove the alt name and add it to the other certificate: remove_altname / add_altname');
    END IF;
    SELECT * INTO other FROM subjects s WHERE s.name = NEW.name AND s.id <> NEW.id;
    IF FOUND THEN
        PERFORM raise_error('SP003', format('"%s" is already in use as %s', NEW.name,
                CASE WHEN other.isaltname THEN 'an alt name' ELSE 'a subject name' END),
            'every name belongs to one certificate; see SELECT * FROM certs WHERE "Cert Name" = ... OR "Alt Name" = ...');
    END IF;
    IF NEW.certificate IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM certificates c WHERE c.id = NEW.certificate) THEN
            PERFORM raise_error('SP002', format('subject "%s": no certificate with id %s', NEW.name, NEW.certificate),
                'create certificates with SELECT * FROM add_cert(...)');
        END IF;
        SELECT * INTO main FROM main_subjects s WHERE s.certificate = NEW.certificate AND s.id <> NEW.id;
        IF FOUND AND NOT NEW.isaltname THEN
            PERFORM raise_error('SP007', format('certificate %s has the subject name "%s" already; "%s" can only be an alt name', NEW.certificate, main.name, NEW.name),
                format('SELECT add_altname(''%s'', ''%s'')', main.name, NEW.name));
        END IF;
        IF FOUND AND main.type <> NEW.type THEN
            PERFORM raise_error('SP007', format('alt name "%s" is of type %s, its certificate''s subject "%s" of type %s', NEW.name, NEW.type, main.name, main.type),
                'an alt name has the type of its certificate''s subject');
        END IF;
        -- the other way round: a subject name keeps the type of its certificate's alt names
        IF NOT NEW.isaltname AND EXISTS (SELECT 1 FROM subjects s WHERE s.certificate = NEW.certificate
                                           AND s.isaltname AND s.type <> NEW.type AND s.id <> NEW.id) THEN
            PERFORM raise_error('SP007', format('subject "%s" would be of type %s, but its certificate''s alt name(s) %s are not',
                    NEW.name, NEW.type,
                    (SELECT string_agg(format('"%s" (%s)', s.name, s.type), ', ' ORDER BY s.name) FROM subjects s
                      WHERE s.certificate = NEW.certificate AND s.isaltname AND s.type <> NEW.type AND s.id <> NEW.id)),
                'an alt name has the type of its certificate''s subject: remove the alt names first (remove_altname), change the type, add them again');
        END IF;
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS validate_subject ON pki.subjects;
CREATE TRIGGER validate_subject BEFORE INSERT OR UPDATE OR DELETE ON pki.subjects
    FOR EACH ROW EXECUTE FUNCTION pki.validate_subject();

-- certificates: at commit, every certificate has exactly one subject name
CREATE OR REPLACE FUNCTION pki.certificate_has_subject()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM certificates c WHERE c.id = NEW.id)
       AND NOT EXISTS (SELECT 1 FROM main_subjects s WHERE s.certificate = NEW.id) THEN
        PERFORM raise_error('SP007', format('certificate %s has no subject name', NEW.id),
            'create certificates with SELECT * FROM add_cert(...), which adds the subject in the same transaction');
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS certificate_has_subject ON pki.certificates;
CREATE CONSTRAINT TRIGGER certificate_has_subject AFTER INSERT ON pki.certificates
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pki.certificate_has_subject();

-- certificates: the required columns given, printable remarks
CREATE OR REPLACE FUNCTION pki.validate_certificate()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    PERFORM check_required(NEW.type::text, format('type of certificate %s', NEW.id));
    PERFORM check_required(NEW.encryption_algo::text, format('encryption_algo of certificate %s', NEW.id));
    PERFORM check_required(NEW.disabled::text, format('disabled of certificate %s', NEW.id));
    PERFORM check_required(NEW.ocsp_must_staple::text, format('ocsp_must_staple of certificate %s', NEW.id));
    PERFORM check_printable(NEW.remarks, 'remarks', 10000);
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS validate_certificate ON pki.certificates;
CREATE TRIGGER validate_certificate BEFORE INSERT OR UPDATE ON pki.certificates
    FOR EACH ROW EXECUTE FUNCTION pki.validate_certificate();

-- targets: existing certificate, disthost and place; a jail only on the target's disthost; unique
CREATE OR REPLACE FUNCTION pki.validate_target()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    the_jail jails;
BEGIN
    PERFORM check_printable(NEW.remarks, 'remarks', 10000);
    IF NEW.certificate IS NULL OR NOT EXISTS (SELECT 1 FROM certificates c WHERE c.id = NEW.certificate) THEN
        PERFORM raise_error('SP002', format('target: no certificate with id %s', coalesce(NEW.certificate::text, 'NULL')),
            'use SELECT add_target(cert, disthost, jail, place), which finds the ids by name');
    END IF;
    IF NEW.disthost IS NULL OR NOT EXISTS (SELECT 1 FROM disthosts d WHERE d.id = NEW.disthost) THEN
        PERFORM raise_error('SP002', format('target: no disthost with id %s', coalesce(NEW.disthost::text, 'NULL')),
            'find the id with SELECT id, fqdn FROM disthosts');
    END IF;
    IF NEW.place IS NULL THEN
        PERFORM raise_error('SP009', 'a target needs a place (where on the host the files go)',
            'list places with SELECT * FROM places; add one with SELECT add_place(...)');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM places p WHERE p.id = NEW.place) THEN
        PERFORM raise_error('SP002', format('target: no place with id %s', NEW.place),
            'find the id with SELECT id, name FROM places');
    END IF;
    IF NEW.jail IS NOT NULL THEN
        SELECT * INTO the_jail FROM jails j WHERE j.id = NEW.jail;
        IF NOT FOUND THEN
            PERFORM raise_error('SP002', format('target: no jail with id %s', NEW.jail),
                'find the id with SELECT id, name, disthost FROM jails');
        END IF;
        IF the_jail.disthost <> NEW.disthost THEN
            PERFORM raise_error('SP007', format('target: jail "%s" is on disthost "%s", not on "%s"', the_jail.name,
                    (SELECT fqdn FROM disthosts WHERE id = the_jail.disthost), (SELECT fqdn FROM disthosts WHERE id = NEW.disthost)),
                'name the disthost the jail sits on');
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM targets t WHERE t.certificate = NEW.certificate AND t.disthost = NEW.disthost
                 AND t.jail IS NOT DISTINCT FROM NEW.jail AND t.place = NEW.place AND t.id <> NEW.id) THEN
        PERFORM raise_error('SP003', format('certificate "%s" has the target %s/%s/%s already',
                (SELECT s.name FROM main_subjects s WHERE s.certificate = NEW.certificate),
                (SELECT d.fqdn FROM disthosts d WHERE d.id = NEW.disthost),
                coalesce((SELECT j.name::text FROM jails j WHERE j.id = NEW.jail), '-'),
                (SELECT p.name FROM places p WHERE p.id = NEW.place)),
            'see SELECT "Dist Host", "Jail", "Place" FROM certs');
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS validate_target ON pki.targets;
CREATE TRIGGER validate_target BEFORE INSERT OR UPDATE ON pki.targets
    FOR EACH ROW EXECUTE FUNCTION pki.validate_target();

-- certificates_services: existing certificate and service, once each
CREATE OR REPLACE FUNCTION pki.validate_certificate_service()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    PERFORM check_printable(NEW.remarks, 'remarks', 10000);
    IF NOT EXISTS (SELECT 1 FROM certificates c WHERE c.id = NEW.certificate) THEN
        PERFORM raise_error('SP002', format('no certificate with id %s', coalesce(NEW.certificate::text, 'NULL')),
            'use SELECT add_service(cert, service, port), which finds the ids by name');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM services s WHERE s.id = NEW.service) THEN
        PERFORM raise_error('SP002', format('no service with id %s', coalesce(NEW.service::text, 'NULL')),
            'list them with SELECT * FROM services');
    END IF;
    IF EXISTS (SELECT 1 FROM certificates_services cs WHERE cs.certificate = NEW.certificate
                 AND cs.service = NEW.service AND cs.id <> NEW.id) THEN
        PERFORM raise_error('SP003', format('certificate "%s" has the TLSA service %s already',
                (SELECT s.name FROM main_subjects s WHERE s.certificate = NEW.certificate),
                (SELECT sv.name || '/' || sv.port FROM services sv WHERE sv.id = NEW.service)),
            'see SELECT "TLSA", "Port" FROM certs');
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS validate_certificate_service ON pki.certificates_services;
CREATE TRIGGER validate_certificate_service BEFORE INSERT OR UPDATE ON pki.certificates_services
    FOR EACH ROW EXECUTE FUNCTION pki.validate_certificate_service();

-- settings: only the known names, each value of its kind and range (a new
-- setting, inserted by a migration, is checked the same way)
CREATE OR REPLACE FUNCTION pki.validate_setting()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    as_interval interval;
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM raise_error('SP012', format('setting "%s" cannot be deleted', OLD.name),
            format('change its value: UPDATE settings SET value = ... WHERE name = ''%s''', OLD.name));
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.name IS DISTINCT FROM OLD.name OR NEW.kind IS DISTINCT FROM OLD.kind) THEN
        PERFORM raise_error('SP012', format('setting "%s": only its value and remarks can change', OLD.name),
            format('UPDATE settings SET value = ... WHERE name = ''%s''', OLD.name));
    END IF;
    IF TG_OP = 'INSERT' THEN  -- a new setting (a migration's) has a plain name, not taken yet
        PERFORM check_simple_name(NEW.name, 'setting name');
        IF EXISTS (SELECT 1 FROM settings s WHERE s.name = NEW.name) THEN
            PERFORM raise_error('SP003', format('setting "%s" exists already', NEW.name),
                format('change its value: UPDATE settings SET value = ... WHERE name = ''%s''', NEW.name));
        END IF;
    END IF;
    PERFORM check_required(NEW.description, format('description of setting "%s"', NEW.name));
    PERFORM check_printable(NEW.description, format('description of setting "%s"', NEW.name), 1000);
    PERFORM check_required(NEW.value, format('value of setting "%s"', NEW.name));
    PERFORM check_printable(NEW.value, format('value of setting "%s"', NEW.name), 200);
    PERFORM check_printable(NEW.remarks, 'remarks', 10000);
    CASE NEW.kind
        WHEN 'integer' THEN
            IF NEW.value !~ '^[0-9]{1,7}$' THEN
                PERFORM raise_error('SP011', format('setting "%s": "%s" is not a whole number', NEW.name, NEW.value),
                    'give a whole number of days such as 30');
            END IF;
            PERFORM check_range(NEW.value::bigint, 0, 3650, format('setting "%s"', NEW.name));
        WHEN 'interval' THEN
            BEGIN
                as_interval := NEW.value::interval;
            EXCEPTION WHEN others THEN
                PERFORM raise_error('SP011', format('setting "%s": "%s" is not an interval', NEW.name, NEW.value),
                    'give an interval such as ''1 day'' or ''6 hours''');
            END;
            IF as_interval < interval '0' OR as_interval > interval '3650 days' THEN
                PERFORM raise_error('SP005', format('setting "%s": %s is out of range 0 .. 3650 days', NEW.name, NEW.value),
                    'give a positive interval such as ''1 day''');
            END IF;
        WHEN 'boolean' THEN
            IF lower(NEW.value) NOT IN ('true', 'false') THEN
                PERFORM raise_error('SP011', format('setting "%s": "%s" is not true or false', NEW.name, NEW.value),
                    'give true or false');
            END IF;
        WHEN 'text' THEN
            NULL;
        ELSE
            PERFORM raise_error('SP011', format('setting "%s": kind %s is not one of integer, interval, text, boolean',
                    NEW.name, coalesce(quote_literal(NEW.kind), 'NULL')),
                'give the kind integer, interval, text or boolean');
    END CASE;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS validate_setting ON pki.settings;
CREATE TRIGGER validate_setting BEFORE INSERT OR UPDATE OR DELETE ON pki.settings
    FOR EACH ROW EXECUTE FUNCTION pki.validate_setting();
