-- 030_reports: reporting views for operators (and pki_report); no key material.

-- jobs_summary: jobs by kind and state, with the newest error (ties within one transaction: the newest job)
CREATE VIEW pki.jobs_summary AS
SELECT j.kind, j.state, count(*) AS jobs, max(j.updated) AS last_change,
       (SELECT j2.last_error FROM pki.jobs j2 WHERE j2.kind = j.kind AND j2.state = j.state AND j2.last_error IS NOT NULL
         ORDER BY j2.updated DESC, j2.id DESC LIMIT 1) AS last_error
  FROM pki.jobs j
 GROUP BY j.kind, j.state
 ORDER BY j.kind, j.state;

-- jobs_overview: every job with what it concerns, for troubleshooting
CREATE VIEW pki.jobs_overview AS
SELECT j.id, j.kind, j.state, s.name AS certificate, j.instance, d.fqdn AS disthost, j.zone,
       j.attempts, j.max_attempts, j.run_after, j.locked_by, j.locked_until, j.reason, j.last_error, j.updated
  FROM pki.jobs j
  LEFT JOIN pki.main_subjects s ON s.certificate = j.certificate
  LEFT JOIN pki.disthosts d ON d.id = j.disthost
 ORDER BY j.id DESC;

-- expiring: instances in use with their remaining time (filter: WHERE remaining < interval '30 days')
CREATE VIEW pki.expiring AS
SELECT s.name AS certificate, c.type, i.id AS instance, i.state, i.not_after,
       i.not_after - pki.now() AS remaining
  FROM pki.certinstances i
  JOIN pki.certificates c ON c.id = i.certificate
  JOIN pki.main_subjects s ON s.certificate = c.id
 WHERE i.state IN ('issued', 'prepublished', 'deployed')
 ORDER BY i.not_after;

-- deployed_where: which instance is on which disthost / jail / place
CREATE VIEW pki.deployed_where AS
SELECT d.fqdn AS disthost, j.name AS jail, p.name AS place, s.name AS certificate,
       i.id AS instance, i.state, dep.deployed, i.not_after
  FROM pki.deployments dep
  JOIN pki.certinstances i ON i.id = dep.instance
  JOIN pki.targets t ON t.id = dep.target
  JOIN pki.disthosts d ON d.id = t.disthost
  LEFT JOIN pki.jails j ON j.id = t.jail
  JOIN pki.places p ON p.id = t.place
  JOIN pki.main_subjects s ON s.certificate = i.certificate
 ORDER BY d.fqdn, j.name NULLS FIRST, p.name, s.name, i.id;

-- instance_history: the events of every instance (WHERE instance = N)
CREATE VIEW pki.instance_history AS
SELECT e.instance, s.name AS certificate, e.at, e.from_state, e.to_state, e.job, e.job_state, e.reason
  FROM pki.events e
  LEFT JOIN pki.main_subjects s ON s.certificate = e.certificate
 ORDER BY e.instance, e.id;
