"""The emergency rollover (issue 17 item 5): `operate_serverPKI --revoke SERIAL` of the active instance
of an enabled certificate replaces it in the same run (pki.request_revoke -> pki.revoke_rollover,
functions/080_requests.sql: the scheduler's decision for that certificate alone). With --reason
keyCompromise the DANE wait is skipped: the successor's TLSA records come and the revoked ones go in
one publish_tlsa job (one UPDATE per zone), and the run says so.

On the demo's fleet (real Pebble, BIND 9, sshd disthosts), operate_serverPKI run as cron runs it:
afterwards the files on the hosts are the successor's, BIND serves only its TLSA records, the revoked
instance is revoked at Pebble or on the local CA's CRL, and the events say who revoked it and why.
Revoking an instance that is not the active one issues nothing.
"""

from __future__ import annotations

import re

import pytest

from fleet import Fleet
from helpers import lease_of, owner_conn
from test_ca_targets import claim, rows
from test_revoke import BACKUP, INTRANET, WWW, serials

from cryptography import x509


# --------------------------------------------------------------------------- SQL

def test_when_the_successor_of_a_key_compromise_cannot_be_issued_the_old_records_are_withdrawn(conn):
    # the rollover's issue job was to withdraw the revoked records with its own: dead, it withdraws them
    conn.execute("SELECT add_disthost('h.example.org')")
    conn.execute("SELECT add_place('nginx', 'separate', '/usr/local/etc/nginx/ssl')")
    conn.execute("SELECT * FROM add_cert('t.example.org', 'server', 'LE', 'ec', false, NULL, 'https', 443, "
                 "'h.example.org', NULL, 'nginx')")
    conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY['t.example.org']))")
    [job] = claim(conn, "issue_acme")
    owner_conn(conn).execute("UPDATE jobs SET args = args || '{\"then\": \"rollover\"}' WHERE id = %s", (job["id"],))
    assert rows(conn, "SELECT * FROM jobs WHERE kind = 'publish_tlsa'") == []
    conn.execute("SELECT fail_job(%s, %s, 'the CA is down', false)", (job["id"], lease_of(conn, job["id"], "sql-test")))
    [withdrawal] = rows(conn, "SELECT * FROM jobs WHERE kind = 'publish_tlsa'")
    assert withdrawal["args"]["instances"] == [] and withdrawal["reason"].startswith(
        f"issue job {job['id']} of the emergency rollover failed for good")
    # an ordinary issue job that dies leaves DNS alone (a wish of its own would renew the pending job's reason)
    conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY['t.example.org']))")
    [other] = claim(conn, "issue_acme")
    conn.execute("SELECT fail_job(%s, %s, 'the CA is down', false)", (other["id"], lease_of(conn, other["id"], "sql-test")))
    assert rows(conn, "SELECT id, reason FROM jobs WHERE kind = 'publish_tlsa'") == [
        {"id": withdrawal["id"], "reason": withdrawal["reason"]}]


# --------------------------------------------------------------------------- the lab

@pytest.fixture(scope="module")
def fleet():
    with Fleet() as fleet:
        run = fleet.cli("-C", "-o", INTRANET, "-o", BACKUP)
        assert run.returncode == 0, run.stderr
        fleet.settle()
        assert fleet.problems() == []
        yield fleet


def wanted_tlsa(fleet: Fleet, inst: int, owner: str) -> set[str]:
    """The TLSA records of instance inst at owner, as the database computes them."""
    return {f"{u} {s} {m} {d}".lower() for u, s, m, d in fleet.conn.execute(
        "SELECT usage, selector, matching, data FROM tlsa_desired WHERE instance = %s AND owner = %s", (inst, owner))}


def jobs_since_revoke(fleet: Fleet, kind: str) -> list[dict]:
    return [dict(zip(("id", "instance", "args", "state"), r)) for r in fleet.conn.execute(
        "SELECT id, instance, args, state::text FROM jobs WHERE kind = %s AND id > (SELECT max(id) FROM jobs WHERE "
        "kind = 'revoke') ORDER BY id", (kind,))]


def said(run) -> str:
    return run.stdout + run.stderr


def assert_says_key_compromise(run, name: str, old: int, new: int) -> None:
    """One line of the run names the certificate, the revoked serial, the successor's, the skipped wait."""
    lines = [line for line in said(run).splitlines() if "key compromise: DANE wait skipped" in line]
    assert len(lines) == 1 and name in lines[0] and f"revoked instance {old} " in lines[0] \
        and f"successor {new}" in lines[0], said(run)


