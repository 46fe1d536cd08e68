-- 120_cert_facts: what the database reads from a certificate itself, in plpython3u with
-- Debian's python3-cryptography (38): its names, key algorithm and hash (cert_facts, for the
-- result checks and the ACME chain) and the association data of its TLSA records (tlsa_data).

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
