"""Real certificates for the SQL tests (made with cryptography, as the agent will)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def make_pair(name: str, algo: str, not_before: dt.datetime, days: int) -> dict:
    """A self-signed key/certificate pair in the shape complete_job expects: {algo, cert, key}."""
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
