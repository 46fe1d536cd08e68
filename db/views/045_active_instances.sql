-- 045_active_instances: the instance each certificate is using now, and whether its successor is on
-- its way; one rule, read by pki.alerts (expiry) and pki.metrics.

-- active_instances: one row per certificate, disabled ones too, that has an active instance: the
-- deployed one lasting longest (for a CA certificate the issued one). renewing: a successor is on its
-- way, i.e. an instance issued or prepublished that outlasts it, or an issue job of the certificate
-- queued, running or failed fewer than alert_failing_attempts times (a reserved instance counts only
-- through its job: one whose job keeps failing is not on its way).
-- Grouped joins, no subquery per certificate: linear in the number of certificates.
CREATE VIEW pki.active_instances AS
WITH active AS (
    SELECT DISTINCT ON (i.certificate) i.certificate, s.name, s.type AS subject_type, c.type AS cert_type,
           c.disabled, i.id AS instance, i.not_after
      FROM pki.certinstances i
      JOIN pki.certificates c ON c.id = i.certificate
      JOIN pki.main_subjects s ON s.certificate = i.certificate
     WHERE i.state = CASE WHEN s.type = 'CA' THEN 'issued'::dd.cert_state ELSE 'deployed'::dd.cert_state END
       AND i.not_after IS NOT NULL
     ORDER BY i.certificate, i.not_after DESC, i.id DESC
), successors AS (
    -- how long the longest-lasting instance on its way of each certificate lasts (the active
    -- instance of a CA, issued too, lasts exactly as long as itself: not a successor)
    SELECT n.certificate, max(n.not_after) AS not_after
      FROM pki.certinstances n
     WHERE n.state IN ('issued', 'prepublished')
     GROUP BY n.certificate
), issuing AS (
    SELECT DISTINCT j.certificate
      FROM pki.jobs j
     WHERE j.kind IN ('issue_local', 'issue_acme', 'issue_local_ca')
       AND j.state IN ('queued', 'running', 'failed') AND j.attempts < (SELECT s.value::int FROM pki.settings s WHERE s.name = 'alert_failing_attempts')
)
SELECT a.certificate, a.name, a.subject_type, a.cert_type, a.disabled, a.instance, a.not_after,
       coalesce(n.not_after > a.not_after, false) OR j.certificate IS NOT NULL AS renewing
  FROM active a
  LEFT JOIN successors n ON n.certificate = a.certificate
  LEFT JOIN issuing j ON j.certificate = a.certificate;