def test_a_compromised_ACME_certificate_is_replaced_on_every_target_and_in_DNS_in_one_run(fleet):
    old = fleet.deployed()[WWW]
    owners = [o for (o,) in fleet.conn.execute("SELECT DISTINCT owner FROM tlsa_owners WHERE certificate = cert_id(%s)", (WWW,))]
    assert owners and all(fleet.tlsa_served(o) == wanted_tlsa(fleet, old, o) for o in owners)
    pairs = serials(fleet, old)

    run = fleet.cli("--revoke", str(old), "--reason", "keyCompromise")
    assert run.returncode == 0, said(run)

    new = fleet.deployed()[WWW]
    assert new != old
    # the run says so: the certificate, the revoked serial, the successor's serial, the skipped wait
    assert_says_key_compromise(run, WWW, old, new)
    # everything converged within that run: no job left, the files on both hosts and BIND hold the successor
    assert fleet.problems() == []
    for owner in owners:
        served = fleet.tlsa_served(owner)
        assert served == wanted_tlsa(fleet, new, owner) and not served & wanted_tlsa(fleet, old, owner), owner
    # one publish_tlsa job put the successor's records in and took the revoked ones out: no withdrawal
    # first, and none after the deployment (DNS held the successor's records alone already)
    [tlsa_job] = jobs_since_revoke(fleet, "publish_tlsa")
    assert tlsa_job["args"]["instances"] == [new] and tlsa_job["args"]["prepublish"] == new and tlsa_job["state"] == "done"
    # ... before the successor was deployed: its records were out first
    [(published, deployed_at)] = fleet.conn.execute(
        "SELECT (SELECT min(at) FROM events WHERE instance = %(i)s AND to_state = 'prepublished'), "
        "(SELECT min(at) FROM events WHERE instance = %(i)s AND to_state = 'deployed')", {"i": new}).fetchall()
    assert published is not None and published <= deployed_at
    # the revoked one: at Pebble, in the database, in the events (who, why)
    assert all(fleet.lab.pebble.cert_status(s)["Status"] == "Revoked" for s in pairs)
    assert fleet.conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (old,)).fetchone()[0] == "revoked"
    assert fleet.conn.execute("SELECT reason FROM events WHERE instance = %s AND to_state = 'revoked'",
                              (old,)).fetchone()[0] == "revoked (keyCompromise) by pki_cron with --revoke"


def test_a_compromised_local_certificate_is_replaced_and_put_on_the_CRL_in_one_run(fleet):
    old = fleet.deployed()[INTRANET]
    [serial] = serials(fleet, old)

    run = fleet.cli("--revoke", str(old), "--reason", "keyCompromise")
    assert run.returncode == 0, said(run)

    new = fleet.deployed()[INTRANET]
    assert new != old
    assert_says_key_compromise(run, INTRANET, old, new)
    assert fleet.problems() == []   # web1's files are the successor's
    [(crl,)] = fleet.conn.execute("SELECT crl FROM crls ORDER BY number DESC LIMIT 1").fetchall()
    listed = x509.load_pem_x509_crl(bytes(crl))
    assert listed.get_revoked_certificate_by_serial_number(serial) is not None
    assert listed.get_revoked_certificate_by_serial_number(serials(fleet, new)[0]) is None
    assert fleet.conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (old,)).fetchone()[0] == "revoked"


def test_revoking_an_instance_that_is_not_the_active_one_issues_nothing(fleet):
    active = fleet.deployed()[INTRANET]
    run = fleet.cli("-C", "-o", INTRANET)   # an issued successor, not deployed
    assert run.returncode == 0, said(run)
    [spare] = fleet.conn.execute("SELECT id FROM certinstances WHERE certificate = cert_id(%s) AND state = 'issued'",
                                 (INTRANET,)).fetchone()
    before = fleet.conn.execute("SELECT max(id) FROM certinstances").fetchone()[0]

    run = fleet.cli("--revoke", str(spare), "--reason", "keyCompromise")
    assert run.returncode == 0, said(run)

    assert "emergency rollover" not in said(run) and "DANE wait skipped" not in said(run)
    assert fleet.conn.execute("SELECT max(id) FROM certinstances").fetchone()[0] == before
    # of the certificate's jobs, the revoke job alone (the CRL's distribution is the CA certificate's)
    assert [k for (k,) in fleet.conn.execute("SELECT kind FROM jobs WHERE certificate = cert_id(%s) AND id >= "
                                             "(SELECT max(id) FROM jobs WHERE kind = 'revoke')", (INTRANET,))] == ["revoke"]
    assert fleet.deployed()[INTRANET] == active
    assert fleet.conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (spare,)).fetchone()[0] == "revoked"
    assert fleet.problems() == []
