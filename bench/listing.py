"""Where `operate_serverPKI -n -v -a` spends its time at scale: querying or printing.

Run:  .venv/bin/python bench/listing.py [N]        (default: 5000)

One private cluster (lab.postgres.PostgresCluster), a database with the schema (serverpki.migrate) and
bench/schedule.py's fleet of issue 18 (10 disthosts, half the certificates with targets, a quarter with TLSA
services, a fifth with an issued successor, some expired in service), analyzed (--no-analyze: not). Then, as the cron login
(pki_cron: an operator's `operate_serverPKI -n -v -a` runs as it; the reporting login is refused -n):
    - the whole process, `operate_serverPKI -n -v -a` with its output to a pipe (best of 3)
    - the statements it sends (queries.sql: check_config, check_warnings, certificate_counts,
      report_meta, report_instances_grid), each executed and fetched over one connection as the same role
      (best of 3): the query time; what the process spends beyond it is starting, formatting and printing.
Target (issue 18, item 3): most of the time is printing, not querying.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

import schedule as fleet  # noqa: E402  bench/schedule.py: its fleet, its clock; it puts agent/ and the checkout on the path

from serverpki.queries import q  # noqa: E402
from lab import roles  # noqa: E402
from lab.postgres import PostgresCluster  # noqa: E402
from lab.process import remove_dir, temp_dir  # noqa: E402

RUNS = 3
ARGS = ("-n", "-v", "-a")
# what -n -v -a sends (reports.check with verbose, operate's selection of -a), in its order
SELECTION = {"sel_all": True, "sel_include": [], "sel_exclude": [], "sel_only": [], "sel_skip": [], "sel_limit": [],
             "sel_no_tlsa": False}
STATEMENTS = (("check_config", SELECTION), ("check_warnings", SELECTION), ("certificate_counts", {}),
              ("report_meta", {"only": []}), ("report_instances_grid", {"only": []}))
# libpq and serverPKI variables of the caller never reach the measured process (tests/commands.py)
FOREIGN_VARS = ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGOPTIONS",
                "SERVERPKI_DSN", "SERVERPKI_CONFIG")


def operate_command() -> list[str]:
    """operate_serverPKI beside this Python (the virtualenv's entry point), else its module."""
    path = Path(sys.executable).with_name("operate_serverPKI")
    return [str(path)] if path.exists() else [sys.executable, "-m", "serverpki.operate"]


def process_seconds(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """The best wall time of RUNS runs of the whole command, and the bytes it printed."""
    best, printed = float("inf"), 0
    for _ in range(RUNS):
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, timeout=600)
        best = min(best, time.perf_counter() - started)
        if done.returncode not in (0, 4):   # 4: the check found problems, still a listing
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
        printed = len(done.stdout)
    return best, printed


def query_seconds(dsn: str) -> dict[str, tuple[float, int]]:
    """Each statement's best wall time over RUNS (execute and fetch, as the process does), and its rows."""
    times: dict[str, tuple[float, int]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, params in STATEMENTS:
            best, rows = float("inf"), 0
            for _ in range(RUNS + 1):   # the first run warms the caches (the process's run is warm too)
                started = time.perf_counter()
                rows = len(conn.execute(q(name), params).fetchall())
                best = min(best, time.perf_counter() - started)
            times[name] = (best, rows)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=5000)
    parser.add_argument("--no-analyze", action="store_true",
                        help="tables without statistics (as right after a bulk import, before autovacuum analyzes)")
    args = parser.parse_args()

    base = temp_dir("serverpki-bench-", 0o755)  # removed also when SIGTERM ends the run (lab.process)
    cluster = PostgresCluster(base / "cluster", extra_options="-c shared_buffers=256MB -c work_mem=16MB")
    try:
        cluster.start()
        db = "bench_listing"
        with fleet.new_database(cluster, db) as conn:
            fleet.load_fleet(conn, args.n, *fleet.pem_pair(), shape=fleet.SHAPES["issue18"],
                             analyze=not args.no_analyze)
        config = base / "serverpki.toml"
        config.write_text('[logging]\nsyslog_address = ""\n')
        env = {k: v for k, v in os.environ.items() if k not in FOREIGN_VARS}
        env.update(cluster.env(db, roles.CRON), SERVERPKI_CONFIG=str(config))
        queries = query_seconds(cluster.dsn(db, roles.CRON))
        total, printed = process_seconds([*operate_command(), *ARGS], env)
        floor, _ = process_seconds([sys.executable, "-c", "pass"], env)
    finally:
        cluster.destroy()
        remove_dir(base)

    querying = sum(t for t, _ in queries.values())
    print(f"operate_serverPKI {' '.join(ARGS)} at {args.n} certificates (fleet 'issue18', "
          f"{'no statistics' if args.no_analyze else 'analyzed'}), as {roles.CRON}:")
    for name, (seconds, rows) in queries.items():
        print(f"  {name:<20} {seconds:7.3f} s  {rows:>7} rows")
    print(f"  {'queries':<20} {querying:7.3f} s  ({querying / total:.0%} of the process)")
    print(f"  {'whole process':<20} {total:7.3f} s  ({printed / 1e6:.1f} MB printed; python -c pass takes {floor:.3f} s)")
    print(f"  {'the rest':<20} {total - querying:7.3f} s  (start, format, print: {(total - querying) / total:.0%})")
    print(f"(best of {RUNS} each; target: most of the time printing, not querying: "
          f"{'met' if querying < total / 2 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
