-- 050_selection: the seed's action modifiers (-a -i -e -o -s -l -N) as one value,
-- shared by the scheduler and every request function.

-- selection: build a selection; unknown names are refused, all of them named at once
CREATE OR REPLACE FUNCTION pki.selection(
    all_certs boolean DEFAULT false, include text[] DEFAULT '{}', exclude text[] DEFAULT '{}',
    only_certs text[] DEFAULT '{}', skip_hosts text[] DEFAULT '{}', only_hosts text[] DEFAULT '{}',
    no_tlsa boolean DEFAULT false)
RETURNS dd.selection LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    sel dd.selection := ROW(coalesce(all_certs, false), coalesce(include, '{}'), coalesce(exclude, '{}'),
                            coalesce(only_certs, '{}'), coalesce(skip_hosts, '{}'), coalesce(only_hosts, '{}'),
                            coalesce(no_tlsa, false));
BEGIN
    PERFORM check_selection(sel);
    RETURN sel;
END
$$;

-- check_selection: every certificate and disthost name exists; -s and -l do not overlap
CREATE OR REPLACE FUNCTION pki.check_selection(sel dd.selection)
RETURNS void LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    unknown_certs text;
    unknown_hosts text;
    both_ways text;
BEGIN
    IF sel IS NULL THEN
        RETURN;
    END IF;
    SELECT string_agg(DISTINCT format('"%s"', n), ', ') INTO unknown_certs
      FROM unnest(coalesce(sel.include, '{}') || coalesce(sel.exclude, '{}') || coalesce(sel.only_certs, '{}')) n
     WHERE NOT EXISTS (SELECT 1 FROM main_subjects s WHERE s.name = n::citext AND s.certificate IS NOT NULL);
    SELECT string_agg(DISTINCT format('"%s"', n), ', ') INTO unknown_hosts
      FROM unnest(coalesce(sel.skip_hosts, '{}') || coalesce(sel.only_hosts, '{}')) n
     WHERE NOT EXISTS (SELECT 1 FROM disthosts d WHERE d.fqdn = n::citext);
    IF unknown_certs IS NOT NULL OR unknown_hosts IS NOT NULL THEN
        PERFORM raise_error('SP024', concat_ws('; ',
                'unknown certificate(s) ' || unknown_certs, 'unknown disthost(s) ' || unknown_hosts),
            'names are certificate subject names (SELECT DISTINCT "Cert Name" FROM certs) and disthost FQDNs (SELECT fqdn FROM disthosts)');
    END IF;
    SELECT string_agg(DISTINCT format('"%s"', n), ', ') INTO both_ways
      FROM unnest(coalesce(sel.skip_hosts, '{}')) n WHERE n::citext = ANY (coalesce(sel.only_hosts, '{}')::citext[]);
    IF both_ways IS NOT NULL THEN
        PERFORM raise_error('SP024', format('disthost(s) %s both skipped (-s) and the only ones (-l)', both_ways),
            'name a disthost with -s or with -l, not both');
    END IF;
END
$$;

-- checked_selection: the selection to act on (everything when NULL), refused if it names unknown things
CREATE OR REPLACE FUNCTION pki.checked_selection(sel dd.selection)
RETURNS dd.selection LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    sel := coalesce(sel, selection());
    PERFORM check_selection(sel);
    RETURN sel;
END
$$;

-- selected_certs: the certificates an action works on (not CA or reserved subjects);
-- enabled says whether rules beyond cleanup apply (not disabled, or included by -a/-i), disabled is the
-- certificate's own flag; tlsa_ttl the longest TTL of its TLSA services, tlsa_ee whether one of them has an
-- end-entity record (usage 1 or 3: a new key changes it). No SET clause and every name qualified (the operators
-- and functions that would otherwise resolve through the caller's search_path too): so the planner inlines it
-- into the caller's query and knows its row count (a set-returning function it cannot inline counts 1,000 rows,
-- which chose nested loops over 100,000 certificates in plan_rows)
CREATE OR REPLACE FUNCTION pki.selected_certs(sel dd.selection)
RETURNS TABLE (id int, name text, type dd.cert_type, enabled boolean, authorized_until timestamptz,
               encryption_algo dd.cert_encryption_algo, tlsa_ttl interval, disabled boolean, tlsa_ee boolean)
LANGUAGE sql STABLE
AS $$
    SELECT c.id, s.name::text, c.type,
           NOT c.disabled OR coalesce(sel.all_certs, false)
               OR s.name OPERATOR(dd.=) ANY (coalesce(sel.include, '{}')::dd.citext[]),
           c.authorized_until, c.encryption_algo, t.ttl, c.disabled, coalesce(t.ee, false)
      FROM pki.certificates c
      JOIN pki.main_subjects s ON s.certificate = c.id
      LEFT JOIN (
            -- each service's prefix parsed once per call, not once per certificate
            SELECT cs.certificate, max(sv.ttl) AS ttl, bool_or(sv.usage IN (1, 3)) AS ee
              FROM pki.certificates_services cs
              JOIN (SELECT sv0.id, pg_catalog.make_interval(secs => p.ttl) AS ttl, p.usage
                      FROM pki.services sv0 CROSS JOIN LATERAL pki.tlsa_prefix_parts(sv0.tlsaprefix) p OFFSET 0) sv
                ON sv.id = cs.service
             GROUP BY cs.certificate) t ON t.certificate = c.id
     WHERE NOT (s.type OPERATOR(pg_catalog.=) ANY ('{CA,reserved}'::dd.subject_type[]))
       AND (pg_catalog.cardinality(coalesce(sel.only_certs, '{}')) = 0 OR s.name OPERATOR(dd.=) ANY (sel.only_certs::dd.citext[]))
       -- citext compares by lower(): not once per certificate when nothing is excluded
       AND (pg_catalog.cardinality(coalesce(sel.exclude, '{}')) = 0 OR NOT (s.name OPERATOR(dd.=) ANY (sel.exclude::dd.citext[])))
$$;

-- host_selected: may distribution go to this disthost under the selection?
CREATE OR REPLACE FUNCTION pki.host_selected(sel dd.selection, fqdn dd.citext)
RETURNS boolean LANGUAGE sql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT NOT (fqdn = ANY (coalesce(sel.skip_hosts, '{}')::citext[]))
       AND (cardinality(coalesce(sel.only_hosts, '{}')) = 0 OR fqdn = ANY (sel.only_hosts::citext[]))
$$;
