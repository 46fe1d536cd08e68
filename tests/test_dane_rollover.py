"""DANE end to end across a rollover (issue 17, item 2), as a validating DANE client sees it.

On the demo's fleet (real PostgreSQL, BIND 9 signing its zone, unbound validating it, Pebble, sshd disthosts)
an LE certificate with two TLSA services — `3 1 1` (DANE-EE, the key) on 443 and `2 1 1` (DANE-TA, the
issuer's key) on 25 — is deployed by `operate_serverPKI -S -q -a` run as cron runs it (pki_cron). A TLS
server (lab.tls_server: openssl s_server) serves the files the distribution wrote on web1, and reads them
again when the place's reload command ran there. At each step `openssl s_client -dane_tlsa_domain NAME
-dane_tlsa_rrdata ...` is fed only with records the validating resolver returned with AD, and must report a
DANE match; a record that does not belong makes it fail.

Why 2 x TTL: a DANE client (its resolver) keeps a validated RRset for its TTL. The tests model that cache: the
RRsets DNS held, as the resolver returned them after each run, stamped with the database's clock (pki.now, the
clock of the DANE wait; the lab's resolver caches nothing, so it answers what BIND holds at once), and BIND
serves them with TTL, the TTL such a client keeps them for. At time t a client may hold any RRset that was in
DNS at some moment of (t - TTL, t]; behind two caches (a stub cache filled from a forwarder's that kept the
RRset a TTL already, and restarts its TTL), of (t - 2 x TTL, t]. DNS and the served certificate change only
in runs, and between runs those sets only shrink, so checking every such RRset right after each run covers
every moment of the rollover.
- In our order (the scheduler's hourly runs), every RRset a client may hold, even behind two caches,
  matches what the server serves.
- Deployed right after the prepublication (forced with -N, which skips the wait), a client still holding
  the RRset it fetched just before the prepublication (the old record only) fails against the successor.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import pytest
from cryptography import x509

from fleet import Fleet
from lab.lab import ZONE
from lab.tls_server import TlsServer
from test_dane import s_client
from test_operator_lab import psql

NAME = f"dane.{ZONE}"
WEB = f"web1.{ZONE}"
TTL = dt.timedelta(seconds=3600)          # the services' TTL below; the DANE wait is 2 x TTL
OWNERS = {f"_443._tcp.{NAME}.": "3 1 1", f"_25._tcp.{NAME}.": "2 1 1"}
SSL_DIR = "usr/local/etc/nginx/ssl"       # the example's place nginx: combine cacert, 'service nginx reload'


@pytest.fixture
def fleet():
    """The demo's fleet plus NAME (EC, TLSA 3 1 1 for https and 2 1 1 for smtp, on web1's nginx), converged."""
    with Fleet() as fleet:
        psql(fleet, f"SELECT add_tlsa_service('https-key', 443, '_443._tcp.{{}}. {TTL.seconds} IN TLSA 3 1 1')")
        psql(fleet, f"SELECT add_tlsa_service('smtp-issuer', 25, '_25._tcp.{{}}. {TTL.seconds} IN TLSA 2 1 1')")
        psql(fleet, f"SELECT * FROM add_cert('{NAME}', 'server', 'LE', 'ec', false, NULL, 'https-key', 443, "
                    f"'{WEB}', NULL, 'nginx')")
        psql(fleet, f"SELECT add_service('{NAME}', 'smtp-issuer', 25)")
        assert fleet.cli("-C", "-o", f"intranet.{ZONE}", "-o", "backup_op").returncode == 0
        fleet.settle()
        assert fleet.problems() == []
        yield fleet


@pytest.fixture
def server(fleet):
    """openssl s_server with NAME's files as deployed on web1, reloaded when nginx's reload command ran."""
    root = fleet.lab.ssh.host(WEB).root
    files = root / SSL_DIR
    with TlsServer(files / f"{NAME}_server_ec_cert_cacert.pem", files / f"{NAME}_server_ec_key.pem",
                   chain=files / f"{NAME}_server_ec_cert_cacert.pem",   # the leaf, then its issuer (for 2 1 1)
                   reload_log=root / "var/log/reloads", reload_line="service nginx reload") as server:
        yield server


# --------------------------------------------------------------------------- what a DANE client sees

RRsets = dict[str, tuple[str, ...]]      # owner -> the records of its TLSA RRset


def validated(fleet: Fleet) -> RRsets:
    """NAME's TLSA RRsets as a DANE client gets them: through the validating resolver, AD required; BIND
    serves them with TTL (what the cache model assumes)."""
    found = {}
    for owner in OWNERS:
        answer = fleet.lab.resolver.tlsa(owner)
        assert answer.validated, f"{owner}: {answer} did not validate"
        found[owner] = tuple(record.lower() for record in answer.records)
        ttls = {rrset.ttl for rrset in fleet.lab.bind.ask(owner, "TLSA").answer}
        assert ttls == {TTL.seconds}, (owner, ttls)
    return found


@dataclass
class Cache:
    """The RRsets DNS held, each from the database time a run left it (in effect until the next entry)."""

    ttl: dt.timedelta
    timeline: list[tuple[dt.datetime, RRsets]]

    def seen(self, at: dt.datetime, rrsets: RRsets) -> None:
        assert not self.timeline or at >= self.timeline[-1][0]
        self.timeline.append((at, rrsets))

    def holdable(self, at: dt.datetime, caches: int = 1) -> list[RRsets]:
        """Every RRset a client may hold at `at` behind this many caches, each keeping what it got for a TTL:
        one that DNS held at some moment of (at - caches x TTL, at]."""
        start = at - caches * self.ttl
        held = [rrsets for when, rrsets in self.timeline if start < when <= at]
        before = [rrsets for when, rrsets in self.timeline if when <= start]
        held = before[-1:] + held         # what DNS held when the window opened
        return [r for i, r in enumerate(held) if r not in held[:i]]


EVIDENCE: list[str] = []   # the s_client lines of each check, printed at the end of a test (pytest -s shows them)


def dane_matches(server: TlsServer, owner: str, records: tuple[str, ...], step: str) -> str:
    """s_client with these records verifies the server by DANE: the matched record is one of them, of the
    owner's usage (3: the leaf at depth 0, 2: its issuer at depth 1). Returns the DANE line."""
    run = s_client(server.port, records, NAME)
    said = run.stderr
    assert run.returncode == 0, f"{step}: {owner} {records}: {said}"
    assert "Verification: OK" in said and f"Verified peername: {NAME}" in said, f"{step}: {said}"
    [line] = [line for line in said.splitlines() if line.startswith("DANE TLSA ")]
    usage = OWNERS[owner]
    match = re.fullmatch(rf"DANE TLSA {usage} \.\.\.([0-9a-f]+) matched (EE|TA) certificate at depth (\d)", line)
    assert match, f"{step}: {line}"
    assert any(r.startswith(usage) and r.endswith(match.group(1)) for r in records), (line, records)
    assert (match.group(2), match.group(3)) == (("EE", "0") if usage.startswith("3") else ("TA", "1")), line
    EVIDENCE.append(f"{step}: {owner} fed {len(records)} validated record(s): rc 0, Verification: OK, {line}")
    return line


