-- 010_config_views: the seed's report views (operate_serverPKI -n -v prints them).

-- certs: one row per certificate × alt name × TLSA service × target (operate_serverPKI -n -v, first table)
CREATE VIEW pki.certs AS
SELECT s1.type                      AS "Subject",
       s1.name                      AS "Cert Name",
       c.type                       AS "Type",
       c.encryption_algo            AS "Algo",
       c.ocsp_must_staple           AS "OCSP m st",
       c.authorized_until::date     AS "authorized",
       s2.name                      AS "Alt Name",
       s.name                       AS "TLSA",
       s.port                       AS "Port",
       d.fqdn                       AS "Dist Host",
       j.name                       AS "Jail",
       p.name                       AS "Place"
  FROM pki.certificates c
  LEFT JOIN pki.main_subjects s1 ON s1.certificate = c.id
  LEFT JOIN pki.subjects s2 ON s2.certificate = c.id AND s2.isaltname
  LEFT JOIN pki.certificates_services cs ON cs.certificate = c.id
  LEFT JOIN pki.services s ON s.id = cs.service
  LEFT JOIN pki.targets t ON t.certificate = c.id
  LEFT JOIN pki.disthosts d ON d.id = t.disthost
  LEFT JOIN pki.jails j ON j.id = t.jail
  LEFT JOIN pki.places p ON p.id = t.place
-- the order of the citext columns, each lowered once per row: citext's own comparison lowers both sides
-- at every comparison of the sort (the larger part of the listing's query at 5,000 certificates)
 ORDER BY lower(s1.name::text), lower(s2.name::text), lower(s.name::text), s.port, lower(d.fqdn::text),
          lower(j.name::text), lower(p.name::text);

-- certs_ids: the same rows with the ids behind them
CREATE VIEW pki.certs_ids AS
SELECT c.id      AS c_id,
       s1.id     AS s1_id,
       s1.type   AS "Subject Type",
       s1.name   AS "Cert Name",
       c.type    AS "Type",
       c.encryption_algo AS "Algo",
       c.ocsp_must_staple AS "OCSP m st",
       c.authorized_until::date AS "authorized",
       s2.id     AS s2_id,
       s2.name   AS "Alt Name",
       s.id      AS s_id,
       s.name    AS "TLSA",
       s.port    AS "Port",
       t.id      AS t_id,
       d.id      AS d_id,
       d.fqdn    AS "FQDN",
       j.id      AS j_id,
       j.name    AS "Jail",
       p.id      AS p_id,
       p.name    AS "Place"
  FROM pki.certificates c
  LEFT JOIN pki.main_subjects s1 ON s1.certificate = c.id
  LEFT JOIN pki.subjects s2 ON s2.certificate = c.id AND s2.isaltname
  LEFT JOIN pki.certificates_services cs ON cs.certificate = c.id
  LEFT JOIN pki.services s ON s.id = cs.service
  LEFT JOIN pki.targets t ON t.certificate = c.id
  LEFT JOIN pki.disthosts d ON d.id = t.disthost
  LEFT JOIN pki.jails j ON j.id = t.jail
  LEFT JOIN pki.places p ON p.id = t.place
 ORDER BY c.id, s1.id, s2.id, s.id, t.id;

-- inst: one row per instance and key pair (operate_serverPKI -n -v, second table); no key material
CREATE VIEW pki.inst AS
SELECT i.id                 AS "Serial",
       s.name               AS "Cert Name",
       c.type               AS "Type",
       i.state              AS "State",
       i.cacert             AS "CI CA",
       i.ocsp_must_staple   AS "OCSP m st",
       i.not_before         AS "not before",
       i.not_after          AS "not after",
       k.encryption_algo    AS "ALGO",
       k.hash               AS "Hash",
       i.updated            AS "updated"
  FROM pki.certinstances i
  JOIN pki.certificates c ON c.id = i.certificate
  LEFT JOIN pki.main_subjects s ON s.certificate = c.id
  LEFT JOIN pki.certkeydata k ON k.certinstance = i.id
 ORDER BY i.id, k.encryption_algo;
