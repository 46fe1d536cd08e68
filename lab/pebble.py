"""Pebble, the ACME test server of Let's Encrypt, on loopback, validating dns-01 at our BIND.

    with BindLab() as bind, PebbleLab(dns_port=bind.port) as pebble:
        pebble.directory_url   # https://127.0.0.1:PORT/dir, for [acme] directory_url
        pebble.ca_bundle       # the CA of Pebble's own HTTPS listener, for [acme] ca_bundle
        pebble.root_pem()      # the root its certificates chain to (management /roots/0)

Debian's pebble ships no certificate for its HTTPS listener, so a small CA and
a server certificate for localhost and 127.0.0.1 are made here.
Both listeners bind 127.0.0.1 on free ports. The knobs are Pebble's environment:
PEBBLE_VA_NOSLEEP=1 always; nonce_reject -> PEBBLE_WFE_NONCEREJECT (percent of
nonces refused with badNonce), authz_reuse -> PEBBLE_AUTHZREUSE (percent of
valid authorizations handed out again); eab_keys ({kid: base64url HMAC})
makes external account binding required.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .process import LabService, on_exit, starting, temp_dir, terminate
from .ports import free_port

PEBBLE = os.environ.get("SERVERPKI_PEBBLE", "/usr/bin/pebble")


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost / 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "serverPKI lab: Pebble TLS CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = folder / "tls-ca.pem", folder / "tls-cert.pem", folder / "tls-key.pem"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


class PebbleLab(LabService):
    """pebble -config CONF -dnsserver 127.0.0.1:dns_port; start()/stop() or a with block."""

    def __init__(self, dns_port: int, nonce_reject: int = 0, authz_reuse: int = 0,
                 eab_keys: dict[str, str] | None = None, env: dict[str, str] | None = None,
                 base: Path | None = None, validity_days: int | None = None):
        self.dns_port = dns_port
        # lifetime of the certificates Pebble issues (its default: 5 years); change it and restart
        # Pebble to issue longer-lived successors in a time-travelling demo
        self.validity_days = validity_days
        self.nonce_reject = nonce_reject
        self.authz_reuse = authz_reuse
        self.eab_keys = dict(eab_keys or {})
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.management_port = free_port()
        self._own_base = base is None
        self.base = Path(base) if base else temp_dir("serverpki-lab-pebble-")
        self._proc: subprocess.Popen | None = None
        self._tls: tuple[Path, Path, Path] | None = None

    # -- where things are

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def ca_bundle(self) -> Path:
        """The CA that signed Pebble's HTTPS certificate: what a client must trust to talk to it."""
        assert self._tls, "start Pebble first"
        return self._tls[0]

    @property
    def log(self) -> Path:
        return self.base / "pebble.log"

    def _management(self, path: str) -> str:
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management_port}{path}", context=context,
                                    timeout=10) as reply:
            return reply.read().decode("ascii")

    def root_pem(self) -> str:
        """The root certificate Pebble's chains end at (new at every start)."""
        return self._management("/roots/0")

    def intermediate_pem(self) -> str:
        return self._management("/intermediates/0")

    def cert_status(self, serial: int) -> dict:
        """Pebble's own record of a certificate it issued (management /cert-status-by-serial): its
        "Status" is "Valid" or "Revoked" (with "Reason" and "RevokedAt")."""
        return json.loads(self._management(f"/cert-status-by-serial/{serial:x}"))

    # -- life

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 15.0) -> "PebbleLab":
        if self.running:
            return self
        self.base.mkdir(parents=True, exist_ok=True)
        if self._tls is None:
            self._tls = _tls_files(self.base)
        config = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self._tls[1]),
            "privateKey": str(self._tls[2]),
            **({"certificateValidityPeriod": self.validity_days * 86400} if self.validity_days else {}),
            # http-01 and tls-alpn-01 are never used here; dns-01 goes to -dnsserver
            "httpPort": 5002,
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": bool(self.eab_keys),
        }
        if self.eab_keys:
            config["externalAccountMACKeys"] = self.eab_keys
        conf = self.base / "pebble-config.json"
        conf.write_text(json.dumps({"pebble": config}, indent=2))
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": str(self.nonce_reject),
               "PEBBLE_AUTHZREUSE": str(self.authz_reuse), **self.extra_env}
        log = open(self.log, "ab")
        try:
            with starting():   # pebble is registered before a SIGTERM can end us
                self._proc = subprocess.Popen([PEBBLE, "-config", str(conf), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.base)
                on_exit(self, self.close)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        delay = 0.02
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"pebble exited at start: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.directory_url, context=context, timeout=1) as reply:
                    json.load(reply)
                return self
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pebble did not answer at {self.directory_url} within {timeout} s (see {self.log})")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        terminate(proc, timeout)
