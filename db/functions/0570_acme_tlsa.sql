-- 0570_acme_tlsa: ACME accounts (-Z), the issuer of an ACME certificate, the
-- progress of a running job, and the TLSA records DNS should hold.
-- complete_job applies a register_acme outcome with apply_acme_registered; an
-- issue result with "chain" / "authorized_until" goes through apply_acme_chain
-- (called by apply_issued). TLSA data are computed here, from the stored
-- certificates, with Debian's python3-cryptography (38) in plpython3u.

-- cert_facts: what the database needs to know of a PEM certificate
CREATE OR REPLACE FUNCTION pki.cert_facts(pem text,
    OUT subject_cn text, OUT issuer_cn text, OUT algo text, OUT hash text, OUT is_ca boolean)
LANGUAGE plpython3u IMMUTABLE STRICT
SET search_path = pki, dd, pg_temp
AS $$
import hashlib
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

try:
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
except Exception as exc:
    plpy.error("not a parsable PEM certificate (%s)" % type(exc).__name__, sqlstate="SP023",
               hint="report the chain as PEM certificates, issuer first")

def cn(name):
    found = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return found[0].value if found else None

key = cert.public_key()
try:
    ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
except x509.ExtensionNotFound:
    ca = False
return (cn(cert.subject), cn(cert.issuer),
        "rsa" if isinstance(key, rsa.RSAPublicKey) else "ec" if isinstance(key, ec.EllipticCurvePublicKey) else None,
        hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper(), ca)
$$;

-- tlsa_data: the certificate association data of a TLSA record, upper-case hex:
-- selector 0 the whole certificate (DER), 1 its SubjectPublicKeyInfo; matching 0 as is, 1 SHA-256, 2 SHA-512
CREATE OR REPLACE FUNCTION pki.tlsa_data(cert bytea, selector int, matching int)
RETURNS text LANGUAGE plpython3u IMMUTABLE STRICT
SET search_path = pki, dd, pg_temp
AS $$
import hashlib
from cryptography import x509
from cryptography.hazmat.primitives import serialization

parsed = x509.load_pem_x509_certificate(bytes(cert))
if selector == 0:
    data = parsed.public_bytes(serialization.Encoding.DER)
elif selector == 1:
    data = parsed.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
else:
    plpy.error("TLSA selector %s is not 0 (full certificate) or 1 (public key)" % selector, sqlstate="SP006",
               hint="write the service's prefix like \"_443._tcp.{}. 3600 IN TLSA 3 0 1\"")
if matching == 0:
    return data.hex().upper()
if matching == 1:
    return hashlib.sha256(data).hexdigest().upper()
if matching == 2:
    return hashlib.sha512(data).hexdigest().upper()
plpy.error("TLSA matching type %s is not 0, 1 (SHA-256) or 2 (SHA-512)" % matching, sqlstate="SP006",
           hint="write the service's prefix like \"_443._tcp.{}. 3600 IN TLSA 3 0 1\"")
$$;

DROP VIEW IF EXISTS pki.tlsa_desired CASCADE;
DROP VIEW IF EXISTS pki.tlsa_owners CASCADE;

-- tlsa_owners: every TLSA owner name of a certificate: each service's prefix with {} = each
-- server subject and alt name (a wildcard name has no TLSA owner of its own)
CREATE VIEW pki.tlsa_owners AS
SELECT cs.certificate, s.name::text AS name,
       format('_%s._%s.%s.', p.port, lower(p.proto), rtrim(s.name::text, '.')) AS owner,
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

-- save_job_progress: a running job keeps how far it got (an ACME order's URL, the challenge
-- records it placed) in its result, so a later attempt resumes; never key material
CREATE OR REPLACE FUNCTION pki.save_job_progress(job_id bigint, lease_token uuid, progress jsonb)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := held_job(job_id, lease_token);
BEGIN
    UPDATE jobs SET result = without_secrets(coalesce(progress, '{}')) WHERE id = j.id;
END
$$;

