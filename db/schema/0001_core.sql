-- 0001_core: schemas, types, configuration and certificate tables of serverPKI.
-- Versioned DDL: applied once and recorded in pki.schema_migrations.
-- Names follow the original serverPKI, so its psql examples work verbatim.

CREATE SCHEMA IF NOT EXISTS dd;     -- data dictionary: types shared by the tables
CREATE SCHEMA IF NOT EXISTS pki;    -- the tables, views and functions

-- subject names and host names compare case-insensitively, as DNS does
CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA dd;
-- server-side Python parses certificates in a trigger (Debian's python3-cryptography)
CREATE EXTENSION IF NOT EXISTS plpython3u;

-- what a subject (a certificate's name) is
CREATE TYPE dd.subject_type AS ENUM (
    'CA',           -- a certificate authority: the local CA, or an ACME CA's intermediate
    'client',       -- a TLS client certificate (a user or a service account)
    'server',       -- a TLS server certificate (a host name)
    'reserved'      -- a name held back, not issued
);

-- who issues a certificate
CREATE TYPE dd.cert_type AS ENUM (
    'LE',           -- an ACME CA (Let's Encrypt or any RFC 8555 server)
    'local'         -- the local CA of this installation
);

-- the life of one certificate instance (see LIFECYCLE.md)
CREATE TYPE dd.cert_state AS ENUM (
    'reserved',     -- an issue job is queued or running
    'issued',       -- certificate and key stored, not yet on the targets
    'prepublished', -- TLSA records of this (successor) instance are in DNS
    'deployed',     -- on every target: the active instance
    'revoked',      -- revocation requested
    'expired',      -- superseded or past not_after
    'archived'      -- kept for one more scheduler run, then deleted
);

-- key algorithms of a certificate; rsa_plus_ec gives two key/cert pairs
CREATE TYPE dd.cert_encryption_algo AS ENUM ('rsa', 'ec', 'rsa_plus_ec');

-- which files a place receives
CREATE TYPE dd.place_cert_file_type AS ENUM (
    'cert only',        -- the certificate, no key
    'separate',         -- certificate, key, certificate+CA certificate, each a file
    'combine key',      -- key and certificate in one file
    'combine cacert',   -- certificate and CA certificate in one file, key apart
    'combine both'      -- key, certificate and CA certificate in one file
);

-- "updated" and "created" columns of every table
CREATE DOMAIN dd.created AS timestamptz NOT NULL DEFAULT now();
CREATE DOMAIN dd.updated AS timestamptz NOT NULL DEFAULT now();

-- registry of our SQLSTATEs: every refusal of serverPKI carries one of these
CREATE TABLE dd.sqlstates (
    code        text PRIMARY KEY CHECK (code ~ '^SP[0-9]{3}$'),
    name        text NOT NULL UNIQUE,
    meaning     text NOT NULL
);

SET search_path = pki, dd;

-- applied migrations: the runner inserts a version's row before its DDL, so
-- two installers racing cannot both apply it
CREATE TABLE pki.schema_migrations (
    version     text PRIMARY KEY,
    applied     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pki.revision (
    id              serial PRIMARY KEY,
    schemaversion   int2 NOT NULL DEFAULT 1,        -- version of the data model
    keysencrypted   boolean NOT NULL DEFAULT false, -- private keys are encrypted at rest
    created         dd.created,
    updated         dd.updated,
    remarks         text
);
INSERT INTO pki.revision (schemaversion, keysencrypted) VALUES (1, false);

CREATE TABLE pki.certificates (
    id                  serial PRIMARY KEY,
    type                dd.cert_type NOT NULL,
    disabled            boolean NOT NULL DEFAULT false,
    -- LE: when the ACME authorizations expire; local: when the reminder was mailed
    authorized_until    timestamptz,
    encryption_algo     dd.cert_encryption_algo NOT NULL DEFAULT 'rsa',
    ocsp_must_staple    boolean NOT NULL DEFAULT false,
    created             dd.created,
    updated             dd.updated,
    remarks             text
);

CREATE TABLE pki.subjects (
    id              serial PRIMARY KEY,
    type            dd.subject_type NOT NULL DEFAULT 'server',
    name            dd.citext NOT NULL,
    isaltname       boolean NOT NULL DEFAULT true,
    certificate     int4 REFERENCES pki.certificates ON DELETE CASCADE ON UPDATE CASCADE,
    created         dd.created,
    updated         dd.updated,
    remarks         text,
    CONSTRAINT subjects_name_unique UNIQUE (name)
);
-- one subject name (not an alt name) per certificate; the trigger says it first
CREATE UNIQUE INDEX subjects_one_main_per_certificate
    ON pki.subjects (certificate) WHERE NOT isaltname;

CREATE TABLE pki.certinstances (
    id                  serial PRIMARY KEY,
    certificate         int4 NOT NULL REFERENCES pki.certificates ON DELETE CASCADE ON UPDATE CASCADE,
    state               dd.cert_state NOT NULL,
    ocsp_must_staple    boolean NOT NULL DEFAULT false,
    -- the CA instance that signed this one; NULL for a self-signed or unknown issuer
    cacert              int4 REFERENCES pki.certinstances ON DELETE RESTRICT
                            DEFERRABLE INITIALLY DEFERRED,
    -- derived from the stored certificates by the certkeydata trigger
    not_before          timestamptz,
    not_after           timestamptz,
    created             dd.created,
    updated             dd.updated,
    remarks             text,
    CONSTRAINT certinstances_validity_order CHECK (not_before IS NULL OR not_after IS NULL OR not_before < not_after)
);
CREATE INDEX certinstances_certificate ON pki.certinstances (certificate, state);

CREATE TABLE pki.certkeydata (
    id                  serial PRIMARY KEY,
    certinstance        int4 NOT NULL REFERENCES pki.certinstances ON DELETE CASCADE ON UPDATE CASCADE,
    -- rsa or ec: the algorithm of this one pair (an rsa_plus_ec instance has two rows)
    encryption_algo     dd.cert_encryption_algo NOT NULL DEFAULT 'rsa',
    cert                bytea NOT NULL,     -- PEM certificate
    key                 bytea,              -- PEM private key (PKCS#8, maybe encrypted); NULL for a CA without its key here
    hash                text NOT NULL,      -- SHA-256 of the DER certificate, upper-case hex (TLSA 3 0 1)
    -- derived from cert by the certkeydata trigger; the instance's validity is their intersection
    not_before          timestamptz NOT NULL,
    not_after           timestamptz NOT NULL,
    created             dd.created,
    updated             dd.updated,
    remarks             text,
    CONSTRAINT certkeydata_one_pair_per_algo UNIQUE (certinstance, encryption_algo),
    CONSTRAINT certkeydata_pair_algo CHECK (encryption_algo IN ('rsa', 'ec'))
);

CREATE TABLE pki.services (
    id              serial PRIMARY KEY,
    name            dd.citext NOT NULL,
    port            int4 NOT NULL,
    tlsaprefix      text NOT NULL,          -- e.g. '_443._tcp.{}. 3600 IN TLSA 3 0 1'
    created         dd.created,
    updated         dd.updated,
    remarks         text,
    CONSTRAINT services_name_port_unique UNIQUE (name, port)
);

CREATE TABLE pki.certificates_services (
    id              serial PRIMARY KEY,
    certificate     int4 NOT NULL REFERENCES pki.certificates ON DELETE CASCADE ON UPDATE CASCADE,
    service         int4 NOT NULL REFERENCES pki.services ON UPDATE CASCADE,
    created         dd.created,
    updated         dd.updated,
    remarks         text,
    CONSTRAINT certificates_services_unique UNIQUE (certificate, service)
);

CREATE TABLE pki.disthosts (
    id              serial PRIMARY KEY,
    fqdn            dd.citext NOT NULL,
    jailroot        text,
    updated         dd.updated,
    created         dd.created,
    remarks         text,
    CONSTRAINT disthosts_fqdn_unique UNIQUE (fqdn)
);

CREATE TABLE pki.jails (
    id              serial PRIMARY KEY,
    name            dd.citext NOT NULL,
    disthost        int4 NOT NULL REFERENCES pki.disthosts ON DELETE CASCADE ON UPDATE CASCADE,
    created         dd.created,
    updated         dd.updated,
    remarks         text,
    CONSTRAINT jails_name_unique UNIQUE (name)
);

CREATE TABLE pki.places (
    id              serial PRIMARY KEY,
    name            dd.citext NOT NULL,
    cert_file_type  dd.place_cert_file_type NOT NULL DEFAULT 'separate',
    cert_path       text NOT NULL,          -- directory; '{}' becomes the subject name
    key_path        text,                   -- directory for the key, if not cert_path
    uid             int4,                   -- owner of the key file
    gid             int4,                   -- group of the key file
    mode            int4,                   -- mode of the key file instead of 0400
    chownboth       boolean NOT NULL DEFAULT false, -- the certificate file gets the key's owner too
    pglink          boolean NOT NULL DEFAULT false, -- add postgresql.crt / postgresql.key links
    reload_command  text,                   -- run after deployment; '{}' becomes the jail name
    created         dd.created,
    updated         dd.updated,
    remarks         text,
    CONSTRAINT places_name_unique UNIQUE (name)
);

CREATE TABLE pki.targets (
    id              serial PRIMARY KEY,
    disthost        int4 NOT NULL REFERENCES pki.disthosts ON UPDATE CASCADE,
    jail            int4 REFERENCES pki.jails ON UPDATE CASCADE,
    place           int4 NOT NULL REFERENCES pki.places ON UPDATE CASCADE,
    certificate     int4 NOT NULL REFERENCES pki.certificates ON DELETE CASCADE ON UPDATE CASCADE,
    created         dd.created,
    updated         dd.updated,
    remarks         text,
    CONSTRAINT targets_unique UNIQUE NULLS NOT DISTINCT (disthost, jail, place, certificate)
);
CREATE INDEX targets_certificate ON pki.targets (certificate);

-- scheduling policy that SQL reads; operators change values with UPDATE
CREATE TABLE pki.settings (
    id              serial PRIMARY KEY,
    name            text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('integer', 'interval', 'text', 'boolean')),
    value           text NOT NULL,
    description     text NOT NULL,
    created         dd.created,
    updated         dd.updated,
    remarks         text,
    CONSTRAINT settings_name_unique UNIQUE (name)
);
INSERT INTO pki.settings (name, kind, value, description) VALUES
    ('pre_publish_days', 'integer', '30',
     'days before the active instance expires when the successor''s TLSA records are published (capped to a third of the lifetime)'),
    ('local_issue_mail_days', 'integer', '30',
     'days before a local certificate expires when a reminder to issue its successor is mailed'),
    ('expire_grace', 'interval', '1 day',
     'how long before not_after the active instance is replaced, and after not_after an undeployed one expires');

INSERT INTO pki.services (name, port, tlsaprefix) VALUES
    ('https',  443,  '_443._tcp.{}. 3600 IN TLSA 3 0 1'),
    ('caldav', 8443, '_8443._tcp.{}. 3600 IN TLSA 3 0 1'),
    ('imap',   143,  '_143._tcp.{}. 3600 IN TLSA 3 0 1'),
    ('imap',   587,  '_587._tcp.{}. 3600 IN TLSA 3 0 1'),
    ('smtp',   25,   '_25._tcp.{}. 3600 IN TLSA 3 0 1');
