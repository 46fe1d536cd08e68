"""How plan() and schedule() scale with the number of certificates.

Run:  .venv/bin/python bench/schedule.py [N ...]        (default: 1000 10000)
      .venv/bin/python bench/schedule.py --explain 10000  (also print the plans of plan_rows' statements)

For each N this starts nothing new but a database in one private cluster
(lab.postgres.PostgresCluster, with pg_stat_statements preloaded and
track = all, so statements run inside functions and triggers are counted too),
installs the schema with serverpki.migrate.upgrade, bulk-loads a fleet of N
certificates with set-based SQL, travels to a fixed pki.now, and measures
    - the wall time of SELECT * FROM plan() and of SELECT * FROM schedule()
    - how many SQL statements each executed server-side: the calls of
      pg_stat_statements summed (reset before each measurement).
The scheduler is set-based, so its own statements are a fixed number whatever
N is; what may grow with N are statements that run once per row (row triggers,
per-row function calls). Those are listed separately, so a growth is visible
and attributable.

The fleet (by mod(i, 20), i = 1..N): half settled (deployed, nothing due); LE
certificates in the prepublish window without successor (issue), with an issued
successor (prepublish), near expiry with a prepublished successor (distribute);
LE certificates with nothing (issue); ones with expired/archived leftovers
(archive, delete); local ones due for a reminder; disabled ones. Certificates
with i even, and the DANE cases, carry a TLSA service; every certificate has a
target on one of five disthosts, every fourth one on a second.

Bulk load and triggers: the configuration tables (certificates, subjects,
targets, certificates_services) are loaded WITH their validation triggers.
certinstances and certkeydata are loaded with SET session_replication_role =
replica, i.e. with triggers (and foreign-key checks) off, during the bulk load
only: the state machine's guard admits new rows only as 'reserved' (the real
path is reserve -> issue job -> issued -> deployed), and the certkeydata trigger
parses every certificate with plpython, which would make the load take minutes.
The rows are consistent by construction instead: instance dates equal their key
pairs' dates, ids reference existing rows. The role is reset before measuring.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lab (lab/): in the checkout, never installed

from serverpki import migrate  # noqa: E402
from lab import roles  # noqa: E402
from lab.postgres import PostgresCluster  # noqa: E402
from lab.process import remove_dir, temp_dir  # noqa: E402

NOW = dt.datetime(2027, 6, 1, tzinfo=dt.timezone.utc)
PLAN_TARGET_SECONDS = 1.0


def pem_pair() -> tuple[bytes, bytes]:
    """One real EC certificate and key; every bulk-loaded pair carries these bytes (triggers are off)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.example")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=89)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


# what each certificate looks like: category by mod(i, 20)
CATEGORY = """CASE WHEN mod(i, 20) < 10 THEN 'settled'
                   WHEN mod(i, 20) IN (10, 11) THEN 'prepublish_window'
                   WHEN mod(i, 20) = 12 THEN 'issued_successor'
                   WHEN mod(i, 20) = 13 THEN 'prepublished_successor'
                   WHEN mod(i, 20) = 14 THEN 'nothing'
                   WHEN mod(i, 20) = 15 THEN 'leftovers'
                   WHEN mod(i, 20) IN (16, 17) THEN 'local_due'
                   WHEN mod(i, 20) = 18 THEN 'local_settled'
                   ELSE 'disabled' END"""

# (category, rank, state, not_before, not_after, tlsa_published) relative to NOW, in days
INSTANCE_SPECS = """(VALUES
    ('settled',                1, 'deployed',     -20,   70,   -20),
    ('prepublish_window',      1, 'deployed',     -65,   25,   -65),
    ('issued_successor',       1, 'deployed',     -65,   25,   -65),
    ('issued_successor',       2, 'issued',        -2,   88,  NULL),
    ('prepublished_successor', 1, 'deployed',     -89.5,  0.5, -89.5),
    ('prepublished_successor', 2, 'prepublished',  -5,   85,    -3),
    ('leftovers',              1, 'archived',    -200, -110,  NULL),
    ('leftovers',              2, 'expired',     -110,  -20,  NULL),
    ('leftovers',              3, 'deployed',     -20,   70,   -20),
    ('local_due',              1, 'deployed',     -70,   20,  NULL),
    ('local_settled',          1, 'deployed',     -10,   80,  NULL),
    ('disabled',               1, 'deployed',     -20,   70,  NULL)
) AS s(category, rank, state, nb, na, published)"""


