"""A private BIND 9 on loopback: primary for test zones that accept TSIG-signed
dynamic updates (RFC 2136), for the demo, the tests and the benchmark.

    with BindLab(zones=("demo.serverpki.test",)) as bind:   # 127.0.0.1, a free port
        bind.primary          # "127.0.0.1:PORT", for [dns] primary
        bind.key_file         # the tsig-keygen file, for [dns] tsig_key_file
        bind.stop(); bind.start()   # an outage, same port and data
        bind.reset()          # zones back to their files, journals gone

Its own named.conf in a private folder owned by bind (named writes its .jnl
journals there): listen on 127.0.0.1 only, recursion no, notify no, no
control channel; each zone a primary with `update-policy { grant KEY zonesub
ANY; }` and the key from `tsig-keygen -a hmac-sha256`. Each zone's NS is
ns1.ZONE with the address 127.0.0.1, so the "every authoritative server" of a
zone is this server (at the port of [dns] primary).

Signed by default (signed=False for a plain server): BIND signs each zone by
itself (dnssec-policy POLICY, inline signing beside the update-policy). named
answers an UPDATE once its raw zone has it, and serves it re-signed a moment
later (longer under load): wait for what an UPDATE should show. Its key (a CSK,
ECDSA P-256) is made at the first start and kept by stop()/start() and reset(),
so a trust anchor stays valid.

        bind.dnskeys(zone)        # the DNSKEY records served, once start() returned
        bind.trust_anchor(zone)   # "ZONE. 60 IN DNSKEY ..." lines, for a validating resolver
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype

from .process import LabService, await_ready, on_exit, starting, temp_dir, terminate
from .ports import free_port

NAMED = os.environ.get("SERVERPKI_NAMED", "/usr/sbin/named")
TSIG_KEYGEN = os.environ.get("SERVERPKI_TSIG_KEYGEN", "/usr/sbin/tsig-keygen")
DEFAULT_ZONE = "demo.serverpki.test"
KEY_NAME = "serverpki-lab"
POLICY = "lab"
# one key that never rolls: the trust anchor a resolver gets stays valid for the lab's life;
# max-zone-ttl above the services' TLSA TTL (3600), which BIND would otherwise serve capped
POLICY_CONF = (f'dnssec-policy "{POLICY}" {{ keys {{ csk lifetime unlimited algorithm ecdsap256sha256; }}; '
               f'dnskey-ttl 60; max-zone-ttl 86400; }};\n')


def zone_text(zone: str) -> str:
    """A zone file of the lab: SOA, NS ns1.ZONE, ns1 at 127.0.0.1 (records are added by UPDATE)."""
    return (f"$TTL 60\n"
            f"@\tIN SOA ns1.{zone}. hostmaster.{zone}. ( 1 3600 600 86400 60 )\n"
            f"@\tIN NS ns1.{zone}.\n"
            f"ns1\tIN A 127.0.0.1\n")


class BindLab(LabService):
    """named -f -u bind on 127.0.0.1:port with the given primary zones; start()/stop() or a with block."""

    def __init__(self, zones: tuple[str, ...] | list[str] = (DEFAULT_ZONE,), port: int | None = None,
                 key_name: str = KEY_NAME, base: Path | None = None, signed: bool = True):
        self.zones = tuple(z.rstrip(".").lower() for z in zones)
        self.signed = signed
        self.port = port or free_port()
        self.key_name = key_name
        self._own_base = base is None
        self.base = Path(base) if base else temp_dir("serverpki-lab-bind-")
        self._proc: subprocess.Popen | None = None
        self._prepared = False
        self._agent_files: set[Path] = set()

    # -- where things are

    @property
    def primary(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def key_file(self) -> Path:
        """The agent's copy of the key: 0600 and ours, as serverPKI demands of a secret file."""
        return self.base / "key.conf"

    @property
    def named_key_file(self) -> Path:
        """named's copy, readable by the bind user."""
        return self.base / "named-key.conf"

    @property
    def conf(self) -> Path:
        return self.base / "named.conf"

    @property
    def log(self) -> Path:
        return self.base / "named.log"

    def zone_file(self, zone: str) -> Path:
        return self.base / f"{zone}.zone"

    def other_key_file(self, name: str | None = None) -> Path:
        """A fresh key file that this server does not know (same name by default: BADSIG)."""
        path = self.base / f"wrong-{name or self.key_name}.conf"
        path.write_text(self._keygen(name or self.key_name))
        path.chmod(0o600)
        self._agent_files.add(path)
        return path

    # -- setting up

    def _keygen(self, name: str) -> str:
        done = subprocess.run([TSIG_KEYGEN, "-a", "hmac-sha256", name], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"tsig-keygen failed: {done.stderr.strip()}")
        return done.stdout

    def _write_zones(self) -> None:
        for zone in self.zones:
            self._write_zone(zone, zone_text(zone))

    def _write_zone(self, zone: str, text: str) -> None:
        self.zone_file(zone).write_text(text)
        # the journals, and the signed copy inline signing keeps beside the file (its keys stay)
        for journal in [*self.base.glob(f"{zone}.zone.jnl*"), *self.base.glob(f"{zone}.zone.signed*")]:
            journal.unlink()

    def _prepare(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        key = self._keygen(self.key_name)
        self.named_key_file.write_text(key)
        self.named_key_file.chmod(0o640)
        self.key_file.write_text(key)
        self.key_file.chmod(0o600)
        self._agent_files.add(self.key_file)
        self._write_zones()
        signing = f'    dnssec-policy "{POLICY}";\n    inline-signing yes;\n' if self.signed else ""
        zones = "".join(
            f'zone "{z}" {{\n    type primary;\n    file "{self.zone_file(z)}";\n'
            f'    update-policy {{ grant {self.key_name} zonesub ANY; }};\n{signing}}};\n' for z in self.zones)
        self.conf.write_text(f"""options {{
    directory "{self.base}";
    pid-file "{self.base}/named.pid";
    session-keyfile "{self.base}/session.key";
    managed-keys-directory "{self.base}";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    notify no;
    allow-transfer {{ none; }};
    dnssec-validation no;
}};
controls {{ }};
logging {{
    channel lab {{ file "{self.log}"; severity info; print-time yes; }};
    category default {{ lab; }};
    category update {{ lab; }};
    category update-security {{ lab; }};
    category dnssec {{ lab; }};
}};
include "{self.named_key_file}";
{POLICY_CONF if self.signed else ""}{zones}""")
        self._chown()
        self._prepared = True

    def _chown(self) -> None:
        if os.geteuid() != 0:
            return
        bind = pwd.getpwnam("bind")
        for path in [self.base, *self.base.rglob("*")]:
            if path not in self._agent_files:  # the agent's key files stay the agent's
                os.chown(path, bind.pw_uid, bind.pw_gid)

    # -- life

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> "BindLab":
        """Start named (again, on the same port and data after stop()); returns when it answers
        (signed: when it serves each zone's DNSKEY and signed SOA)."""
        if self.running:
            return self
        if not self._prepared:
            self._prepare()
        self._chown()
        args = [NAMED, "-f", "-c", str(self.conf)]
        if os.geteuid() == 0:
            args += ["-u", "bind"]
        with starting():   # named is registered before a SIGTERM can end us
            self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.base)
            on_exit(self, self.close)
        try:
            await_ready(self._proc, self._answers, timeout, "named", f"did not answer on {self.primary}"
                        + (" with its zones signed" if self.signed else ""), self.log)
        except RuntimeError:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        try:
            for zone in self.zones:
                for rdtype in ("SOA", "DNSKEY") if self.signed else ("SOA",):
                    served = {rrset.rdtype for rrset in self.ask(zone, rdtype).answer}
                    wanted = {dns.rdatatype.from_text(rdtype)} | ({dns.rdatatype.RRSIG} if self.signed else set())
                    if not wanted <= served:
                        return False
            return True
        except (OSError, dns.exception.DNSException):
            return False

    def ask(self, name: str, rdtype: str, tcp: bool = False) -> dns.message.Message:
        """This server's own answer (no recursion), with the DNSSEC records (DO set)."""
        query = dns.message.make_query(name, rdtype, want_dnssec=True)
        query.flags &= ~dns.flags.RD
        if tcp:
            return dns.query.tcp(query, "127.0.0.1", timeout=5, port=self.port)
        return dns.query.udp(query, "127.0.0.1", timeout=0.5, port=self.port)

    def dnskeys(self, zone: str = DEFAULT_ZONE) -> list[str]:
        """The zone's DNSKEY records as served (rdata texts); empty for an unsigned zone."""
        return sorted(rd.to_text() for rrset in self.ask(zone, "DNSKEY", tcp=True).answer
                      if rrset.rdtype == dns.rdatatype.DNSKEY for rd in rrset)

    def trust_anchor(self, zone: str = DEFAULT_ZONE) -> str:
        """The zone's DNSKEY lines as a trust anchor file wants them: 'ZONE. TTL IN DNSKEY ...'."""
        keys = self.dnskeys(zone)
        if not keys:
            raise RuntimeError(f"{zone} has no DNSKEY at {self.primary}: is it signed (BindLab(signed=True))?")
        return "".join(f"{zone}. 60 IN DNSKEY {key}\n" for key in keys)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop named: clients now meet a refused connection. Zones and journals stay."""
        proc, self._proc = self._proc, None
        terminate(proc, timeout)

    def load(self, zone: str, text: str) -> None:
        """Serve text as the zone's file from now on (a zone written by hand: a forgery to refuse),
        journals gone; restarts named when it runs."""
        if not self._prepared:
            self._prepare()
        was_running = self.running
        self.stop()
        self._write_zone(zone, text)
        self._chown()
        if was_running:
            self.start()

    def reset(self) -> None:
        """Every zone as its file says: stop, drop the journals, restore the files, start."""
        was_running = self.running
        self.stop()
        self._write_zones()
        self._chown()
        if was_running:
            self.start()
