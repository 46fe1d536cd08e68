"""Revocation as an action (issue 17 items 4 and 6): operate_serverPKI --revoke SERIAL [--reason REASON]
and pki.request_revoke (functions/080_requests.sql), the revoke job (jobs/080_revoke.sql,
handlers/revoke.py).

The SQL tests run as the cron role against real PostgreSQL: what is refused (and that nothing
changed), what a revocation records, and that nothing distributes a revoked instance again. The
lab tests run operate_serverPKI as cron runs it on the demo's fleet (real Pebble, BIND 9, sshd
disthosts): an ACME certificate is revoked at Pebble (its management interface says "Revoked"),
a local one is put on a CRL of the local CA that `openssl crl` verifies and that reaches the CA's
target on an sshd host with the place's reload; the TLSA records of the revoked instance leave DNS.
"""

from __future__ import annotations

import datetime as dt
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from certfactory import LOCAL_CA_NAME, issue_result, shared_ca
from serverpki import x509util
from helpers import assert_refused, completion_call, lease_of, owner_conn, snapshot
from test_ca_targets import claim, complete, issue_local_ca, rows   # the queue driven as the agent would
from lab.lab import ZONE

from fleet import Fleet

UTC = dt.timezone.utc


def issued_local(conn, name: str) -> int:
    """A local certificate `name` with an issued instance (the local CA made first): that instance."""
    if not conn.execute("SELECT count(*) FROM certinstances WHERE state = 'issued' AND is_ca_cert(certificate)").fetchone()[0]:
        issue_local_ca(conn)
    conn.execute("SELECT * FROM add_cert(%s, 'server', 'local', 'rsa', false, NULL, NULL, NULL, NULL, NULL, NULL)", (name,))
    conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY[%s]))", (name,))
    [job] = claim(conn, "issue_local")
    complete(conn, job, issue_result(conn, "issue_local", job["certificate"], dt.datetime.now(UTC), 365))
    return job["instance"]


# --------------------------------------------------------------------------- SQL

def test_refusals_name_the_fix_and_change_nothing(conn):
    inst = issued_local(conn, "a.example.org")
    ca = conn.execute("SELECT id FROM certinstances WHERE is_ca_cert(certificate)").fetchone()[0]
    before = snapshot(conn)
    assert_refused(conn, "SELECT * FROM request_revoke(999999)", sqlstate="SP002", match="999999")
    err = assert_refused(conn, "SELECT * FROM request_revoke(%s, 'certificateHold')", (inst,), sqlstate="SP011",
                         match="certificateHold")
    assert "keyCompromise" in err.diag.message_hint
    err = assert_refused(conn, "SELECT * FROM request_revoke(%s)", (ca,), sqlstate="SP027", match="CA")
    assert "-I" in err.diag.message_hint
    reserved = owner_conn(conn).execute("INSERT INTO certinstances (certificate, state) VALUES (cert_id('a.example.org'), "
                                        "'reserved') RETURNING id").fetchone()[0]
    before = snapshot(conn)
    assert_refused(conn, "SELECT * FROM request_revoke(%s)", (reserved,), sqlstate="SP027", match="is reserved")
    assert snapshot(conn) == before


def test_a_revocation_records_who_why_and_when_and_enqueues_one_job(conn):
    inst = issued_local(conn, "b.example.org")
    now = conn.execute("SELECT pki.now()").fetchone()[0]
    got = rows(conn, "SELECT * FROM request_revoke(%s, 'keyCompromise')", (inst,))
    assert [r["instance"] for r in got] == [inst] and "CRL" in got[0]["reason"]
    [job] = rows(conn, "SELECT * FROM jobs WHERE kind = 'revoke'")
    assert job["id"] == got[0]["job"] and job["instance"] == inst and job["args"] == {"reason": "keyCompromise"}
    assert conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (inst,)).fetchone()[0] == "revoked"
    [rev] = rows(conn, "SELECT * FROM revocations WHERE instance = %s", (inst,))
    assert (rev["reason"], rev["revoked_by"], rev["job"], rev["done_at"]) == ("keyCompromise", "pki_cron", job["id"], None)
    assert rev["revoked_at"] >= now and rev["ca_instance"] is not None
    [event] = rows(conn, "SELECT * FROM events WHERE instance = %s AND to_state = 'revoked'", (inst,))
    assert event["reason"] == "revoked (keyCompromise) by pki_cron with --revoke"
    # once is enough: its job is pending
    err = assert_refused(conn, "SELECT * FROM request_revoke(%s)", (inst,), sqlstate="SP027", match="pending as revoke job")
    assert "-S" in err.diag.message_hint
    # a revoke job that died: --revoke again enqueues it again, with what was recorded
    [claimed] = claim(conn, "revoke")
    conn.execute("SELECT fail_job(%s, %s, 'the CA is down', false)", (claimed["id"], lease_of(conn, claimed["id"], "sql-test")))
    [again] = rows(conn, "SELECT * FROM request_revoke(%s, 'unspecified')", (inst,))
    assert again["job"] != job["id"] and rows(conn, "SELECT args FROM jobs WHERE id = %s", (again["job"],)) == [
        {"args": {"reason": "keyCompromise"}}]
    assert conn.execute("SELECT job FROM revocations WHERE instance = %s", (inst,)).fetchone()[0] == again["job"]
    # nothing brings it back: -D, -K and the scheduler take no revoked instance, distribution_files refuses it
    assert [r for r in rows(conn, "SELECT * FROM request_distribute()") if r["instance"] == inst] == []
    assert [r for r in rows(conn, "SELECT * FROM request_consolidate_certs()") if r["instance"] == inst] == []
    planned = rows(conn, "SELECT * FROM plan_rows(selection(all_certs => true))")
    assert [r for r in planned if r["instance"] == inst and r["action"] not in ("archive",)] == []


