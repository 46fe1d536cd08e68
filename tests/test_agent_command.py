"""`serverpki agent` as a real process: it works the queue until SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def test_agent_process_works_jobs_and_stops_on_sigterm(pg_server, dbname, conn, tmp_path):
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_place('p', 'separate', '/etc/ssl')")
    conn.execute("SELECT * FROM add_cert('c1', 'client', 'local', 'ec', false, NULL, NULL, NULL, 'web1.example.org', NULL, 'p')")
    passfile = tmp_path / "ca.pass"
    passfile.write_text("secret\n")
    passfile.chmod(0o600)
    config = tmp_path / "serverpki.toml"
    config.write_text(f'[local_ca]\npassphrase_file = "{passfile}"\nkey_size = 2048\n'
                      '[logging]\nsyslog_address = ""\n[agent]\npoll_seconds = 60\n')
    env = {**os.environ, **pg_server.env(dbname), "SERVERPKI_CONFIG": str(config)}
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
