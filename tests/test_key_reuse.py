"""Key reuse (issue 17 item 3): a certificate may keep its private key across renewals, for up to a number
of renewals and/or days (pki.set_key_reuse; default off). The database decides when the issue job is
enqueued (pki.key_reuse: the job's args name the instance whose keys to reuse, never a key); the agent reads
that instance's stored key (pki.reused_key) and builds its CSR with it. While the key stays, a "3 1 1"
record set does not change: the successor is deployed without the DANE-safe wait and no TLSA UPDATE is
sent (pki.tlsa_unchanged; plan rules 7 and 9 say so). When the key is rotated, the usual order applies.

On the demo's fleet (real Pebble, BIND 9 signing its zone, sshd disthosts), operate_serverPKI run as cron
runs it, the operator's settings made as pki_operator.
"""

from __future__ import annotations

import datetime as dt

import dns.rdatatype
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from psycopg.types.json import Jsonb

from fleet import Fleet
from certfactory import issue_result
from helpers import add_small_world, assert_refused, lease_of, owner_conn
from serverpki.queries import q
from test_ca_targets import claim, complete
from lab import roles
from lab.lab import ZONE
from test_revoke import BACKUP, INTRANET, WWW

MX = f"mx.{ZONE}"                  # LE, rsa_plus_ec, TLSA "3 1 1" only: key reuse keeps its records
OWNER = f"_465._tcp.{MX}."
SET = "SELECT set_key_reuse(%s, %s, %s)"


# --------------------------------------------------------------------------- the setting (SQL)

def setting(conn, name: str) -> tuple:
    return conn.execute("SELECT reuse_key_renewals, reuse_key_days FROM certificates WHERE id = cert_id(%s)",
                        (name,)).fetchone()


def test_set_key_reuse_sets_and_clears_the_limits(conn):
    add_small_world(conn)
    assert setting(conn, "www.example.org") == (None, None)   # default: off
    conn.execute(SET, ("www.example.org", 3, None))
    assert setting(conn, "www.example.org") == (3, None)
    conn.execute(SET, ("www.example.org", None, 200))
    assert setting(conn, "www.example.org") == (None, 200)
    conn.execute(SET, ("www.example.org", None, None))
    assert setting(conn, "www.example.org") == (None, None)


@pytest.mark.parametrize("args,sqlstate,named", [
    (("www.example.org", 0, None), "SP005", "renewals 0 is not 1 or more"),
    (("www.example.org", -2, 30), "SP005", "renewals -2"),
    (("www.example.org", 2, 0), "SP005", "days 0 is not 1 or more"),
    (("nope.example.org", 2, 30), "SP002", "nope.example.org"),
    (("example.org", 2, 30), "SP002", "alt name"),
    ((None, 2, 30), "SP009", "certificate name"),
])
def test_set_key_reuse_refuses_bad_values_and_unknown_certificates(conn, args, sqlstate, named):
    add_small_world(conn)
    conn.execute(SET, ("www.example.org", 5, 90))
    assert_refused(conn, SET, args, sqlstate=sqlstate, match=named)
    assert setting(conn, "www.example.org") == (5, 90)


def test_a_CA_certificate_never_reuses_its_key(conn):
    conn.execute("SELECT request_local_ca('Lab CA', 'rsa')")
    assert_refused(conn, SET, ("Lab CA", 2, None), sqlstate="SP007", match="CA certificate")


def test_the_check_constraints_refuse_what_the_setter_refuses(owner):
    add_small_world(owner)
    with pytest.raises(psycopg.errors.CheckViolation):
        owner.execute("UPDATE certificates SET reuse_key_days = 0 WHERE id = cert_id('www.example.org')")


# --------------------------------------------------------------------------- the lab

