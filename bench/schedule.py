"""How plan() and schedule() scale with the number of certificates.

Run:  .venv/bin/python bench/schedule.py [N ...]        (default: 10000 100000, every fleet shape)
      .venv/bin/python bench/schedule.py --shape issue18 --explain 10000  (one shape; the plans of plan()'s statements)
      .venv/bin/python bench/schedule.py --count 1000 10000  (also the statements each pass runs)

For each N this starts nothing new but a database in one private cluster
(lab.postgres.PostgresCluster, with pg_stat_statements preloaded and
track = all, so statements run inside functions and triggers are counted too),
installs the schema with serverpki.migrate.upgrade, bulk-loads a fleet of N
certificates with set-based SQL, travels to a fixed pki.now, and measures
    - the wall time of SELECT * FROM plan() and of SELECT * FROM schedule()
    - with --count, how many SQL statements each executed server-side: the calls of
      pg_stat_statements summed (reset before each measurement).
The scheduler is set-based, so its own statements are a fixed number whatever
N is; what may grow with N are statements that run once per row (row triggers,
per-row function calls). Those are listed separately, so a growth is visible
and attributable.

Fleet shapes (--shape; SHAPES below): the first fleet of this bench ('original', by mod(i, 20): half
settled; LE certificates in the prepublish window without successor, with an issued successor, near expiry
with a prepublished successor, with nothing; ones with expired/archived leftovers; local ones due for a
reminder; disabled ones), the fleet of issue 18 (10 disthosts, half the certificates with targets, a
quarter with TLSA services, a fifth with an issued successor, some expired in service), one in the middle
of a rollover, and mixes drawn at random with a fixed seed. For each shape the summary prints the growth
of plan() and schedule() from the smallest to the largest N: linear is N's ratio.

Bulk load and triggers: everything is loaded with SET session_replication_role = replica, i.e. with
triggers (and foreign-key checks) off, during the bulk load only: the configuration tables' validation
triggers check one row at a time (100,000 subjects took minutes), the state machine's guard admits new
instances only as 'reserved' (the real path is reserve -> issue job -> issued -> deployed), and the
certkeydata trigger parses every certificate with plpython. The rows are consistent by construction
instead: one main subject per certificate, instance dates equal their key pairs' dates, ids reference
existing rows. The role is reset before measuring, and the tables are analyzed (--no-analyze: not, as
right after an operator's bulk import, before autovacuum's first ANALYZE).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple, Optional

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


# The fleet shapes. A shape gives each category a weight, the share of certificates with a target (and of
# those with a second one), the share with a TLSA service and the number of disthosts; 'original' is the
# first fleet of this bench (by mod(i, 20), every certificate with a target), the others draw each
# certificate's category, targets, service and disthost at random, seeded, so a run repeats exactly.
CATEGORIES = ("settled", "prepublish_window", "issued_successor", "prepublished_successor", "nothing",
              "leftovers", "local_due", "local_settled", "disabled", "expired_in_service", "useless_successor")
LOCAL = ("local_due", "local_settled")
DANE = ("issued_successor", "prepublished_successor")   # 'original' gives these a TLSA service always


class Shape(NamedTuple):   # one fleet shape (bench/metrics.py and bench/listing.py use them too)
    name: str
    weights: dict[str, float]
    targets: float = 1.0          # share of certificates with a target
    second_target: float = 0.25   # share of those with a second one, on another disthost
    tlsa: float = 0.5             # share of (LE, enabled) certificates with a TLSA service
    hosts: int = 5
    seed: Optional[int] = None    # None: 'original', by mod(i, 20); else drawn at random with this seed

    def describe(self) -> str:
        total = sum(self.weights.values())
        mix = ", ".join(f"{k} {v / total:.0%}" for k, v in self.weights.items() if v)
        return (f"{self.name}: {self.hosts} disthosts, targets {self.targets:.0%} (second {self.second_target:.0%}), "
                f"TLSA {self.tlsa:.0%}; {mix}")


def random_shape(seed: int) -> Shape:
    """A mix drawn with this seed: every category from nothing to a large share."""
    rnd = random.Random(seed)
    weights = {c: round(rnd.choice((0, 0, 1, 2, 5, 10, 20)) * rnd.random(), 2) for c in CATEGORIES}
    weights["settled"] = max(weights["settled"], 1.0)
    return Shape(f"random{seed}", weights, targets=round(rnd.uniform(0.2, 1.0), 2),
                 second_target=round(rnd.uniform(0, 0.6), 2), tlsa=round(rnd.uniform(0, 1), 2),
                 hosts=rnd.choice((1, 3, 10, 30)), seed=seed)


SHAPES = {s.name: s for s in (
    Shape("original", {"settled": 10, "prepublish_window": 2, "issued_successor": 1, "prepublished_successor": 1,
                       "nothing": 1, "leftovers": 1, "local_due": 2, "local_settled": 1, "disabled": 1}),
    # issue 18: 10 disthosts, half the certificates with targets, a quarter with TLSA services, a fifth with
    # an issued successor, some expired in service
    Shape("issue18", {"settled": 45, "issued_successor": 20, "expired_in_service": 5, "prepublish_window": 8,
                      "useless_successor": 2, "leftovers": 5, "nothing": 3, "local_due": 5, "local_settled": 5,
                      "disabled": 2},
          targets=0.5, second_target=0.1, tlsa=0.25, hosts=10, seed=18),
    # most certificates in a rollover: successors of every kind, all with TLSA services
    Shape("rollover", {"settled": 10, "issued_successor": 35, "prepublished_successor": 25, "useless_successor": 10,
                       "prepublish_window": 10, "expired_in_service": 10},
          targets=1.0, second_target=0.5, tlsa=1.0, hosts=3, seed=7),
    random_shape(1), random_shape(2), random_shape(3),
)}

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
    ('disabled',               1, 'deployed',     -20,   70,  NULL),
    ('expired_in_service',     1, 'deployed',     -95,   -5,   -95),
    ('useless_successor',      1, 'deployed',     -80,   10,   -80),
    ('useless_successor',      2, 'issued',       -79,   11,  NULL)
) AS s(category, rank, state, nb, na, published)"""