def load_fleet(conn: psycopg.Connection, n: int, cert_pem: bytes, key_pem: bytes) -> None:
    x = conn.execute
    x("SET search_path = pki, dd, public")
    for h in range(1, 6):
        x("SELECT add_disthost(%s)", (f"web{h}.bench.example",))
    x("SELECT add_place('nginx', 'separate', '/etc/ssl/{}')")
    # configuration: set-based, through the validation triggers (one transaction: a certificate
    # needs its subject name by commit)
    with conn.transaction():
        x(f"""INSERT INTO certificates (id, type, disabled, encryption_algo)
              SELECT i, CASE WHEN ({CATEGORY}) IN ('local_due', 'local_settled') THEN 'local' ELSE 'LE' END::dd.cert_type,
                     ({CATEGORY}) = 'disabled',
                     CASE WHEN mod(i, 7) = 0 THEN 'rsa_plus_ec' ELSE 'ec' END::dd.cert_encryption_algo
                FROM generate_series(1, %s) i""", (n,))
        x("SELECT setval('certificates_id_seq', %s)", (n,))
        x("""INSERT INTO subjects (type, name, isaltname, certificate)
             SELECT 'server'::dd.subject_type, 'c' || i || '.bench.example', false, i FROM generate_series(1, %s) i
             UNION ALL
             SELECT 'server', 'alt' || i || '.bench.example', true, i FROM generate_series(3, %s, 3) i""", (n, n))
        x("""INSERT INTO targets (disthost, place, certificate)
             SELECT (SELECT id FROM disthosts WHERE fqdn = 'web' || mod(i, 5) + 1 || '.bench.example'), p.id, i
               FROM generate_series(1, %s) i, places p
             UNION ALL
             SELECT (SELECT id FROM disthosts WHERE fqdn = 'web' || mod(i + 1, 5) + 1 || '.bench.example'), p.id, i
               FROM generate_series(4, %s, 4) i, places p""", (n, n))
        x(f"""INSERT INTO certificates_services (certificate, service)
              SELECT i, (SELECT id FROM services WHERE name = 'https' AND port = 443)
                FROM generate_series(1, %s) i
               WHERE ({CATEGORY}) NOT IN ('local_due', 'local_settled', 'disabled')
                 AND (mod(i, 2) = 0 OR ({CATEGORY}) IN ('issued_successor', 'prepublished_successor'))""", (n,))
    # instances and key pairs: triggers off for the bulk load only (see the module docstring)
    with conn.transaction():
        x("SET LOCAL session_replication_role = replica")
        x(f"""INSERT INTO certinstances (certificate, state, not_before, not_after, tlsa_published)
              SELECT i, s.state::dd.cert_state,
                     %(now)s + s.nb * interval '1 day', %(now)s + s.na * interval '1 day',
                     %(now)s + s.published * interval '1 day'
                FROM generate_series(1, %(n)s) i
                JOIN {INSTANCE_SPECS} ON s.category = ({CATEGORY})
               ORDER BY i, s.rank""", {"now": NOW, "n": n})
        x("""INSERT INTO certkeydata (certinstance, encryption_algo, cert, key, hash, not_before, not_after)
             SELECT ci.id, a.algo::dd.cert_encryption_algo, %(cert)s, %(key)s,
                    upper(encode(sha256(convert_to(ci.id || '/' || a.algo, 'UTF8')), 'hex')), ci.not_before, ci.not_after
               FROM certinstances ci
               JOIN certificates c ON c.id = ci.certificate
              CROSS JOIN LATERAL unnest(CASE c.encryption_algo WHEN 'rsa_plus_ec' THEN ARRAY['rsa', 'ec'] ELSE ARRAY['ec'] END) a(algo)
              WHERE ci.state <> 'reserved'""", {"cert": cert_pem, "key": key_pem})
    x("ANALYZE")


def allow_measuring(conn: psycopg.Connection, role: str) -> None:
    """The bench's own rights for the cron login it plans as: switch statement tracking, read and reset
    pg_stat_statements (measurement only; an operator's pki_cron has none of them)."""
    conn.execute(f"GRANT SET ON PARAMETER pg_stat_statements.track TO {role}")
    conn.execute(f"GRANT pg_read_all_stats TO {role}")
    for (function,) in conn.execute("SELECT p.oid::regprocedure::text FROM pg_proc p "
                                    "WHERE p.proname LIKE 'pg_stat_statements%%'").fetchall():
        conn.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {role}")


