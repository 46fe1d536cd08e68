"""The database's cost of one issued local certificate: complete_issue alone, without the agent.

Run:  PYTHONPATH=<tree>/agent .venv/bin/python bench/complete_issue.py [COUNT [ALGO [CA_ALGO]]]
      (default 300 ec rsa). The schema comes from the serverpki package on PYTHONPATH, so
      two trees (e.g. before and after a change) can be compared with the same script.

Starts a private cluster, installs the schema, stores a local CA instance and COUNT local
server certificates, claims their issue jobs, makes every result beforehand (leaves signed
by the CA, as issue_local makes them), then times only the complete_issue calls: parsing and
checking the certificates, storing the pairs, the state machine and the events.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lab (lab/): in the checkout, never installed

import certfactory  # noqa: E402
import helpers  # noqa: E402
from serverpki import migrate  # noqa: E402
from lab import roles  # noqa: E402
from lab.postgres import PostgresCluster  # noqa: E402
from lab.process import remove_dir, temp_dir  # noqa: E402


def main(count: int, algo: str, ca_algo: str) -> None:
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if ca_algo == "rsa" \
        else ec.generate_private_key(ec.SECP384R1())
    certfactory._CAS[certfactory.LOCAL_CA_NAME] = certfactory._ca(certfactory.LOCAL_CA_NAME, ca_key)
    base = temp_dir("serverpki-bench-", 0o755)  # removed also when SIGTERM ends the run (lab.process)
    cluster = PostgresCluster(base / "pg")
    cluster.start()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE DATABASE bench")
        with psycopg.connect(cluster.dsn("bench"), autocommit=True) as conn:
            migrate.upgrade(conn, log=lambda _: None)
            with conn.transaction():
                for i in range(count):
                    conn.execute("SELECT add_cert(%s, 'server', 'local', %s, false, %s, NULL, NULL, NULL, NULL, NULL)",
                                 (f"host{i}.bench.test", algo, f"alt{i}.bench.test"))
            conn.execute("SELECT * FROM request_create(selection(), NULL)").fetchall()
            roles.create_login_roles(conn)
            # as deployed: the agent's role claims and completes (the owner only installs, and times
            # the internal checks below, which no role may call)
            conn.execute("ALTER DATABASE bench SET track_functions = 'pl'")   # server-side time per function, below
            agent = psycopg.connect(cluster.dsn("bench", roles.WORKER), autocommit=True)
            jobs = agent.execute("SELECT id, kind, certificate, lease_token FROM claim_jobs('bench', ARRAY['issue_local'], %s)",
                                 (count,)).fetchall()
            assert len(jobs) == count, len(jobs)
            now = dt.datetime.now(dt.timezone.utc)
            results = [(j, certfactory.issue_result(conn, kind, cert, now, 90)) for j, kind, cert, _token in jobs]
            tokens = {j: token for j, _kind, _cert, token in jobs}
            checks = None
            if conn.execute("SELECT to_regproc('pki.check_issued_result') IS NOT NULL").fetchone()[0]:
                # the checks alone, server-side in one statement (no round trips): the cost they add
                conn.execute("CREATE TEMP TABLE r (job bigint, result jsonb)")
                with conn.cursor().copy("COPY r FROM STDIN") as copy:
                    for job_id, result in results:
                        copy.write_row((job_id, Jsonb(result)))
                for _ in range(2):   # the first pass also compiles the function and imports modules
                    start = time.perf_counter()
                    conn.execute("SELECT count(check_issued_result(j, c, r.result)) FROM r JOIN jobs j ON j.id = r.job "
                                 "JOIN certificates c ON c.id = j.certificate").fetchone()
                    checks = (time.perf_counter() - start) / count * 1000
            conn.execute("SELECT pg_stat_reset()")
            times = []
            # the calls as the agent makes them (built before the clock runs: the agent knows its job's kind)
            calls = [helpers.completion_call(conn, job_id, tokens[job_id], result) for job_id, result in results]
            for statement, params in calls:
                start = time.perf_counter()
                agent.execute(statement, params)
                times.append(time.perf_counter() - start)
            agent.close()   # a session flushes its statistics when it ends
            time.sleep(0.5)
            per_function = conn.execute(
                "SELECT funcname, round((total_time / calls)::numeric, 3), calls FROM pg_stat_user_functions "
                "WHERE funcname IN ('complete_issue', 'check_issued_result', 'check_result_certs', "
                "'check_certkeydata') ORDER BY total_time DESC").fetchall()
            done = conn.execute("SELECT count(*) FROM jobs WHERE kind = 'issue_local' AND state = 'done'").fetchone()[0]
            assert done == count, done
    finally:
        cluster.destroy()
        remove_dir(base)
    ms = [t * 1000 for t in times]
    print(f"complete_issue of {count} local {algo} certificates (CA {ca_algo}): "
          f"mean {statistics.mean(ms):.2f} ms, median {statistics.median(ms):.2f} ms, "
          f"total {sum(ms) / 1000:.2f} s" + (f"; check_issued_result alone {checks:.2f} ms" if checks else ""))
    for name, per_call, calls in per_function:
        print(f"  {name}: {per_call} ms a call ({calls} calls)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300, sys.argv[2] if len(sys.argv) > 2 else "ec",
         sys.argv[3] if len(sys.argv) > 3 else "rsa")
