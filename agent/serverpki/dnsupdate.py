"""DNS for the agent: RFC 2136 dynamic updates signed with TSIG, and waiting until
every authoritative server of a zone shows what was sent (dnspython).

- The zone of a name: [dns] zones maps it (the longest matching suffix), else
  the SOA the primary answers for the name (the answer's owner, or the owner of
  the SOA in the authority section of a negative answer). Without [dns]
  primary, the system resolver finds the zone and the SOA's MNAME is the primary.
- Every change of one zone goes out as ONE update message: all _acme-challenge
  TXT records of an order, or every owner's TLSA RRset of a certificate
  (delete the RRset, add the wanted records — a resolver never sees half).
- Visibility: each authoritative server of the zone (the primary and the
  addresses of the zone's NS, at the primary's port) is asked directly, without
  recursion, until it answers with exactly the wanted RRset; polled with a
  growing interval, bounded by [dns] propagation_timeout_seconds. No fixed sleep.
  Each wait is logged: the owners, the type and the records (a TXT token and a TLSA
  hash are public), the servers, the timeout; and when every server showed them.
- Errors: REFUSED, NOTAUTH, NOTZONE and a TSIG complaint (BADSIG, BADKEY,
  BADTIME) are DnsRefused (a GiveUp), naming zone, server and key: no retry
  mends them. An unreachable server, a timeout or SERVFAIL is DnsUnavailable
  (a RetryLater): try again.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.tsigkeyring
import dns.update

from .config import Config
from .errors import ConfigError, GiveUp, RetryLater, ServerPKIError
from .secretfile import SecretFileError, read_secret

log = logging.getLogger("serverpki.dns")

Server = tuple[str, int]   # (address, port)


class DnsError(ServerPKIError):
    """A DNS operation failed."""


class DnsRefused(DnsError, GiveUp):
    """The DNS server refused the update or its signature: check the zone, the server and the TSIG key."""


class DnsUnavailable(DnsError, RetryLater):
    """The DNS server could not be reached or did not answer in time: try again later."""


class DnsNotVisible(DnsUnavailable):
    """The change was sent, but not every authoritative server shows it yet."""


def read_tsig_key(config: Config, needed_for: str = "DNS updates") -> dns.tsig.Key:
    """The TSIG key of [dns] tsig_key_file (a BIND key file, as tsig-keygen writes it), for dns.update.

    The file is a secret file (secretfile: private, ours, no symbolic link); every problem is a
    ConfigError naming the key and the configuration file. Its repr() shows the secret: never log
    the key itself, only its name.
    """
    path = config.require("dns", "tsig_key_file", needed_for)
    try:
        text = read_secret(path, "[dns] tsig_key_file").decode("utf-8", "replace")
    except SecretFileError as exc:
        raise ConfigError(f"{exc} (configuration file {config.source})") from None
    # dnspython's from_file() parses so, but opens the path itself: we read it checked
    match = dns.tsigkeyring.TSIG_KEY_FILE_RE.match(text.replace("\n", "").strip())
    if not match:
        raise ConfigError(f"[dns] tsig_key_file {path} is not a BIND key file "
                          f"(key \"name\" {{ algorithm ...; secret \"...\"; }};) "
                          f"(configuration file {config.source})")
    name, algorithm, secret = match.group(1) or match.group(2), match.group(3) or match.group(4), \
        match.group(5) or match.group(6)
    keyring = dns.tsigkeyring.from_text({name: (algorithm, secret) if algorithm else secret})
    (name, key), = keyring.items()
    return key if isinstance(key, dns.tsig.Key) else dns.tsig.Key(name, key)


def _name(text: str | dns.name.Name) -> dns.name.Name:
    return text if isinstance(text, dns.name.Name) else dns.name.from_text(text)


def _text(name: dns.name.Name) -> str:
    return name.to_text()


@dataclass
class Clock:
    """Counts the time spent waiting (sleeping between polls), apart from the work."""

    waited: float = 0.0
    sleep_fn: Callable[[float], None] = time.sleep

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.sleep_fn(seconds)
            self.waited += seconds


@dataclass
class DnsUpdater:
    """Sends signed updates and waits for them; one per job (it caches zones and servers)."""

    key: dns.tsig.Key
    primary: Server | None = None
    zones: dict[str, str] = field(default_factory=dict)
    propagation_timeout: float = 60.0
    query_timeout: float = 5.0
    clock: Clock = field(default_factory=Clock)
    # UPDATE messages sent, by zone (what the benchmark reports)
    updates: Counter = field(default_factory=Counter)
    # what the log lines of its waits are about (the job's label)
    label: str = "DNS"
    _zone_cache: dict[dns.name.Name, dns.name.Name] = field(default_factory=dict)
    _primary_cache: dict[dns.name.Name, Server] = field(default_factory=dict)
    _servers_cache: dict[dns.name.Name, list[Server]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config, clock: Clock | None = None, needed_for: str = "DNS updates",
                    label: str = "DNS") -> "DnsUpdater":
        dnscfg = config.dns
        primary = None
        if dnscfg.primary:
            host, port = dnscfg.primary_address
            primary = (_address(host), port)
        return cls(key=read_tsig_key(config, needed_for), primary=primary, zones=dict(dnscfg.zones),
                   propagation_timeout=float(dnscfg.propagation_timeout_seconds), clock=clock or Clock(), label=label)

    @property
    def key_name(self) -> str:
        return self.key.name.to_text(omit_final_dot=True)

    # --------------------------------------------------------------- zones and servers

    def zone_for(self, name: str | dns.name.Name) -> dns.name.Name:
        """The zone that holds name: the configuration's map, else the SOA at the primary."""
        qname = _name(name)
        if qname in self._zone_cache:
            return self._zone_cache[qname]
        zone = self._mapped_zone(qname)
        if zone is None:
            zone = self._soa_zone(qname)
        self._zone_cache[qname] = zone
        return zone

    def _mapped_zone(self, qname: dns.name.Name) -> dns.name.Name | None:
        best: tuple[int, dns.name.Name] | None = None
        for suffix, zone in self.zones.items():
            s = _name(suffix)
            if qname.is_subdomain(s) and (best is None or len(s) > best[0]):
                best = (len(s), _name(zone))
        return best[1] if best else None

    def _soa_zone(self, qname: dns.name.Name) -> dns.name.Name:
        if self.primary is None:
            try:
                return dns.resolver.zone_for_name(qname)
            except dns.exception.DNSException as exc:
                raise DnsUnavailable(f"no zone found for {_text(qname)} with the system resolver ({exc}); "
                                     "set [dns] primary or map the name with [dns] zones") from exc
        reply = self._query(self.primary, qname, dns.rdatatype.SOA, zone=None)
        for section in (reply.answer, reply.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.SOA and qname.is_subdomain(rrset.name):
                    return rrset.name
        raise DnsRefused(f"the primary {_where(self.primary)} knows no zone of {_text(qname)} "
                         f"(answer {dns.rcode.to_text(reply.rcode())} without SOA); map the name with [dns] zones")

    def primary_for(self, zone: dns.name.Name) -> Server:
        """Where the updates of the zone go: [dns] primary, else the SOA's MNAME at port 53."""
        if self.primary is not None:
            return self.primary
        if zone not in self._primary_cache:
            try:
                soa = dns.resolver.resolve(zone, "SOA")[0]
            except dns.exception.DNSException as exc:
                raise DnsUnavailable(f"zone {_text(zone)}: no SOA from the system resolver ({exc})") from exc
            self._primary_cache[zone] = (_address(soa.mname.to_text()), 53)
        return self._primary_cache[zone]

    def servers_for(self, zone: dns.name.Name) -> list[Server]:
        """Every authoritative server of the zone: the primary and the zone's NS, at the primary's port."""
        if zone in self._servers_cache:
            return self._servers_cache[zone]
        primary = self.primary_for(zone)
        servers = [primary]
        reply = self._query(primary, zone, dns.rdatatype.NS, zone=zone)
        glue = {rr.name: [r.address for r in rr] for rr in reply.additional
                if rr.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)}
        for rrset in reply.answer:
            if rrset.rdtype != dns.rdatatype.NS:
                continue
            for ns in rrset:
                addresses = glue.get(ns.target) or self._addresses(ns.target, primary, zone)
                for address in addresses:
                    if (address, primary[1]) not in servers:
                        servers.append((address, primary[1]))
        self._servers_cache[zone] = servers
        return servers

    def _addresses(self, host: dns.name.Name, primary: Server, zone: dns.name.Name) -> list[str]:
        if host.is_subdomain(zone):
            out = []
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                reply = self._query(primary, host, rdtype, zone=zone)
                out += [r.address for rr in reply.answer if rr.rdtype == rdtype for r in rr]
            return out
        try:
            return sorted({info[4][0] for info in socket.getaddrinfo(host.to_text(), None, type=socket.SOCK_STREAM)})
        except OSError:
            return []  # a name server we cannot resolve cannot be asked either

    # --------------------------------------------------------------- queries

    def _query(self, server: Server, qname: dns.name.Name, rdtype, zone: dns.name.Name | None) -> dns.message.Message:
        query = dns.message.make_query(qname, rdtype)
        query.flags &= ~dns.flags.RD   # the authoritative data only, never a cache
        try:
            reply = dns.query.tcp(query, server[0], timeout=self.query_timeout, port=server[1])
        except (OSError, dns.exception.Timeout, EOFError) as exc:
            raise DnsUnavailable(f"DNS server {_where(server)} unreachable ({_reason(exc)}) "
                                 f"asking {_text(qname)} {dns.rdatatype.to_text(rdtype)}") from exc
        except dns.exception.DNSException as exc:
            raise DnsUnavailable(f"DNS server {_where(server)}: bad answer to {_text(qname)} ({exc})") from exc
        rcode = reply.rcode()
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return reply
        if rcode == dns.rcode.SERVFAIL:
            raise DnsUnavailable(f"DNS server {_where(server)} answered SERVFAIL for {_text(qname)}")
        raise DnsRefused(f"DNS server {_where(server)} answered {dns.rcode.to_text(rcode)} for {_text(qname)}"
                         + (f" (zone {_text(zone)})" if zone is not None else "")
                         + ": it is not authoritative for it; check [dns] primary and [dns] zones")

    def rrset_at(self, server: Server, owner: dns.name.Name, rdtype) -> set[str]:
        """The RRset of owner/type as this server has it, as a set of canonical rdata texts."""
        reply = self._query(server, owner, rdtype, zone=None)
        return {_canonical(rdata) for rr in reply.answer if rr.name == owner and rr.rdtype == rdtype for rdata in rr}

    # --------------------------------------------------------------- updates

    def send_update(self, zone: dns.name.Name, build: Callable[[dns.update.UpdateMessage], None]) -> None:
        """One signed UPDATE message to the zone's primary; build() adds its changes."""
        update = dns.update.UpdateMessage(zone, keyring=self.key)
        build(update)
        server = self.primary_for(zone)
        what = f"zone {_text(zone)} at {_where(server)} with TSIG key {self.key_name}"
        try:
            reply = dns.query.tcp(update, server[0], timeout=self.query_timeout, port=server[1])
        except dns.tsig.PeerBadSignature as exc:
            raise DnsRefused(f"update of {what} refused: BADSIG, the server has another secret for this key") from exc
        except dns.tsig.PeerBadKey as exc:
            raise DnsRefused(f"update of {what} refused: BADKEY, the server does not know this key") from exc
        except dns.tsig.PeerBadTime as exc:
            raise DnsRefused(f"update of {what} refused: BADTIME, the clocks of agent and server differ") from exc
        except dns.tsig.PeerError as exc:
            raise DnsRefused(f"update of {what} refused: TSIG error {exc}") from exc
        except (OSError, dns.exception.Timeout, EOFError) as exc:
            raise DnsUnavailable(f"update of {what}: server unreachable ({_reason(exc)})") from exc
        except dns.exception.DNSException as exc:
            raise DnsUnavailable(f"update of {what}: bad answer ({exc})") from exc
        self.updates[_text(zone)] += 1
        rcode = reply.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        if rcode == dns.rcode.SERVFAIL:
            raise DnsUnavailable(f"update of {what}: SERVFAIL")
        hint = {dns.rcode.REFUSED: "the server does not allow this key to update these names (update-policy)",
                dns.rcode.NOTAUTH: "the server is not the primary of the zone, or does not accept the key",
                dns.rcode.NOTZONE: "a name is not in the zone"}.get(rcode, "see the server's log")
        raise DnsRefused(f"update of {what} refused: {dns.rcode.to_text(rcode)}, {hint}")

    def replace_rrsets(self, zone: dns.name.Name, rrsets: dict[dns.name.Name, tuple[int, set[str]]], rdtype) -> None:
        """Make each owner's RRset of this type exactly the given records (none: delete it), in ONE message."""
        def build(update: dns.update.UpdateMessage) -> None:
            for owner, (ttl, records) in sorted(rrsets.items()):
                update.delete(owner, rdtype)
                for record in sorted(records):
                    update.add(owner, ttl, rdtype, record)
        self.send_update(zone, build)

    def add_records(self, zone: dns.name.Name, records: Iterable[tuple[dns.name.Name, int, str]], rdtype) -> None:
        """Add (owner, ttl, rdata) records to their RRsets, in ONE message."""
        def build(update: dns.update.UpdateMessage) -> None:
            for owner, ttl, record in records:
                update.add(owner, ttl, rdtype, record)
        self.send_update(zone, build)

    def delete_records(self, zone: dns.name.Name, records: Iterable[tuple[dns.name.Name, str]], rdtype) -> None:
        """Delete exactly these (owner, rdata) records, leaving others of the RRset, in ONE message."""
        def build(update: dns.update.UpdateMessage) -> None:
            for owner, record in records:
                update.delete(owner, rdtype, record)
        self.send_update(zone, build)

    # --------------------------------------------------------------- waiting

    def wait_until(self, zone: dns.name.Name, rdtype, check: Callable[[dns.name.Name, set[str]], bool],
                   owners: Iterable[dns.name.Name], what: str, records: str = "") -> None:
        """Poll every authoritative server of the zone until check(owner, rrset) holds for every owner.
        what: the records in an error ("TXT records"); records: them in full for the log lines."""
        owners = sorted(set(owners))
        servers = self.servers_for(zone)
        started = time.monotonic()
        deadline = started + self.propagation_timeout
        delay = 0.02
        log.info("%s: waiting up to %.0f s for %s on %s (zone %s)", self.label, self.propagation_timeout,
                 records or what, _servers_text(servers), _text(zone))
        pending = [(server, owner) for server in servers for owner in owners]
        while True:
            still = []
            for server, owner in pending:
                if not check(owner, self.rrset_at(server, owner, rdtype)):
                    still.append((server, owner))
            if not still:
                log.info("%s: %s at %s seen on %s after %.1f s", self.label, what, ", ".join(map(_text, owners)),
                         _servers_text(servers), time.monotonic() - started)
                return
            pending = still
            if time.monotonic() + delay > deadline:
                server, owner = pending[0]
                raise DnsNotVisible(f"zone {_text(zone)}: {what} not visible at {_where(server)} for {_text(owner)} "
                                    f"after {self.propagation_timeout:.0f} s ([dns] propagation_timeout_seconds)")
            self.clock.sleep(delay)
            delay = min(delay * 2, 1.0)

    def wait_rrsets(self, zone: dns.name.Name, rrsets: dict[dns.name.Name, set[str]], rdtype) -> None:
        """Until every server shows exactly these RRsets (an empty set: no records)."""
        wanted = {owner: {_canonical_text(rdtype, r) for r in records} for owner, records in rrsets.items()}
        self.wait_until(zone, rdtype, lambda owner, seen: seen == wanted[owner], wanted,
                        f"{dns.rdatatype.to_text(rdtype)} records", _records_text(rdtype, wanted, exactly=True))

    def wait_present(self, zone: dns.name.Name, records: dict[dns.name.Name, set[str]], rdtype) -> None:
        """Until every server shows at least these records."""
        wanted = {owner: {_canonical_text(rdtype, r) for r in values} for owner, values in records.items()}
        self.wait_until(zone, rdtype, lambda owner, seen: wanted[owner] <= seen, wanted,
                        f"{dns.rdatatype.to_text(rdtype)} records", _records_text(rdtype, wanted, exactly=False))