def fleet_table(conn: psycopg.Connection, n: int, shape: Shape) -> None:
    """bench_fleet(i, category, targets, tlsa, host): what each of the n certificates looks like."""
    total = sum(shape.weights.values())
    bounds, acc = [], 0.0
    for category in CATEGORIES:
        if shape.weights.get(category):
            acc += shape.weights[category] / total
            bounds.append(f"WHEN u_cat < {acc!r} THEN '{category}'")
    pick = "CASE " + " ".join(bounds[:-1]) + f" ELSE '{bounds[-1].split(chr(39))[1]}' END"
    if shape.seed is None:   # 'original': by i, as this bench always loaded it
        draws = ("(mod(i, 20) + 0.5) / 20 AS u_cat, 0.0 AS u_tgt, CASE WHEN mod(i, 4) = 0 THEN 0.0 ELSE 1.0 END AS u_tgt2, "
                 f"mod(i, 2)::float AS u_tlsa, mod(i, {shape.hosts}) AS u_host")
    else:
        conn.execute("SELECT setseed(%s)", (shape.seed / 1000,))
        draws = f"random() AS u_cat, random() AS u_tgt, random() AS u_tgt2, random() AS u_tlsa, floor(random() * {shape.hosts})::int AS u_host"
    conn.execute("DROP TABLE IF EXISTS bench_fleet")
    conn.execute(f"""CREATE UNLOGGED TABLE bench_fleet AS
        SELECT i, category,
               CASE WHEN u_tgt >= {shape.targets} THEN 0 WHEN u_tgt2 < {shape.second_target} AND {shape.hosts} > 1 THEN 2 ELSE 1 END AS targets,
               category NOT IN ('local_due', 'local_settled', 'disabled')
                 AND (u_tlsa < {shape.tlsa} OR ({shape.seed is None} AND category IN ('issued_successor', 'prepublished_successor'))) AS tlsa,
               u_host AS host
          FROM (SELECT i, {pick} AS category, u_tgt, u_tgt2, u_tlsa, u_host
                  FROM (SELECT i, {draws} FROM generate_series(1, {n}) i) d) f""")
    conn.execute("ALTER TABLE bench_fleet ADD PRIMARY KEY (i)")


