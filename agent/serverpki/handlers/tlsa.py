"""publish_tlsa: make a certificate's TLSA RRsets what the database wants.

The job's args list the instances whose records DNS should hold (the active
one, and during a prepublish its successor; none for -R). The records come
from the view pki.tlsa_desired, the owners from pki.tlsa_owners; for each
zone, every owner's TLSA RRset is replaced in ONE signed UPDATE (delete the
RRset, add the wanted records), so a resolver never sees half a change. The
job completes once every authoritative server of each zone shows exactly the
wanted RRsets: complete_publish_tlsa counts the DANE wait from then.
"""

from __future__ import annotations

import time
from typing import Any

import dns.name
import dns.rdatatype
from psycopg.rows import dict_row

from ..dnsupdate import Clock, DnsUpdater
from ..errors import GiveUp
from ..faults import crash_point
from ..queries import q
from . import Completion, Context, Job, handler
from .common import about


def wanted_rrsets(job: Job, ctx: Context) -> dict[str, tuple[int, set[str]]]:
    """owner -> (TTL, TLSA rdata texts) for every owner of the certificate; empty sets where nothing is wanted."""
    cur = ctx.conn.cursor(row_factory=dict_row)
    owners = cur.execute(q("tlsa_owners"), {"certificate": job.certificate}).fetchall()
    instances = [] if job.args.get("remove") else [int(i) for i in job.args.get("instances") or []]
    wanted: dict[str, tuple[int, set[str]]] = {o["owner"]: (int(o["ttl"]), set()) for o in owners}
    if instances:
        for r in cur.execute(q("tlsa_records"), {"certificate": job.certificate, "instances": instances}):
            ttl, records = wanted.setdefault(r["owner"], (int(r["ttl"]), set()))
            records.add(f"{r['usage']} {r['selector']} {r['matching']} {r['data']}")
    return wanted


@handler("publish_tlsa")
def publish_tlsa(job: Job, ctx: Context) -> Completion:
    started = time.monotonic()
    if job.certificate is None:
        raise GiveUp(f"publish_tlsa job {job.id}: its certificate is gone")
    wanted = wanted_rrsets(job, ctx)
    if not wanted:
        return Completion(report={"zones": {}, "owners": 0, "records": 0, "dns_updates": {}})
    clock = Clock()
    with about("TLSA records"):
        updater = DnsUpdater.from_config(ctx.config, clock, needed_for="TLSA records", label=job.label)
        by_zone: dict[dns.name.Name, dict[dns.name.Name, tuple[int, set[str]]]] = {}
        for owner, rrset in wanted.items():
            name = dns.name.from_text(owner)
            by_zone.setdefault(updater.zone_for(name), {})[name] = rrset
        for zone, rrsets in sorted(by_zone.items()):
            updater.replace_rrsets(zone, rrsets, dns.rdatatype.TLSA)
            crash_point("publish_tlsa.sent")
            ctx.keep_alive()
        for zone, rrsets in sorted(by_zone.items()):
            updater.wait_rrsets(zone, {owner: records for owner, (_, records) in rrsets.items()}, dns.rdatatype.TLSA)
    total = time.monotonic() - started
    result: dict[str, Any] = {
        "zones": {zone.to_text(): len(rrsets) for zone, rrsets in by_zone.items()},
        "owners": len(wanted),
        "records": sum(len(records) for _, records in wanted.values()),
        "dns_updates": dict(updater.updates),
        "timing": {"total": round(total, 4), "waiting": round(clock.waited, 4), "work": round(total - clock.waited, 4)},
    }
    return Completion(report=result)
