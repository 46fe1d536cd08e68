"""DANE checked by a real validator: an ACME certificate issued by Pebble, its TLSA
records published in BIND's signed zone, its files deployed over SSH; openssl s_server
serves the deployed files and openssl s_client validates them with the records as a
DANE client gets them: read through a validating resolver (unbound), AD set."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from serverpki.agent import Agent
from serverpki.config import parse_config
from lab.bind import BindLab
from lab.pebble import PebbleLab
from lab.resolver import ValidatingResolver
from lab.sshd import SSHLab
from lab.tls_server import TlsServer

ZONE = "demo.serverpki.test"
NAME = f"www.{ZONE}"
HOST = "web1.demo.serverpki.test"


@pytest.fixture(scope="module")
def peers():
    with BindLab(zones=(ZONE,)) as bind, PebbleLab(dns_port=bind.port, nonce_reject=0, authz_reuse=0) as pebble, \
            SSHLab([HOST]) as ssh, ValidatingResolver(bind) as resolver:
        ssh.write_known_hosts()
        ssh.write_client_config()
        yield bind, pebble, ssh, resolver


def drain(config) -> None:
    agent = Agent(config.database.dsn, config, name="dane-test", lease=60)
    try:
        stats = agent.drain()
    finally:
        agent.close()
    assert stats.all_succeeded, stats.errors


def validated_tlsa(resolver: ValidatingResolver, owner: str) -> list[str]:
    """The TLSA records a DANE client may use: only what the resolver validated (AD set)."""
    answer = resolver.tlsa(owner)
    assert answer.validated, f"{owner}: {answer} did not validate"
    return answer.records


def s_client(port: int, records: list[str] | tuple[str, ...], name: str = NAME) -> subprocess.CompletedProcess:
    """A DANE client of name: openssl s_client verifying the server at port with these TLSA records alone."""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name,
            "-dane_tlsa_domain", name, "-verify_return_error", "-brief"]
    for record in records:
        args += ["-dane_tlsa_rrdata", record]
    return subprocess.run(args, input="", capture_output=True, text=True, timeout=20)


def stranger(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "stranger.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "stranger.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    return tmp_path / "stranger.pem", tmp_path / "stranger.key"


def test_deployed_acme_certificate_validates_with_the_validated_tlsa_records(peers, conn, dsn, tmp_path):
    bind, pebble, ssh, resolver = peers
    config = parse_config({
        "database": {"dsn": dsn},
        "acme": {"directory_url": pebble.directory_url, "contact_email": "pki@example.org", "agree_tos": True,
                 "ca_bundle": str(pebble.ca_bundle)},
        "dns": {"tsig_key_file": str(bind.key_file), "primary": bind.primary, "propagation_timeout_seconds": 10},
        "ssh": {k: str(v) for k, v in ssh.ssh_settings().items()},
        "logging": {"syslog_address": ""},
    }, tmp_path / "serverpki.toml")
    conn.execute("SELECT add_disthost(%s)", (HOST,))
    conn.execute("SELECT add_place('nginx', 'separate', '/usr/local/etc/nginx/ssl')")
    conn.execute("SELECT * FROM add_cert(%s, 'server', 'LE', 'ec', false, NULL, 'https', 443, %s, NULL, 'nginx')", (NAME, HOST))
    conn.execute("SELECT request_acme_account(%s, %s)", (config.acme.directory_url, config.acme.contact_email))
    drain(config)
    conn.execute("SELECT * FROM schedule()")  # rule 2: issue, distribute, then publish the TLSA of the active instance
    drain(config)
    assert conn.execute('SELECT "State" FROM inst WHERE "Cert Name" = %s', (NAME,)).fetchone()[0] == "deployed"

    records = validated_tlsa(resolver, f"_443._tcp.{NAME}.")
    assert len(records) == 1 and records[0].startswith("3 0 1 ")
    ssl_dir = ssh.host(HOST).root / "usr/local/etc/nginx/ssl"
    cert, key = ssl_dir / f"{NAME}_server_ec_cert.pem", ssl_dir / f"{NAME}_server_ec_key.pem"
    chain = ssl_dir / f"{NAME}_server_ec_cert_cacert_chain.pem"

    with TlsServer(cert, key, chain if chain.exists() else None) as server:
        ok = s_client(server.port, records)
    assert ok.returncode == 0, ok.stderr
    assert "Verification: OK" in ok.stderr and "DANE TLSA 3 0 1" in ok.stderr

    with TlsServer(*stranger(tmp_path)) as server:
        refused = s_client(server.port, records)
    assert refused.returncode != 0
    assert "no matching DANE TLSA records" in refused.stderr and "Verification: OK" not in refused.stderr
