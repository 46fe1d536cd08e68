"""Keys and certificates of the local CA, made with `cryptography` (no openssl subprocess).

Plain parameters in, `cryptography` objects out; PEM helpers at the end. The
callers (the issue handlers) read the configuration and the database; this
module decides nothing about what to issue, only how a certificate looks:

- the CA: self-signed, BasicConstraints CA:TRUE pathlen 0 (it signs leaves
  only), KeyUsage keyCertSign + cRLSign, SubjectKeyIdentifier;
- a leaf: SAN, EKU serverAuth or clientAuth, KeyUsage digitalSignature (and
  keyEncipherment for RSA, for TLS 1.2 RSA key exchange), AKI/SKI, and the
  TLS Feature status_request extension (RFC 7633) for OCSP must-staple.

Validity starts an hour back, so a peer whose clock runs a little behind
accepts a fresh certificate; a leaf never outlives its CA.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ConfigError
from .revocation import REVOCATION_REASONS  # noqa: F401  (the handlers' name for it)

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]
PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]

# how far back not_before reaches: peers with a slow clock still accept a fresh certificate
CLOCK_SKEW = dt.timedelta(hours=1)

# the names a configuration may give a curve (the NIST curves every TLS peer speaks)
CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1, "prime256v1": ec.SECP256R1, "p-256": ec.SECP256R1, "p256": ec.SECP256R1,
    "secp384r1": ec.SECP384R1, "p-384": ec.SECP384R1, "p384": ec.SECP384R1,
    "secp521r1": ec.SECP521R1, "p-521": ec.SECP521R1, "p521": ec.SECP521R1,
}
CURVE_BY_BITS = {256: "secp256r1", 384: "secp384r1", 521: "secp521r1"}

# the x509 configuration's names of distinguished-name attributes, in the order of a DN
_DN_ATTRIBUTES = (
    ("country", NameOID.COUNTRY_NAME),
    ("state", NameOID.STATE_OR_PROVINCE_NAME),
    ("locality", NameOID.LOCALITY_NAME),
    ("organization", NameOID.ORGANIZATION_NAME),
    ("organizational_unit", NameOID.ORGANIZATIONAL_UNIT_NAME),
)
SUBJECT_TYPES = ("server", "client")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def curve_for(name: str | None = None, bits: int | None = None) -> ec.EllipticCurve:
    """The curve a configuration names (secp384r1, prime256v1, P-256 ...), or the one of that size."""
    if name is None and bits is not None:
        name = CURVE_BY_BITS.get(bits)
        if name is None:
            raise ConfigError(f"no EC curve of {bits} bits: give 256, 384 or 521")
    curve = CURVES.get((name or "").strip().lower())
    if curve is None:
        raise ConfigError(f"unknown EC curve {name!r}: give one of secp256r1, secp384r1, secp521r1")
    return curve()


def new_key(algo: str, rsa_size: int = 2048, ec_curve: str | None = "secp384r1") -> PrivateKey:
    """A new private key: algo 'rsa' (rsa_size bits, e = 65537) or 'ec' (on ec_curve)."""
    if algo == "rsa":
        if not isinstance(rsa_size, int) or not 2048 <= rsa_size <= 16384:
            raise ConfigError(f"RSA key size {rsa_size!r} is not from 2048 to 16384")
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_size)
    if algo == "ec":
        return ec.generate_private_key(curve_for(ec_curve))
    raise ConfigError(f"key algorithm {algo!r} is not 'rsa' or 'ec'")


def key_algo(key: PrivateKey | PublicKey) -> str:
    """'rsa' or 'ec': the row's encryption_algo for this key."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ec"
    raise ConfigError(f"unsupported key type {type(key).__name__}")


def distinguished_name(common_name: str, names: Mapping[str, str | None] | None = None) -> x509.Name:
    """C, ST, L, O, OU from names (those given and not empty), then CN."""
    attributes = []
    for option, oid in _DN_ATTRIBUTES:
        value = (names or {}).get(option)
        if value:
            if oid == NameOID.COUNTRY_NAME and len(value) != 2:
                raise ConfigError(f"x509 country {value!r} is not a two-letter ISO 3166 code")
            attributes.append(x509.NameAttribute(oid, str(value)))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _signature_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    # the hash matches the strength of an EC key (P-384 with SHA-384, P-521 with SHA-512)
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384() if key.curve.key_size <= 384 else hashes.SHA512()
    return hashes.SHA256()


