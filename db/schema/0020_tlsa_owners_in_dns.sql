-- 0020_tlsa_owners_in_dns: the owner names at which DNS holds TLSA records that serverPKI wrote, and
-- whose records they are, as the publish_tlsa jobs reported them. A job replaces the RRsets of the owners
-- the configuration has now; an owner that went (a TLSA service detached, an alt name removed, a prefix's
-- port changed) kept its records, and an owner that came with an alt name got none while a successor kept
-- the key. Knowing what was written, the next job deletes what no certificate configures any more, and
-- tlsa_unchanged sees a missing owner.
CREATE TABLE pki.tlsa_owners_in_dns (
    -- the owner name in lower case, as pki.tlsa_owners spells it ('_443._tcp.www.example.org.'); one
    -- certificate's records at a time: a job that writes the RRset takes the owner over
    owner       text PRIMARY KEY,
    -- the certificate whose instances' records the owner's RRset holds (or that configures the owner now
    -- and has not written it yet: its next job replaces or deletes them)
    certificate int4 NOT NULL REFERENCES pki.certificates ON DELETE CASCADE ON UPDATE CASCADE
);
-- a certificate's owners (the publish_tlsa job's and the completion's lookups, tlsa_unchanged)
CREATE INDEX tlsa_owners_in_dns_certificate ON pki.tlsa_owners_in_dns (certificate);

-- What DNS holds now, as far as a release without this table can tell: every owner configured today of a
-- certificate whose records were published (the owners of pki.tlsa_owners, spelled out here: the views and
-- functions are made after the migrations). An owner that went before this upgrade stays unknown; an alt
-- name added since the publication is taken as published (operate_serverPKI -T -a publishes them all).
INSERT INTO pki.tlsa_owners_in_dns (owner, certificate)
SELECT DISTINCT format('_%s._%s.%s.', m[1]::int, lower(m[2]), lower(rtrim(s.name::text, '.'))), cs.certificate
  FROM pki.certificates_services cs
  JOIN pki.services sv ON sv.id = cs.service
  CROSS JOIN LATERAL regexp_match(sv.tlsaprefix, '^_([1-9][0-9]{0,4})\._(tcp|udp|sctp)\.', 'i') AS m
  JOIN pki.subjects s ON s.certificate = cs.certificate AND s.type = 'server'
 WHERE m IS NOT NULL AND s.name::text NOT LIKE '*%'
   AND EXISTS (SELECT 1 FROM pki.certinstances i WHERE i.certificate = cs.certificate AND i.tlsa_published IS NOT NULL)
ON CONFLICT (owner) DO NOTHING;