def spki(cert_pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(cert_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def spkis(fleet: Fleet, inst: int) -> dict[str, bytes]:
    return {algo: spki(bytes(cert)) for algo, cert in fleet.conn.execute(
        "SELECT encryption_algo::text, cert FROM certkeydata WHERE certinstance = %s", (inst,))}


def newest(fleet: Fleet, name: str, state: str) -> int | None:
    row = fleet.conn.execute("SELECT max(id) FROM certinstances WHERE certificate = cert_id(%s) AND state = %s",
                             (name, state)).fetchone()
    return row[0]


def plan(fleet: Fleet, name: str) -> list[tuple]:
    with psycopg.connect(fleet.role_dsn(roles.OPERATOR), autocommit=True) as op:
        if fleet.now:
            op.execute("SELECT set_config('pki.now', %s, false)", (fleet.now.isoformat(),))
        return op.execute("SELECT instance, action, reason FROM plan(selection(only_certs => ARRAY[%s]))",
                          (name,)).fetchall()


def tlsa_rrset(fleet: Fleet) -> tuple[set[str], list[str]]:
    """The TLSA records BIND serves at OWNER and their signatures (an UPDATE of the RRset re-signs it)."""
    answer = fleet.lab.bind.ask(OWNER, "TLSA", tcp=True)
    records = {rr.to_text().lower() for rrset in answer.answer if rrset.rdtype == dns.rdatatype.TLSA for rr in rrset}
    sigs = sorted(rr.to_text() for rrset in answer.answer if rrset.rdtype == dns.rdatatype.RRSIG for rr in rrset)
    return records, sigs


def jobs_of(fleet: Fleet, name: str, kind: str, after: int = 0) -> list[dict]:
    return [dict(zip(("id", "instance", "args", "reason", "state"), r)) for r in fleet.conn.execute(
        "SELECT id, instance, args, reason, state::text FROM jobs WHERE certificate = cert_id(%s) AND kind = %s "
        "AND id > %s ORDER BY id", (name, kind, after))]


def last_job(fleet: Fleet) -> int:
    return fleet.conn.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0]


def renewal(fleet: Fleet, name: str, *also: str) -> tuple[int, int]:
    """One renewal of LE certificate `name` as cron does it: into the prepublish window (a run issues the
    successor), then the rollover day (a run deploys it). Returns (old, new) instances."""
    old = fleet.deployed()[name]
    selection = [x for n in (name, *also) for x in ("-o", n)]
    fleet.into_rollover(name)
    run = fleet.cli("-S", *selection)
    assert run.returncode == 0, run.stdout + run.stderr
    new = max(i for i in (newest(fleet, name, "issued"), newest(fleet, name, "prepublished")) if i)
    assert new > old
    return old, new


def deploy_day(fleet: Fleet, name: str, *also: str) -> None:
    selection = [x for n in (name, *also) for x in ("-o", n)]
    fleet.to_rollover_day(name)
    run = fleet.cli("-S", *selection)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as fleet:
        with psycopg.connect(fleet.role_dsn(roles.OPERATOR), autocommit=True) as op:
            op.execute("SELECT add_tlsa_service('submissions', 465, '_465._tcp.{}. 300 IN TLSA 3 1 1')")
            op.execute("SELECT * FROM add_cert(%s, 'server', 'LE', 'rsa_plus_ec', false, NULL, 'submissions', 465, "
                       "'web1.demo.serverpki.test', NULL, 'nginx')", (MX,))
            # one renewal with the same key, then a new one
            op.execute(SET, (MX, 1, None))
            # a local certificate: its key may be reused for 30 days
            op.execute(SET, (INTRANET, None, 30))
        run = fleet.cli("-C", "-o", INTRANET, "-o", BACKUP)
        assert run.returncode == 0, run.stderr
        fleet.settle()
        assert fleet.problems() == []
        yield fleet


def test_a_local_certificate_reuses_its_key_for_the_days_allowed(fleet):
    active = fleet.deployed()[INTRANET]
    fleet.later(days=2)
    start = last_job(fleet)
    run = fleet.cli("-C", "-o", INTRANET)
    assert run.returncode == 0, run.stderr
    [job] = jobs_of(fleet, INTRANET, "issue_local", start)
    assert job["state"] == "done" and job["args"]["reuse_from"] == active
    assert f"key of instance {active} reused (renewal 1 of the key)" in job["reason"]
    reused = job["instance"]
    assert spkis(fleet, reused) == spkis(fleet, active)
    [(renewals, same_age)] = fleet.conn.execute(
        "SELECT k.key_renewals, k.key_created = (SELECT coalesce(p.key_created, p.created) FROM certkeydata p "
        "WHERE p.certinstance = %s) FROM certkeydata k WHERE k.certinstance = %s", (active, reused)).fetchall()
    assert renewals == 1 and same_age
    # the key is stored again for the new instance, as every key is
    assert fleet.conn.execute("SELECT key IS NOT NULL FROM certkeydata WHERE certinstance = %s", (reused,)).fetchone()[0]
    run = fleet.cli("-D", "-o", INTRANET)
    assert run.returncode == 0, run.stderr
    assert fleet.deployed()[INTRANET] == reused and fleet.problems() == []

    # 30 days after the key was made it is not reused any more
    fleet.later(days=31)
    start = last_job(fleet)
    run = fleet.cli("-C", "-o", INTRANET)
    assert run.returncode == 0, run.stderr
    [job] = jobs_of(fleet, INTRANET, "issue_local", start)
    assert job["state"] == "done" and "reuse_from" not in job["args"]
    assert "key rotated" in job["reason"] and "reuse_key_days 30" in job["reason"], job["reason"]
    assert spkis(fleet, job["instance"])["rsa"] != spkis(fleet, reused)["rsa"]
    assert fleet.conn.execute("SELECT key_renewals FROM certkeydata WHERE certinstance = %s",
                              (job["instance"],)).fetchone()[0] == 0
    run = fleet.cli("-D", "-o", INTRANET)
    assert run.returncode == 0, run.stderr
    assert fleet.problems() == []


def test_a_reused_key_keeps_the_3_1_1_records_and_the_successor_goes_live_without_the_wait(fleet):
    first = fleet.deployed()[MX]
    www_first = fleet.deployed()[WWW]
    records, sigs = tlsa_rrset(fleet)
    assert records and sigs
    start = last_job(fleet)

    # the prepublish window: the successor is issued with the same keys; nothing to prepublish
    old, new = renewal(fleet, MX, WWW)
    assert old == first
    [issue] = jobs_of(fleet, MX, "issue_acme", start)
    assert issue["args"]["reuse_from"] == first and issue["instance"] == new
    assert spkis(fleet, new) == spkis(fleet, first) and set(spkis(fleet, new)) == {"rsa", "ec"}
    assert jobs_of(fleet, MX, "publish_tlsa", start) == []
    assert fleet.conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (new,)).fetchone()[0] == "issued"
    [(_, action, reason)] = [r for r in plan(fleet, MX) if r[0] == new]
    assert action == "wait" and reason.startswith("rule 9: key reused, the TLSA records do not change"), reason
    # default off: the other LE certificate got a new key, and prepublished it
    www_new = newest(fleet, WWW, "prepublished")
    assert www_new and spkis(fleet, www_new)["rsa"] != spkis(fleet, www_first)["rsa"]

    # the rollover day: the plan says why there is no wait, and the same run deploys it
    fleet.to_rollover_day(MX)
    [(_, action, reason)] = [r for r in plan(fleet, MX) if r[0] == new]
    assert action == "distribute" and reason.endswith(
        "key reused, the TLSA records do not change; distribute the successor without the DANE-safe wait"), reason
    deploy_day(fleet, MX, WWW)
    assert fleet.deployed()[MX] == new
    assert fleet.problems() == []
    # DNS was never touched for it: the same records, the same signatures, no publish_tlsa job
    assert tlsa_rrset(fleet) == (records, sigs)
    assert jobs_of(fleet, MX, "publish_tlsa", start) == []
    assert [s for (s,) in fleet.conn.execute("SELECT to_state::text FROM events WHERE instance = %s AND to_state IS NOT NULL ORDER BY id",
                                              (new,))] == ["reserved", "issued", "deployed"]
    # the other certificate rolled over in the DANE-safe order: its records changed
    assert fleet.deployed()[WWW] == www_new and jobs_of(fleet, WWW, "publish_tlsa", start)