def build_ca_certificate(key: PrivateKey, common_name: str, lifetime_days: int,
                         names: Mapping[str, str | None] | None = None,
                         now: dt.datetime | None = None) -> x509.Certificate:
    """A self-signed CA certificate that may sign leaf certificates only (pathlen 0)."""
    if not isinstance(lifetime_days, int) or lifetime_days < 1:
        raise ConfigError(f"local CA lifetime {lifetime_days!r} is not a positive number of days")
    now = now or utcnow()
    subject = distinguished_name(common_name, names)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=lifetime_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    return builder.sign(key, _signature_hash(key))


def _unique(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for name in names:
        if name and name.lower() not in seen:
            seen.add(name.lower())
            out.append(name)
    return out


def issue_leaf(ca_cert: x509.Certificate, ca_key: PrivateKey, public_key: PublicKey, subject_name: str,
               altnames: Iterable[str] = (), subject_type: str = "server", must_staple: bool = False,
               lifetime_days: int = 365, names: Mapping[str, str | None] | None = None,
               now: dt.datetime | None = None) -> x509.Certificate:
    """A server or client certificate for public_key, signed by the CA.

    server: SAN holds the subject name and the alt names (DNS), EKU serverAuth.
    client: the subject name is the CN only; SAN holds the alt names, if any; EKU clientAuth.
    """
    if subject_type not in SUBJECT_TYPES:
        raise ConfigError(f"a leaf certificate is for a server or a client, not {subject_type!r}")
    if not isinstance(lifetime_days, int) or lifetime_days < 1:
        raise ConfigError(f"{subject_type} certificate lifetime {lifetime_days!r} is not a positive number of days")
    now = now or utcnow()
    not_before = now - CLOCK_SKEW
    ca_not_after = ca_cert.not_valid_after_utc
    not_after = min(now + dt.timedelta(days=lifetime_days), ca_not_after)
    if not_after <= now:
        raise ConfigError(f"the local CA expired at {ca_not_after:%Y-%m-%d %H:%M} UTC: issue a new one with operate_serverPKI -I")

    san = _unique([subject_name, *altnames]) if subject_type == "server" else _unique(
        a for a in altnames if a.lower() != subject_name.lower())
    eku = ExtendedKeyUsageOID.SERVER_AUTH if subject_type == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())

    builder = (
        x509.CertificateBuilder()
        .subject_name(distinguished_name(subject_name, names))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=is_rsa,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False)
    if must_staple:
        builder = builder.add_extension(x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False)
    return builder.sign(ca_key, _signature_hash(ca_key))


def build_csr(key: PrivateKey, names: Iterable[str], must_staple: bool = False) -> x509.CertificateSigningRequest:
    """A CSR for an ACME order: CN the first name, SAN every name, TLS Feature status_request when must_staple."""
    names = _unique(names)
    if not names:
        raise ConfigError("a CSR needs at least one name")
    builder = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False))
    if must_staple:
        builder = builder.add_extension(x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False)
    return builder.sign(key, _signature_hash(key))


# --------------------------------------------------------------------------- revocation



def build_crl(ca_cert: x509.Certificate, ca_key: PrivateKey, entries: Iterable[tuple[int, dt.datetime, str]],
              number: int, this_update: dt.datetime, next_update: dt.datetime) -> x509.CertificateRevocationList:
    """A CRL of the CA: entries are (serial number, revocation date, reason name); an 'unspecified'
    entry carries no reason extension (RFC 5280 5.3.1: absent rather than unspecified)."""
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(this_update).next_update(next_update)
               .add_extension(x509.CRLNumber(number), critical=False))
    try:   # RFC 5280 5.2.1: every CRL names its key; a CA without an SKI (an imported one) by its public key
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
    builder = builder.add_extension(aki, critical=False)
    for serial, revoked_at, reason in entries:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
        if reason != "unspecified":
            entry = entry.add_extension(x509.CRLReason(x509.ReasonFlags(reason)), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca_key, _signature_hash(ca_key))


def crl_pem(crl: x509.CertificateRevocationList) -> str:
    return crl.public_bytes(serialization.Encoding.PEM).decode("ascii")


# --------------------------------------------------------------------------- PEM

def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def load_cert(pem: str | bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode("ascii") if isinstance(pem, str) else pem)


def public_pem(key: PrivateKey | PublicKey) -> str:
    """The SubjectPublicKeyInfo PEM (what `openssl pkey -pubout` and `openssl x509 -pubkey` print)."""
    public = key.public_key() if hasattr(key, "private_bytes") else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
