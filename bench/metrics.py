"""How pki.metrics() scales with the number of certificates: it must stay linear.

Run:  .venv/bin/python bench/metrics.py [N ...]          (default: 1000 4000 10000)
      .venv/bin/python bench/metrics.py --explain 10000    (also EXPLAIN ANALYZE its query at the largest N)

For each N: a database in one private cluster (lab.postgres.PostgresCluster), the schema installed
with serverpki.migrate.upgrade, bench/schedule.py's fleet of N certificates bulk-loaded (every state
the scheduler knows: settled, in the prepublish window, with successors, expired leftovers, local,
disabled), a heartbeat, a scheduler run and a dead job recorded; then, as the monitoring login
(pki_reader, what `serverpki metrics` runs as) at a fixed pki.now:
    - the wall time of SELECT pki.metrics(), the median of 7 warm calls, and per certificate
    - the part of it that is the view pki.alerts (SELECT count(*) FROM pki.alerts), whose count it shows
    - the size of the text.
Two shapes: settled (the fleet alone) and troubled (every renewal also failed: N job alerts).
The growth ratio compares the time per certificate with the smallest N's: about 1 is linear; a
subquery run once per certificate (or a sort) shows as a ratio growing with N.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import psycopg

import schedule as fleet  # noqa: E402  bench/schedule.py: its fleet, its clock; it puts agent/ and the checkout on the path

from lab import roles  # noqa: E402
from lab.postgres import PostgresCluster  # noqa: E402
from lab.process import remove_dir, temp_dir  # noqa: E402

CALLS = 7


def timed(conn: psycopg.Connection, sql: str) -> float:
    """The median wall time of CALLS runs of sql, after one warm-up run."""
    conn.execute(sql).fetchall()
    times = []
    for _ in range(CALLS):
        started = time.perf_counter()
        conn.execute(sql).fetchall()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def signs_of_life(conn: psycopg.Connection) -> None:
    """What a running installation has beside its certificates: a heartbeat, a scheduler run, a dead job."""
    conn.execute("SELECT set_config('pki.now', %s, false)", (fleet.NOW.isoformat(),))
    conn.execute("SELECT * FROM pki.claim_jobs('bench-agent', ARRAY['none'])").fetchall()
    conn.execute("SELECT pki.record_run('bench-cron', ARRAY['-S'], pki.now(), true)")
    job = conn.execute("SELECT pki.enqueue('register_acme', 'acme:bench', 'bench')").fetchone()[0]
    conn.execute("UPDATE pki.jobs SET state = 'dead', attempts = 3, last_error = 'refused' WHERE id = %s", (job,))


def trouble(conn: psycopg.Connection) -> None:
    """The troubled shape: every certificate's renewal failed for good three times (dead issue jobs, each
    with its outcome event) and fails again now: an alert per certificate, found through the job history."""
    conn.execute("""
        INSERT INTO pki.jobs (kind, subject_key, reason, state, attempts, max_attempts, run_after, last_error,
                              certificate, finished)
        SELECT 'issue_acme', 'cert:' || c.id, 'bench', CASE WHEN k < 4 THEN 'dead' ELSE 'failed' END::dd.job_state,
               CASE WHEN k < 4 THEN 8 ELSE 5 END, 8, pki.now() - (5 - k) * interval '1 hour', 'the CA refused the order',
               c.id, CASE WHEN k < 4 THEN pki.now() - (5 - k) * interval '1 hour' END
          FROM pki.certificates c CROSS JOIN generate_series(1, 4) k""")
    conn.execute("""
        INSERT INTO pki.events (at, certificate, job, job_state, reason)
        SELECT j.run_after, j.certificate, j.id, j.state, 'bench' FROM pki.jobs j WHERE j.reason = 'bench'""")


SHAPES = {"settled": lambda conn: None, "troubled": trouble}


def explain(conn: psycopg.Connection) -> list[str]:
    """EXPLAIN ANALYZE of pki.metrics()'s query, run as the owner with the function's settings."""
    body = conn.execute("SELECT prosrc FROM pg_proc WHERE oid = 'pki.metrics()'::regprocedure").fetchone()[0]
    with conn.transaction():
        conn.execute("SET LOCAL search_path = pki, dd, pg_temp")
        conn.execute("SET LOCAL extra_float_digits = 1")
        return [r[0] for r in conn.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + body).fetchall()]


def run(cluster: PostgresCluster, shape: str, n: int, pair: tuple[bytes, bytes], want_plan: bool) -> dict:
    db = f"bench_metrics_{shape}_{n}"
    with fleet.new_database(cluster, db) as conn:
        started = time.perf_counter()
        fleet.load_fleet(conn, n, *pair)
        load_seconds = time.perf_counter() - started
        signs_of_life(conn)
        SHAPES[shape](conn)
        conn.execute("ANALYZE")
        plan = explain(conn) if want_plan else []
    with psycopg.connect(cluster.dsn(db, roles.READER), autocommit=True) as conn:   # as serverpki metrics runs
        conn.execute("SELECT set_config('pki.now', %s, false)", (fleet.NOW.isoformat(),))
        text = conn.execute("SELECT pki.metrics()").fetchone()[0]
        alerts = conn.execute("SELECT count(*) FROM pki.alerts").fetchone()[0]
        return {"shape": shape, "n": n, "load_s": load_seconds, "metrics_s": timed(conn, "SELECT pki.metrics()"),
                "alerts_s": timed(conn, "SELECT count(*) FROM pki.alerts"), "alerts": alerts, "bytes": len(text.encode()),
                "lines": text.count("\n"), "plan": plan}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 4000, 10000])
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of pki.metrics()'s query at the largest N")
    args = parser.parse_args()

    base = temp_dir("serverpki-bench-", 0o755)  # removed also when SIGTERM ends the run (lab.process)
    cluster = PostgresCluster(base / "cluster", extra_options="-c shared_buffers=256MB -c work_mem=16MB")
    pair = fleet.pem_pair()
    results = []
    try:
        cluster.start()
        for shape in SHAPES:
            for n in sorted(args.sizes):
                results.append(run(cluster, shape, n, pair, want_plan=args.explain and n == max(args.sizes)))
                print(f"{shape} N={n}: loaded in {results[-1]['load_s']:.1f}s", flush=True)
    finally:
        cluster.destroy()
        remove_dir(base)

    print()
    print(f"{'shape':>8} | {'N':>7} | {'metrics s':>9} | {'µs/cert':>8} | {'growth':>6} | {'alerts s':>8} | {'alerts':>6} | {'lines':>7} | {'MB':>5}")
    print(f"{'-' * 8}-+-{'-' * 7}-+-{'-' * 9}-+-{'-' * 8}-+-{'-' * 6}-+-{'-' * 8}-+-{'-' * 6}-+-{'-' * 7}-+-{'-' * 5}")
    for r in results:
        first = next(f for f in results if f["shape"] == r["shape"])
        per_cert = r["metrics_s"] / r["n"]
        growth = per_cert / (first["metrics_s"] / first["n"])
        print(f"{r['shape']:>8} | {r['n']:>7} | {r['metrics_s']:>9.3f} | {per_cert * 1e6:>8.1f} | {growth:>6.2f} | {r['alerts_s']:>8.3f} | "
              f"{r['alerts']:>6} | {r['lines']:>7} | {r['bytes'] / 1e6:>5.2f}")
    print(f"(wall time of one call as pki_reader, the median of {CALLS} warm calls; growth: the time per certificate\n"
          f" against the shape's smallest N, about 1.0 when linear; alerts s: the view pki.alerts alone, part of\n"
          f" metrics s; alerts: its rows. settled: the fleet as bench/schedule.py loads it; troubled: besides, every\n"
          f" certificate's renewal died three times and fails again: one alert each, found through the job history)")
    for shape in SHAPES:
        ran = [r for r in results if r["shape"] == shape]
        if len(ran) > 1:
            print(f"{shape}: N x{ran[-1]['n'] / ran[0]['n']:.0f} -> time x{ran[-1]['metrics_s'] / ran[0]['metrics_s']:.1f}")
    for r in results:
        if r["plan"]:
            print(f"\nEXPLAIN ANALYZE of pki.metrics()'s query at N={r['n']}:")
            print("\n".join(r["plan"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