def dane_fails(server: TlsServer, owner: str, records: tuple[str, ...], step: str) -> None:
    """s_client with these records refuses the server: none of them matches."""
    run = s_client(server.port, records, NAME)
    assert run.returncode != 0, f"{step}: {owner} {records} verified, it must not: {run.stderr}"
    assert "no matching DANE TLSA records" in run.stderr and "Verification: OK" not in run.stderr, run.stderr
    EVIDENCE.append(f"{step}: {owner} fed {len(records)} record(s): rc {run.returncode}, "
                    "verify error:num=65:no matching DANE TLSA records")


def wrong(record: str) -> str:
    """The record with its last hex digit changed: what a forged or stale record looks like."""
    return record[:-1] + ("0" if record[-1] != "0" else "1")


# --------------------------------------------------------------------------- the fleet's side

def states(fleet: Fleet) -> dict[int, str]:
    return dict(fleet.conn.execute("SELECT id, state::text FROM certinstances WHERE certificate = cert_id(%s) "
                                   "AND state NOT IN ('archived', 'expired') ORDER BY id", (NAME,)).fetchall())


def records_of(fleet: Fleet, inst: int) -> RRsets:
    """The TLSA records of one instance per owner, as the database computes them."""
    found: dict[str, set[str]] = {owner: set() for owner in OWNERS}
    for owner, u, s, m, data in fleet.conn.execute(
            "SELECT owner, usage, selector, matching, data FROM tlsa_desired WHERE instance = %s", (inst,)):
        found[owner].add(f"{u} {s} {m} {data}".lower())
    return {owner: tuple(sorted(records)) for owner, records in found.items()}