def test_after_the_renewals_allowed_the_key_rotates_in_the_DANE_safe_order(fleet):
    records, _ = tlsa_rrset(fleet)
    start = last_job(fleet)
    old, new = renewal(fleet, MX)
    [issue] = jobs_of(fleet, MX, "issue_acme", start)
    assert "reuse_from" not in issue["args"]
    assert "key rotated" in issue["reason"] and "reuse_key_renewals 1" in issue["reason"], issue["reason"]
    assert spkis(fleet, new)["rsa"] != spkis(fleet, old)["rsa"] and spkis(fleet, new)["ec"] != spkis(fleet, old)["ec"]
    # the usual order: prepublished (old and new records), deployed after 2 x TTL
    assert fleet.conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (new,)).fetchone()[0] == "prepublished"
    both, _ = tlsa_rrset(fleet)
    assert records < both
    fleet.to_rollover_day(MX)
    [(_, action, reason)] = [r for r in plan(fleet, MX) if r[0] == new]
    assert action == "distribute" and "TLSA published" in reason and "2 x TTL ago" in reason, reason
    deploy_day(fleet, MX)
    assert fleet.deployed()[MX] == new and fleet.problems() == []
    after, _ = tlsa_rrset(fleet)
    assert after and not after & records
    assert [s for (s,) in fleet.conn.execute("SELECT to_state::text FROM events WHERE instance = %s AND to_state IS NOT NULL ORDER BY id",
                                              (new,))] == ["reserved", "issued", "prepublished", "deployed"]


