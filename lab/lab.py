"""The lab: every real peer of serverPKI on loopback, started together, with the
matching agent configuration written — used by `make demo` and by the tests.

    with Lab(base) as lab:             # PostgreSQL, BIND 9 (signed zone), unbound, Pebble, two sshd, SMTP
        lab.config                     # the serverpki.toml that reaches all of them
        lab.cluster.env(db)            # PGHOST... for psql and operate_serverPKI
        lab.resolver.tlsa(owner)       # the TLSA records as a validating DANE client gets them

Everything it started is stopped on exit, also after an exception or Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .bind import BindLab
from .pebble import PebbleLab
from .postgres import PostgresCluster
from .resolver import ValidatingResolver
from .smtp import SMTPLab
from .sshd import SSHLab

ZONE = "demo.serverpki.test"
HOSTS = [f"web1.{ZONE}", f"jailhost.{ZONE}"]

# the lab's disthosts are Linux chroots; these stand in for FreeBSD's service(8) and jexec(8)
# and write what they were asked to do to /var/log/reloads on that host
SHIMS = {
    "service": '#!/bin/sh\necho "service $*" >> /var/log/reloads\necho "$1 reloaded"\n',
    "jexec": '#!/bin/sh\njail="$1"; shift\necho "jexec $jail $*" >> /var/log/reloads\necho "in jail $jail: $*"\n',
}


def install_shims(root: Path) -> None:
    """service(8) and jexec(8) of SHIMS into a host's root (/usr/sbin), their log in /var/log."""
    for folder in ("usr/sbin", "var/log"):
        (root / folder).mkdir(mode=0o755, parents=True, exist_ok=True)
    for name, script in SHIMS.items():
        (root / "usr/sbin" / name).write_text(script)
        (root / "usr/sbin" / name).chmod(0o755)


class Lab:
    def __init__(self, base: Path, zone: str = ZONE, hosts: list[str] | None = None, pebble_validity_days: int = 90):
        self.base = base
        self.zone = zone
        self.pebble_validity_days = pebble_validity_days
        self.cluster = PostgresCluster(base / "pg")
        self.smtp = SMTPLab()
        self.ssh = SSHLab(hosts or HOSTS)
        self.bind = BindLab(zones=(zone,))
        # keeps nothing: the lab's database clock travels (pki.now), a cache would live in real time
        self.resolver = ValidatingResolver(self.bind, cache_max_ttl=0)
        self.pebble: PebbleLab | None = None
        self.config = base / "serverpki.toml"

    # -- the lab

    def start(self) -> None:
        self.cluster.start()
        print(f"PostgreSQL 15 (plpython3u) on 127.0.0.1:{self.cluster.port}")
        self.bind.start()
        print(f"BIND 9 on {self.bind.primary}, primary for {self.zone}, TSIG-signed updates, "
              f"the zone DNSSEC-signed (inline signing)")
        self.resolver.start()
        print(f"unbound on {self.resolver.address}, validating {self.zone} with its DNSKEY as trust anchor")
        self.pebble = PebbleLab(dns_port=self.bind.port, validity_days=self.pebble_validity_days).start()
        print(f"Pebble (ACME) at {self.pebble.directory_url}, resolving at BIND, certificates valid {self.pebble_validity_days} days")
        self.ssh.start()
        for host in self.ssh.hosts.values():
            install_shims(host.root)
            print(f"{host.fqdn}: sshd on {host.address}:{host.port}, its / is {host.root}")
        self.ssh.write_known_hosts()
        self.ssh.write_client_config()
        self.smtp.start()
        print(f"SMTP relay on 127.0.0.1:{self.smtp.port}")
        self.write_config()

    def restart_pebble(self, validity_days: int) -> None:
        """A CA that issues longer-lived certificates (Pebble's clock is the real one); its accounts are gone."""
        assert self.pebble is not None
        self.pebble.stop()
        self.pebble.validity_days = validity_days
        self.pebble.start()

    def stop(self) -> None:
        for stop in (self.ssh.close, self.smtp.stop, getattr(self.pebble, "close", lambda: None),
                     self.resolver.close, self.bind.close, self.cluster.stop):
            try:
                stop()
            except Exception as exc:  # stop the rest too
                print(f"(stopping: {exc})", file=sys.stderr)

    def write_config(self) -> None:
        """The agent's configuration for the lab (examples/serverpki.toml documents every key)."""
        assert self.pebble is not None
        self.config.write_text(f"""
[paths]
work_dir = "{self.base / 'work'}"
db_encryption_key = "{secret(self.base / 'db_encryption_key', 'demo passphrase of the stored keys')}"
[local_ca]
passphrase_file = "{secret(self.base / 'local_ca.pass', 'demo passphrase of the local CA')}"
[x509]
country = "DE"
organization = "serverPKI demo"
[acme]
directory_url = "{self.pebble.directory_url}"
contact_email = "pki-admins@{self.zone}"
agree_tos = true
ca_bundle = "{self.pebble.ca_bundle}"
[dns]
tsig_key_file = "{self.bind.key_file}"
primary = "{self.bind.primary}"
propagation_timeout_seconds = 10
[ssh]
known_hosts = "{self.ssh.known_hosts}"
config_file = "{self.ssh.client_config}"
identity_file = "{self.ssh.identity}"
[mail]
relay_host = "127.0.0.1"
relay_port = {self.smtp.port}
sender = "serverpki@{self.zone}"
recipients = ["pki-admins@{self.zone}"]
[logging]
syslog_address = ""
""")

    def __enter__(self) -> "Lab":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def secret(path: Path, text: str) -> Path:
    """A secret file, 0600: the passphrase is the whole file, so no line end: the passphrase is exactly text."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)  # an existing file keeps its mode through O_CREAT
    return path