def load_fleet(conn: psycopg.Connection, n: int, cert_pem: bytes, key_pem: bytes, shape: Optional[Shape] = None,
               analyze: bool = True) -> None:
    """n certificates of this shape (default: 'original') with their instances, key pairs, targets and services."""
    shape = shape or SHAPES["original"]
    x = conn.execute
    x("SET search_path = pki, dd, public")
    fleet_table(conn, n, shape)
    for h in range(1, shape.hosts + 1):
        x("SELECT add_disthost(%s)", (f"web{h}.bench.example",))
    x("SELECT add_place('nginx', 'separate', '/etc/ssl/{}')")
    # configuration: set-based, with triggers off (see the module docstring)
    with conn.transaction():
        x("SET LOCAL session_replication_role = replica")
        x("""INSERT INTO certificates (id, type, disabled, encryption_algo)
             SELECT i, CASE WHEN category IN ('local_due', 'local_settled') THEN 'local' ELSE 'LE' END::dd.cert_type,
                    category = 'disabled',
                    CASE WHEN mod(i, 7) = 0 THEN 'rsa_plus_ec' ELSE 'ec' END::dd.cert_encryption_algo
               FROM bench_fleet ORDER BY i""")
        x("SELECT setval('certificates_id_seq', %s)", (n,))
        x("""INSERT INTO subjects (type, name, isaltname, certificate)
             SELECT 'server'::dd.subject_type, 'c' || i || '.bench.example', false, i FROM generate_series(1, %s) i
             UNION ALL
             SELECT 'server', 'alt' || i || '.bench.example', true, i FROM generate_series(3, %s, 3) i""", (n, n))
        x("""INSERT INTO targets (disthost, place, certificate)
             SELECT h.id, p.id, f.i
               FROM bench_fleet f CROSS JOIN places p
               CROSS JOIN LATERAL generate_series(0, f.targets - 1) k
               JOIN disthosts h ON h.fqdn = 'web' || mod(f.host + k, %s) + 1 || '.bench.example'""", (shape.hosts,))
        x("""INSERT INTO certificates_services (certificate, service)
             SELECT i, (SELECT id FROM services WHERE name = 'https' AND port = 443) FROM bench_fleet WHERE tlsa""")
    # instances and key pairs: triggers off for the bulk load only (see the module docstring)
    with conn.transaction():
        x("SET LOCAL session_replication_role = replica")
        x(f"""INSERT INTO certinstances (certificate, state, not_before, not_after, tlsa_published)
              SELECT f.i, s.state::dd.cert_state,
                     %(now)s + s.nb * interval '1 day', %(now)s + s.na * interval '1 day',
                     %(now)s + s.published * interval '1 day'
                FROM bench_fleet f
                JOIN {INSTANCE_SPECS} ON s.category = f.category
               ORDER BY f.i, s.rank""", {"now": NOW})
        x("""INSERT INTO certkeydata (certinstance, encryption_algo, cert, key, hash, not_before, not_after)
             SELECT ci.id, a.algo::dd.cert_encryption_algo, %(cert)s, %(key)s,
                    upper(encode(sha256(convert_to(ci.id || '/' || a.algo, 'UTF8')), 'hex')), ci.not_before, ci.not_after
               FROM certinstances ci
               JOIN certificates c ON c.id = ci.certificate
              CROSS JOIN LATERAL unnest(CASE c.encryption_algo WHEN 'rsa_plus_ec' THEN ARRAY['rsa', 'ec'] ELSE ARRAY['ec'] END) a(algo)
              WHERE ci.state <> 'reserved'""", {"cert": cert_pem, "key": key_pem})
    x("DROP TABLE bench_fleet")
    if analyze:
        x("VACUUM ANALYZE")


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


