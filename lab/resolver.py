"""A validating resolver for the lab: unbound (Debian's) on loopback, with the
trust anchor of the lab's signed zones, asking the lab's BIND for them — what a
DANE client (Postfix, Exim, OpenSSL behind a resolver) relies on.

    with BindLab() as bind, ValidatingResolver(bind) as resolver:
        answer = resolver.tlsa("_443._tcp.www.demo.serverpki.test.")
        answer.records, answer.ad, answer.rcode   # validated: rcode NOERROR and ad True

Its own unbound.conf in a private folder, run in the foreground (`unbound -d`):
a stub-zone per zone pointing at BIND, the zone's DNSKEY as its trust anchor
(read from BIND at start: it serves exactly what it signs with), and for zones
under .test `local-zone: "test." nodefault` (unbound answers RFC 6761 names
itself otherwise). A record that does not verify under that anchor is bogus:
SERVFAIL, never a record. cache_max_ttl caps how long it keeps answers (0: asks
BIND every time) — for a lab whose database clock travels (pki.now) while caches
live in real time; by default it keeps them as long as their TTL says.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from .bind import BindLab
from .ports import free_port
from .process import LabService, await_ready, on_exit, starting, temp_dir, terminate

UNBOUND = os.environ.get("SERVERPKI_UNBOUND", "/usr/sbin/unbound")
SPECIAL_TLDS = {"test", "invalid", "localhost", "onion"}  # names unbound answers itself unless told (RFC 6761)


@dataclass(frozen=True)
class Answer:
    """A resolver's answer: the rcode's name, whether the AD flag was set, the records (rdata texts, sorted)."""

    rcode: str
    ad: bool
    records: list[str]

    @property
    def validated(self) -> bool:
        return self.rcode == "NOERROR" and self.ad


class ValidatingResolver(LabService):
    """unbound -d -c CONF on 127.0.0.1:port, validating the zones of bind (or `anchor_from`'s anchors)."""

    def __init__(self, bind: BindLab, port: int | None = None, base: Path | None = None,
                 cache_max_ttl: int | None = None, anchor_from: BindLab | None = None):
        self.bind = bind
        # the server whose keys are trusted: bind itself, or another (a forger must not pass)
        self.anchor_from = anchor_from or bind
        self.port = port or free_port()
        self.cache_max_ttl = cache_max_ttl
        self._own_base = base is None
        self.base = Path(base) if base else temp_dir("serverpki-lab-unbound-")
        self._proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def conf(self) -> Path:
        return self.base / "unbound.conf"

    @property
    def anchors(self) -> Path:
        return self.base / "trust-anchors"

    @property
    def log(self) -> Path:
        return self.base / "unbound.log"

    def _write_conf(self) -> None:
        self.anchors.write_text("".join(self.anchor_from.trust_anchor(zone) for zone in self.bind.zones))
        tlds = sorted({zone.rsplit(".", 1)[-1] for zone in self.bind.zones} & SPECIAL_TLDS)
        caps = "" if self.cache_max_ttl is None else \
            f"    cache-max-ttl: {self.cache_max_ttl}\n    cache-max-negative-ttl: {self.cache_max_ttl}\n"
        self.conf.write_text(
            "server:\n"
            f"    interface: 127.0.0.1\n    port: {self.port}\n"
            "    do-ip6: no\n    do-daemonize: no\n    username: \"\"\n    chroot: \"\"\n"
            f"    directory: \"{self.base}\"\n    pidfile: \"{self.base}/unbound.pid\"\n"
            f"    use-syslog: no\n    logfile: \"{self.log}\"\n    verbosity: 1\n    log-servfail: yes\n"
            "    num-threads: 1\n    do-not-query-localhost: no\n"
            "    module-config: \"validator iterator\"\n"
            f"    trust-anchor-file: \"{self.anchors}\"\n"
            # a restarted BIND (an outage test) is asked again at once, not after 15 minutes
            "    infra-host-ttl: 1\n"
            + caps
            + "".join(f"    local-zone: \"{tld}.\" nodefault\n" for tld in tlds)
            + "remote-control:\n    control-enable: no\n"
            + "".join(f"stub-zone:\n    name: \"{zone}\"\n    stub-addr: 127.0.0.1@{self.bind.port}\n"
                      for zone in self.bind.zones))

    # -- life

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> "ValidatingResolver":
        """Start unbound with the anchors it trusts; returns when each zone's SOA validates (when the anchors
        are another server's — a forgery to refuse — when it answers at all)."""
        if self.running:
            return self
        self._write_conf()
        with starting():
            self._proc = subprocess.Popen([UNBOUND, "-d", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, cwd=self.base)
            on_exit(self, self.close)
        try:
            await_ready(self._proc, self._ready, timeout, "unbound",
                        f"on {self.address} did not validate {', '.join(self.bind.zones)}", self.log)
        except RuntimeError:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        try:
            answers = [self.ask(zone, "SOA", timeout=0.5) for zone in self.bind.zones]
            return self.anchor_from is not self.bind or all(a.validated for a in answers)
        except (OSError, dns.exception.DNSException):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        terminate(proc, timeout)

    # -- asking

    def ask(self, name: str, rdtype: str, timeout: float = 5.0) -> Answer:
        """Ask as a stub resolver of a DANE client does: recursion desired, DO set; the AD flag says validated."""
        query = dns.message.make_query(name, rdtype, want_dnssec=True)
        query.flags |= dns.flags.AD
        reply = dns.query.udp(query, "127.0.0.1", timeout=timeout, port=self.port)
        if reply.flags & dns.flags.TC:
            reply = dns.query.tcp(query, "127.0.0.1", timeout=timeout, port=self.port)
        wanted = dns.rdatatype.from_text(rdtype)
        records = sorted(rd.to_text() for rrset in reply.answer if rrset.rdtype == wanted for rd in rrset)
        return Answer(dns.rcode.to_text(reply.rcode()), bool(reply.flags & dns.flags.AD), records)

    def tlsa(self, owner: str) -> Answer:
        """The TLSA records of owner (e.g. _443._tcp.www.ZONE.) as the resolver returns them, and whether they validated."""
        return self.ask(owner, "TLSA")
