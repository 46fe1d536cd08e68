"""The local CA of serverPKI versions before 0.9: two flat files, ca_cert and ca_key ([Pathes]).

0.9.11 keeps its local CA in the database; on its first -C without one there it reads the flat files
and stores them as the CA's first instance (cacert.create_local_ca_cert: "Will be stored in DB"). A
database that never ran -C after the upgrade still has its CA only in those files. Given them
(--ca-cert-file, --ca-key-file), the import does what that -C would have done: the CA joins the rows
read as certificate SUBJECT_LOCAL_CA (type local, subject type CA) with one 'issued' instance, and the
instances it signed that link to no CA get it as their CA. The writer then imports it like any CA.
The key is opened in memory only (clear, or with --ca-passphrase-file) and must belong to the certificate.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from .. import keystore
from ..errors import ServerPKIError, UsageError
from ..secretfile import read_secret
from ..x509util import key_algo
from .reader import LegacyData
from .report import Report


class FlatCaRefused(ServerPKIError):
    """The flat CA files cannot become the local CA; the message says why and what to do."""


def _certificate(path: Path) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"--ca-cert-file {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise FlatCaRefused(f"--ca-cert-file {path}: not a PEM certificate; nothing was imported") from None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise FlatCaRefused(f"--ca-cert-file {path}: {cert.subject.rfc4514_string()} is no CA certificate "
                            "(basicConstraints CA:TRUE); nothing was imported")
    now = dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise FlatCaRefused(f"--ca-cert-file {path}: the CA certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d} "
                            f"to {cert.not_valid_after_utc:%Y-%m-%d}, not now (0.9.11 would not use it either): leave "
                            "--ca-cert-file and --ca-key-file out and make a new CA with operate_serverPKI -I; nothing was imported")
    return cert


def _key(path: Path, passphrase: bytes | None, cert: x509.Certificate) -> str:
    """The key in clear traditional PEM, in memory (as the original held it), if it is the certificate's."""
    pem = read_secret(path, "--ca-key-file")
    try:
        key = keystore.load_key(pem, passphrase, f"--ca-key-file {path}")
    except keystore.PassphraseUnavailable:
        raise FlatCaRefused(f"--ca-key-file {path} is encrypted: give its passphrase with --ca-passphrase-file; "
                            "nothing was imported") from None
    except keystore.WrongPassphrase as exc:
        raise FlatCaRefused(f"{exc}: give its passphrase with --ca-passphrase-file (else the --passphrase-file "
                            "one is tried); nothing was imported") from None
    except keystore.KeystoreError as exc:
        raise FlatCaRefused(f"{exc}; nothing was imported") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, public)
            != cert.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise FlatCaRefused(f"--ca-key-file {path} is not the key of --ca-cert-file ({cert.subject.rfc4514_string()}); "
                            "nothing was imported")
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode("ascii")


def _signed_by(pem: bytes, ca: x509.Certificate) -> bool:
    try:
        x509.load_pem_x509_certificate(bytes(pem)).verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def add_flat_ca(data: LegacyData, report: Report, cert_file: Path, key_file: Path, name: str,
                passphrase: bytes | None) -> None:
    """Add the flat CA to the rows read, as 0.9.11's first -C would have stored it (see the module)."""
    rows = data.rows
    cert = _certificate(cert_file)
    subject = next((s for s in rows["subjects"] if s["type"] == "CA" and s["name"].lower() == name.lower()), None)
    with_pairs = {k["certinstance"] for k in rows["certkeydata"]}
    if subject is not None:
        held = [i["id"] for i in rows["certinstances"] if i["certificate"] == subject["certificate"] and i["id"] in with_pairs]
        if held:
            report.notes.append(f"the database holds the local CA {name!r} (instance {held[-1]}): "
                                "--ca-cert-file and --ca-key-file are not imported")
            return
    key = _key(key_file, passphrase, cert)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    certificate = subject["certificate"] if subject else max([c["id"] for c in rows["certificates"]] + [0]) + 1
    instance = max([i["id"] for i in rows["certinstances"]] + [0]) + 1
    if subject is None:
        rows["certificates"].append({"id": certificate, "type": "local", "disabled": False, "authorized_until": None,
                                     "encryption_algo": key_algo(cert.public_key()), "ocsp_must_staple": False,
                                     "created": None, "remarks": f"the local CA of {cert_file}"})
        rows["subjects"].insert(0, {"id": None, "type": "CA", "name": name, "isaltname": False,
                                    "certificate": certificate, "remarks": None})
    # first: the instances it signed refer to it
    rows["certinstances"].insert(0, {"id": instance, "certificate": certificate, "state": "issued",
                                  "ocsp_must_staple": False, "cacert": instance, "updated": None,
                                  "not_before": cert.not_valid_before_utc, "remarks": f"from {cert_file}"})
    rows["certkeydata"].append({"id": None, "certinstance": instance, "encryption_algo": key_algo(cert.public_key()),
                                "cert": pem, "key": key.encode("ascii"), "hash": None})
    # what it signed and links to no CA (0.9.x's placeholder instance, or none) gets it as its CA
    pairs = {k["certinstance"]: k["cert"] for k in rows["certkeydata"]}
    linked = [i["id"] for i in rows["certinstances"]
              if i["id"] != instance and (i["cacert"] is None or i["cacert"] not in with_pairs)
              and i["id"] in pairs and _signed_by(pairs[i["id"]], cert)]
    for i in rows["certinstances"]:
        if i["id"] in linked:
            i["cacert"] = instance
    report.notes.append(f"the local CA {name!r} of {cert_file} and {key_file} (0.9.11 would have stored it on its "
                        f"first -C): certificate {certificate}, instance {instance}"
                        + (f"; the CA of instances {', '.join(map(str, linked))}" if linked else ""))