def one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def run(cluster: PostgresCluster, shape: Shape, n: int, pair: tuple[bytes, bytes], explain: bool, count: bool,
        analyze: bool) -> dict:
    db = f"bench_{shape.name}_{n}"
    with new_database(cluster, db) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        allow_measuring(conn, roles.CRON)
        started = time.perf_counter()
        load_fleet(conn, n, *pair, shape=shape, analyze=analyze)
        load_seconds = time.perf_counter() - started
    r = {"shape": shape.name, "n": n, "load_s": load_seconds, "plan_calls": 0, "plan_distinct": 0, "plan_stats": [],
         "sched_calls": 0, "sched_distinct": 0, "sched_stats": []}
    with psycopg.connect(cluster.dsn(db, roles.CRON), autocommit=True) as conn:   # as the cron run plans
        conn.execute("SET search_path = pki, dd, public")
        conn.execute("SELECT set_config('pki.now', %s, false)", (NOW.isoformat(),))
        r["plan_rows"] = conn.execute("SELECT action, count(*) FROM plan() GROUP BY 1 ORDER BY 1").fetchall()
        # the warm-up above filled the caches; the best of three (the least disturbed by other load on the machine)
        r["plan_s"] = min(timed(conn, "SELECT * FROM plan()") for _ in range(3))
        if count:
            r["plan_calls"], r["plan_distinct"], r["plan_stats"] = counted(conn, "SELECT * FROM plan()", rollback=False)
            # schedule writes: count it in a transaction that is rolled back, then time the pass that stays
            r["sched_calls"], r["sched_distinct"], r["sched_stats"] = counted(conn, "SELECT * FROM schedule()", rollback=True)
        try:
            r["sched_s"] = timed(conn, "SELECT * FROM schedule()")
        except psycopg.Error as e:   # a pass that fails at this size is a finding: say it, go on with the next
            r["sched_s"], r["sched_error"] = float("nan"), one_line(str(e))
            conn.execute("SET pg_stat_statements.track = 'all'")
        r["jobs"] = conn.execute("SELECT kind, count(*) FROM jobs GROUP BY 1 ORDER BY 1").fetchall()
        # the next pass plans with the jobs of this one pending (the 'wait' rows)
        r["replan_s"] = min(timed(conn, "SELECT * FROM plan()") for _ in range(3)) if "sched_error" not in r else float("nan")
    # profile plan when asked, or when it misses the target: as the owner (auto_explain's settings are a superuser's)
    r["explain"] = []
    if explain or r["plan_s"] > PLAN_TARGET_SECONDS:
        with psycopg.connect(cluster.dsn(db), autocommit=True) as conn:
            conn.execute("SET search_path = pki, dd, public")
            conn.execute("SELECT set_config('pki.now', %s, false)", (NOW.isoformat(),))
            r["explain"] = explain_plan_rows(conn)
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {db}")
    return r


def per_row(results: list[dict], key: str) -> list[tuple[str, list[int]]]:
    """Statements whose calls differ between the runs: they run once per row, not once per pass."""
    by_query: dict[str, dict[int, int]] = {}
    for r in results:
        for calls, query, _ms in r[key]:
            by_query.setdefault(query, {})[r["n"]] = calls
    ns = [r["n"] for r in results]
    growing = [(q, [c.get(n, 0) for n in ns]) for q, c in by_query.items() if len({c.get(n, 0) for n in ns}) > 1]
    return sorted(growing, key=lambda g: -g[1][-1])