def _records_text(rdtype, wanted: dict[dns.name.Name, set[str]], exactly: bool) -> str:
    """The records a wait is for, per owner, for its log line: 'TXT "token" at _acme-challenge.example.org.'
    (a TXT token, a TLSA hash: public data); exactly: the RRset holds these and no other."""
    kind = dns.rdatatype.to_text(rdtype)
    return "; ".join(
        (f"{kind} {' + '.join(sorted(values))}{' only' if exactly else ''} at {_text(owner)}" if values
         else f"no {kind} record at {_text(owner)}")
        for owner, values in sorted(wanted.items()))


def _servers_text(servers: list[Server]) -> str:
    return ", ".join(map(_where, servers))


def _canonical(rdata) -> str:
    return rdata.to_text().lower() if rdata.rdtype == dns.rdatatype.TLSA else rdata.to_text()


def _canonical_text(rdtype, text: str) -> str:
    import dns.rdata

    return _canonical(dns.rdata.from_text(dns.rdataclass.IN, rdtype, text))


def txt_rdata(value: str) -> str:
    """A TXT rdata text holding value as one string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _address(host: str) -> str:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return host
    except OSError:
        pass
    try:
        return socket.getaddrinfo(host.rstrip("."), None, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        raise DnsUnavailable(f"cannot resolve the DNS server {host}: {exc.strerror or exc}") from exc


def _where(server: Server) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
