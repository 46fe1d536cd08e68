"""As deployed: every action of operate_serverPKI runs on the lab as the cron run's login role
(pki_cron, a member of pki_admin and pki_agent, neither superuser nor owner) and works; as the
reporting role (pki_reader) each is refused in one line and changes nothing. `serverpki agent`
works as pki_worker (pki_agent only). The roles are the README's lines (lab.roles)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from fleet import Fleet
from lab import roles
from lab.lab import ZONE

LOCAL = f"intranet.{ZONE}"
ACME = f"www.{ZONE}"

# every option of the seed that acts, in an order that leaves something to act on for the next
ACTIONS = [
    ("-n",), ("-n", "-v", "-a"), ("-S", "-n", "-a"), ("-r", "30", "-n"),
    ("-C", "-o", LOCAL, "-o", "backup_op"), ("-D", "-o", LOCAL, "-o", "backup_op"), ("-S", "-a"), ("-K", "-a"),
    ("-R", "-o", ACME), ("-T", "-o", ACME), ("-X",), ("-Y",), ("-C", "-r", "3650"), ("-I",), ("-Z",),
]


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as f:     # its start ran -I and -Z as pki_cron already
        yield f


def history(fleet: Fleet) -> tuple:
    """What a refused run must leave as it was (read by the owner)."""
    c = fleet.conn
    return (c.execute("SELECT count(*), max(id) FROM jobs").fetchone(), c.execute("SELECT count(*) FROM events").fetchone(),
            c.execute("SELECT count(*), max(id) FROM certinstances").fetchone())


def test_every_action_works_as_the_cron_role_and_is_refused_to_the_reporting_role(fleet, tmp_path):
    for args in ACTIONS:
        before = history(fleet)
        refused = fleet.cli(*args, role=roles.READER)
        assert refused.returncode != 0, (args, refused.stdout)
        assert len(refused.stderr.strip().splitlines()) == 1, (args, refused.stderr)
        assert "permission denied" in refused.stderr, (args, refused.stderr)
        assert history(fleet) == before, f"{args} as pki_reader changed something"

        run = fleet.cli(*args)
        assert run.returncode == 0, (args, run.stdout, run.stderr)
        assert "permission denied" not in run.stdout + run.stderr, (args, run.stderr)
        if args == ("-S", "-a"):   # the cron run brought the fleet where the state machine says
            assert fleet.problems() == [], fleet.problems()
    # -E writes the files of an instance
    serial = fleet.conn.execute("SELECT max(id) FROM certinstances WHERE state = 'deployed'").fetchone()[0]
    assert fleet.cli("-E", str(serial), role=roles.READER).returncode != 0
    export = fleet.cli("-E", str(serial))
    assert export.returncode == 0 and export.stdout.strip(), export.stderr


def test_serverpki_agent_works_as_the_worker_role(fleet):
    job = subprocess.run(
        ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c",
         f"SELECT job FROM request_create(selection(only_certs => ARRAY['{LOCAL}']))"],
        env=fleet.env(roles.OPERATOR), capture_output=True, text=True, check=True).stdout.split()[0]
    agent = subprocess.Popen([sys.executable, "-m", "serverpki.admin", "agent"], env=fleet.env(roles.WORKER),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = fleet.conn.execute("SELECT state FROM jobs WHERE id = %s", (int(job),)).fetchone()[0]
            if state in ("done", "dead"):
                break
            time.sleep(0.3)
    finally:
        agent.send_signal(signal.SIGTERM)
        out = agent.communicate(timeout=30)[0]
    assert state == "done", out
    assert fleet.conn.execute("SELECT locked_by IS NULL FROM jobs WHERE id = %s", (int(job),)).fetchone()[0]
    assert "permission denied" not in out
