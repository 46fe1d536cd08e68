-- 0011_revocation: revocation as an action (operate_serverPKI --revoke, pki.request_revoke): who
-- revoked which certificate, why and when, kept after its instance is cleaned up; and the local CA's
-- certificate revocation lists, which its CA targets get beside the CA certificate.

-- revocations: one row per revoked certificate (an rsa_plus_ec instance has two), written by
-- request_revoke; the revoke job revokes it at the ACME CA or puts it on the local CA's CRL
CREATE TABLE pki.revocations (
    id              serial PRIMARY KEY,
    -- the revoked instance (NULL once the scheduler cleaned it up: the local CA's CRL still lists it)
    instance        int4 REFERENCES pki.certinstances ON DELETE SET NULL,
    -- the certificate's main subject name, kept when the instance is gone
    certificate     text NOT NULL,
    -- the pair of the instance this row is about
    encryption_algo dd.cert_encryption_algo NOT NULL,
    -- the revoked certificate, PEM (public: its serial number and issuer go on the CRL or to the CA)
    cert            bytea NOT NULL,
    -- the local CA instance that signed it (its CRL lists it); NULL for an ACME (LE) certificate
    ca_instance     int4 REFERENCES pki.certinstances ON DELETE CASCADE,
    -- the certificate's not_after: a CRL drops an entry once the certificate has expired
    not_after       timestamptz NOT NULL,
    -- RFC 5280's CRLReason by name (certificateHold is not used: a revocation here is final)
    reason          text NOT NULL CONSTRAINT revocations_reason CHECK (reason IN (
                        'unspecified', 'keyCompromise', 'cACompromise', 'affiliationChanged', 'superseded',
                        'cessationOfOperation', 'privilegeWithdrawn', 'aACompromise')),
    -- when it was asked for (pki.now())
    revoked_at      timestamptz NOT NULL,
    -- by whom: the session_user of request_revoke
    revoked_by      text NOT NULL,
    -- the revoke job that carries it out
    job             int8,
    -- when the CA confirmed the revocation, or the CRL that lists it was stored (NULL: pending)
    done_at         timestamptz,
    created         dd.created,
    updated         dd.updated,
    remarks         text,
    CONSTRAINT revocations_once UNIQUE (instance, encryption_algo)
);
CREATE INDEX revocations_ca ON pki.revocations (ca_instance) WHERE ca_instance IS NOT NULL;

-- crls: the local CA's certificate revocation lists, each signed by one CA instance, numbered
-- (the cRLNumber extension) per CA instance; its targets get the newest as NAME_CA_crl.pem
CREATE TABLE pki.crls (
    id              serial PRIMARY KEY,
    -- the CA instance that signed it
    ca_instance     int4 NOT NULL REFERENCES pki.certinstances ON DELETE CASCADE,
    -- its CRL number, one more than the previous CRL of the same CA instance
    number          int8 NOT NULL CONSTRAINT crls_number_positive CHECK (number > 0),
    -- its thisUpdate, as signed in it
    this_update     timestamptz NOT NULL,
    -- its nextUpdate: a relying party wants a newer CRL by then
    next_update     timestamptz NOT NULL,
    -- the CRL, PEM
    crl             bytea NOT NULL,
    created         dd.created,
    updated         dd.updated,
    remarks         text,
    CONSTRAINT crls_number_once UNIQUE (ca_instance, number)
);

INSERT INTO pki.settings (name, kind, value, description) VALUES
    ('crl_days', 'integer', '30', 'days from a local CA''s CRL being signed to its nextUpdate');

-- the revocation paths say what --revoke does (request_revoke); an issue in progress (reserved) is
-- not revoked with it: nothing was issued yet
UPDATE pki.state_transitions SET rule = '--revoke (request_revoke): revoked at the ACME CA or on the local CA''s CRL, its TLSA withdrawn'
 WHERE from_state IN ('issued', 'prepublished', 'deployed') AND to_state = 'revoked';
UPDATE pki.state_transitions SET rule = 'by the database owner only (--revoke refuses an issue in progress)'
 WHERE from_state = 'reserved' AND to_state = 'revoked';
UPDATE pki.state_transitions SET rule = 'next scheduler run (its CRL entry and revocation record stay)'
 WHERE from_state = 'revoked' AND to_state = 'archived';