def test_the_completion_stores_the_CRL_and_refuses_one_that_does_not_fit(conn):
    """pki.check_crl: the database parses the reported CRL before it is stored and sent to the CA's targets."""
    inst = issued_local(conn, "c.example.org")
    conn.execute("SELECT * FROM request_revoke(%s, 'superseded')", (inst,))
    [job] = claim(conn, "revoke")
    owner = owner_conn(conn)
    ca = conn.execute("SELECT ca_instance FROM revocations WHERE instance = %s", (inst,)).fetchone()[0]
    ca_key, ca_cert = shared_ca(LOCAL_CA_NAME)   # the test local CA that signed it (certfactory)
    serial = x509.load_pem_x509_certificate(owner.execute("SELECT convert_from(cert, 'UTF8') FROM revocations WHERE instance = %s",
                                                          (inst,)).fetchone()[0].encode()).serial_number
    now = dt.datetime.now(UTC).replace(microsecond=0)

    def crl(number=1, serials=(serial,), key=ca_key) -> dict:
        signed = x509util.build_crl(ca_cert, key, [(s, now, "superseded") for s in serials], number, now,
                                    now + dt.timedelta(days=30))
        return {"ca_instance": ca, "crl": x509util.crl_pem(signed), "crl_number": number, "this_update": now,
                "next_update": now + dt.timedelta(days=30)}

    def refused(args: dict, match: str) -> None:
        assert_refused(conn, *completion_call(conn, job["id"], lease_of(conn, job["id"], "sql-test"), args),
                       sqlstate="SP023", match=match)

    refused({}, "no CRL")
    refused({**crl(), "crl_number": 0}, "number 0")
    refused(crl(number=2**63 - 1), "not the next one")                  # a number that would block every later CRL
    refused({**crl(), "crl": "-----BEGIN X509 CRL-----\n..."}, "not a PEM CRL")
    refused(crl(key=ec.generate_private_key(ec.SECP256R1())), "not signed by the key of CA instance")
    refused(crl(serials=()), "misses 1")
    refused(crl(serials=(serial, serial + 1)), "1 of them not revoked under this CA")
    refused({**crl(), "next_update": now + dt.timedelta(days=3)}, "thisUpdate/nextUpdate")
    complete(conn, job, crl())
    # the revoked instance is gone after the scheduler cleaned it up: the CRL still has what it needs
    assert conn.execute("SELECT cert IS NOT NULL FROM revocations WHERE instance = %s", (inst,)).fetchone()[0]
    assert conn.execute("SELECT number FROM crls WHERE ca_instance = %s", (ca,)).fetchall() == [(1,)]
    assert conn.execute("SELECT done_at IS NOT NULL FROM revocations WHERE instance = %s", (inst,)).fetchone()[0]


def at(conn, when: dt.datetime) -> None:
    conn.execute("SELECT set_config('pki.now', %s, false)", (when.isoformat(),))