def served_instance(fleet: Fleet, server: TlsServer) -> int:
    """Which instance of NAME the server sends."""
    served = server.served()
    for inst, cert in fleet.conn.execute("SELECT certinstance, cert FROM certkeydata WHERE certinstance IN "
                                         "(SELECT id FROM certinstances WHERE certificate = cert_id(%s))", (NAME,)):
        if x509.load_pem_x509_certificate(bytes(cert)) == served:
            return inst
    raise AssertionError(f"the server sends a certificate of no instance of {NAME}: {served.subject}")


def cron(fleet: Fleet, server: TlsServer, *extra: str) -> str:
    """One run as cron runs it (as pki_cron, on the fleet's clock); the server reloads when the run reloaded nginx."""
    run = fleet.cli("-S", "-q", "-a", *extra)
    assert run.returncode == 0, run.stdout + run.stderr
    server.follow()
    return run.stdout + run.stderr


def check_every_cached_rrset(fleet: Fleet, server: TlsServer, cache: Cache, step: str, caches: int = 1) -> int:
    """At this moment, every RRset a client may hold behind `caches` caches (per owner) verifies the server
    by DANE. Returns the served instance."""
    inst = served_instance(fleet, server)
    for held in cache.holdable(fleet.now, caches):
        for owner, records in held.items():
            dane_matches(server, owner, records, f"{step} (instance {inst} served)")
    return inst


# --------------------------------------------------------------------------- the tests

def test_a_validating_dane_client_verifies_the_server_at_every_step_of_the_rollover(fleet, server):
    EVIDENCE.clear()
    old = fleet.deployed()[NAME]
    fleet.now = fleet.now + dt.timedelta(hours=1)
    cache = Cache(TTL, [(fleet.now, validated(fleet))])

    # before: the old instance is served and DNS has its records only
    assert served_instance(fleet, server) == old
    assert cache.timeline[-1][1] == records_of(fleet, old)
    check_every_cached_rrset(fleet, server, cache, "before", caches=2)
    for owner, records in records_of(fleet, old).items():   # the test can fail: a record that does not belong
        dane_fails(server, owner, tuple(wrong(r) for r in records), "before, a changed record")

    # hourly cron runs from less than a day before the old one expires (the replacement is due): the
    # scheduler issues the successor, publishes its records beside the old ones, waits 2 x TTL, deploys it,
    # then withdraws the old records
    fleet.into_rollover(NAME, days_left=20 / 24)
    seen_states, steps = [], 0
    while True:
        steps += 1
        assert steps <= 6, f"no rollover after {steps - 1} hourly runs: {states(fleet)}"
        cron(fleet, server)
        cache.seen(fleet.now, validated(fleet))
        now_states = states(fleet)
        seen_states.append(now_states)
        served = check_every_cached_rrset(fleet, server, cache, f"run {steps} at {fleet.now:%H:%M}", caches=2)
        [successor] = [i for i in now_states if i != old] or [None]
        dns_now = cache.timeline[-1][1]
        if now_states.get(old) == "deployed":
            assert served == old, (now_states, served)
            if successor is not None and now_states[successor] == "prepublished":   # during: both records
                assert dns_now == {o: tuple(sorted(records_of(fleet, old)[o] + records_of(fleet, successor)[o]))
                                   for o in OWNERS}
                published = fleet.conn.execute("SELECT tlsa_published FROM certinstances WHERE id = %s",
                                               (successor,)).fetchone()[0]
                assert fleet.now < published + 2 * TTL, "the successor waited longer than 2 x TTL"
        else:
            break
        fleet.later(hours=1)

    # after: the successor is deployed and served, the old record withdrawn
    new = fleet.deployed()[NAME]
    assert new != old and served_instance(fleet, server) == new and server.reloads >= 1
    assert cache.timeline[-1][1] == records_of(fleet, new)
    assert any(s.get(new) == "prepublished" and s.get(old) == "deployed" for s in seen_states), \
        f"no run saw the successor prepublished while the old one was served: {seen_states}"
    published, deployed_at = fleet.conn.execute(
        "SELECT tlsa_published, (SELECT min(at) FROM events WHERE instance = %(i)s AND to_state = 'deployed') "
        "FROM certinstances WHERE id = %(i)s", {"i": new}).fetchone()
    assert deployed_at >= published + 2 * TTL, (published, deployed_at)
    # what made it safe: by then the RRset of before the prepublication (the old records only) had expired
    # from every cache, also behind two; a client that still held it would have failed (the next test)
    assert records_of(fleet, old) not in cache.holdable(fleet.now, caches=2)
    for owner, records in records_of(fleet, old).items():
        dane_fails(server, owner, records, "after, the expired pre-prepublication RRset")

    # the next runs: the RRset {old, new} leaves the caches (one TTL, behind two caches two), {new} stays valid
    for hour in (1, 2):
        fleet.later(hours=1)
        cron(fleet, server)
        cache.seen(fleet.now, validated(fleet))
        assert cache.holdable(fleet.now, caches=hour) == [records_of(fleet, new)]
        check_every_cached_rrset(fleet, server, cache, f"{hour} hour(s) after", caches=2)
    assert fleet.problems() == []
    print("\n" + "\n".join(EVIDENCE))


