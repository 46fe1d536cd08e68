-- 040_manage: the operator's management functions, so nobody handles foreign
-- keys by hand. Arguments are text, so a wrong enum value is our SQLSTATE and
-- not a cast error. The triggers of triggers/020_config_validation validate every row these write; a
-- refusal anywhere rolls back the whole call.

-- enum_label: the value if it is a label of the enum type, else SP011 listing the labels
CREATE OR REPLACE FUNCTION pki.enum_label(value text, enum_type regtype, what text)
RETURNS text LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    labels text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_enum e WHERE e.enumtypid = enum_type AND e.enumlabel = value) THEN
        RETURN value;
    END IF;
    SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder) INTO labels
      FROM pg_enum e WHERE e.enumtypid = enum_type;
    PERFORM raise_error('SP011', format('%s %s is not one of %s', what, coalesce(quote_literal(value), 'NULL'), labels),
        format('give one of %s', labels));
    RETURN NULL;
END
$$;

-- cert_id: the certificate whose subject name is the_name
CREATE OR REPLACE FUNCTION pki.cert_id(the_name text)
RETURNS int LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    subj subjects;
    main_name text;
BEGIN
    PERFORM check_required(the_name, 'certificate name');
    SELECT * INTO subj FROM subjects s WHERE s.name = the_name::citext;
    IF NOT FOUND OR subj.certificate IS NULL THEN
        PERFORM raise_error('SP002', format('no certificate named "%s"', the_name),
            'list them with SELECT DISTINCT "Cert Name" FROM certs');
    END IF;
    IF subj.isaltname THEN
        SELECT s.name INTO main_name FROM main_subjects s WHERE s.certificate = subj.certificate;
        PERFORM raise_error('SP002', format('"%s" is an alt name of certificate "%s", not a certificate name', the_name, main_name),
            format('name the certificate: "%s"', main_name));
    END IF;
    RETURN subj.certificate;
END
$$;

-- disthost_id: the disthost with this FQDN
CREATE OR REPLACE FUNCTION pki.disthost_id(the_fqdn text)
RETURNS int LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    found_id int;
BEGIN
    PERFORM check_required(the_fqdn, 'disthost');
    SELECT d.id INTO found_id FROM disthosts d WHERE d.fqdn = the_fqdn::citext;
    IF NOT FOUND THEN
        PERFORM raise_error('SP002', format('no disthost "%s"', the_fqdn),
            'list them with SELECT fqdn FROM disthosts; add one with SELECT add_disthost(fqdn, jailroot)');
    END IF;
    RETURN found_id;
END
$$;

-- jail_id: the jail with this name (on the given disthost, when one is given)
CREATE OR REPLACE FUNCTION pki.jail_id(the_jail text, on_disthost int DEFAULT NULL)
RETURNS int LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jails;
BEGIN
    PERFORM check_required(the_jail, 'jail');
    SELECT * INTO j FROM jails WHERE name = the_jail::citext;
    IF NOT FOUND THEN
        PERFORM raise_error('SP002', format('no jail "%s"', the_jail),
            'list them with SELECT j.name, d.fqdn FROM jails j JOIN disthosts d ON d.id = j.disthost');
    END IF;
    IF on_disthost IS NOT NULL AND j.disthost <> on_disthost THEN
        PERFORM raise_error('SP007', format('jail "%s" is on disthost "%s", not on "%s"', the_jail,
                (SELECT fqdn FROM disthosts WHERE id = j.disthost), (SELECT fqdn FROM disthosts WHERE id = on_disthost)),
            'name the disthost the jail sits on');
    END IF;
    RETURN j.id;
END
$$;

-- place_id: the place with this name
CREATE OR REPLACE FUNCTION pki.place_id(the_place text)
RETURNS int LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    found_id int;
BEGIN
    PERFORM check_required(the_place, 'place');
    SELECT p.id INTO found_id FROM places p WHERE p.name = the_place::citext;
    IF NOT FOUND THEN
        PERFORM raise_error('SP002', format('no place "%s"', the_place),
            'list them with SELECT name FROM places; add one with SELECT add_place(...)');
    END IF;
    RETURN found_id;
