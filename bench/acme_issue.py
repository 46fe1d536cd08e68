"""ACME issuance and TLSA publication against the real peers: Pebble (PEBBLE_VA_NOSLEEP=1)
validating dns-01 at a private BIND 9.

Run:  .venv/bin/python bench/acme_issue.py [--certs 20] [--agents 1] [--nonce-reject 0] [--authz-reuse 0]

It starts a private PostgreSQL cluster, BIND (zones demo.serverpki.test and
other.serverpki.test) and Pebble on loopback, installs the schema, registers an
ACME account (-Z) and configures N LE certificates (rsa, ec and rsa_plus_ec in
turn), each with a name in both zones and the https TLSA service. Then:
  1. -C for all of them, drained by the real agent(s): certificates per second;
  2. each instance is marked deployed and -T publishes the TLSA records.
It prints, from the jobs' own results: the DNS UPDATE messages sent per zone
(issuing: one to add the challenge records and one to remove them, per zone and
certificate; TLSA: one per zone and certificate), and for each issuance how
much of it was waiting (sleeping between polls: DNS visibility, the CA's
validation and finalization) and how much was work (keys, CSRs, ACME requests,
DNS messages, database).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "agent"))
sys.path.insert(0, str(_HERE.parent))  # the lab (lab/): in the checkout, never installed

from serverpki import migrate  # noqa: E402
from serverpki.agent import Agent  # noqa: E402
from serverpki.config import parse_config  # noqa: E402
from lab.bind import BindLab  # noqa: E402
from lab.pebble import PebbleLab  # noqa: E402
from lab import roles  # noqa: E402
from lab.postgres import PostgresCluster  # noqa: E402
from lab.process import remove_dir, temp_dir  # noqa: E402

ZONES = ("demo.serverpki.test", "other.serverpki.test")
ALGOS = ("rsa", "ec", "rsa_plus_ec")


def drain_with(agents: int, dsn: str, config) -> float:
    """Drain the queue with this many agents in parallel; returns the wall time."""
    def work(i: int) -> None:
        agent = Agent(dsn, config, name=f"bench-agent-{i}", batch=1)
        try:
            agent.drain()
        finally:
            agent.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def summary(values: list[float]) -> str:
    return f"min {min(values) * 1000:7.1f}  median {statistics.median(values) * 1000:7.1f}  max {max(values) * 1000:7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--certs", type=int, default=20)
    parser.add_argument("--agents", type=int, default=1)
    parser.add_argument("--nonce-reject", type=int, default=0, help="PEBBLE_WFE_NONCEREJECT (percent)")
    parser.add_argument("--authz-reuse", type=int, default=0, help="PEBBLE_AUTHZREUSE (percent)")
    args = parser.parse_args()
    logging.getLogger("serverpki").setLevel(logging.WARNING)   # the jobs' outcomes are summed up below

    base = temp_dir("serverpki-bench-acme-", 0o755)  # removed also when SIGTERM ends the run (lab.process)
    try:
        with PostgresCluster(base / "pg") as pg, BindLab(zones=ZONES) as bind, \
                PebbleLab(dns_port=bind.port, nonce_reject=args.nonce_reject, authz_reuse=args.authz_reuse) as pebble:
            with psycopg.connect(pg.dsn(), autocommit=True) as su:
                su.execute("CREATE DATABASE bench")
            with psycopg.connect(pg.dsn("bench"), autocommit=True) as owner:   # the installer
                migrate.upgrade(owner, log=lambda _line: None)
                roles.create_login_roles(owner)
            dsn = pg.dsn("bench", roles.CRON)   # as deployed: the cron run's login role
            config = parse_config({
                "database": {"dsn": dsn},
                "acme": {"directory_url": pebble.directory_url, "contact_email": "pki@example.org", "agree_tos": True,
                         "ca_bundle": str(pebble.ca_bundle)},
                "dns": {"tsig_key_file": str(bind.key_file), "primary": bind.primary, "propagation_timeout_seconds": 30},
                "x509": {"rsa_key_size": 2048, "ec_curve": "secp384r1"},
                "logging": {"syslog_address": ""},
            }, base / "serverpki.toml")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT request_acme_account()")
                drain_with(1, dsn, config)
                assert conn.execute("SELECT count(*) FROM acme_accounts").fetchone()[0] == 1, "registration failed"
                names = []
                for i in range(args.certs):
                    name = f"www{i}.{ZONES[0]}"
                    names.append(name)
                    conn.execute("SELECT * FROM add_cert(%s, 'server', 'LE', %s, false, %s, 'https', 443, NULL, NULL, NULL)",
                                 (name, ALGOS[i % len(ALGOS)], f"alt{i}.{ZONES[1]}"))
                pairs = sum(2 if ALGOS[i % len(ALGOS)] == "rsa_plus_ec" else 1 for i in range(args.certs))

                # 1. issue
                conn.execute("SELECT * FROM request_create(selection(only_certs => %s))", (names,))
                issue_wall = drain_with(args.agents, dsn, config)
                rows = conn.execute("SELECT state::text, result, last_error FROM jobs WHERE kind = 'issue_acme' ORDER BY id").fetchall()
                failed = [(s, e) for s, _, e in rows if s != "done"]
                done = [r for s, r, _ in rows if s == "done"]

                # 2. TLSA: the instances go live (as the owner: no login role sets a state by hand), -T publishes
                with psycopg.connect(pg.dsn("bench"), autocommit=True) as owner:
                    owner.execute("UPDATE pki.certinstances i SET state = 'deployed' FROM pki.subjects s "
                                  "WHERE s.certificate = i.certificate AND NOT s.isaltname AND s.type = 'server' AND i.state = 'issued'")
                conn.execute("SELECT * FROM request_consolidate_tlsa(selection(only_certs => %s))", (names,))
                tlsa_wall = drain_with(args.agents, dsn, config)
                published = [r for s, r in conn.execute(
                    "SELECT state::text, result FROM jobs WHERE kind = 'publish_tlsa' ORDER BY id").fetchall() if s == "done"]

            issue_updates, tlsa_updates = Counter(), Counter()
            for r in done:
                issue_updates.update(r["dns_updates"])
            for r in published:
                tlsa_updates.update(r["dns_updates"])
            total = [r["timing"]["total"] for r in done]
            waiting = [r["timing"]["waiting"] for r in done]
            work = [r["timing"]["work"] for r in done]

            print(f"ACME with Pebble 2.4 (PEBBLE_VA_NOSLEEP=1, NONCEREJECT={args.nonce_reject}%, AUTHZREUSE={args.authz_reuse}%), "
                  f"BIND 9, {args.agents} agent(s)")
            print(f"  {args.certs} certificates ({pairs} key/certificate pairs), each with 2 names in 2 zones")
            print(f"  issued: {len(done)}, not issued: {len(failed)}" + (f"  {failed[:3]}" if failed else ""))
            print(f"  issuing: {issue_wall:.2f} s wall, {len(done) / issue_wall:.1f} certificates/s, "
                  f"{sum(2 if len(r['pairs']) == 2 else 1 for r in done) / issue_wall:.1f} pairs/s")
            print(f"  ACME requests per certificate: {statistics.mean(r['acme_requests'] for r in done):.1f} "
                  f"(badNonce retried: {sum(r['bad_nonces'] for r in done)}), "
                  f"authorizations skipped as valid: {sum(r['skipped_valid'] for r in done)}")
            print("  DNS UPDATE messages per zone:")
            for zone in sorted(set(issue_updates) | set(tlsa_updates)):
                print(f"    {zone:<24} issuing {issue_updates[zone]:4d} (add + remove challenge TXT)   "
                      f"TLSA {tlsa_updates[zone]:4d} (every owner of a certificate in one message)")
            print(f"  per issuance:  total   {summary(total)}")
            print(f"                 waiting {summary(waiting)}   ({sum(waiting) / sum(total) * 100:.1f} % of the time)")
            print(f"                 work    {summary(work)}   ({sum(work) / sum(total) * 100:.1f} % of the time)")
            print(f"  TLSA: {len(published)} publish jobs in {tlsa_wall:.2f} s wall, "
                  f"{len(published) / tlsa_wall:.1f} certificates/s (each waits until the records are served)")
            return 0 if not failed and len(published) == args.certs else 1
    finally:
        remove_dir(base)


if __name__ == "__main__":
    sys.exit(main())
