"""Real certificates for the SQL tests (made with cryptography, as the agent will)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from helpers import owner_conn


def make_pair(name: str, algo: str, not_before: dt.datetime, days: int) -> dict:
    """A self-signed key/certificate pair in the shape helpers.completion_of makes an IssuedPair of: {algo, cert, key}."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if algo == "rsa" else ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before)
            .not_valid_after(not_before + dt.timedelta(days=days)).sign(key, hashes.SHA256()))
    return {
        "algo": algo,
        "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode(),
    }


# --------------------------------------------------------------------------- results the database accepts

ACME_CA_NAME = "serverPKI test ACME CA"
LOCAL_CA_NAME = "serverPKI test local CA"


def _ca(name: str, key=None, days: int = 36500) -> tuple:
    """A self-signed CA (CA:TRUE) valid from 2000 for a century: (key, certificate)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


_CAS: dict[str, tuple] = {}


def shared_ca(name: str) -> tuple:
    """The (key, certificate) of a test CA, made once per process."""
    if name not in _CAS:
        _CAS[name] = _ca(name)
    return _CAS[name]


def pem(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def make_leaf(cn: str | None, sans: list[str], algo: str, not_before: dt.datetime, days: int,
              ca_key, issuer: x509.Name, key=None) -> dict:
    """A leaf {algo, cert, key} for the names given, signed by ca_key under the issuer name."""
    key = key or (rsa.generate_private_key(public_exponent=65537, key_size=2048) if algo == "rsa"
                  else ec.generate_private_key(ec.SECP256R1()))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(not_before)
               .not_valid_after(not_before + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
    return {
        "algo": algo,
        "cert": pem(builder.sign(ca_key, hashes.SHA256())),
        "key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode(),
    }


def local_ca_instance(conn) -> int:
    """An issued instance of a local CA in this database (the test CA, stored once), as -I leaves it."""
    found = conn.execute(
        "SELECT i.id FROM pki.certinstances i JOIN pki.subjects s ON s.certificate = i.certificate "
        "AND NOT s.isaltname WHERE s.name = %s AND i.state = 'issued'", (LOCAL_CA_NAME,)).fetchone()
    if found:
        return found[0]
    _, cert = shared_ca(LOCAL_CA_NAME)
    algo = "rsa" if isinstance(cert.public_key(), rsa.RSAPublicKey) else "ec"
    conn = owner_conn(conn)    # instances and key pairs are the owner's functions' to write
    with conn.transaction():   # the reason is transaction-local
        # the instance's history says why, as -I's would
        conn.execute("SELECT pki.set_context('test local CA stored (certfactory)', NULL)")
        # one statement: a certificate without its subject is refused at the statement's end
        cert_id = conn.execute(
            "WITH c AS (INSERT INTO pki.certificates (type, encryption_algo, remarks) VALUES ('local', %s, 'test local CA') "
            "RETURNING id) INSERT INTO pki.subjects (type, name, isaltname, certificate) SELECT 'CA', %s, false, c.id FROM c "
            "RETURNING certificate", (algo, LOCAL_CA_NAME)).fetchone()[0]
        inst = conn.execute("INSERT INTO pki.certinstances (certificate, state) VALUES (%s, 'reserved') RETURNING id",
                            (cert_id,)).fetchone()[0]
        conn.execute("INSERT INTO pki.certkeydata (certinstance, encryption_algo, cert) VALUES (%s, %s, %s)",
                     (inst, algo, pem(cert).encode()))
        conn.execute("UPDATE pki.certinstances SET state = 'issued' WHERE id = %s", (inst,))
    return inst


def expected_names(conn, certificate: int) -> tuple[str, str, str, list[str], str]:
    """(subject type, cert type, main name, alt names, encryption_algo) of a certificate."""
    return conn.execute(
        "SELECT s.type::text, c.type::text, s.name::text, ARRAY(SELECT a.name::text FROM pki.subjects a "
        "WHERE a.certificate = c.id AND a.isaltname ORDER BY a.name), c.encryption_algo::text "
        "FROM pki.certificates c JOIN pki.subjects s ON s.certificate = c.id AND NOT s.isaltname WHERE c.id = %s",
        (certificate,)).fetchone()


def issue_result(conn, kind: str, certificate: int, not_before: dt.datetime, days: int = 90,
                 algos: list[str] | None = None) -> dict:
    """What a correct agent reports for an issue job of this kind: the names as x509util makes them,
    signed by the test local CA (stored as an instance, named in cacert), by the test ACME CA (the chain),
    or self-signed for a local CA."""
    subject_type, _, name, alts, algo = expected_names(conn, certificate)
    algos = algos or (["rsa", "ec"] if algo == "rsa_plus_ec" else [algo])
    if kind == "issue_local_ca":
        pairs = []
        for a in algos:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if a == "rsa" else None
            key, cert = _ca(name, key, days)
            pairs.append({"algo": a, "cert": pem(cert), "key": key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()})
        return {"pairs": pairs, "cacert": None}
    if subject_type == "client":
        sans = [a for a in alts if a.lower() != name.lower()]
    else:
        sans = [name, *alts]
    if kind == "issue_acme":
        ca_key, ca_cert = shared_ca(ACME_CA_NAME)
        pairs = [make_leaf(name, sans, a, not_before, days, ca_key, ca_cert.subject) for a in algos]
        return {"pairs": pairs, "chain": [pem(ca_cert)], "authorized_until": None}
    ca_key, ca_cert = shared_ca(LOCAL_CA_NAME)
    inst = local_ca_instance(conn)
    pairs = [make_leaf(name, sans, a, not_before, days, ca_key, ca_cert.subject) for a in algos]
    return {"pairs": pairs, "cacert": inst}
