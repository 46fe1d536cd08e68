"""The lab zone is DNSSEC-signed, and what a validating resolver makes of it.

BIND signs the zone itself (inline signing); the agent's TSIG-signed UPDATEs of a
TLSA RRset — sent and awaited by the same DnsUpdater calls the publish_tlsa job
makes — are served re-signed, so unbound (the zone's DNSKEY as trust anchor)
answers them with AD, also after a replacement once the old TTL has passed, and
after a deletion (authenticated denial). A record changed without re-signing —
the signed zone copied with one TLSA RRset altered under its old RRSIG, or the
zone served unsigned — is refused: SERVFAIL, no AD, no records."""

from __future__ import annotations

import time
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdatatype
import dns.rrset
import pytest

from serverpki.config import parse_config
from serverpki.dnsupdate import DnsUpdater
from lab.bind import BindLab, zone_text
from lab.resolver import ValidatingResolver

ZONE = "demo.serverpki.test"
TTL = 1   # seconds: a replacement is visible to the resolver this soon
HASH_A, HASH_B, HASH_C = "aa" * 32, "bb" * 32, "cc" * 32


@pytest.fixture(scope="module")
def signed():
    with BindLab(zones=(ZONE,)) as bind, ValidatingResolver(bind) as resolver:   # the resolver keeps TTLs
        yield bind, resolver


def updater_for(bind: BindLab, tmp_path: Path) -> DnsUpdater:
    config = parse_config({"dns": {"tsig_key_file": str(bind.key_file), "primary": bind.primary,
                                   "propagation_timeout_seconds": 10},
                           "logging": {"syslog_address": ""}}, tmp_path / "serverpki.toml")
    return DnsUpdater.from_config(config, needed_for="TLSA records")


def publish(updater: DnsUpdater, rrsets: dict[str, set[str]]) -> None:
    """What publish_tlsa does with one zone: replace the RRsets in one UPDATE, wait for every authoritative server."""
    names = {dns.name.from_text(owner): (TTL, records) for owner, records in rrsets.items()}
    zone = updater.zone_for(next(iter(names)))
    updater.replace_rrsets(zone, names, dns.rdatatype.TLSA)
    updater.wait_rrsets(zone, {name: records for name, (_, records) in names.items()}, dns.rdatatype.TLSA)


def tlsa(hex_digest: str) -> str:
    return f"3 1 1 {hex_digest}"


def served_rrsets(bind: BindLab, name: str, rdtype: str) -> list[dns.rrset.RRset]:
    """The RRset and its RRSIG as the authoritative server answers (DO set)."""
    return [rrset for rrset in bind.ask(name, rdtype, tcp=True).answer if rrset.name == dns.name.from_text(name)]


def until(resolver: ValidatingResolver, owner: str, records: list[str], seconds: float):
    """Ask until the resolver returns records (its cache may hold the old ones for their TTL); every answer on
    the way must have validated (AD: the records, or the proof that there are none). Returns the last answer."""
    deadline = time.monotonic() + seconds
    while True:
        answer = resolver.tlsa(owner)
        assert answer.ad and answer.rcode in ("NOERROR", "NXDOMAIN"), f"{owner}: {answer} did not validate"
        if answer.records == records or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_the_zone_is_signed_at_the_authoritative_server(signed):
    bind, resolver = signed
    keys = served_rrsets(bind, f"{ZONE}.", "DNSKEY")
    dnskey = next(r for r in keys if r.rdtype == dns.rdatatype.DNSKEY)
    assert [rd.algorithm for rd in dnskey] == [dns.dnssec.Algorithm.ECDSAP256SHA256]
    for rdtype in ("SOA", "NS", "DNSKEY"):
        rrsets = served_rrsets(bind, f"{ZONE}.", rdtype)
        sigs = [r for r in rrsets if r.rdtype == dns.rdatatype.RRSIG]
        data = [r for r in rrsets if r.rdtype == dns.rdatatype.from_text(rdtype)]
        assert sigs and data, f"{rdtype}: {rrsets}"
        dns.dnssec.validate(data[0], sigs[0], {dns.name.from_text(f"{ZONE}."): dnskey})  # raises if it does not verify
    assert bind.trust_anchor(ZONE) == "".join(f"{ZONE}. 60 IN DNSKEY {rd.to_text()}\n" for rd in dnskey)
    assert resolver.ask(ZONE, "SOA").validated