def timed(conn: psycopg.Connection, sql: str) -> float:
    """Wall time of one statement, uncounted (tracking every nested statement costs time of its own)."""
    conn.execute("SET pg_stat_statements.track = 'none'")
    started = time.perf_counter()
    conn.execute(sql).fetchall()
    seconds = time.perf_counter() - started
    conn.execute("SET pg_stat_statements.track = 'all'")
    return seconds


def counted(conn: psycopg.Connection, sql: str, rollback: bool) -> tuple[int, int, list[tuple[int, str, float]]]:
    """Summed calls, distinct statements, and each statement with its calls and milliseconds (track = all).
    With rollback the statement runs in a transaction that is rolled back (the counts stay: they are not transactional)."""
    conn.execute("SELECT pg_stat_statements_reset()")
    if rollback:
        conn.execute("BEGIN")
    conn.execute(sql).fetchall()
    if rollback:
        conn.execute("ROLLBACK")
    stats = conn.execute("""
        SELECT calls, regexp_replace(query, '\\s+', ' ', 'g'), total_exec_time
          FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND query NOT ILIKE '%%pg_stat_statements%%'
         ORDER BY calls DESC, query""").fetchall()
    return sum(s[0] for s in stats), len(stats), stats


def explain_plan_rows(conn: psycopg.Connection) -> list[str]:
    """EXPLAIN ANALYZE of the slow statements inside plan() (auto_explain, nested statements, sent as NOTICE)."""
    lines: list[str] = []
    conn.add_notice_handler(lambda d: lines.append(d.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    # statements of 5 ms or more: the per-row calls of small functions would drown the rest
    for setting, value in (("log_min_duration", "5"), ("log_nested_statements", "on"), ("log_analyze", "on"),
                           ("log_buffers", "on"), ("log_timing", "on"), ("log_level", "notice")):
        conn.execute(f"SET auto_explain.{setting} = {value}")
    conn.execute("SELECT * FROM plan()").fetchall()
    conn.execute("SET auto_explain.log_min_duration = -1")
    return lines


def new_database(cluster: PostgresCluster, db: str) -> psycopg.Connection:
    """A database (dropped first if it exists) with the schema, the login roles and time travel on (the
    benches work at a fixed pki.now); returns the owner's connection to it, autocommit."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {db}")
        admin.execute(f"CREATE DATABASE {db}")
    conn = psycopg.connect(cluster.dsn(db), autocommit=True)
    migrate.upgrade(conn, log=lambda _line: None)
    roles.create_login_roles(conn)
    roles.enable_time_travel(conn)
    return conn


def run(cluster: PostgresCluster, n: int, pair: tuple[bytes, bytes], explain: bool) -> dict:
    db = f"bench_{n}"
    with new_database(cluster, db) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        allow_measuring(conn, roles.CRON)
        started = time.perf_counter()
        load_fleet(conn, n, *pair)
        load_seconds = time.perf_counter() - started
    with psycopg.connect(cluster.dsn(db, roles.CRON), autocommit=True) as conn:   # as the cron run plans
        conn.execute("SET search_path = pki, dd, public")
        conn.execute("SELECT set_config('pki.now', %s, false)", (NOW.isoformat(),))
        plan_rows = conn.execute("SELECT action, count(*) FROM plan() GROUP BY 1 ORDER BY 1").fetchall()
        # the warm-up above filled the caches; time the median of three, then count once
        plan_s = statistics.median(timed(conn, "SELECT * FROM plan()") for _ in range(3))
        plan_calls, plan_distinct, plan_stats = counted(conn, "SELECT * FROM plan()", rollback=False)
        # schedule writes: count it in a transaction that is rolled back, then time the pass that stays
        sched_calls, sched_distinct, sched_stats = counted(conn, "SELECT * FROM schedule()", rollback=True)
        sched_s = timed(conn, "SELECT * FROM schedule()")
        jobs = conn.execute("SELECT kind, count(*) FROM jobs GROUP BY 1 ORDER BY 1").fetchall()
        # profile plan when asked, or when it misses the target
        explained = explain_plan_rows(conn) if explain or plan_s > PLAN_TARGET_SECONDS else []
    return {"n": n, "load_s": load_seconds, "plan_s": plan_s, "plan_calls": plan_calls, "plan_distinct": plan_distinct,
            "plan_stats": plan_stats, "sched_s": sched_s, "sched_calls": sched_calls, "sched_distinct": sched_distinct,
            "sched_stats": sched_stats, "plan_rows": plan_rows, "jobs": jobs, "explain": explained}


def per_row(results: list[dict], key: str) -> list[tuple[str, list[int]]]:
    """Statements whose calls differ between the runs: they run once per row, not once per pass."""
    by_query: dict[str, dict[int, int]] = {}
    for r in results:
        for calls, query, _ms in r[key]:
            by_query.setdefault(query, {})[r["n"]] = calls
    ns = [r["n"] for r in results]
    growing = [(q, [c.get(n, 0) for n in ns]) for q, c in by_query.items() if len({c.get(n, 0) for n in ns}) > 1]
    return sorted(growing, key=lambda g: -g[1][-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 10000])
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of plan()'s statements for the largest N")
    args = parser.parse_args()

    base = temp_dir("serverpki-bench-", 0o755)  # removed also when SIGTERM ends the run (lab.process)
    cluster = PostgresCluster(base / "cluster", extra_options=(
        "-c shared_preload_libraries=pg_stat_statements,auto_explain -c pg_stat_statements.track=all "
        "-c pg_stat_statements.track_utility=on -c shared_buffers=256MB -c work_mem=16MB"))
    pair = pem_pair()
    results = []
    try:
        cluster.start()
        for n in args.sizes:
            slowest = n == max(args.sizes)
            results.append(run(cluster, n, pair, explain=args.explain and slowest))
            r = results[-1]
            print(f"N={n}: loaded in {r['load_s']:.1f}s; plan actions {dict(r['plan_rows'])}; "
                  f"jobs after schedule {dict(r['jobs'])}", flush=True)
    finally:
        cluster.destroy()
        remove_dir(base)

    print()
    print(f"{'N':>7} | {'plan s':>8} | {'plan stmts':>10} | {'schedule s':>10} | {'schedule stmts':>14}")
    print(f"{'-' * 7}-+-{'-' * 8}-+-{'-' * 10}-+-{'-' * 10}-+-{'-' * 14}")
    for r in results:
        print(f"{r['n']:>7} | {r['plan_s']:>8.3f} | {r['plan_calls']:>10} | {r['sched_s']:>10.3f} | {r['sched_calls']:>14}")
    print("(seconds: wall time with pg_stat_statements.track = none, plan the median of 3 warm runs, schedule one pass;\n"
          " stmts: pg_stat_statements calls summed over a separate run with track = all, i.e. nested statements in\n"
          " functions and triggers included; schedule's counted run was rolled back)")
    for r in results:
        print(f"N={r['n']}: distinct statements: plan {r['plan_distinct']}, schedule {r['sched_distinct']}")

    if len(results) > 1:
        for key, what in (("plan_stats", "plan()"), ("sched_stats", "schedule()")):
            growing = per_row(results, key)
            ns = " / ".join(f"N={r['n']}" for r in results)
            fixed = sum(s[0] for s in results[-1][key]) - sum(c[-1] for _, c in growing)
            print(f"\n{what}: statements whose count depends on N ({ns}); all others ran a fixed {fixed} times in total")
            if not growing:
                print("  none: the statement count does not grow with N")
            for query, calls in growing[:25]:
                print(f"  {' / '.join(str(c) for c in calls):>20}  {query[:150]}")
    big = results[-1]
    print(f"\nschedule() at N={big['n']}: where the time goes (pg_stat_statements total_exec_time of the counted run; "
          "a statement's time includes the statements nested in it)")
    for calls, query, ms in sorted(big["sched_stats"], key=lambda s: -s[2])[:12]:
        print(f"  {ms:9.1f} ms {calls:>7} calls  {query[:120]}")
    for r in results:
        slow = r["plan_s"] > PLAN_TARGET_SECONDS
        print(f"\nN={r['n']}: plan {r['plan_s']:.3f}s — {'ABOVE' if slow else 'within'} the target of {PLAN_TARGET_SECONDS:.0f}s")
        if r["explain"]:
            print("EXPLAIN ANALYZE of the statements plan() ran:")
            for line in r["explain"]:
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
