-- 020_tlsa: the TLSA records DNS should hold, computed from the stored certificates
-- (tlsa_data, functions/120_cert_facts.sql); publish_tlsa jobs and the reports read them.

-- tlsa_owners: every TLSA owner name of a certificate: each service's prefix with {} = each
-- server subject and alt name (a wildcard name has no TLSA owner of its own). The owner is in lower
-- case: DNS names, like subjects.name, compare without case, and pki.tlsa_owners_in_dns keeps them so
CREATE VIEW pki.tlsa_owners AS
SELECT cs.certificate, s.name::text AS name,
       format('_%s._%s.%s.', p.port, lower(p.proto), lower(rtrim(s.name::text, '.'))) AS owner,
       p.ttl, p.usage, p.selector, p.matching
  FROM pki.certificates_services cs
  JOIN pki.services sv ON sv.id = cs.service
  CROSS JOIN LATERAL pki.tlsa_prefix_parts(sv.tlsaprefix) p
  JOIN pki.subjects s ON s.certificate = cs.certificate AND s.type = 'server'
 WHERE s.name::text NOT LIKE '*%';

-- tlsa_desired: the TLSA record of each instance and key algorithm at each owner. Usages 3 and 1
-- (end entity) hash the instance's certificate, usages 2 and 0 (trust anchor) its issuer (cacert).
-- A publish job selects the instances in its args: WHERE instance = ANY (...)
CREATE VIEW pki.tlsa_desired AS
SELECT o.certificate, i.id AS instance, k.encryption_algo::text AS algo, o.owner, o.ttl,
       o.usage, o.selector, o.matching, pki.tlsa_data(src.cert, o.selector, o.matching) AS data
  FROM pki.tlsa_owners o
  JOIN pki.certinstances i ON i.certificate = o.certificate
  JOIN pki.certkeydata k ON k.certinstance = i.id
  CROSS JOIN LATERAL (
        SELECT k.cert WHERE o.usage IN (1, 3)
        UNION ALL
        SELECT ck.cert FROM pki.certkeydata ck WHERE ck.certinstance = i.cacert AND o.usage IN (0, 2)
  ) src;
