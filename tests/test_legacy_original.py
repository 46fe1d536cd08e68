"""The harness of tests/legacy.py: the real serverPKI 0.9.11 installs, runs, and makes the data the
import (issue 16) is tested against: certificates, instances with keys (encrypted by its -X), its local
CA, and its `-n -v -a` listing."""

from __future__ import annotations

import json

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

import legacy
from legacy import legacy_db  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slow

CAS = {"Local CA", "No cert"}   # its CA and its placeholder certificate (instance 1)


def rows(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        conn.execute("SET search_path = pki, dd, public")
        return conn.execute(sql).fetchall()


def keydata(dsn: str) -> dict[int, tuple[str, str, bytes, bytes]]:
    """certinstance id -> (certificate name, subject type, cert PEM, key PEM)."""
    found = rows(dsn, "SELECT i.id, s.name, s.type::text, d.cert, d.key FROM certkeydata d "
                      "JOIN certinstances i ON i.id = d.certinstance "
                      "JOIN subjects s ON s.certificate = i.certificate AND NOT s.isaltname")
    return {i: (name, kind, bytes(cert), bytes(key)) for i, name, kind, cert, key in found}


def test_the_original_runs_patched_from_its_own_virtualenv(legacy_db):
    venv = legacy_db.install.venv
    assert (venv / ".ready").read_text().strip() == legacy.VERSION
    [versionstring] = venv.glob("lib/python*/site-packages/postgresql/versionstring.py")
    assert legacy.VERSIONSTRING_FIXED in versionstring.read_text()
    assert legacy.legacy_venv() == venv     # the cached one, not a second install
    shown = legacy.operate_plain(legacy_db.install, "-n", "-o", "www.lab.example")
    assert shown.returncode == 0, shown.stderr
    assert "www.lab.example" in shown.stdout


def test_its_database_holds_what_the_psql_examples_and_its_runs_made(legacy_db):
    dsn = legacy_db.dsn
    assert rows(dsn, "SELECT schemaversion, keysencrypted FROM revision") == [(6, True)]
    certs = dict(rows(dsn, "SELECT s.name, c.disabled FROM certificates c JOIN subjects s ON s.certificate = c.id "
                           "AND NOT s.isaltname"))
    assert set(certs) == set(legacy.ALL_CERTS) | CAS
    assert sorted(name for name, disabled in certs.items() if disabled) == ["No cert", legacy.DISABLED]
    assert {t for (t,) in rows(dsn, "SELECT DISTINCT cert_file_type::text FROM places")} == set(legacy.PLACES)
    assert rows(dsn, "SELECT d.fqdn::text, d.jailroot, j.name::text FROM jails j JOIN disthosts d ON d.id = j.disthost "
                     "ORDER BY j.name") == [("jails.lab.example", "/usr/jails", "mail1"), ("jails.lab.example", "/usr/jails", "web1")]
    algos = dict(rows(dsn, "SELECT s.name::text, c.encryption_algo::text FROM certificates c "
                           "JOIN subjects s ON s.certificate = c.id AND NOT s.isaltname"))
    assert algos["le.lab.example"] == "rsa_plus_ec" and algos["jailed.lab.example"] == "ec"
    assert rows(dsn, "SELECT c.type::text, c.authorized_until::date::text FROM certificates c "
                     "JOIN subjects s ON s.certificate = c.id WHERE s.name = 'le.lab.example'") == [("LE", "2027-01-05")]
    subject_types = {name: kind for name, kind, _, _ in keydata(dsn).values()}
    assert subject_types == {**{c: "server" for c in legacy.LOCAL_CERTS}, "client1@lab.example": "client", "Local CA": "CA"}


def test_its_x_encrypted_every_key_but_the_ca_key_with_the_whole_key_file(legacy_db):
    passphrase = legacy_db.install.db_encryption_key.read_bytes()
    found = keydata(legacy_db.dsn)
    assert len(found) == len(legacy.LOCAL_CERTS) + 1
    for instance, (name, kind, cert_pem, key_pem) in found.items():
        cert = x509.load_pem_x509_certificate(cert_pem)
        if kind == "CA":    # -X leaves the CA key as -I stored it: in clear
            assert b"ENCRYPTED" not in key_pem
            key = load_pem_private_key(key_pem, None)
            continue
        assert b"Proc-Type: 4,ENCRYPTED" in key_pem and b"DEK-Info:" in key_pem, (instance, name)
        with pytest.raises(TypeError):
            load_pem_private_key(key_pem, None)
        with pytest.raises(ValueError):
            load_pem_private_key(key_pem, passphrase.rstrip(b"\n"))   # the whole file, newline included
        key = load_pem_private_key(key_pem, passphrase)
        assert key.public_key() == cert.public_key(), (instance, name)
        assert isinstance(key, rsa.RSAPrivateKey), name    # even the 'ec' certificate's: local issuance is RSA only


def test_its_local_ca_signed_the_local_certificates(legacy_db):
    found = keydata(legacy_db.dsn)
    [(ca_instance, ca_pem)] = [(i, cert) for i, (_, kind, cert, _) in found.items() if kind == "CA"]
    ca = x509.load_pem_x509_certificate(ca_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    issued_by = dict(rows(legacy_db.dsn, "SELECT id, cacert FROM certinstances"))
    for instance, (name, kind, cert_pem, _) in found.items():
        assert issued_by[instance] == ca_instance, name
        if kind != "CA":
            cert = x509.load_pem_x509_certificate(cert_pem)
            ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                                   cert.signature_hash_algorithm)


def test_the_copy_before_x_holds_the_same_keys_in_clear(legacy_db):
    assert rows(legacy_db.clear_dsn, "SELECT schemaversion, keysencrypted FROM revision") == [(6, False)]
    clear, encrypted = keydata(legacy_db.clear_dsn), keydata(legacy_db.dsn)
    assert clear.keys() == encrypted.keys()
    passphrase = legacy_db.install.db_encryption_key.read_bytes()
    for instance, (name, kind, cert_pem, key_pem) in clear.items():
        assert b"ENCRYPTED" not in key_pem, name
        assert cert_pem == encrypted[instance][2]
        secret = None if kind == "CA" else passphrase
        assert load_pem_private_key(key_pem, None).private_numbers() == \
            load_pem_private_key(encrypted[instance][3], secret).private_numbers()


def test_its_listing_parses_into_rows_naming_every_certificate_and_instance(legacy_db):
    meta, instances = legacy.listing_tables(legacy_db.listing)
    assert {r["Cert Name"] for r in meta} == set(legacy.ALL_CERTS) | CAS
    assert {r["Place"] for r in meta} >= {"p_cert_only", "p_separate", "p_combine_key", "p_combine_cacert", "p_combine_both"}
    assert {r["Jail"] for r in meta} == {"None", "web1", "mail1"}
    with_keys = keydata(legacy_db.dsn)
    assert {int(r["Serial"]): r["Cert Name"] for r in instances} == {i: v[0] for i, v in with_keys.items()}
    assert {r["State"] for r in instances} == {"issued"}
    assert {r["CI CA"] for r in instances} == {str(i) for i, v in with_keys.items() if v[1] == "CA"}


def test_the_ca_passphrase_was_typed_through_the_pty_and_the_account_file_is_automatoes(legacy_db):
    assert legacy_db.log.count("passphrase: ") == 2     # -I asks twice; nothing else asked
    account = json.loads(legacy_db.install.le_account.read_text())
    assert set(account) == {"key", "uri"} and "PRIVATE KEY" in account["key"]
