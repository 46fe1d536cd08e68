-- 110_result_checks: an issue job's result is checked against the database before
-- anything of it is stored (complete_issue calls check_issued_result first). The agent is
-- not trusted to say what it issued: the certificate's names, its issuer and the ACME
-- chain are read from the certificates themselves (Debian's python3-cryptography 38 in
-- plpython3u: one call per result, each PEM parsed once). Refusals are SP023 naming the
-- job; complete_issue then rolls back as a whole and the agent fails the job with the reason.
-- The key of a pair is checked against its certificate by the certkeydata trigger (triggers/030_certkeydata),
-- whose SP008 complete_issue reports as SP023 of the job; a key encrypted at rest
-- (-X, and the local CA's key) cannot be opened in the database, so it is not checked.

-- check_result_certs: the certificates of issue results (one call for a batch of them: element i of each
-- array is result i's), each parsed once and checked:
--   names:  CN and SAN DNS names as x509util builds them, set-wise, case-insensitively;
--   issuer: issue_local signed by the CA certificate ca_pem (instance ca_id), issue_local_ca
--           self-signed, issue_acme linked to its chain (a pair's own "chain", else the result's)
--           certificate by certificate: issuer name = next subject, signature by the next key.
-- Returns one row per result, in order (ord): what is wrong (problem, hint: SP023 for the caller to raise), else the
-- earliest not_after of the leaves and, for issue_acme, the facts of the result chain's first certificate (the stored
-- issuer) as {subject_cn, algo, hash, is_ca}. altnames[i]: a JSON array of result i's alt names
CREATE OR REPLACE FUNCTION pki.check_result_certs(job_ids bigint[], kinds text[], subject_types text[], main_names text[],
    altnames jsonb[], pairs jsonb[], ca_pems text[], ca_ids int[], chains jsonb[])
RETURNS TABLE (ord int, problem text, hint text, leaf_not_after timestamptz, issuer jsonb)
LANGUAGE plpython3u STABLE
SET search_path = pki, dd, pg_temp
AS $$
import hashlib
import json
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID

# the digest of a signed certificate made by hashlib and verified as Prehashed: cryptography 38 hashes through
# objects of its own, a fifth of a verification; others (SHA-1, SHA-3) as cryptography hashes them
PREHASHED = {"sha224", "sha256", "sha384", "sha512"}

class Refused(Exception):
    pass

# returned, not raised: plpy.error would prefix the message with "plpy.Error: "
def refuse(message, hint):
    raise Refused("job %s: %s" % (job_id, message), hint)

parsed = {}   # PEM text -> certificate: a chain shared by both pairs (or by the results of a batch) is parsed once

def load(pem, what):
    if not isinstance(pem, str):
        refuse("%s is not a PEM text" % what, "report certificates as PEM text")
    if pem not in parsed:
        try:
            parsed[pem] = x509.load_pem_x509_certificate(pem.encode("ascii"))
        except Exception as exc:
            refuse("%s is not a parsable PEM certificate (%s)" % (what, type(exc).__name__),
                   "report the PEM text the CA produced")
    return parsed[pem]

# the few CA and chain certificates that sign every leaf, with their public keys, kept for the
# session: loading an RSA public key costs OpenSSL 3 about 120 us, more than the rest of a check
issuers = SD.setdefault("issuers", {})
keys = {}   # id(certificate) -> (certificate, public key), for the issuers of this call: the certificate is
            # held so that its id is not reused within the call (issuers.clear() may drop it meanwhile)

def load_issuer(pem, what):
    entry = issuers.get(pem) if isinstance(pem, str) else None
    if entry is None:
        cert = load(pem, what)
        try:
            entry = (cert, cert.public_key())
        except Exception as exc:
            refuse("the key of %s cannot be read (%s)" % (what, type(exc).__name__), "use an RSA or EC key")
        if len(issuers) >= 32:
            issuers.clear()
        issuers[pem] = entry
    keys[id(entry[0])] = entry
    return entry[0]

extensions = {}   # id(certificate) -> (certificate, its extensions): cryptography parses them all at each access

def extension(cert, cls, what):
    try:
        entry = extensions.get(id(cert))
        if entry is None:
            entry = extensions[id(cert)] = (cert, cert.extensions)
        return entry[1].get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except Exception as exc:  # duplicate or malformed extensions
        refuse("%s has unparsable extensions (%s)" % (what, type(exc).__name__), "report the certificate the CA produced")

def is_ca(cert, what):
    bc = extension(cert, x509.BasicConstraints, what)
    return bool(bc and bc.ca)

def dn(name):
    return name.rfc4514_string()

verified = set()  # (child, parent) already checked: identical chains of two pairs are verified once

def check_signed(child, parent, what, by):
    if (id(child), id(parent)) in verified:
        return
    key = keys[id(parent)][1] if id(parent) in keys else parent.public_key()
    try:
        digest = child.signature_hash_algorithm
        signed, algorithm = child.tbs_certificate_bytes, digest
        if digest is not None and digest.name in PREHASHED:
            signed, algorithm = hashlib.new(digest.name, signed).digest(), utils.Prehashed(digest)
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(child.signature, signed, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(child.signature, signed, ec.ECDSA(algorithm))
        else:
            raise InvalidSignature()
    except InvalidSignature:
        refuse("the signature of %s does not verify with the key of %s" % (what, by),
               "report the certificate as %s signed it" % by)
    except Exception as exc:  # RSA-PSS, Ed25519, a hash cryptography does not know, a key/algorithm mismatch
        refuse("the signature of %s cannot be verified with the key of %s (%s)" % (what, by, type(exc).__name__),
               "sign with RSA PKCS#1 v1.5 or ECDSA and SHA-2")
    verified.add((id(child), id(parent)))

def signed_by(child, parent, what, by):
    if child.issuer != parent.subject:
        refuse('%s names its issuer "%s", but %s is "%s"' % (what, dn(child.issuer), by, dn(parent.subject)),
               "report the certificate with the issuer that signed it")
    check_signed(child, parent, what, by)

def check(job_id, kind, subject_type, main_name, altnames, pairs, ca_pem, ca_id, chain):
    main = main_name.lower()
    alts = {a.lower() for a in (json.loads(altnames) if isinstance(altnames, str) else altnames or [])}
    # what x509util makes: server CN + SAN of every name; client CN, SAN the other names; CA CN only
    if kind == "issue_local_ca" or subject_type == "CA":
        want_san = set()
    elif subject_type == "client":
        want_san = alts - {main}
    else:
        want_san = alts | {main}

    items = json.loads(pairs) if isinstance(pairs, str) else pairs
    result_chain = json.loads(chain) if isinstance(chain, str) else chain
    ca = load_issuer(ca_pem, "the certificate of cacert %s" % ca_id) if ca_pem is not None else None
    not_after = None

    for n, pair in enumerate(items, 1):
        algo = pair.get("algo")
        what = "the %s certificate (pair %s)" % (algo, n)
        leaf = load(pair.get("cert"), what)

        # names: exactly the certificate's subjects
        cns = [a.value.lower() for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        san = extension(leaf, x509.SubjectAlternativeName, what)
        dns = [v.lower() for v in san.get_values_for_type(x509.DNSName)] if san is not None else []
        others = len(san) - len(dns) if san is not None else 0
        # an ACME CA may leave the CN out (Let's Encrypt's newer profiles); ours always set it
        cn_ok = cns == [main] or (kind == "issue_acme" and not cns)
        if not cn_ok or set(dns) != want_san or others:
            missing, extra = sorted(want_san - set(dns)), sorted(set(dns) - want_san)
            refuse("%s is for CN %s, DNS names %s%s, but certificate %s (%s) wants CN %s, DNS names %s%s" % (
                       what, cns or "(none)", sorted(set(dns)) or "(none)",
                       " and %s non-DNS alt names" % others if others else "",
                       main_name, subject_type, main, sorted(want_san) or "(none)",
                       "".join([" (missing %s)" % missing if missing else "", " (extra %s)" % extra if extra else ""])),
                   "issue the certificate for exactly the subject and alt names of the certificate (SELECT * FROM certs)")

        # issuer: the CA it names, proven by signature
        if kind == "issue_local_ca":
            if not is_ca(leaf, what):
                refuse("%s is not a CA certificate (BasicConstraints CA:TRUE)" % what,
                       "issue the local CA certificate with x509util.build_ca_certificate")
            signed_by(leaf, leaf, what, "itself (a local CA is self-signed)")
        else:
            if is_ca(leaf, what):
                refuse("%s is a CA certificate, not a %s certificate" % (what, subject_type),
                       "issue a leaf certificate (BasicConstraints CA:FALSE)")
            if kind == "issue_local":
                signed_by(leaf, ca, what, "the local CA of cacert %s" % ca_id)
            else:
                # pair 1's issuer is stored (cacert), so it links to the result's chain; a later pair
                # (the other algorithm may have another intermediate) may bring its own
                links = result_chain if n == 1 or pair.get("chain") is None else pair.get("chain")
                if not isinstance(links, list) or not links:
                    refuse('"chain" of %s must be a non-empty list of PEM certificates, the issuer first' % what,
                           "report the certificates that followed the leaf in the CA's download")
                child, child_what = leaf, what
                for i, pem in enumerate(links):
                    link_what = "chain certificate %s of pair %s" % (i + 1, n)
                    parent = load_issuer(pem, link_what)
                    if not is_ca(parent, link_what):
                        refuse('%s ("%s") is not a CA certificate' % (link_what, dn(parent.subject)),
                               "report the chain as the CA returned it, the issuer first")
                    signed_by(child, parent, child_what, link_what)
                    child, child_what = parent, link_what
        if not_after is None or leaf.not_valid_after < not_after:
            not_after = leaf.not_valid_after

    facts = None
    if kind == "issue_acme":
        first = load_issuer(result_chain[0], "chain certificate 1")
        key = keys[id(first)][1]
        found = first.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        facts = json.dumps({
            "subject_cn": found[0].value if found else None,
            "algo": "rsa" if isinstance(key, rsa.RSAPublicKey) else "ec" if isinstance(key, ec.EllipticCurvePublicKey) else None,
            "hash": hashlib.sha256(first.public_bytes(serialization.Encoding.DER)).hexdigest().upper(),
            "is_ca": True})
    return (None, None, not_after.isoformat() + "+00:00" if not_after is not None else None, facts)

job_id = None   # the job whose result is checked: refuse names it
rows = []
for i in range(len(job_ids or [])):
    job_id = job_ids[i]
    try:
        rows.append((i + 1,) + check(job_ids[i], kinds[i], subject_types[i], main_names[i], altnames[i], pairs[i],
                                     ca_pems[i], ca_ids[i], chains[i]))
    except Refused as exc:
        rows.append((i + 1, exc.args[0], exc.args[1], None, None))
return rows
$$;

-- check_issued_result: who may report what, the CA instance a local result names, then the
-- certificates (check_result_certs); returns the result with authorized_until at most the
-- leaves' not_after and, for issue_acme, "issuer_facts" for apply_acme_chain
CREATE OR REPLACE FUNCTION pki.check_issued_result(j pki.jobs, cert pki.certificates, result jsonb)
RETURNS jsonb LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    has_chain boolean := coalesce(jsonb_typeof(result -> 'chain'), 'null') <> 'null';
    has_until boolean := coalesce(jsonb_typeof(result -> 'authorized_until'), 'null') <> 'null';
    has_cacert boolean := coalesce(jsonb_typeof(result -> 'cacert'), 'null') <> 'null';
    main subjects;
    ca_id int;
    ca_pem text;
    what text;
    facts record;
    until timestamptz;
BEGIN
    result := result - 'issuer_facts';   -- written here only, never taken from the agent
    IF j.kind <> 'issue_acme' AND (has_chain OR has_until) THEN
        PERFORM raise_error('SP023', format('job %s: the %s result carries %s; only an ACME order (issue_acme) reports them',
                j.id, j.kind, concat_ws(' and ', CASE WHEN has_chain THEN '"chain"' END,
                                                  CASE WHEN has_until THEN '"authorized_until"' END)),
            'leave chain and authorized_until out of a local result');
    END IF;
    IF j.kind = 'issue_acme' AND NOT has_chain THEN
        PERFORM raise_error('SP023', format('job %s: an ACME result must carry "chain", the certificates that follow the leaf', j.id),
            'report the chain the CA returned with the certificate, its issuer first; the database verifies and stores it');
    END IF;
    IF j.kind = 'issue_local_ca' AND has_cacert THEN
        PERFORM raise_error('SP023', format('job %s: a local CA is self-signed, but its result names cacert %s', j.id, result -> 'cacert'),
            'leave cacert out (or null) for issue_local_ca');
    END IF;
    SELECT * INTO main FROM main_subjects s WHERE s.certificate = cert.id;
    IF j.kind = 'issue_local' THEN
        IF NOT has_cacert OR (result ->> 'cacert') !~ '^[0-9]{1,9}$' THEN
            PERFORM raise_error('SP023', format('job %s: cacert %s is not the id of the local CA''s instance that signed the certificate',
                    j.id, coalesce(result -> 'cacert', 'null'::jsonb)),
                'give the id of the local CA''s issued instance (SELECT "Serial" FROM inst WHERE "Subject Type" = ''CA'')');
        END IF;
        ca_id := (result ->> 'cacert')::int;
        SELECT convert_from(k.cert, 'UTF8') INTO ca_pem
          FROM certinstances i
          JOIN certificates c ON c.id = i.certificate AND c.type = 'local'
          JOIN main_subjects s ON s.certificate = c.id AND s.type = 'CA'
          JOIN certkeydata k ON k.certinstance = i.id
         WHERE i.id = ca_id AND i.state IN ('issued', 'deployed');   -- no lock: the cacert foreign key keeps the row
        IF ca_pem IS NULL THEN
            SELECT format('%s %s instance of the %s %s certificate "%s"', CASE WHEN i.state::text ~ '^[aeiou]' THEN 'an' ELSE 'a' END,
                          i.state, c.type, s.type, s.name) INTO what
              FROM certinstances i JOIN certificates c ON c.id = i.certificate
              JOIN main_subjects s ON s.certificate = c.id
             WHERE i.id = ca_id;
            PERFORM raise_error('SP023', format('job %s: cacert %s is %s, not an issued or deployed instance of the local CA',
                    j.id, ca_id, coalesce(what, 'not a stored instance')),
                'give the id of the local CA''s instance that signed the certificate (SELECT "Serial" FROM inst WHERE "Subject Type" = ''CA'')');
        END IF;
    END IF;
    SELECT * INTO facts FROM check_result_certs(ARRAY[j.id], ARRAY[j.kind], ARRAY[main.type::text], ARRAY[main.name::text],
        ARRAY[(SELECT coalesce(jsonb_agg(s.name::text), '[]') FROM subjects s WHERE s.certificate = cert.id AND s.isaltname)],
        ARRAY[result -> 'pairs'], ARRAY[ca_pem], ARRAY[ca_id], ARRAY[result -> 'chain']);
    IF facts.problem IS NOT NULL THEN
        PERFORM raise_error('SP023', facts.problem, facts.hint);
    END IF;
    IF has_until THEN
        BEGIN
            until := (result ->> 'authorized_until')::timestamptz;
        EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
            PERFORM raise_error('SP023', format('job %s: authorized_until %s is not a timestamp', j.id, result -> 'authorized_until'),
                'report when the authorizations expire as ISO 8601, e.g. "2026-12-31T12:00:00Z"');
        END;
        -- clamped, not refused: real authorizations may outlive a short-lived leaf, and nothing is authorized past it
        result := jsonb_set(result, '{authorized_until}', to_jsonb(least(until, facts.leaf_not_after)));
    END IF;
    IF j.kind = 'issue_acme' THEN
        result := result || jsonb_build_object('issuer_facts', facts.issuer);
    END IF;
    RETURN result;
END
$$;

-- check_crl: a CRL a revoke or sign_crl job reports for local CA instance ca_id, parsed and checked
-- before it is stored and sent to the CA's targets: signed by that instance's key, issued in its
-- name, with the number, thisUpdate and nextUpdate it is reported with (thisUpdate within an hour of
-- pki.now(), nextUpdate at most crl_days later), no extension but its number and the CA's key id,
-- and listing exactly the unexpired certificates revoked under it up to revocation listed_through
-- (what the job read), each with its recorded date and reason ('unspecified': no reason extension)
-- and no other entry extension: a CRL that says less (removeFromCRL, an issuing distribution point
-- narrowing its scope, a far nextUpdate) revokes nothing. Returns what is wrong (for the caller's
-- SP023), NULL when it is right.
CREATE OR REPLACE FUNCTION pki.check_crl(ca_id int, crl_pem text, crl_number bigint, this_update timestamptz,
                                         next_update timestamptz, listed_through bigint)
RETURNS text
LANGUAGE plpython3u STABLE
SET search_path = pki, dd, pg_temp
AS $$
import datetime
from cryptography import x509
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

ca_rows = plpy.execute(plpy.prepare(
    "SELECT convert_from(k.cert, 'UTF8') AS cert FROM certkeydata k WHERE k.certinstance = $1 ORDER BY k.id LIMIT 1",
    ["int"]), [ca_id])
if not ca_rows:
    return "CA instance %s has no stored certificate" % ca_id
ca = x509.load_pem_x509_certificate(ca_rows[0]["cert"].encode())
try:
    crl = x509.load_pem_x509_crl((crl_pem or "").encode())
except ValueError:
    return "the CRL is not a PEM CRL"
if crl.issuer != ca.subject:
    return "the CRL is issued by %s, not by the CA %s" % (crl.issuer.rfc4514_string(), ca.subject.rfc4514_string())
if not crl.is_signature_valid(ca.public_key()):
    return "the CRL is not signed by the key of CA instance %s" % ca_id
others = {e.oid.dotted_string for e in crl.extensions} - {ExtensionOID.CRL_NUMBER.dotted_string,
                                                            ExtensionOID.AUTHORITY_KEY_IDENTIFIER.dotted_string}
if others:
    return "the CRL carries extensions besides its number and key id: %s" % ", ".join(sorted(others))
try:
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
except x509.ExtensionNotFound:
    number = None
if number != crl_number:
    return "the CRL's number is %s, the result says %s" % (number, crl_number)

def utc(text):
    return datetime.datetime.fromisoformat(text).astimezone(datetime.timezone.utc).replace(tzinfo=None)

if crl.next_update is None or abs((crl.last_update - utc(this_update)).total_seconds()) > 1 \
        or abs((crl.next_update - utc(next_update)).total_seconds()) > 1:
    return "the CRL's thisUpdate/nextUpdate (%s, %s) are not the result's (%s, %s)" % (
        crl.last_update, crl.next_update, this_update, next_update)
knobs = plpy.execute("SELECT pki.now()::text AS now, pki.setting_int('crl_days') AS days")[0]
now = utc(knobs["now"])
if abs((crl.last_update - now).total_seconds()) > 3600:
    return "the CRL's thisUpdate %s is not now (%s)" % (crl.last_update, now)
if (crl.next_update - crl.last_update).total_seconds() > knobs["days"] * 86400 + 1:
    return "the CRL's nextUpdate %s is more than crl_days (%s) after its thisUpdate" % (crl.next_update, knobs["days"])
wanted = {}
for r in plpy.execute(plpy.prepare(
        "SELECT convert_from(r.cert, 'UTF8') AS cert, r.reason, r.revoked_at::text AS revoked_at FROM revocations r "
        "WHERE r.ca_instance = $1 AND r.not_after > pki.now() AND r.id <= $2", ["int", "bigint"]), [ca_id, listed_through]):
    wanted[x509.load_pem_x509_certificate(r["cert"].encode()).serial_number] = (r["reason"], utc(r["revoked_at"]))
listed = {r.serial_number: r for r in crl}
if set(listed) != set(wanted):
    return "the CRL lists %d certificate(s), %d of them not revoked under this CA, and misses %d that are" % (
        len(listed), len(set(listed) - set(wanted)), len(set(wanted) - set(listed)))
for serial, entry in listed.items():
    reason, revoked_at = wanted[serial]
    kinds = {e.oid.dotted_string for e in entry.extensions}
    if kinds - {CRLEntryExtensionOID.CRL_REASON.dotted_string}:
        return "the CRL's entry for serial %x carries extensions besides its reason" % serial
    try:
        said = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
    except x509.ExtensionNotFound:
        said = "unspecified"
    if said != reason or reason == "unspecified" and kinds:
        return "the CRL gives serial %x the reason %s, it was revoked for %s" % (serial, said, reason)
    if abs((entry.revocation_date - revoked_at).total_seconds()) > 1:
        return "the CRL gives serial %x the revocation date %s, it was revoked %s" % (serial, entry.revocation_date, revoked_at)
return None
$$;