def test_a_CRL_is_signed_again_before_its_nextUpdate_and_a_late_one_is_an_alert(conn):
    """functions/155_crls.sql: the scheduler signs the next CRL when a third of crl_days is left; two
    CRLs of one CA at once: the second's number is taken (SP028, retried, not dead)."""
    inst = issued_local(conn, "d.example.org")
    conn.execute("SELECT * FROM request_revoke(%s, 'keyCompromise')", (inst,))
    [job] = claim(conn, "revoke")
    ca = conn.execute("SELECT ca_instance FROM revocations WHERE instance = %s", (inst,)).fetchone()[0]
    ca_key, ca_cert = shared_ca(LOCAL_CA_NAME)
    serial = x509.load_pem_x509_certificate(bytes(conn.execute("SELECT cert FROM revocations WHERE instance = %s",
                                                               (inst,)).fetchone()[0])).serial_number
    start = dt.datetime.now(UTC).replace(microsecond=0)

    def crl(number: int, now: dt.datetime) -> dict:
        signed = x509util.build_crl(ca_cert, ca_key, [(serial, start, "keyCompromise")], number, now,
                                    now + dt.timedelta(days=30))
        return {"ca_instance": ca, "crl": x509util.crl_pem(signed), "crl_number": number, "this_update": now,
                "next_update": now + dt.timedelta(days=30)}

    complete(conn, job, crl(1, start))
    crl_rows = lambda: [r for r in rows(conn, "SELECT * FROM plan(selection(true))") if "CRL" in r["reason"]]
    assert crl_rows() == []
    alerts = lambda: rows(conn, "SELECT alert_key, severity FROM alerts WHERE alert_key LIKE 'crl:%%'")

    # 20 days later, 10 (a third of crl_days) are left: due
    at(conn, start + dt.timedelta(days=20, hours=1))
    [due] = crl_rows()
    assert (due["instance"], due["action"]) == (ca, "sign CRL") and "nextUpdate" in due["reason"]
    assert alerts() == []
    assert [r["action"] for r in rows(conn, "SELECT * FROM schedule(selection(true))") if "CRL" in r["reason"]] == ["sign CRL"]
    assert [r["action"] for r in crl_rows()] == ["wait"]
    rows(conn, "SELECT * FROM schedule(selection(true))")   # once: a pending job is not enqueued twice
    [sign] = claim(conn, "sign_crl")
    assert (sign["instance"], sign["args"]) == (ca, {"ca_instance": ca})

    # a revocation's CRL stored meanwhile took number 2: the job's is refused with SP028 and stays retryable
    now = start + dt.timedelta(days=20, hours=1)
    owner_conn(conn).execute("INSERT INTO crls (ca_instance, number, this_update, next_update, crl) "
                             "SELECT ca_instance, 2, this_update, next_update, crl FROM crls WHERE number = 1")
    before = snapshot(conn)
    assert_refused(conn, *completion_call(conn, sign["id"], lease_of(conn, sign["id"], "sql-test"), crl(2, now)),
                   sqlstate="SP028", match="taken")
    assert snapshot(conn) == before
    owner_conn(conn).execute("DELETE FROM crls WHERE number = 2")
    assert_refused(conn, *completion_call(conn, sign["id"], lease_of(conn, sign["id"], "sql-test"), crl(3, now)),
                   sqlstate="SP023", match="not the next one")
    complete(conn, sign, crl(2, now))
    assert conn.execute("SELECT array_agg(number ORDER BY number) FROM crls").fetchone()[0] == [1, 2]
    assert crl_rows() == []

    # no run renews it: a warning when a sixth of crl_days is left, critical past its nextUpdate
    at(conn, now + dt.timedelta(days=26))
    assert alerts() == [{"alert_key": f"crl:{ca}", "severity": "warning"}]
    at(conn, now + dt.timedelta(days=30, hours=1))
    assert alerts() == [{"alert_key": f"crl:{ca}", "severity": "critical"}]


def test_a_replaced_certificate_still_valid_is_revoked_and_reasons_are_those_of_an_end_entity(conn):
    inst = issued_local(conn, "d.example.org")
    owner_conn(conn).execute("UPDATE certinstances SET state = 'expired' WHERE id = %s", (inst,))   # a successor took over
    for reason in ("cACompromise", "aACompromise", "privilegeWithdrawn"):
        err = assert_refused(conn, "SELECT * FROM request_revoke(%s, %s)", (inst, reason), sqlstate="SP011", match=reason)
        assert "keyCompromise" in err.diag.message_hint
    conn.execute("SELECT * FROM request_revoke(%s, 'keyCompromise')", (inst,))
    assert conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (inst,)).fetchone() == ("revoked",)
    # a pending revocation keeps its instance: the scheduler does not archive it, so --revoke can retry it
    conn.execute("SELECT * FROM schedule(selection(all_certs => true))")
    assert conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (inst,)).fetchone() == ("revoked",)