def test_a_revoked_key_is_never_kept_by_a_successor(fleet):
    active = fleet.deployed()[MX]
    with psycopg.connect(fleet.role_dsn(roles.OPERATOR), autocommit=True) as op:
        op.execute(SET, (MX, 5, None))
    start = last_job(fleet)
    run = fleet.cli("-C", "-o", MX)
    assert run.returncode == 0, run.stderr
    [issue] = jobs_of(fleet, MX, "issue_acme", start)
    kept = issue["instance"]
    assert issue["args"]["reuse_from"] == active and spkis(fleet, kept) == spkis(fleet, active)

    # the key leaked: the successor that kept it must not replace the revoked instance, and is revoked too
    # (its certificate is valid at the CA and vouches for the leaked key)
    run = fleet.cli("--revoke", str(active), "--reason", "keyCompromise")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"it has the key of instance {active}" in run.stdout + run.stderr, run.stdout + run.stderr
    new = fleet.deployed()[MX]
    assert new not in (active, kept)
    assert revoked_at_the_ca(fleet, kept) and revoked_at_the_ca(fleet, active)
    assert all(spkis(fleet, new)[algo] != key for algo, key in spkis(fleet, active).items())
    [rollover] = jobs_of(fleet, MX, "issue_acme", issue["id"])
    assert "reuse_from" not in rollover["args"]
    assert fleet.problems() == []
    # and no later issue reuses it: the revoked instance is no predecessor, its key is no candidate
    assert fleet.conn.execute("SELECT reuse_from FROM key_reuse(cert_id(%s))", (MX,)).fetchone()[0] == new


def revoked_at_the_ca(fleet: Fleet, inst: int) -> bool:
    """The instance is revoked, and its revoke job revoked every certificate of it (rsa_plus_ec: two)."""
    return fleet.conn.execute(
        "SELECT i.state = 'revoked' AND count(r.*) = 2 AND bool_and(r.done_at IS NOT NULL) "
        "FROM certinstances i JOIN revocations r ON r.instance = i.id WHERE i.id = %s GROUP BY i.state", (inst,)).fetchone()[0]