-- save_job_key / job_key: the key of an ACME order a running job placed (0006_job_keys), kept
-- from before the order exists until the job is done or dead, so a later attempt finishes the
-- same order with it; only the job's current holder writes or reads it
CREATE OR REPLACE FUNCTION pki.save_job_key(job_id bigint, lease_token uuid, algo text, key text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := held_job(job_id, lease_token);
BEGIN
    IF algo IS NULL OR algo NOT IN ('rsa', 'ec') THEN
        PERFORM raise_error('SP011', format('key algorithm %s is not rsa or ec', coalesce(algo, 'NULL')),
            'save the key of one order: rsa or ec');
    END IF;
    IF key IS NULL OR key NOT LIKE '-----BEGIN %PRIVATE KEY-----%' THEN
        PERFORM raise_error('SP023', format('job %s: the %s order key is not a PEM private key', j.id, algo),
            'save the PKCS#8 PEM of the key the order''s CSR was made with');
    END IF;
    INSERT INTO job_keys (job, encryption_algo, key) VALUES (j.id, algo::dd.cert_encryption_algo, key)
        ON CONFLICT (job, encryption_algo) DO UPDATE SET key = EXCLUDED.key;
END
$$;

CREATE OR REPLACE FUNCTION pki.job_key(job_id bigint, lease_token uuid, algo text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := held_job(job_id, lease_token);
BEGIN
    RETURN (SELECT k.key FROM job_keys k WHERE k.job = j.id AND k.encryption_algo::text = algo);
END
$$;

-- request_acme_account: -Z, a register_acme job for the directory (the agent's [acme]
-- directory_url when NULL); returns it, or the one already pending
CREATE OR REPLACE FUNCTION pki.request_acme_account(directory_url text DEFAULT NULL, contact text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    key text := 'acme-account:' || coalesce(directory_url, '(configured)');
    job_id bigint;
BEGIN
    IF directory_url IS NOT NULL AND directory_url !~ '^https://[^/ ]+' THEN
        PERFORM raise_error('SP011', format('ACME directory URL "%s" is not an https:// URL', directory_url),
            'give the CA''s directory, e.g. https://acme-v02.api.letsencrypt.org/directory, or NULL for [acme] directory_url');
    END IF;
    IF contact IS NOT NULL THEN
        PERFORM check_printable(contact, 'ACME contact', 254);
    END IF;
    job_id := enqueue('register_acme', key, 'requested (-Z)',
                      jsonb_strip_nulls(jsonb_build_object('directory_url', directory_url, 'contact', contact)));
    IF job_id IS NULL THEN
        SELECT j.id INTO job_id FROM jobs j
         WHERE j.kind = 'register_acme' AND j.subject_key = key AND j.state IN ('queued', 'running', 'failed');
        RAISE NOTICE 'an ACME registration is pending already: job %', job_id;
    END IF;
    RETURN job_id;
END
$$;

-- apply_acme_registered: the outcome of register_acme, {"directory_url", "uri", "contact", "key"}:
-- the directory's account, new or replaced; its key in the form the stored keys are in
CREATE OR REPLACE FUNCTION pki.apply_acme_registered(j pki.jobs, result jsonb)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    encrypted boolean := (SELECT r.keysencrypted FROM revision r ORDER BY r.id DESC LIMIT 1);
BEGIN
    IF jsonb_typeof(result -> 'directory_url') IS DISTINCT FROM 'string' OR (result ->> 'directory_url') !~ '^https://'
       OR jsonb_typeof(result -> 'uri') IS DISTINCT FROM 'string' OR (result ->> 'uri') !~ '^https://'
       OR jsonb_typeof(result -> 'key') IS DISTINCT FROM 'string'
       OR coalesce(jsonb_typeof(result -> 'contact'), 'null') NOT IN ('string', 'null') THEN
        PERFORM raise_error('SP023', format('job %s: a registration reports {"directory_url": https URL, "uri": https URL, "contact": text|null, "key": PEM}', j.id),
            'report the account URL the CA returned and the account key');
    END IF;
    IF (result ->> 'key') NOT LIKE '-----BEGIN %PRIVATE KEY-----%'
       OR (position('-----BEGIN ENCRYPTED PRIVATE KEY-----' IN result ->> 'key') > 0) IS DISTINCT FROM encrypted THEN
        PERFORM raise_error('SP023', format('job %s: the account key must be a %s PKCS#8 PEM key, as the stored keys are', j.id,
                CASE WHEN encrypted THEN 'encrypted' ELSE 'clear' END),
            'encrypt the account key with the db_encryption_key passphrase when revision.keysencrypted');
    END IF;
    INSERT INTO acme_accounts (directory_url, contact, key, uri)
    VALUES (result ->> 'directory_url', result ->> 'contact', result ->> 'key', result ->> 'uri')
    ON CONFLICT (directory_url) DO UPDATE SET contact = EXCLUDED.contact, key = EXCLUDED.key, uri = EXCLUDED.uri;
END
$$;

-- apply_acme_chain: an issue result may carry "chain" (the issuer first, as PEM) and
-- "authorized_until" (when the order's authorizations expire). The issuer becomes an issued
-- instance of an LE certificate of subject type CA named after the issuer's CN (created on
-- first use; an instance with the same certificate hash is reused). Returns the result with
-- "cacert" set to that instance, for apply_issued.
CREATE OR REPLACE FUNCTION pki.apply_acme_chain(j pki.jobs, result jsonb)
RETURNS jsonb LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    issuer_pem text;
    issuer record;
    subj subjects;
    ca_cert int;
    ca_inst int;
BEGIN
    IF result ? 'authorized_until' AND jsonb_typeof(result -> 'authorized_until') <> 'null' THEN
        BEGIN
            UPDATE certificates SET authorized_until = (result ->> 'authorized_until')::timestamptz WHERE id = j.certificate;
        EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
            PERFORM raise_error('SP023', format('job %s: authorized_until %s is not a timestamp', j.id, result -> 'authorized_until'),
                'report when the authorizations expire as ISO 8601, e.g. "2026-12-31T12:00:00Z"');
        END;
    END IF;
    IF NOT result ? 'chain' OR jsonb_typeof(result -> 'chain') = 'null' THEN
        RETURN result;
    END IF;
    IF jsonb_typeof(result -> 'chain') IS DISTINCT FROM 'array' OR jsonb_array_length(result -> 'chain') = 0
       OR jsonb_typeof(result -> 'chain' -> 0) IS DISTINCT FROM 'string' THEN
        PERFORM raise_error('SP023', format('job %s: "chain" must be a list of PEM certificates, the issuer first', j.id),
            'report the certificates that follow the leaf in the CA''s chain');
    END IF;
    IF result ? 'cacert' AND jsonb_typeof(result -> 'cacert') <> 'null' THEN
        PERFORM raise_error('SP023', format('job %s: a result with "chain" names its issuer by the chain, not by "cacert"', j.id),
            'leave cacert out; the database stores the issuer');
    END IF;
    issuer_pem := result -> 'chain' ->> 0;
    -- parsed, and verified link by link from the leaf, by check_issued_result (0565)
    SELECT * INTO issuer FROM jsonb_to_record(result -> 'issuer_facts') AS f(subject_cn text, algo text, hash text, is_ca boolean);
    IF NOT coalesce(issuer.is_ca, false) OR issuer.subject_cn IS NULL OR issuer.algo IS NULL THEN
        PERFORM raise_error('SP023', format('job %s: the first certificate of the chain ("%s") is not a CA certificate with a common name',
                j.id, issuer.subject_cn),
            'report the issuer of the leaf first');
    END IF;
    -- agents completing in parallel: one at a time stores an issuer (the others then find it)
    PERFORM pg_advisory_xact_lock(hashtext('pki.apply_acme_chain'));
    -- the issuer stored before: the same certificate (hash) under a CA subject
    SELECT i.id INTO ca_inst
      FROM certkeydata k
      JOIN certinstances i ON i.id = k.certinstance
      JOIN subjects s ON s.certificate = i.certificate AND NOT s.isaltname AND s.type = 'CA'
     WHERE k.hash = issuer.hash
     ORDER BY i.id LIMIT 1;
    IF ca_inst IS NULL THEN
        SELECT * INTO subj FROM subjects s WHERE s.name = issuer.subject_cn::citext;
        IF FOUND THEN
            IF subj.isaltname OR subj.type <> 'CA'
               OR (SELECT c.type FROM certificates c WHERE c.id = subj.certificate) IS DISTINCT FROM 'LE' THEN
                PERFORM raise_error('SP023', format('job %s: the issuer "%s" has the name of a subject that is not an ACME CA', j.id, issuer.subject_cn),
                    'rename the other subject; the ACME CA''s certificate is named after the issuer''s common name');
            END IF;
            ca_cert := subj.certificate;
        ELSE
            INSERT INTO certificates (type, encryption_algo, remarks)
            VALUES ('LE', issuer.algo::dd.cert_encryption_algo, format('issuer of ACME certificates (job %s)', j.id))
            RETURNING id INTO ca_cert;
            INSERT INTO subjects (type, name, isaltname, certificate) VALUES ('CA', issuer.subject_cn, false, ca_cert);
        END IF;
        PERFORM set_context(format('job %s: issuer "%s" of an ACME certificate stored', j.id, issuer.subject_cn), j.id);
        INSERT INTO certinstances (certificate, state) VALUES (ca_cert, 'reserved') RETURNING id INTO ca_inst;
        INSERT INTO certkeydata (certinstance, encryption_algo, cert, key)
        VALUES (ca_inst, issuer.algo::dd.cert_encryption_algo, convert_to(issuer_pem, 'UTF8'), NULL);
        UPDATE certinstances SET state = 'issued' WHERE id = ca_inst;
        PERFORM set_context(format('%s job %s done', j.kind, j.id), j.id);
    END IF;
    RETURN result || jsonb_build_object('cacert', ca_inst);
END
$$;