# --------------------------------------------------------------------------- the lab

WWW = f"www.{ZONE}"             # LE, rsa_plus_ec, TLSA for https and smtp
INTRANET = f"intranet.{ZONE}"   # local, rsa, on web1
BACKUP = "backup_op"            # local, ec client certificate
WEB1 = f"web1.{ZONE}"
TRUST_DIR = "usr/local/share/certs"
RELOADED = "var/reloads/cacerts"


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as fleet:
        # the local CA's certificate as a trust file on web1, with a reload that leaves a mark
        fleet.conn.execute("SELECT add_place('cacerts', 'cert only', '/usr/local/share/certs', NULL, NULL, NULL, NULL, "
                           "false, false, 'mkdir -p /var/reloads && touch /var/reloads/cacerts')")
        fleet.conn.execute("SELECT add_target(%s, %s, NULL, 'cacerts')", (ca_name(fleet), WEB1))
        run = fleet.cli("-C", "-o", INTRANET, "-o", BACKUP)
        assert run.returncode == 0, run.stderr
        fleet.settle()
        assert fleet.problems() == []
        yield fleet


def ca_name(fleet: Fleet) -> str:
    return fleet.conn.execute("SELECT name::text FROM subjects WHERE type = 'CA' AND certificate IN "
                              "(SELECT id FROM certificates WHERE type = 'local')").fetchone()[0]


def serials(fleet: Fleet, inst: int) -> list[int]:
    return [x509.load_pem_x509_certificate(bytes(c)).serial_number
            for (c,) in fleet.conn.execute("SELECT cert FROM certkeydata WHERE certinstance = %s ORDER BY encryption_algo", (inst,))]


def test_an_ACME_certificate_is_revoked_at_the_CA_and_its_TLSA_records_leave_DNS(fleet):
    inst = fleet.deployed()[WWW]
    owners = [o for (o,) in fleet.conn.execute("SELECT DISTINCT owner FROM tlsa_owners WHERE certificate = cert_id(%s)", (WWW,))]
    old_records = {o: fleet.tlsa_served(o) for o in owners}
    assert owners and all(old_records.values())
    pairs = serials(fleet, inst)
    assert len(pairs) == 2 and all(fleet.lab.pebble.cert_status(s)["Status"] == "Valid" for s in pairs)

    # not a key compromise: the records are withdrawn first, then the emergency rollover replaces the
    # active instance in the same run (tests/test_emergency_rollover.py: the key compromise)
    run = fleet.cli("--revoke", str(inst), "--reason", "superseded")
    assert run.returncode == 0, run.stderr

    for serial in pairs:   # Pebble's own record
        status = fleet.lab.pebble.cert_status(serial)
        assert status["Status"] == "Revoked", status
    assert all(not fleet.tlsa_served(o) & old_records[o] for o in owners), "the revoked instance's TLSA records stay"
    assert fleet.conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (inst,)).fetchone()[0] == "revoked"
    assert fleet.conn.execute("SELECT bool_and(done_at IS NOT NULL), min(revoked_by), min(reason) FROM revocations "
                              "WHERE instance = %s", (inst,)).fetchone() == (True, "pki_cron", "superseded")
    [withdrawal] = fleet.conn.execute("SELECT args -> 'instances' FROM jobs WHERE kind = 'publish_tlsa' AND id > "
                                      "(SELECT max(id) FROM jobs WHERE kind = 'revoke') ORDER BY id LIMIT 1").fetchone()
    assert withdrawal == []
    # replaced in the run: the successor on every target and in DNS
    assert fleet.deployed()[WWW] != inst and fleet.problems() == []
    # -K does not restore it; the cron runs never deploy it again
    assert fleet.cli("-K", "-a").returncode == 0
    assert fleet.conn.execute("SELECT count(*) FROM jobs WHERE kind = 'distribute' AND instance = %s AND id > "
                              "(SELECT max(id) FROM jobs WHERE kind = 'revoke')", (inst,)).fetchone()[0] == 0
    fleet.settle()
    assert fleet.problems() == []
    assert fleet.conn.execute("SELECT count(*) FROM events WHERE instance = %s AND to_state = 'deployed' AND "
                              "from_state = 'revoked'", (inst,)).fetchone()[0] == 0


def crl_on_web1(fleet: Fleet, tmp_path) -> tuple[str, str]:
    """The CRL file and the CA certificate file on web1 (paths on this machine)."""
    folder = fleet.lab.ssh.host(WEB1).root / TRUST_DIR
    name = ca_name(fleet)
    return str(folder / f"{name}_CA_crl.pem"), str(folder / f"{name}_CA_cert.pem")