def kept_successor(fleet: Fleet) -> tuple[int, int]:
    """-C of MX (key reuse allowed): the active instance and the successor that kept its key."""
    active = fleet.deployed()[MX]
    start = last_job(fleet)
    run = fleet.cli("-C", "-o", MX)
    assert run.returncode == 0, run.stderr
    [issue] = jobs_of(fleet, MX, "issue_acme", start)
    assert spkis(fleet, issue["instance"]) == spkis(fleet, active)
    return active, issue["instance"]


def test_a_key_compromise_named_by_a_successor_replaces_the_active_instance_with_that_key(fleet):
    """The operator names the successor that kept the key: the active instance has the same key, so it is
    revoked and replaced in the same run; another reason (superseded) revokes only what it names."""
    active, kept = kept_successor(fleet)
    run = fleet.cli("--revoke", str(kept), "--reason", "keyCompromise")
    assert run.returncode == 0, run.stdout + run.stderr
    assert revoked_at_the_ca(fleet, kept) and revoked_at_the_ca(fleet, active)
    new = fleet.deployed()[MX]
    assert new not in (active, kept)
    assert all(spkis(fleet, new)[algo] != key for algo, key in spkis(fleet, active).items())
    assert fleet.problems() == []

    active, kept = kept_successor(fleet)
    run = fleet.cli("--revoke", str(kept), "--reason", "superseded")
    assert run.returncode == 0, run.stdout + run.stderr
    assert fleet.deployed()[MX] == active and revoked_at_the_ca(fleet, kept)
    assert fleet.problems() == []


def test_no_key_lands_in_the_jobs(fleet):
    # every key of the certificates that reused keys: nowhere in any job's args, reason, result or error
    keys = [bytes(k).decode() for (k,) in fleet.conn.execute(
        "SELECT key FROM certkeydata WHERE certinstance IN (SELECT id FROM certinstances "
        "WHERE certificate IN (cert_id(%s), cert_id(%s))) AND key IS NOT NULL", (MX, INTRANET))]
    assert len(keys) >= 4
    bodies = [line for key in keys for line in key.splitlines() if line and not line.startswith("-----")]
    jobs = "\n".join(t for (t,) in fleet.conn.execute(
        "SELECT concat_ws(' ', args::text, reason, result::text, last_error) FROM jobs"))
    assert "PRIVATE KEY" not in jobs
    # a JSON text escapes nothing of base64 but '/' maybe: compare with it unescaped too
    assert not [b for b in bodies if b in jobs or b in jobs.replace("\\/", "/")]


def test_a_revocation_makes_a_pending_ACME_issue_forget_the_key_it_kept(conn):
    """An issue_acme job keeps its key and its orders for its next attempt (job_keys, its progress): after
    the certificate's instance is revoked it must order again with a new key, not resume with the old one."""
    add_small_world(conn)
    conn.execute("SELECT * FROM add_cert('k.example.org', 'server', 'LE', 'ec', false, NULL, NULL, NULL, NULL, NULL, NULL)")
    conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY['k.example.org']))")
    [first] = claim(conn, "issue_acme")
    complete(conn, first, issue_result(conn, "issue_acme", first["certificate"], dt.datetime.now(dt.timezone.utc), 90))
    conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY['k.example.org']))")
    [second] = claim(conn, "issue_acme")
    token = lease_of(conn, second["id"], "sql-test")
    key = ec_key_pem()
    conn.execute(q("save_job_key"), {"job": second["id"], "token": token, "algo": "ec", "key": key})
    conn.execute(q("save_job_progress"), {"job": second["id"], "token": token,
                                          "progress": Jsonb({"orders": {"ec": "https://acme.example/order/1"}})})

    kept = lambda: owner_conn(conn).execute("SELECT count(*) FROM job_keys WHERE job = %s", (second["id"],)).fetchone()[0]
    assert kept() == 1
    conn.execute("SELECT * FROM request_revoke(%s, 'keyCompromise')", (first["instance"],))

    assert kept() == 0
    assert conn.execute("SELECT result ? 'orders' FROM jobs WHERE id = %s", (second["id"],)).fetchone()[0] is False


def ec_key_pem() -> str:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