def print_counts(results: list[dict]) -> None:
    """--count: the statements each pass executed server-side, and those whose number grows with N."""
    print(f"{'N':>7} | {'plan stmts':>10} | {'schedule stmts':>14}")
    for r in results:
        print(f"{r['n']:>7} | {r['plan_calls']:>10} | {r['sched_calls']:>14}   "
              f"(distinct: plan {r['plan_distinct']}, schedule {r['sched_distinct']})")
    print("(pg_stat_statements calls summed over a separate run with track = all, i.e. nested statements in\n"
          " functions and triggers included; schedule's counted run was rolled back)")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[10000, 100000])
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES),
                        help="a fleet shape (repeatable; default: all of them)")
    parser.add_argument("--count", action="store_true", help="also count the statements each pass runs (pg_stat_statements)")
    parser.add_argument("--no-analyze", action="store_true",
                        help="measure on tables without statistics (as right after a bulk import)")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of plan()'s statements for the largest N")
    args = parser.parse_args()
    shapes = [SHAPES[s] for s in args.shape] if args.shape else list(SHAPES.values())
    sizes = sorted(args.sizes)

    base = temp_dir("serverpki-bench-", 0o755)  # removed also when SIGTERM ends the run (lab.process)
    cluster = PostgresCluster(base / "cluster", extra_options=(
        "-c shared_preload_libraries=pg_stat_statements,auto_explain -c pg_stat_statements.track=all "
        "-c pg_stat_statements.track_utility=on -c shared_buffers=256MB -c work_mem=16MB"))
    pair = pem_pair()
    results: dict[str, list[dict]] = {}
    try:
        cluster.start()
        for shape in shapes:
            print(shape.describe(), flush=True)
            for n in sizes:
                r = run(cluster, shape, n, pair, explain=args.explain and n == sizes[-1], count=args.count,
                        analyze=not args.no_analyze)
                results.setdefault(shape.name, []).append(r)
                print(f"  N={n}: loaded in {r['load_s']:.1f}s; plan {r['plan_s']:.3f}s, schedule {r['sched_s']:.3f}s, "
                      f"plan with its jobs pending {r['replan_s']:.3f}s; plan actions {dict(r['plan_rows'])}; "
                      f"jobs after schedule {dict(r['jobs'])}", flush=True)
    finally:
        cluster.destroy()
        remove_dir(base)

    lo, hi = sizes[0], sizes[-1]
    print(f"\nplan() and schedule() in seconds (plan: best of 3 warm runs; schedule: one pass; then plan again with that "
          f"pass's jobs pending); growth from N={lo} to N={hi} (linear: {hi / lo:.0f}x)")
    header = (f"{'shape':>10} | " + " | ".join(f"{'plan ' + str(n):>12}" for n in sizes) + f" | {'growth':>7} | "
              + " | ".join(f"{'sched ' + str(n):>12}" for n in sizes) + f" | {'growth':>7} | {'replan ' + str(hi):>13}")
    print(header)
    print("-" * len(header))
    ok = True
    for name, rs in results.items():
        plan_growth, sched_growth = rs[-1]["plan_s"] / rs[0]["plan_s"], rs[-1]["sched_s"] / rs[0]["sched_s"]
        print(f"{name:>10} | " + " | ".join(f"{r['plan_s']:>12.3f}" for r in rs) + f" | {plan_growth:>6.1f}x | "
              + " | ".join(f"{r['sched_s']:>12.3f}" for r in rs) + f" | {sched_growth:>6.1f}x | {rs[-1]['replan_s']:>13.3f}")
        ok = ok and rs[-1]["plan_s"] < PLAN_TARGET_SECONDS
    for name, rs in results.items():
        for r in rs:
            if "sched_error" in r:
                print(f"{name} N={r['n']}: schedule() FAILED: {r['sched_error']}")
    print(f"target: growth near {hi / lo:.0f}x (linear), plan at N={hi} under {PLAN_TARGET_SECONDS:.0f}s: "
          f"{'met' if ok else 'MISSED'} for {'every shape' if ok else 'some shape'}")
    for name, rs in results.items():
        if args.count:
            print(f"\n== {name}: statements")
            print_counts(rs)
        for r in rs:
            if r["explain"]:
                print(f"\n== {name} N={r['n']}: plan {r['plan_s']:.3f}s; EXPLAIN ANALYZE of the statements plan() ran:")
                for line in r["explain"]:
                    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
