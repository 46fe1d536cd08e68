-- 030_certkeydata: no client can store an inconsistent certificate. Server-side
-- Python (Debian's python3-cryptography 38) parses every stored certificate;
-- the TLSA hash and the validity dates are derived from it, never trusted.

-- check_certkeydata: parse the PEM certificate, derive hash and dates, check algo and key
CREATE OR REPLACE FUNCTION pki.check_certkeydata()
RETURNS trigger LANGUAGE plpython3u
SET search_path = pki, dd, pg_temp
AS $$
# the imports and helpers once per session (SD): made anew for every row, they cost a third of a pair's check
helpers = SD.get("helpers")
if helpers is None:
    import base64
    import hashlib
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def der_item(buf, pos):
        tag, length = buf[pos], buf[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(buf[pos:pos + n], "big")
            pos += n
        if pos + length > len(buf):
            raise ValueError("truncated DER")
        return tag, pos, pos + length

    def der_children(buf, start, end):
        items, pos = [], start
        while pos < end:
            item = der_item(buf, pos)
            items.append(item)
            pos = item[2]
        return items

    RSA_OID, EC_OID = bytes.fromhex("2a864886f70d010101"), bytes.fromhex("2a8648ce3d0201")

    def spki_public(tbs):
        """(algo, public value) from the certificate's SubjectPublicKeyInfo, as embedded_public gives a key's:
        ('rsa', (n, e)) or ('ec', uncompressed point); None for anything else. Read from the DER: having
        cryptography decode the key makes OpenSSL 3 check an EC point, about 0.4 ms, more than all the rest."""
        _, s, e = der_item(tbs, 0)
        fields = der_children(tbs, s, e)
        _, s, e = fields[6 if fields[0][0] == 0xA0 else 5]   # after [0] version, serial, signature, issuer, validity, subject
        algid, bits = der_children(tbs, s, e)[:2]
        oid = der_children(tbs, algid[1], algid[2])[0]
        if bits[0] != 0x03 or tbs[bits[1]] != 0:
            return None
        content = tbs[bits[1] + 1:bits[2]]
        if oid[0] == 0x06 and tbs[oid[1]:oid[2]] == RSA_OID:
            _, s, e = der_item(content, 0)
            n, exp = der_children(content, s, e)[:2]
            return ("rsa", (int.from_bytes(content[n[1]:n[2]], "big"), int.from_bytes(content[exp[1]:exp[2]], "big")))
        if oid[0] == 0x06 and tbs[oid[1]:oid[2]] == EC_OID and content[:1] == b"\x04":
            return ("ec", content)
        return None

    # a clear key must belong to the certificate; an encrypted one cannot be opened here.
    # The public half is read from the PKCS#8 structure itself: loading the key would make
    # OpenSSL 3 validate an RSA key, about 40 ms a key, for a comparison of two numbers.
    def embedded_public(pem_bytes, public_key_kind):
        """(kind, public value) from a clear PKCS#8 key: ('rsa', (n, e)) or ('ec', point); None if not PKCS#8."""
        text = pem_bytes.decode("ascii").strip()
        if not (text.startswith("-----BEGIN PRIVATE KEY-----") and text.endswith("-----END PRIVATE KEY-----")):
            return None
        der = base64.b64decode("".join(text.splitlines()[1:-1]), validate=True)
        _, s, e = der_item(der, 0)
        version, algid, private = der_children(der, s, e)[:3]
        inner_tag, s, e = der_item(der, private[1])
        fields = der_children(der, s, e)
        if public_key_kind == "rsa":
            n, exp = fields[1], fields[2]
            return ("rsa", (int.from_bytes(der[n[1]:n[2]], "big"), int.from_bytes(der[exp[1]:exp[2]], "big")))
        for tag, fs, fe in fields:
            if tag == 0xA1:  # [1] publicKey BIT STRING
                _, bs, be = der_item(der, fs)
                return ("ec", der[bs + 1:be])
        return None

    def encrypted_structure_ok(pem_bytes):
        """An EncryptedPrivateKeyInfo: SEQUENCE { AlgorithmIdentifier SEQUENCE, encryptedData OCTET STRING }."""
        text = pem_bytes.decode("ascii").strip()
        if not text.endswith("-----END ENCRYPTED PRIVATE KEY-----"):
            return False
        der = base64.b64decode("".join(text.splitlines()[1:-1]), validate=True)
        tag, s, e = der_item(der, 0)
        parts = der_children(der, s, e)
        return tag == 0x30 and e == len(der) and len(parts) == 2 and parts[0][0] == 0x30 and parts[1][0] == 0x04

    helpers = SD["helpers"] = (hashlib, x509, serialization, ec, rsa, spki_public, embedded_public, encrypted_structure_ok)
hashlib, x509, serialization, ec, rsa, spki_public, embedded_public, encrypted_structure_ok = helpers

def refuse(code, message, hint):
    plpy.error(message, hint=hint, sqlstate=code)

new = TD["new"]
if TD["event"] == "UPDATE":
    old = TD["old"]
    # key_file_format and file_name_algo say what the hosts hold (0010): changed, the files would move
    for column in ("certinstance", "encryption_algo", "cert", "hash", "not_before", "not_after",
                   "key_file_format", "file_name_algo"):
        if new[column] != old[column]:
            refuse("SP012", "certkeydata %s: column %s cannot change; a stored certificate is immutable" % (old["id"], column),
                   "issue a new instance instead")

pem = bytes(new["cert"]) if new["cert"] is not None else b""
# nothing but the one certificate: the cert column is readable by pki_admin, so a key must never ride along
if pem.count(b"-----BEGIN CERTIFICATE-----") != 1 or pem.count(b"-----BEGIN ") != 1:
    refuse("SP008", "certkeydata for instance %s: cert must hold exactly one PEM certificate and nothing else" % new["certinstance"],
           "store the leaf certificate only; its CA certificate is an instance of its own (cacert), its key goes in key")
try:
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(serialization.Encoding.DER)
except Exception as exc:
    refuse("SP008", "certkeydata for instance %s: cert is not a parsable PEM certificate (%s)" % (new["certinstance"], type(exc).__name__),
           "store the PEM text as produced by the CA")

try:
    spki = spki_public(cert.tbs_certificate_bytes)
except Exception:
    spki = None   # cryptography decodes it below, and says what it is
public_key = cert.public_key() if spki is None else None
algo = spki[0] if spki is not None else \
    "rsa" if isinstance(public_key, rsa.RSAPublicKey) else "ec" if isinstance(public_key, ec.EllipticCurvePublicKey) else None
if algo is None or algo != new["encryption_algo"]:
    refuse("SP008", "certkeydata for instance %s: the certificate's key is %s, the row says %s" % (
               new["certinstance"], algo or type(public_key).__name__, new["encryption_algo"]),
           "set encryption_algo to the certificate's key algorithm (rsa or ec)")

digest = hashlib.sha256(der).hexdigest().upper()
if new["hash"] is not None and new["hash"].upper() != digest:
    refuse("SP008", "certkeydata for instance %s: hash %s is not the SHA-256 of the certificate (%s)" % (
               new["certinstance"], new["hash"], digest),
           "leave hash NULL; the database computes it")
new["hash"] = digest
new["not_before"] = cert.not_valid_before.isoformat() + "+00:00"
new["not_after"] = cert.not_valid_after.isoformat() + "+00:00"

key_pem = bytes(new["key"]) if new["key"] is not None else None
if key_pem is not None:
    if key_pem.count(b"-----BEGIN ") != 1:
        refuse("SP008", "certkeydata for instance %s: key must hold exactly one PEM private key" % new["certinstance"],
               "store the key as one PKCS#8 PEM block")
    label = key_pem.split(b"\n", 1)[0].strip()
    if label == b"-----BEGIN ENCRYPTED PRIVATE KEY-----":
        try:
            well_formed = encrypted_structure_ok(key_pem)
        except Exception:
            well_formed = False
        if not well_formed:
            refuse("SP008", "certkeydata for instance %s: key is not a parsable PEM private key (a malformed encrypted key)" % new["certinstance"],
                   "store the key as PKCS#8 PEM, encrypted with the passphrase of the stored keys")
    else:
        try:
            embedded = embedded_public(key_pem, algo)
            if embedded is None:  # not PKCS#8, or an EC key without its public half: open it
                key = serialization.load_pem_private_key(key_pem, password=None)
                matches = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == \
                    cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            elif spki is not None:
                matches = embedded == spki
            elif algo == "rsa":
                numbers = public_key.public_numbers()
                matches = embedded[1] == (numbers.n, numbers.e)
            else:
                matches = embedded[1] == public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        except Exception as exc:
            refuse("SP008", "certkeydata for instance %s: key is not a parsable PEM private key (%s)" % (new["certinstance"], type(exc).__name__),
                   "store the key as PKCS#8 PEM")
        if not matches:
            refuse("SP008", "certkeydata for instance %s: the key does not belong to the certificate" % new["certinstance"],
                   "store the key that signed the CSR of this certificate")
return "MODIFY"
$$;
DROP TRIGGER IF EXISTS check_certkeydata ON pki.certkeydata;
CREATE TRIGGER check_certkeydata BEFORE INSERT OR UPDATE ON pki.certkeydata
    FOR EACH ROW EXECUTE FUNCTION pki.check_certkeydata();

-- touch_instance_validity: after pairs are stored or removed, let their instances re-derive their dates;
-- once per statement for all its rows (a batch of issue completions stores its pairs in one INSERT).
-- SECURITY DEFINER: pki_admin's remove_cert cascades to key pairs, and the admin may not write instances
CREATE OR REPLACE FUNCTION pki.touch_instance_validity()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    -- = ANY (ARRAY(...)): each instance found by its key; with IN the planner, not knowing the transition
    -- table's size, read all the instances (a batch of 20 took a tenth of a millisecond per pair)
    UPDATE certinstances SET not_before = NULL, not_after = NULL
     WHERE id = ANY (ARRAY(SELECT DISTINCT k.certinstance FROM changed_pairs k));
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS touch_instance_validity ON pki.certkeydata;
DROP TRIGGER IF EXISTS touch_instance_validity_insert ON pki.certkeydata;
DROP TRIGGER IF EXISTS touch_instance_validity_delete ON pki.certkeydata;
-- (a trigger with a transition table has one event: one for INSERT, one for DELETE)
CREATE TRIGGER touch_instance_validity_insert AFTER INSERT ON pki.certkeydata
    REFERENCING NEW TABLE AS changed_pairs FOR EACH STATEMENT EXECUTE FUNCTION pki.touch_instance_validity();
CREATE TRIGGER touch_instance_validity_delete AFTER DELETE ON pki.certkeydata
    REFERENCING OLD TABLE AS changed_pairs FOR EACH STATEMENT EXECUTE FUNCTION pki.touch_instance_validity();

-- derive_instance_validity: an instance with stored pairs is valid where all of them are
CREATE OR REPLACE FUNCTION pki.derive_instance_validity()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    nb timestamptz;
    na timestamptz;
BEGIN
    SELECT max(k.not_before), min(k.not_after) INTO nb, na FROM certkeydata k WHERE k.certinstance = NEW.id;
    -- the pairs of one instance are deployed together, so they must share a period of validity
    IF nb >= na THEN
        PERFORM raise_error('SP008', format('certinstance %s: its key pairs are never valid at the same time (latest not_before %s, earliest not_after %s)',
                NEW.id, nb, na),
            'store the pairs that were issued together for this instance');
    END IF;
    IF nb IS NOT NULL THEN
        NEW.not_before := nb;
        NEW.not_after := na;
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS derive_instance_validity ON pki.certinstances;
CREATE TRIGGER derive_instance_validity BEFORE INSERT OR UPDATE ON pki.certinstances
    FOR EACH ROW EXECUTE FUNCTION pki.derive_instance_validity();
