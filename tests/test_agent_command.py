"""`serverpki agent` as a real process: it works the queue until SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from helpers import small_cli_world
from lab import roles


def test_agent_process_works_jobs_and_stops_on_sigterm(pg_server, dbname, conn, tmp_path):
    config = small_cli_world(conn, tmp_path)
    # serverpki agent as deployed: the worker's login role (pki_agent only)
    env = {**os.environ, **pg_server.env(dbname, roles.WORKER), "SERVERPKI_CONFIG": str(config)}
    proc = subprocess.Popen([sys.executable, "-m", "serverpki.admin", "agent", "--kind", "issue_local_ca",
                             "--kind", "issue_local"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        conn.execute("SELECT request_local_ca('Local CA', 'rsa')")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and conn.execute(
                "SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0] < 1:
            time.sleep(0.2)
        conn.execute("SELECT * FROM request_create(selection(), NULL)")
        while time.monotonic() < deadline and conn.execute(
                "SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0] < 2:
            time.sleep(0.2)
        assert conn.execute("SELECT kind, state FROM jobs ORDER BY id").fetchall() == [
            ("issue_local_ca", "done"), ("issue_local", "done")]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