END
$$;

-- service_id: the TLSA service with this name and port
CREATE OR REPLACE FUNCTION pki.service_id(the_service text, the_port int)
RETURNS int LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    found_id int;
BEGIN
    PERFORM check_required(the_service, 'TLSA service name');
    IF the_port IS NULL THEN
        PERFORM raise_error('SP009', format('TLSA service "%s" needs a port', the_service),
            'give name and port together, e.g. ''https'', 443');
    END IF;
    SELECT s.id INTO found_id FROM services s WHERE s.name = the_service::citext AND s.port = the_port;
    IF NOT FOUND THEN
        PERFORM raise_error('SP002', format('no TLSA service "%s" with port %s', the_service, the_port),
            'list them with SELECT name, port FROM services; add one with SELECT add_tlsa_service(name, port)');
    END IF;
    RETURN found_id;
END
$$;

-- add_cert: a certificate with its subject, optional alt name, TLSA service and target
-- SELECT * FROM add_cert('www.example.org', 'server', 'LE', 'rsa_plus_ec', false,
--                        'example.org', 'https', 443, 'web1.example.org', NULL, 'nginx');
CREATE OR REPLACE FUNCTION pki.add_cert(
    the_name text, the_subject_type text, the_cert_type text, the_encryption_algo text,
    must_staple boolean, the_altname text, the_tlsa_name text, the_tlsa_port integer,
    the_disthost_name text, the_jail text, the_place text)
-- its rows are those of the view certs, declared here: a function typed by a view's row would
-- depend on the view, and the upgrade drops every view before re-creating it
RETURNS TABLE ("Subject" dd.subject_type, "Cert Name" dd.citext, "Type" dd.cert_type, "Algo" dd.cert_encryption_algo,
               "OCSP m st" boolean, authorized date, "Alt Name" dd.citext, "TLSA" dd.citext, "Port" int4,
               "Dist Host" dd.citext, "Jail" dd.citext, "Place" dd.citext)
LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    new_cert int;
    subject_type dd.subject_type;
BEGIN
    PERFORM check_required(the_name, 'certificate name');
    PERFORM check_required(the_subject_type, 'subject type');
    PERFORM check_required(the_cert_type, 'cert type');
    subject_type := enum_label(the_subject_type, 'dd.subject_type', 'subject type');
    INSERT INTO certificates (type, encryption_algo, ocsp_must_staple)
         VALUES (enum_label(the_cert_type, 'dd.cert_type', 'cert type')::dd.cert_type,
                 enum_label(coalesce(the_encryption_algo, 'rsa'), 'dd.cert_encryption_algo', 'encryption algo')::dd.cert_encryption_algo,
                 coalesce(must_staple, false))
      RETURNING id INTO new_cert;
    INSERT INTO subjects (type, name, isaltname, certificate) VALUES (subject_type, the_name, false, new_cert);
    IF the_altname IS NOT NULL THEN
        INSERT INTO subjects (type, name, isaltname, certificate) VALUES (subject_type, the_altname, true, new_cert);
    END IF;
    IF the_tlsa_name IS NOT NULL OR the_tlsa_port IS NOT NULL THEN
        IF the_tlsa_name IS NULL THEN
            PERFORM raise_error('SP009', format('TLSA port %s given without a TLSA service name', the_tlsa_port),
                'give name and port together, e.g. ''https'', 443, or neither');
        END IF;
        INSERT INTO certificates_services (certificate, service) VALUES (new_cert, service_id(the_tlsa_name, the_tlsa_port));
    END IF;
    IF the_disthost_name IS NOT NULL OR the_jail IS NOT NULL OR the_place IS NOT NULL THEN
        PERFORM add_target(the_name, the_disthost_name, the_jail, the_place);
    END IF;
    RETURN QUERY SELECT * FROM certs c WHERE c."Cert Name" = the_name::citext LIMIT 1;
