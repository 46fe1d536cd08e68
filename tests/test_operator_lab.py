"""What the operator says, through operate_serverPKI on the lab (real Pebble, BIND 9, sshd), as the
cron role: a disabled certificate is left alone by the cron run; -D with DANE publishes the
successor's TLSA at once and the next run deploys it; -N rolls over and leaves DNS to the operator."""

from __future__ import annotations

import datetime as dt
import subprocess

import pytest

from fleet import Fleet
from lab import roles
from lab.lab import ZONE

WWW = f"www.{ZONE}"
OWNER = f"_443._tcp.{WWW}."


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as f:
        assert f.cli("-C", "-o", f"intranet.{ZONE}", "-o", "backup_op").returncode == 0
        f.settle()
        assert f.problems() == []
        yield f


def instances(fleet: Fleet, name: str = WWW) -> dict[int, str]:
    return dict(fleet.conn.execute("SELECT id, state::text FROM certinstances WHERE certificate = cert_id(%s) "
                                   "AND state NOT IN ('archived', 'expired') ORDER BY id", (name,)).fetchall())


def psql(fleet: Fleet, sql: str) -> None:
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], env=fleet.env(roles.OPERATOR),
                   check=True, capture_output=True)


def output(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 0, (run.args, run.stdout, run.stderr)
    return run.stdout + run.stderr


def test_the_cron_run_leaves_a_disabled_certificate_alone(fleet):
    psql(fleet, f"SELECT disable_cert('{WWW}')")
    try:
        fleet.into_rollover(WWW)                  # a successor would be due now
        before, served, issued = instances(fleet), fleet.tlsa_served(OWNER), fleet.pebble_issued()
        plan = output(fleet.cli("-S", "-n", "-a"))
        assert "the certificate is disabled" in plan
        for _ in range(2):
            fleet.later(hours=1)
            output(fleet.cli("-S", "-q", "-a"))
        assert instances(fleet) == before and fleet.tlsa_served(OWNER) == served
        assert fleet.pebble_issued() == issued, "Pebble issued for a disabled certificate"
    finally:
        psql(fleet, f"SELECT enable_cert('{WWW}')")


def test_D_with_dane_publishes_the_successors_tlsa_and_the_next_run_deploys_it(fleet):
    fleet.into_rollover(WWW)
    [active] = [i for i, s in instances(fleet).items() if s == "deployed"]
    served = fleet.tlsa_served(OWNER)
    output(fleet.cli("-C", "-o", WWW))
    [successor] = [i for i, s in instances(fleet).items() if s == "issued"]
    said = output(fleet.cli("-D", "-o", WWW))
    assert "will be deployed after" in said, said
    assert instances(fleet) == {active: "deployed", successor: "prepublished"}
    assert served < fleet.tlsa_served(OWNER), "the successor's TLSA records were not published"
    fleet.later(hours=3)                          # 2 x TTL (3600 s) has passed
    output(fleet.cli("-S", "-a"))
    assert instances(fleet) == {successor: "deployed"}
    assert fleet.problems() == []


def test_N_rolls_over_and_leaves_dns_alone(fleet):
    fleet.into_rollover(WWW)
    served = fleet.tlsa_served(OWNER)
    said = output(fleet.cli("-S", "-a", "-N"))
    assert "warning: -S:" in said and "-N (no TLSA changes)" in said, said   # logged as a warning
    fleet.to_rollover_day(WWW)
    output(fleet.cli("-S", "-a", "-N"))
    [deployed] = [i for i, s in instances(fleet).items() if s == "deployed"]
    assert fleet.conn.execute("SELECT not_after > %s FROM certinstances WHERE id = %s",
                              (fleet.now + dt.timedelta(days=30), deployed)).fetchone()[0], "no rollover happened"
    assert fleet.tlsa_served(OWNER) == served, "-N changed DNS"
    # the operator hands DNS back: -T makes it what the deployed instance needs
    output(fleet.cli("-T", "-o", WWW))
    assert fleet.problems() == []
