-- 9900_grants: privileges of the three roles, re-applied last on every upgrade.
-- pki_admin edits configuration; pki_agent reads it and acts through SECURITY
-- DEFINER functions; pki_report reads the reporting views and nothing else.

GRANT USAGE ON SCHEMA pki, dd TO pki_admin, pki_agent, pki_report;
GRANT SELECT ON dd.sqlstates TO pki_admin, pki_agent, pki_report;

-- nothing is granted to PUBLIC; each role gets what it needs below
REVOKE ALL ON ALL TABLES IN SCHEMA pki FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pki FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA pki FROM pki_admin, pki_agent, pki_report;

-- configuration: the operator's to change, the agent's to read
GRANT SELECT, INSERT, UPDATE, DELETE ON
    pki.certificates, pki.subjects, pki.services, pki.certificates_services,
    pki.disthosts, pki.jails, pki.places, pki.targets
    TO pki_admin;
GRANT SELECT ON pki.settings, pki.revision, pki.schema_migrations, pki.certinstances TO pki_admin;
GRANT UPDATE (value, remarks) ON pki.settings TO pki_admin;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA pki TO pki_admin;
-- certificate data without the private key
GRANT SELECT (id, certinstance, encryption_algo, cert, hash, not_before, not_after, created, updated, remarks)
    ON pki.certkeydata TO pki_admin;

GRANT SELECT ON
    pki.certificates, pki.subjects, pki.services, pki.certificates_services,
    pki.disthosts, pki.jails, pki.places, pki.targets,
    pki.settings, pki.revision, pki.certinstances, pki.certkeydata
    TO pki_agent;

-- reports: the views, which show no key material
GRANT SELECT ON pki.certs, pki.certs_ids, pki.inst TO pki_admin, pki_agent, pki_report;

-- functions: validation helpers run inside the admin's triggers, so admin and agent may call them
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pki TO pki_admin, pki_agent;
