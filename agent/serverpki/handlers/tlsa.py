"""publish_tlsa: make a certificate's TLSA RRsets what the database wants.

The job's args list the instances whose records DNS should hold (the active
one, and during a prepublish its successor; none for -R). The records come
from the view pki.tlsa_desired, the owners from pki.tlsa_owners; for each
zone, every owner's TLSA RRset is replaced in ONE signed UPDATE (delete the
RRset, add the wanted records), so a resolver never sees half a change. The
job completes once every authoritative server of each zone shows exactly the
wanted RRsets: complete_publish_tlsa counts the DANE wait from then.
An owner the certificate had (pki.tlsa_owners_in_dns, what earlier jobs
reported) that no certificate configures now has its RRset deleted after
that, one UPDATE per zone; a zone that refuses it is given up with a
warning. The report names the owners that hold records now and the ones
withdrawn, and the completion keeps them for the next job.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dns.name
import dns.rdatatype
from psycopg.rows import dict_row

from ..dnsupdate import Clock, DnsRefused, DnsUpdater
from ..errors import GiveUp
from ..faults import crash_point
from ..queries import q
from . import Completion, Context, Job, handler
from .common import about

log = logging.getLogger("serverpki.handlers.tlsa")


RRsets = dict[dns.name.Name, tuple[int, set[str]]]     # owner -> (TTL, TLSA rdata texts); empty: no RRset


def wanted_rrsets(job: Job, ctx: Context) -> tuple[RRsets, list[dns.name.Name]]:
    """owner -> (TTL, TLSA rdata texts) for every owner of the certificate (empty sets where nothing is
    wanted); and the owners it had that no certificate configures now, to withdraw. One it had that another
    certificate configures now is left to that one's jobs."""
    cur = ctx.conn.cursor(row_factory=dict_row)
    owners = cur.execute(q("tlsa_owners"), {"certificate": job.certificate}).fetchall()
    instances = [] if job.args.get("remove") else [int(i) for i in job.args.get("instances") or []]
    # keyed by DNS name: two spellings of one owner are one RRset
    wanted: RRsets = {dns.name.from_text(o["owner"]): (int(o["ttl"]), set()) for o in owners}
    if instances:
        for r in cur.execute(q("tlsa_records"), {"certificate": job.certificate, "instances": instances}):
            ttl, records = wanted.setdefault(dns.name.from_text(r["owner"]), (int(r["ttl"]), set()))
            records.add(f"{r['usage']} {r['selector']} {r['matching']} {r['data']}")
    gone = [name for name in (dns.name.from_text(g["owner"])
                              for g in cur.execute(q("tlsa_owners_gone"), {"certificate": job.certificate}))
            if name not in wanted]
    return wanted, gone


def withdraw(updater: DnsUpdater, gone: list[dns.name.Name], label: str) -> dict[str, list[dns.name.Name]]:
    """Delete the RRsets of owners gone, one UPDATE per zone, after the wanted ones; a refusal does not hold
    back the certificate's records. An owner in no zone the primary holds (the zone given up) is abandoned:
    forgotten, with a warning. One whose zone refused the update (its policy, the key, the clock) is not
    withdrawn: kept, the next job tries again. Returns the owners withdrawn, abandoned and not_withdrawn."""
    done: dict[str, list[dns.name.Name]] = {"withdrawn": [], "abandoned": [], "not_withdrawn": []}
    by_zone: dict[dns.name.Name, list[dns.name.Name]] = {}
    for name in gone:
        try:
            by_zone.setdefault(updater.zone_for(name), []).append(name)
        except DnsRefused as exc:
            log.warning("%s: TLSA records at %s forgotten, not withdrawn: %s; if that name's zone is served "
                        "elsewhere now, delete its TLSA RRset there by hand", label, name, exc)
            done["abandoned"].append(name)
    for zone, names in sorted(by_zone.items()):
        try:
            updater.replace_rrsets(zone, {name: (0, set()) for name in names}, dns.rdatatype.TLSA)
            updater.wait_rrsets(zone, {name: set() for name in names}, dns.rdatatype.TLSA)
            done["withdrawn"] += names
        except DnsRefused as exc:
            log.warning("%s: TLSA records at %s not withdrawn: %s; the next job tries again (mend what the "
                        "error names: the zone's update policy for the TSIG key, the key, the clock)", label,
                        ", ".join(owner_texts(names)), exc)
            done["not_withdrawn"] += names
    return done


def owner_texts(names) -> list[str]:
    return sorted(name.to_text().lower() for name in names)


@handler("publish_tlsa")
def publish_tlsa(job: Job, ctx: Context) -> Completion:
    started = time.monotonic()
    if job.certificate is None:
        raise GiveUp(f"publish_tlsa job {job.id}: its certificate is gone")
    wanted, gone = wanted_rrsets(job, ctx)
    if not wanted and not gone:
        return Completion(report={"zones": {}, "owners": 0, "records": 0, "dns_updates": {}, "in_dns": []})
    clock = Clock()
    with about("TLSA records"):
        updater = DnsUpdater.from_config(ctx.config, clock, needed_for="TLSA records", label=job.label)
        by_zone: dict[dns.name.Name, RRsets] = {}
        for name, rrset in wanted.items():
            by_zone.setdefault(updater.zone_for(name), {})[name] = rrset
        for zone, rrsets in sorted(by_zone.items()):
            updater.replace_rrsets(zone, rrsets, dns.rdatatype.TLSA)
            crash_point("publish_tlsa.sent")
            ctx.keep_alive()
        for zone, rrsets in sorted(by_zone.items()):
            updater.wait_rrsets(zone, {owner: records for owner, (_, records) in rrsets.items()}, dns.rdatatype.TLSA)
        gone_now = withdraw(updater, gone, job.label)
    total = time.monotonic() - started
    result: dict[str, Any] = {
        "zones": {zone.to_text(): len(rrsets) for zone, rrsets in by_zone.items()},
        "owners": len(wanted),
        "records": sum(len(records) for _, records in wanted.values()),
        "dns_updates": dict(updater.updates),
        "timing": {"total": round(total, 4), "waiting": round(clock.waited, 4), "work": round(total - clock.waited, 4)},
        # what DNS holds of this certificate now: complete_publish_tlsa keeps it for the next job
        "in_dns": owner_texts(name for name, (_, records) in wanted.items() if records),
        "withdrawn": owner_texts([*gone_now["withdrawn"], *(name for name, (_, records) in wanted.items() if not records)]),
        **{key: owner_texts(names) for key, names in gone_now.items() if key != "withdrawn" and names},
    }
    return Completion(report=result)