def test_deployed_before_2_ttl_a_client_with_the_cached_old_rrset_fails(fleet, server):
    EVIDENCE.clear()
    old = fleet.deployed()[NAME]
    # into the prepublish window; a client asks just before the run and caches the old records alone
    fleet.into_rollover(NAME)
    cache = Cache(TTL, [(fleet.now, validated(fleet))])
    stale = cache.timeline[-1][1]
    assert stale == records_of(fleet, old)

    cron(fleet, server)                             # rule 9: the successor is issued and prepublished
    cache.seen(fleet.now, validated(fleet))
    [successor] = [i for i, s in states(fleet).items() if s == "prepublished"]
    assert states(fleet) == {old: "deployed", successor: "prepublished"}

    # ten minutes later the operator wants it live: -D holds it back (the DANE-safe order) ...
    fleet.later(minutes=10)
    said = fleet.cli("-D", "-o", NAME)
    assert said.returncode == 0 and "will be deployed after" in said.stdout + said.stderr, said.stdout + said.stderr
    assert states(fleet)[successor] == "prepublished" and not server.follow()
    check_every_cached_rrset(fleet, server, cache, "-D held back")

    # ... -N (no TLSA changes) skips the wait: deployed now, before 2 x TTL
    said = fleet.cli("-D", "-N", "-o", NAME)
    assert said.returncode == 0, said.stdout + said.stderr
    assert server.follow() and served_instance(fleet, server) == successor
    assert states(fleet) == {successor: "deployed"}
    assert validated(fleet) == cache.timeline[-1][1], "-N changed DNS"
    assert any(f"instance {successor} was deployed at" in p and "before its TLSA records had been out two TTLs" in p
               for p in fleet.problems()), fleet.problems()

    # a client that fetched the records before the prepublication still holds them: the old record alone
    holdable = cache.holdable(fleet.now)
    assert stale in holdable and len(holdable) == 2
    for owner, records in stale.items():
        dane_fails(server, owner, records, "deployed 10 minutes after the prepublication, the cached old RRset")
    # a client that asked after the prepublication verifies it: the fault is the early deployment alone
    for owner, records in cache.timeline[-1][1].items():
        dane_matches(server, owner, records, "deployed 10 minutes after the prepublication, the current RRset")
    print("\n" + "\n".join(EVIDENCE))