def test_updates_through_the_agent_stay_valid(signed, tmp_path):
    bind, resolver = signed
    updater = updater_for(bind, tmp_path)
    owner = f"_443._tcp.www.{ZONE}."

    publish(updater, {owner: {tlsa(HASH_A)}})
    rrsets = served_rrsets(bind, owner, "TLSA")
    assert {r.rdtype for r in rrsets} == {dns.rdatatype.TLSA, dns.rdatatype.RRSIG}, "the UPDATE was not re-signed"
    assert until(resolver, owner, [tlsa(HASH_A)], 0).records == [tlsa(HASH_A)]

    publish(updater, {owner: {tlsa(HASH_B)}})   # a rollover's replacement
    started = time.monotonic()
    assert until(resolver, owner, [tlsa(HASH_B)], 2 * TTL + 3).records == [tlsa(HASH_B)]
    assert time.monotonic() - started < 2 * TTL + 3

    publish(updater, {owner: set()})            # withdrawn: the absence is proven (NSEC), AD too
    gone = until(resolver, owner, [], 2 * TTL + 3)
    assert gone.records == [] and gone.rcode == "NXDOMAIN" and gone.ad


def forged_copy(bind: BindLab, owners: dict[str, str]) -> str:
    """The signed zone as a zone file: apex, name server and the given owners' TLSA RRsets, each with the
    RRSIG BIND made; owners maps an owner to a record that replaces its RRset's rdata under the old RRSIG.
    (The apex NSEC too: BIND serves a zone's RRSIGs only when it has DNSKEY and NSEC there.)"""
    lines = []
    for name, rdtype in [(f"{ZONE}.", "SOA"), (f"{ZONE}.", "NS"), (f"{ZONE}.", "DNSKEY"), (f"{ZONE}.", "NSEC"),
                         (f"ns1.{ZONE}.", "A")]:
        lines += [r.to_text() for r in served_rrsets(bind, name, rdtype)]
    for owner, replacement in owners.items():
        for rrset in served_rrsets(bind, owner, "TLSA"):
            if rrset.rdtype == dns.rdatatype.TLSA and replacement:
                rrset = dns.rrset.from_text(rrset.name, rrset.ttl, "IN", "TLSA", replacement)
            lines.append(rrset.to_text())
    return "\n".join(lines) + "\n"


def test_a_record_changed_without_re_signing_is_refused(signed, tmp_path):
    bind, _ = signed
    updater = updater_for(bind, tmp_path)
    kept, altered = f"_443._tcp.kept.{ZONE}.", f"_443._tcp.altered.{ZONE}."
    publish(updater, {kept: {tlsa(HASH_A)}, altered: {tlsa(HASH_B)}})

    # another server has the signed data with one RRset changed; the resolver trusts the real zone's key
    with BindLab(zones=(ZONE,), signed=False) as forger:
        forger.load(ZONE, forged_copy(bind, {kept: "", altered: tlsa(HASH_C)}))
        with ValidatingResolver(forger, anchor_from=bind) as resolver:
            untouched = resolver.tlsa(kept)
            assert untouched.validated and untouched.records == [tlsa(HASH_A)], untouched  # the copy itself is sound
            changed = resolver.tlsa(altered)
            assert changed.rcode == "SERVFAIL" and not changed.ad and changed.records == [], changed

        # the zone served unsigned: no RRSIG, no DNSKEY: stripped, refused too
        forger.load(ZONE, zone_text(ZONE) + f"_443._tcp.altered IN TLSA {tlsa(HASH_C)}\n")
        with ValidatingResolver(forger, anchor_from=bind) as resolver:
            stripped = resolver.tlsa(altered)
            assert stripped.rcode == "SERVFAIL" and not stripped.ad and stripped.records == [], stripped