def listed(crl_path: str) -> set[int]:
    with open(crl_path, "rb") as f:
        return {r.serial_number for r in x509.load_pem_x509_crl(f.read())}


def test_a_local_certificate_goes_on_a_verified_CRL_that_reaches_the_CA_target(fleet, tmp_path):
    root = fleet.lab.ssh.host(WEB1).root
    (root / RELOADED).unlink(missing_ok=True)
    inst = fleet.deployed()[INTRANET]
    [serial] = serials(fleet, inst)

    run = fleet.cli("--revoke", str(inst))
    assert run.returncode == 0, run.stderr

    crl, cacert = crl_on_web1(fleet, tmp_path)
    check = subprocess.run(["openssl", "crl", "-in", crl, "-CAfile", cacert, "-noout"], capture_output=True, text=True)
    assert check.returncode == 0 and "verify OK" in check.stdout + check.stderr, check
    assert listed(crl) == {serial}
    assert (root / RELOADED).exists(), "the place's reload did not run"
    number = subprocess.run(["openssl", "crl", "-in", crl, "-noout", "-crlnumber"], capture_output=True, text=True).stdout
    stored = fleet.conn.execute("SELECT number, convert_from(crl, 'UTF8') FROM crls ORDER BY number DESC LIMIT 1").fetchone()
    assert number.strip().endswith(f"{stored[0]:02X}") and open(crl).read() == stored[1]

    # a second one: the next CRL lists both, with the next number
    other = fleet.deployed()[BACKUP]
    run = fleet.cli("--revoke", str(other), "--reason", "affiliationChanged")
    assert run.returncode == 0, run.stderr
    assert listed(crl) == {serial, *serials(fleet, other)}
    reasons = {r.serial_number: r.extensions for r in x509.load_pem_x509_crl(open(crl, "rb").read())}
    assert reasons[serials(fleet, other)[0]].get_extension_for_class(x509.CRLReason).value.reason.value == "affiliationChanged"
    assert fleet.conn.execute("SELECT array_agg(number ORDER BY number) FROM crls").fetchone()[0] == [stored[0], stored[0] + 1]
    # -K keeps the CRL on the host: a damaged copy is rewritten
    with open(crl, "w") as f:
        f.write("damaged\n")
    assert fleet.cli("-K", "-a").returncode == 0
    assert listed(crl) == {serial, *serials(fleet, other)}

    # 21 days on, 9 of the CRL's 30 are left: the cron run signs the next one, which reaches the host
    (root / RELOADED).unlink()
    fleet.later(days=21)
    run = fleet.cli("-S", "-q", "-a")
    assert run.returncode == 0, run.stderr
    check = subprocess.run(["openssl", "crl", "-in", crl, "-CAfile", cacert, "-noout", "-crlnumber", "-nextupdate"],
                           capture_output=True, text=True)
    assert check.returncode == 0 and "verify OK" in check.stdout + check.stderr, check
    assert listed(crl) == {serial, *serials(fleet, other)}
    assert fleet.conn.execute("SELECT array_agg(number ORDER BY number) FROM crls").fetchone()[0] == [
        stored[0], stored[0] + 1, stored[0] + 2]
    assert check.stdout.split("crlNumber=")[1].split()[0].endswith(f"{stored[0] + 2:02X}")
    assert (root / RELOADED).exists(), "the place's reload did not run for the new CRL"
    assert fleet.conn.execute("SELECT count(*) FROM jobs WHERE kind = 'sign_crl' AND state = 'done'").fetchone()[0] == 1


def test_the_command_line_refuses_what_it_cannot_do(fleet):
    run = fleet.cli("--revoke", "999999")
    assert run.returncode == 1 and "SP002" in run.stderr
    run = fleet.cli("--revoke", "1", "--reason", "certificateHold")
    assert run.returncode == 1 and "SP011" in run.stderr
    run = fleet.cli("--reason", "keyCompromise", "-S")
    assert run.returncode == 2 and "--reason goes with --revoke" in run.stderr
    run = fleet.cli("--revoke", "1", "-S")
    assert run.returncode == 2 and "may not be combined" in run.stderr
    for selection in (["-o", WWW], ["-s", WEB1], ["-N"]):
        run = fleet.cli("--revoke", "1", *selection)
        assert run.returncode == 2 and "--revoke SERIAL takes no selection" in run.stderr, selection