END
$$;

-- The removers look the name up first, into a variable: a lookup inside the
-- WHERE clause runs only when the scan meets a row, so on an empty table (or
-- under another plan) an unknown name would pass silently.

-- remove_cert: the certificate with its alt names, services, targets and instances. Refused (SP029)
-- while DNS holds TLSA records it wrote (tlsa_owners_in_dns) or a publish_tlsa job of it may still write
-- some: gone, it would leave records that vouch for its keys, and nobody would withdraw them. Records that
-- cannot be withdrawn (the zone given up, or in other hands) the operator removes there and forgets here
-- (forget_tlsa_owners). A plain DELETE FROM pki.certificates skips this check
CREATE OR REPLACE FUNCTION pki.remove_cert(the_cert_name text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_cert int := cert_id(the_cert_name);
    v_owners text;
    v_job bigint;
    v_job_state text;
BEGIN
    -- its row first, the lock the DELETE below takes first (lock_tlsa here would come before the instances'
    -- rows, the wrong order: completions take it after them): a transaction that enqueued a job of it (a name
    -- handed over to it) commits before the check. Then one snapshot: only a completion of its own
    -- publish_tlsa job writes its rows there, and that job is running until the completion commits
    PERFORM 1 FROM certificates WHERE id = v_cert FOR UPDATE;
    SELECT (SELECT string_agg(d.owner, ', ' ORDER BY d.owner) FROM tlsa_owners_in_dns d WHERE d.certificate = v_cert),
           j.id, j.state::text
      INTO v_owners, v_job, v_job_state
      FROM (SELECT active_job('publish_tlsa', tlsa_subject_key(v_cert)) AS id) a LEFT JOIN jobs j ON j.id = a.id;
    IF v_owners IS NOT NULL THEN
        PERFORM raise_error('SP029',
            format('certificate %s has TLSA records in DNS at %s: removed, it would leave them vouching for its keys, '
                   'and nobody would withdraw them', the_cert_name, v_owners),
            format('withdraw them first with operate_serverPKI -R -o %s (add -i %s when it is disabled), then remove it; '
                   'records it cannot withdraw (their zone given up or served elsewhere, a name moved to a certificate '
                   'not in service): delete them there by hand, then SELECT forget_tlsa_owners(%L)',
                   the_cert_name, the_cert_name, the_cert_name));
    ELSIF v_job IS NOT NULL THEN
        PERFORM raise_error('SP029',
            format('certificate %s has publish_tlsa job %s (%s), which may write TLSA records: removed, nobody would withdraw them',
                   the_cert_name, v_job, v_job_state),
            format('let that job end first (operate_serverPKI runs it when it is due; one that keeps failing backs off '
                   'and dies after its attempts: SELECT state, attempts, run_after, last_error FROM jobs WHERE id = %s), '
                   'then remove it', v_job));
    END IF;
    DELETE FROM certificates WHERE id = v_cert;
END
$$;

-- forget_tlsa_owners: the owners at which the certificate's TLSA records are kept as in DNS
-- (tlsa_owners_in_dns; all of them, or those named) are forgotten: the operator removed the records by
-- hand where no publish_tlsa job can (their zone given up or served elsewhere, DNS updates stopped).
-- Returns the owners forgotten. SECURITY DEFINER: the table is the jobs' record, not configuration
-- SELECT * FROM forget_tlsa_owners('www.example.org');
CREATE OR REPLACE FUNCTION pki.forget_tlsa_owners(the_cert_name text, the_owners text[] DEFAULT NULL)
RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_cert int := cert_id(the_cert_name);
    -- owners as tlsa_owners_in_dns spells them: lower case, with the final dot
    v_owners text[] := ARRAY(SELECT lower(rtrim(o, '.')) || '.' FROM unnest(the_owners) o WHERE o IS NOT NULL);
    v_bad text := (SELECT o FROM unnest(v_owners) o WHERE tlsa_owner_name(o) IS NULL LIMIT 1);
    v_forgotten text[];
BEGIN
    IF v_bad IS NOT NULL THEN
        PERFORM raise_error('SP001', format('%s is not a TLSA owner name', v_bad),
            format('name the owners as SELECT owner FROM tlsa_owners_in_dns WHERE certificate = cert_id(%L) lists them, '
                   'such as ''_443._tcp.www.example.org.'', or none for all of them', the_cert_name));
    END IF;
    -- the locks a publish_tlsa completion takes before it writes these rows, in its order (keep_owners_in_dns)
    PERFORM lock_tlsa(v_cert);
    PERFORM pg_advisory_xact_lock(hashtext('pki.tlsa_owners_in_dns'));
    WITH gone AS (
        DELETE FROM tlsa_owners_in_dns d
         WHERE d.certificate = v_cert AND (the_owners IS NULL OR d.owner = ANY (v_owners))
     RETURNING d.owner)
    SELECT ARRAY(SELECT owner FROM gone ORDER BY owner) INTO v_forgotten;
    IF the_owners IS NOT NULL AND cardinality(v_owners) > cardinality(v_forgotten) THEN
        RAISE NOTICE 'certificate %: % not kept as in DNS for it, nothing to forget there', the_cert_name,
            array_to_string(ARRAY(SELECT o FROM unnest(v_owners) o EXCEPT SELECT unnest(v_forgotten) ORDER BY 1), ', ');
    END IF;
    RETURN QUERY SELECT unnest(v_forgotten);
END
$$;

-- disable_cert: the scheduler skips a disabled certificate unless a run includes it (-a, -i)
CREATE OR REPLACE FUNCTION pki.disable_cert(the_cert_name text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_cert int := cert_id(the_cert_name);
BEGIN
    UPDATE certificates SET disabled = true WHERE id = v_cert;
END
$$;

-- enable_cert: the scheduler works the certificate again
CREATE OR REPLACE FUNCTION pki.enable_cert(the_cert_name text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_cert int := cert_id(the_cert_name);
BEGIN
    UPDATE certificates SET disabled = false WHERE id = v_cert;
END
$$;

-- set_key_reuse: keep the certificate's private key across renewals, for up to `renewals` renewals
-- and/or `days` days after the key was made (NULL: no limit of that kind; both NULL: reuse off, a new
-- key every renewal, the default). A key that stays keeps "3 1 1" TLSA records as they are, so the
-- successor is deployed without the DANE-safe wait (docs/lifecycle.md, rule 7)
-- SELECT set_key_reuse('mail.example.org', 4, 365);
CREATE OR REPLACE FUNCTION pki.set_key_reuse(the_cert_name text, renewals integer, days integer)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_cert int := cert_id(the_cert_name);
BEGIN
    IF renewals <= 0 THEN
        PERFORM raise_error('SP005', format('key reuse of %s: renewals %s is not 1 or more', the_cert_name, renewals),
            'give how many renewals one key may serve (1 or more), or NULL for no limit by count');
    END IF;
    IF days <= 0 THEN
        PERFORM raise_error('SP005', format('key reuse of %s: days %s is not 1 or more', the_cert_name, days),
            'give for how many days after it was made a key may be reused (1 or more), or NULL for no limit by age');
    END IF;
    IF is_ca_cert(v_cert) THEN
        PERFORM raise_error('SP007', format('key reuse of %s: it is a CA certificate, whose key is never reused', the_cert_name),
            'set key reuse on server or client certificates; issue a new CA with operate_serverPKI -I');
    END IF;
    UPDATE certificates SET reuse_key_renewals = renewals, reuse_key_days = days WHERE id = v_cert;
END
$$;

-- add_altname: one more name on a certificate's subject alt name list
CREATE OR REPLACE FUNCTION pki.add_altname(the_cert_name text, the_altname text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_cert int := cert_id(the_cert_name);
BEGIN
    PERFORM check_required(the_altname, 'alt name');
    IF EXISTS (SELECT 1 FROM subjects WHERE name = the_altname::citext AND certificate = v_cert AND isaltname) THEN
        RAISE NOTICE 'alt name "%" is on certificate "%" already', the_altname, the_cert_name;
        RETURN;
    END IF;
    INSERT INTO subjects (type, name, isaltname, certificate)
        SELECT s.type, the_altname, true, v_cert FROM main_subjects s WHERE s.certificate = v_cert;
END
$$;

-- remove_altname: take a name off a certificate
CREATE OR REPLACE FUNCTION pki.remove_altname(the_cert_name text, the_altname text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_cert int := cert_id(the_cert_name);
BEGIN
    PERFORM check_required(the_altname, 'alt name');
    DELETE FROM subjects WHERE name = the_altname::citext AND certificate = v_cert AND isaltname;
    IF NOT FOUND THEN
        PERFORM raise_error('SP002', format('"%s" is not an alt name of certificate "%s"', the_altname, the_cert_name),
            format('see SELECT "Alt Name" FROM certs WHERE "Cert Name" = ''%s''', the_cert_name));
    END IF;
END
$$;

-- add_service: publish TLSA records of the certificate for this service
CREATE OR REPLACE FUNCTION pki.add_service(the_cert_name text, the_service_name text, the_port integer)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_cert int := cert_id(the_cert_name);
    v_service int := service_id(the_service_name, the_port);
BEGIN
    IF EXISTS (SELECT 1 FROM certificates_services WHERE certificate = v_cert AND service = v_service) THEN
        RAISE NOTICE 'certificate "%" has service %/% already', the_cert_name, the_service_name, the_port;
        RETURN;
    END IF;
    INSERT INTO certificates_services (certificate, service) VALUES (v_cert, v_service);
END
$$;

-- remove_service: stop publishing TLSA records of the certificate for this service
CREATE OR REPLACE FUNCTION pki.remove_service(the_cert_name text, the_service_name text, the_port integer)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_cert int := cert_id(the_cert_name);
    v_service int := service_id(the_service_name, the_port);
BEGIN
    DELETE FROM certificates_services WHERE certificate = v_cert AND service = v_service;
    IF NOT FOUND THEN
        PERFORM raise_error('SP002', format('certificate "%s" has no service %s/%s', the_cert_name, the_service_name, the_port),
            format('see SELECT "TLSA", "Port" FROM certs WHERE "Cert Name" = ''%s''', the_cert_name));
    END IF;
END
$$;

-- add_target: deploy the certificate to a place on a disthost, optionally inside a jail
CREATE OR REPLACE FUNCTION pki.add_target(the_cert_name text, the_disthost_name text, the_jail text, the_place text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_cert int := cert_id(the_cert_name);
    v_host int;
    v_jail int;
    v_place int;
BEGIN
    IF the_disthost_name IS NULL THEN
        PERFORM raise_error('SP009', 'a target needs a disthost when a jail or place is given',
            'give the disthost''s FQDN too');
    END IF;
    v_host := disthost_id(the_disthost_name);
    IF the_jail IS NOT NULL THEN
        v_jail := jail_id(the_jail, v_host);
    END IF;
    IF the_place IS NULL THEN
        PERFORM raise_error('SP009', format('target on "%s" needs a place (where on the host the files go)', the_disthost_name),
            'list places with SELECT * FROM places; add one with SELECT add_place(...)');
    END IF;
    v_place := place_id(the_place);
    IF EXISTS (SELECT 1 FROM targets t WHERE t.certificate = v_cert AND t.disthost = v_host
                 AND t.jail IS NOT DISTINCT FROM v_jail AND t.place = v_place) THEN
        RAISE NOTICE 'certificate "%" has this target already', the_cert_name;
        RETURN;
    END IF;
    INSERT INTO targets (disthost, jail, place, certificate) VALUES (v_host, v_jail, v_place, v_cert);
END
$$;

-- remove_target: stop deploying the certificate there (the files on the host stay)
CREATE OR REPLACE FUNCTION pki.remove_target(the_cert_name text, the_disthost_name text, the_jail text, the_place text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_cert int := cert_id(the_cert_name);
    v_host int := disthost_id(the_disthost_name);
    v_jail int := CASE WHEN the_jail IS NULL THEN NULL ELSE jail_id(the_jail, v_host) END;
    v_place int := place_id(the_place);
BEGIN
    DELETE FROM targets t
     WHERE t.certificate = v_cert AND t.disthost = v_host AND t.jail IS NOT DISTINCT FROM v_jail
       AND t.place = v_place;
    IF NOT FOUND THEN
        PERFORM raise_error('SP002', format('certificate "%s" has no target %s/%s/%s', the_cert_name,
                the_disthost_name, coalesce(the_jail, '-'), the_place),
            format('see SELECT "Dist Host", "Jail", "Place" FROM certs WHERE "Cert Name" = ''%s''', the_cert_name));
    END IF;
END
$$;

-- add_disthost: a host that receives certificates over SSH; jailroot when it has jails
CREATE OR REPLACE FUNCTION pki.add_disthost(the_fqdn text, the_jailroot text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    INSERT INTO disthosts (fqdn, jailroot) VALUES (the_fqdn, the_jailroot);
END
$$;

-- remove_disthost: refused while targets use it; its jails go with it
CREATE OR REPLACE FUNCTION pki.remove_disthost(the_fqdn text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_host int := disthost_id(the_fqdn);
BEGIN
    DELETE FROM disthosts WHERE id = v_host;
END
$$;

-- add_jail: a FreeBSD jail on a disthost with a jailroot
CREATE OR REPLACE FUNCTION pki.add_jail(the_name text, the_disthost_name text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    INSERT INTO jails (name, disthost) VALUES (the_name, disthost_id(the_disthost_name));
END
$$;

-- remove_jail: refused while targets use it
CREATE OR REPLACE FUNCTION pki.remove_jail(the_name text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_jail int := jail_id(the_name);
BEGIN
    DELETE FROM jails WHERE id = v_jail;
END
$$;

-- add_place: where and how files land on a target, and what reloads the service
-- SELECT add_place('nginx', 'combine cacert', '/usr/local/etc/nginx/ssl', NULL, 0, 80, 416, false, false, 'service nginx reload');
CREATE OR REPLACE FUNCTION pki.add_place(
    the_name text, the_cert_file_type text, the_cert_path text, the_key_path text DEFAULT NULL,
    the_uid integer DEFAULT NULL, the_gid integer DEFAULT NULL, the_mode integer DEFAULT NULL,
    the_chownboth boolean DEFAULT false, the_pglink boolean DEFAULT false, the_reload_command text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    INSERT INTO places (name, cert_file_type, cert_path, key_path, uid, gid, mode, chownboth, pglink, reload_command)
    VALUES (the_name,
            enum_label(coalesce(the_cert_file_type, 'separate'), 'dd.place_cert_file_type', 'cert file type')::dd.place_cert_file_type,
            the_cert_path, the_key_path, the_uid, the_gid, the_mode,
            coalesce(the_chownboth, false), coalesce(the_pglink, false), the_reload_command);
END
$$;

-- remove_place: refused while targets use it
CREATE OR REPLACE FUNCTION pki.remove_place(the_name text)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_place int := place_id(the_name);
BEGIN
    DELETE FROM places WHERE id = v_place;
END
$$;

-- add_tlsa_service: a service whose TLSA records certificates can carry
CREATE OR REPLACE FUNCTION pki.add_tlsa_service(the_name text, the_port integer, the_tlsaprefix text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    INSERT INTO services (name, port, tlsaprefix)
    VALUES (the_name, the_port, coalesce(the_tlsaprefix, format('_%s._tcp.{}. 3600 IN TLSA 3 0 1', the_port)));
END
$$;

-- remove_tlsa_service: refused while certificates use it
CREATE OR REPLACE FUNCTION pki.remove_tlsa_service(the_name text, the_port integer)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    v_service int := service_id(the_name, the_port);
BEGIN
    DELETE FROM services WHERE id = v_service;
END
$$;
