"""The job queue (db/functions/060_queue.sql) and the report views (db/views/030_reports.sql).

Claiming is FOR UPDATE SKIP LOCKED with a lease; finishing a job is one call that
applies its outcome or schedules the retry. Concurrency is tested with two real
sessions whose transactions are open at the same time. Time travels with
SET pki.now on the session that acts.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import psycopg
import pytest

from certfactory import issue_result
from helpers import assert_refused, completion_call, lease_of, owner_conn, remember_leases, snapshot
from helpers import complete as complete_job

UTC = dt.timezone.utc
T0 = dt.datetime(2027, 1, 1, tzinfo=UTC)
ISSUE_KINDS = ("issue_local", "issue_acme", "issue_local_ca")


# --------------------------------------------------------------------------- helpers

def at(conn: psycopg.Connection, when: dt.datetime) -> None:
    """Travel: pki.now() of this session is `when` from now on."""
    conn.execute("SELECT set_config('pki.now', %s, false)", (when.isoformat(),))


def enqueue(conn, kind: str, subject: str, args: dict | None = None, **refs) -> int | None:
    """pki.enqueue is internal (the requests call it): the owner sets the job up."""
    return owner_conn(conn).execute(
        "SELECT enqueue(%s, %s, %s, %s, %s, %s, %s, %s)",
        (kind, subject, f"test: {subject}", json.dumps(args or {}), refs.get("certificate"),
         refs.get("instance"), refs.get("disthost"), refs.get("zone"))).fetchone()[0]


def claim(conn, agent: str = "a1", kinds: list[str] | None = None, n: int = 1, lease: str | None = None) -> list[dict]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return remember_leases(conn, cur.execute("SELECT * FROM claim_jobs(%s, %s, %s, %s::interval) ORDER BY priority DESC, id",
                                             (agent, kinds, n, lease)).fetchall())


def job(conn, job_id: int) -> dict:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()


def complete(conn, job_id: int, agent: str = "a1", result: dict | None = None) -> None:
    complete_job(conn, job_id, lease_of(conn, job_id, agent), result)


def fail(conn, job_id: int, agent: str = "a1", error: str = "boom", retry: bool = True, retry_after: str | None = None):
    return conn.execute("SELECT fail_job(%s, %s, %s, %s, %s::interval)",
                        (job_id, lease_of(conn, job_id, agent), error, retry, retry_after)).fetchone()[0]


def setting(conn, name: str, value: str) -> None:
    conn.execute("UPDATE settings SET value = %s WHERE name = %s", (value, name))


def add_cert(conn, name: str = "www.example.org", cert_type: str = "LE", algo: str = "ec",
             hosts: tuple[str, ...] = ("web1.example.org",), tlsa: bool = False) -> int:
    """A certificate with one target per disthost (disthosts and the place are made when missing)."""
    if not conn.execute("SELECT 1 FROM places WHERE name = 'nginx'").fetchone():
        conn.execute("SELECT add_place('nginx', 'separate', '/etc/ssl/{}')")
    for host in hosts:
        if not conn.execute("SELECT 1 FROM disthosts WHERE fqdn = %s", (host,)).fetchone():
            conn.execute("SELECT add_disthost(%s)", (host,))
    conn.execute("SELECT * FROM add_cert(%s, 'server', %s, %s, false, NULL, %s, %s, %s, NULL, 'nginx')",
                 (name, cert_type, algo, "https" if tlsa else None, 443 if tlsa else None, hosts[0]))
    for host in hosts[1:]:
        conn.execute("SELECT add_target(%s, %s, NULL, 'nginx')", (name, host))
    return conn.execute("SELECT cert_id(%s)", (name,)).fetchone()[0]


def pairs_for(conn, job_row: dict, when: dt.datetime, days: int = 90) -> dict:
    """The result an issuing agent reports: one {algo, cert, key} per key algorithm of the certificate,
    for its names and signed by the issuer the database checks (certfactory.issue_result)."""
    return issue_result(conn, job_row["kind"], job_row["certificate"], when, days)


def run_jobs(conn, when: dt.datetime, agent: str = "a1", kinds: list[str] | None = None) -> list[dict]:
    """Act as a well-behaved agent: claim and complete until nothing is due; returns what was done."""
    done = []
    while True:
        claimed = claim(conn, agent, kinds, n=10)
        if not claimed:
            return done
        for j in claimed:
            complete(conn, j["id"], agent, pairs_for(conn, j, when) if j["kind"] in ISSUE_KINDS else {})
            done.append(j)


def deployed_cert(conn, name: str = "www.example.org", **kw) -> dict:
    """A certificate with a deployed instance, made by the scheduler and the queue at T0."""
    cert = add_cert(conn, name, **kw)
    at(conn, T0)
    conn.execute("SELECT * FROM schedule()").fetchall()
    done = run_jobs(conn, T0)
    inst = conn.execute("SELECT id FROM certinstances WHERE certificate = %s AND state = 'deployed'", (cert,)).fetchone()
    assert inst, f"no deployed instance after {[(j['kind'], j['id']) for j in done]}"
    return {"certificate": cert, "instance": inst[0], "jobs": done}


def jobs_snapshot(conn) -> list[tuple]:
    return conn.execute("SELECT j::text FROM jobs j ORDER BY id").fetchall()


# --------------------------------------------------------------------------- claiming

def test_two_sessions_claim_disjoint_jobs(conn, dsn):
    ids = [enqueue(conn, "mail_reminder", f"r{i}") for i in range(6)]
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        # a blocked row lock in b would raise instead of waiting
        b.execute("SET lock_timeout = '3s'")
        a.execute("BEGIN")
        b.execute("BEGIN")
        got_a = claim(a, "agent-a", n=4)
        started = time.monotonic()
        got_b = claim(b, "agent-b", n=4)          # a's four rows are locked: b skips them
        waited = time.monotonic() - started
        assert waited < 1.0, f"SKIP LOCKED waited {waited:.2f}s"
        ids_a = {j["id"] for j in got_a}
        ids_b = {j["id"] for j in got_b}
        assert len(ids_a) == 4 and len(ids_b) == 2
        assert not ids_a & ids_b
        assert ids_a | ids_b == set(ids)
        # nothing is left for either while both transactions are open
        assert claim(b, "agent-b", n=4) == []
        assert claim(a, "agent-a", n=4) == []
        a.execute("COMMIT")
        b.execute("COMMIT")
    rows = conn.execute("SELECT id, state, locked_by, attempts FROM jobs ORDER BY id").fetchall()
    assert {r[0] for r in rows if r[2] == "agent-a"} == ids_a
    assert {r[0] for r in rows if r[2] == "agent-b"} == ids_b
    assert all(r[1] == "running" and r[3] == 1 for r in rows)


def test_two_sessions_one_job_one_winner(conn, dsn):
    only = enqueue(conn, "mail_reminder", "only")
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        b.execute("SET lock_timeout = '3s'")
        a.execute("BEGIN")
        b.execute("BEGIN")
        assert [j["id"] for j in claim(a, "agent-a", n=5)] == [only]
        started = time.monotonic()
        assert claim(b, "agent-b", n=5) == []
        assert time.monotonic() - started < 1.0
        a.execute("COMMIT")
        # after a's commit the job is running under a: still not b's
        assert claim(b, "agent-b", n=5) == []
        b.execute("COMMIT")
    assert job(conn, only)["locked_by"] == "agent-a"


def test_claim_respects_kinds(conn):
    d = enqueue(conn, "distribute", "inst:1/host:1")
    m = enqueue(conn, "mail_reminder", "reminder:1")
    t = enqueue(conn, "publish_tlsa", "tlsa:cert:1")
    assert [j["id"] for j in claim(conn, kinds=["mail_reminder"], n=10)] == [m]
    assert [j["id"] for j in claim(conn, kinds=["distribute", "encrypt_keys"], n=10)] == [d]
    assert claim(conn, kinds=["issue_acme"], n=10) == []
    assert [j["id"] for j in claim(conn, kinds=None, n=10)] == [t]


def test_claim_respects_run_after(conn):
    at(conn, T0 + dt.timedelta(hours=1))
    later = enqueue(conn, "mail_reminder", "later")          # run_after = T0 + 1 h
    at(conn, T0)
    now = enqueue(conn, "mail_reminder", "now")
    assert job(conn, later)["run_after"] == T0 + dt.timedelta(hours=1)
    assert [j["id"] for j in claim(conn, n=10)] == [now]
    at(conn, T0 + dt.timedelta(minutes=59, seconds=59))
    assert claim(conn, n=10) == []
    at(conn, T0 + dt.timedelta(hours=1))
    assert [j["id"] for j in claim(conn, n=10)] == [later]


def test_claim_takes_priority_then_age(conn):
    # job_kinds priorities: encrypt_keys 40, register_acme 30, issue_acme 20, publish_tlsa 15, distribute 10, mail_reminder 0
    m1 = enqueue(conn, "mail_reminder", "m1")
    d1 = enqueue(conn, "distribute", "d1")
    t1 = enqueue(conn, "publish_tlsa", "t1")
    d2 = enqueue(conn, "distribute", "d2")
    i1 = enqueue(conn, "issue_acme", "i1")
    r1 = enqueue(conn, "register_acme", "r1")
    e1 = enqueue(conn, "encrypt_keys", "e1")
    assert [job(conn, x)["priority"] for x in (e1, r1, i1, t1, d1, m1)] == [40, 30, 20, 15, 10, 0]
    order = [claim(conn)[0]["id"] for _ in range(7)]
    assert order == [e1, r1, i1, t1, d1, d2, m1]
    assert claim(conn) == []
    # LIMIT takes the first of that order
    a = enqueue(conn, "mail_reminder", "a")
    b = enqueue(conn, "distribute", "b")
    assert [j["id"] for j in claim(conn, n=1)] == [b]
    assert [j["id"] for j in claim(conn, n=1)] == [a]


def test_claim_sets_the_lease(conn):
    at(conn, T0)
    j = enqueue(conn, "mail_reminder", "x")
    [row] = claim(conn, "a1")
    assert (row["id"], row["state"], row["locked_by"], row["attempts"]) == (j, "running", "a1", 1)
    assert row["locked_until"] == T0 + dt.timedelta(minutes=5)         # setting job_lease
    k = enqueue(conn, "mail_reminder", "y")
    [row] = claim(conn, "a1", lease="90 seconds")
    assert row["id"] == k and row["locked_until"] == T0 + dt.timedelta(seconds=90)


def test_claim_needs_an_agent_name(conn):
    enqueue(conn, "mail_reminder", "x")
    before = jobs_snapshot(conn)
    assert_refused(conn, "SELECT * FROM claim_jobs('')", sqlstate="SP009")
    assert_refused(conn, "SELECT * FROM claim_jobs(NULL)", sqlstate="SP009")
    assert jobs_snapshot(conn) == before


# --------------------------------------------------------------------------- enqueuing

def test_enqueue_same_kind_and_subject_gives_one_active_job(conn):
    first = enqueue(conn, "mail_reminder", "reminder:7")
    assert first is not None
    assert enqueue(conn, "mail_reminder", "reminder:7") is None
    # another kind or another subject is another job
    assert enqueue(conn, "publish_tlsa", "reminder:7") is not None
    assert enqueue(conn, "mail_reminder", "reminder:8") is not None
    assert conn.execute("SELECT count(*) FROM jobs WHERE kind = 'mail_reminder' AND subject_key = 'reminder:7'").fetchone()[0] == 1
    # the unique partial index is the guarantee, whoever inserts
    with pytest.raises(psycopg.errors.UniqueViolation):
        owner_conn(conn).execute("INSERT INTO jobs (kind, subject_key, reason, run_after) "
                     "VALUES ('mail_reminder', 'reminder:7', 'by hand', now())")
    # running and failed jobs are active too
    [row] = claim(conn, kinds=["mail_reminder"])
    assert row["id"] == first
    assert enqueue(conn, "mail_reminder", "reminder:7") is None
    fail(conn, first)
    assert job(conn, first)["state"] == "failed"
    assert enqueue(conn, "mail_reminder", "reminder:7") is None
    # once it is done, the subject may get a new job
    at(conn, dt.datetime.now(UTC) + dt.timedelta(hours=1))
    [row] = claim(conn, kinds=["mail_reminder"])
    assert row["id"] == first
    complete(conn, row["id"])
    again = enqueue(conn, "mail_reminder", "reminder:7")
    assert again is not None and again != first
    assert conn.execute("SELECT count(*) FROM jobs WHERE subject_key = 'reminder:7' AND kind = 'mail_reminder'").fetchone()[0] == 2


def test_enqueue_issue_twice_reserves_one_instance(conn):
    cert = add_cert(conn)
    at(conn, T0)
    first = conn.execute("SELECT * FROM request_create()").fetchall()
    second = conn.execute("SELECT * FROM request_create()").fetchall()
    assert len(first) == 1 and second == []
    assert conn.execute("SELECT count(*) FROM jobs WHERE certificate = %s", (cert,)).fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM certinstances WHERE certificate = %s", (cert,)).fetchone()[0] == 1


def test_concurrent_issue_requests_reserve_one_instance(conn, dsn):
    """-C in one session while -S runs in another: the second waits, then sees the first one's job."""
    cert = add_cert(conn)
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        b.execute("SET lock_timeout = '10s'")
        a.execute("BEGIN")
        assert len(a.execute("SELECT * FROM request_create()").fetchall()) == 1
        outcome: dict = {}

        def second():
            try:
                b.execute("BEGIN")
                outcome["rows"] = b.execute("SELECT * FROM schedule()").fetchall()
                b.execute("COMMIT")
            except psycopg.Error as exc:          # reported below
                outcome["error"] = exc

        worker = threading.Thread(target=second)
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive(), "the second session did not wait for the first"
        a.execute("COMMIT")
        worker.join(15)
        assert "error" not in outcome, outcome.get("error")
        # it waited before planning, so its plan saw the first one's job (tests/test_concurrent_agents.py
        # shows why: a plan made before the wait could issue what an agent issued meanwhile)
        assert [r[2] for r in outcome["rows"]] == ["wait"]
    assert conn.execute("SELECT count(*) FROM jobs WHERE certificate = %s", (cert,)).fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM certinstances WHERE certificate = %s", (cert,)).fetchone()[0] == 1


def test_enqueue_max_attempts_is_at_least_one(conn):
    """job_max_attempts = 0 is a legal setting; a job must still be claimable once (attempts <= max_attempts)."""
    setting(conn, "job_max_attempts", "0")
    j = enqueue(conn, "mail_reminder", "x")
    assert job(conn, j)["max_attempts"] == 1
    [row] = claim(conn)
    assert row["id"] == j
    assert fail(conn, j) == "dead"


def test_enqueue_takes_kind_limits(conn):
    setting(conn, "job_max_attempts", "4")
    assert job(conn, enqueue(conn, "issue_local", "a"))["max_attempts"] == 3      # the kind allows 3
    assert job(conn, enqueue(conn, "distribute", "b"))["max_attempts"] == 4       # the setting allows 4
    assert job(conn, enqueue(conn, "distribute", "b2"))["priority"] == 10


# --------------------------------------------------------------------------- leases

def test_expired_lease_returns_the_job_and_refuses_the_old_agent(conn, dsn):
    at(conn, T0)
    j = enqueue(conn, "mail_reminder", "x")
    [row] = claim(conn, "old")
    assert row["locked_until"] == T0 + dt.timedelta(minutes=5)
    with psycopg.connect(dsn, autocommit=True) as other:
        # before the lease ends, the job stays with its agent
        at(other, T0 + dt.timedelta(minutes=4))
        assert claim(other, "new") == []
        assert job(conn, j)["state"] == "running"
        # after it, the next claim puts it back in the queue (with the back-off of a failed attempt)
        at(other, T0 + dt.timedelta(minutes=6))
        assert claim(other, "new") == []
        back = job(conn, j)
        assert back["state"] == "failed"
        assert back["locked_by"] is None and back["locked_until"] is None
        assert "lease of agent old expired" in back["last_error"]
        assert back["run_after"] == T0 + dt.timedelta(minutes=6, seconds=30)
        [(event_state, event_reason)] = conn.execute("SELECT job_state, reason FROM events WHERE job = %s", (j,)).fetchall()
        assert event_state == "failed"
        assert event_reason.startswith(f"mail_reminder job {j}: lease of agent old expired at ")
        # the old agent comes back too late: its outcome is refused, nothing changes
        before = jobs_snapshot(conn)
        err = assert_refused(conn, *completion_call(conn, j, lease_of(conn, j, "old")), sqlstate="SP022", match=f"job {j}")
        assert "not under the lease presented" in err.diag.message_primary
        assert_refused(conn, "SELECT fail_job(%s, %s::uuid, 'late error')", (j, lease_of(conn, j, "old"),), sqlstate="SP022")
        assert_refused(conn, "SELECT extend_lease(%s, %s::uuid)", (j, lease_of(conn, j, "old"),), sqlstate="SP022")
        assert jobs_snapshot(conn) == before
        # after the back-off the new agent gets it, as a second attempt, and finishes it
        at(other, T0 + dt.timedelta(minutes=6, seconds=30))
        [again] = claim(other, "new")
        assert (again["id"], again["attempts"], again["locked_by"]) == (j, 2, "new")
        assert_refused(conn, *completion_call(conn, j, lease_of(conn, j, "old")), sqlstate="SP022", match="under agent new")
        complete(other, j, "new")
    assert job(conn, j)["state"] == "done"


def test_expired_lease_on_the_last_attempt_is_dead(conn):
    at(conn, T0)
    cert = add_cert(conn, cert_type="local")
    conn.execute("SELECT * FROM request_create()").fetchall()
    [row] = claim(conn, "old", kinds=["issue_local"], lease="1 minute")
    owner_conn(conn).execute("UPDATE jobs SET attempts = max_attempts WHERE id = %s", (row["id"],))
    at(conn, T0 + dt.timedelta(minutes=2))
    assert claim(conn, "new") == []
    assert job(conn, row["id"])["state"] == "dead"
    assert conn.execute("SELECT count(*) FROM certinstances WHERE certificate = %s", (cert,)).fetchone()[0] == 0


def test_a_lease_must_be_positive(conn):
    j = enqueue(conn, "mail_reminder", "x")
    before = jobs_snapshot(conn)
    assert_refused(conn, "SELECT * FROM claim_jobs('a1', NULL, 1, '0 seconds')", sqlstate="SP005", match="lease")
    assert_refused(conn, "SELECT * FROM claim_jobs('a1', NULL, 1, '-5 minutes')", sqlstate="SP005")
    assert jobs_snapshot(conn) == before
    claim(conn, "a1")
    assert_refused(conn, "SELECT extend_lease(%s, %s::uuid, '-1 minute')", (j, lease_of(conn, j, "a1"),), sqlstate="SP005")
    assert job(conn, j)["state"] == "running"


def test_extend_lease_moves_locked_until(conn, dsn):
    at(conn, T0)
    j = enqueue(conn, "mail_reminder", "x")
    claim(conn, "a1")
    at(conn, T0 + dt.timedelta(minutes=4))
    until = conn.execute("SELECT extend_lease(%s, %s::uuid)", (j, lease_of(conn, j, "a1"),)).fetchone()[0]
    assert until == T0 + dt.timedelta(minutes=9)
    assert job(conn, j)["locked_until"] == until
    until = conn.execute("SELECT extend_lease(%s, %s::uuid, '1 hour')", (j, lease_of(conn, j, "a1"),)).fetchone()[0]
    assert until == T0 + dt.timedelta(minutes=64)
    assert job(conn, j)["locked_until"] == until
    # past the original lease, the job is still the agent's
    with psycopg.connect(dsn, autocommit=True) as other:
        at(other, T0 + dt.timedelta(minutes=30))
        assert claim(other, "a2") == []
    assert job(conn, j)["state"] == "running"
    # only the holder may extend
    assert_refused(conn, "SELECT extend_lease(%s, %s::uuid)", (j, lease_of(conn, j, "a2"),), sqlstate="SP022")
    assert_refused(conn, "SELECT extend_lease(-1, gen_random_uuid())", sqlstate="SP002")
    assert job(conn, j)["locked_until"] == until


# --------------------------------------------------------------------------- failing

def test_fail_job_backs_off_exponentially_then_dies(conn):
    at(conn, T0)
    j = enqueue(conn, "mail_reminder", "x")              # mail_reminder: 5 attempts
    assert job(conn, j)["max_attempts"] == 5
    now = T0
    for attempt in range(1, 5):
        [row] = claim(conn)
        assert (row["id"], row["attempts"]) == (j, attempt)
        assert fail(conn, j, error=f"failure {attempt}") == "failed"
        failed = job(conn, j)
        backoff = dt.timedelta(seconds=30 * 2 ** (attempt - 1))          # job_backoff * 2^(attempts-1)
        assert failed["run_after"] == now + backoff
        assert (failed["state"], failed["last_error"], failed["locked_by"], failed["finished"]) == \
            ("failed", f"failure {attempt}", None, None)
        # not a moment before
        at(conn, now + backoff - dt.timedelta(seconds=1))
        assert claim(conn) == []
        now = now + backoff
        at(conn, now)
    [row] = claim(conn)
    assert row["attempts"] == 5
    assert fail(conn, j, error="failure 5") == "dead"
    dead = job(conn, j)
    assert (dead["state"], dead["finished"], dead["last_error"]) == ("dead", now, "failure 5")
    at(conn, now + dt.timedelta(days=1))
    assert claim(conn) == []
    outcomes = conn.execute("SELECT job_state FROM events WHERE job = %s ORDER BY id", (j,)).fetchall()
    assert [o[0] for o in outcomes] == ["failed"] * 4 + ["dead"]


def test_fail_job_backoff_is_capped_and_can_be_overridden(conn):
    at(conn, T0)
    setting(conn, "job_backoff", "2 hours")
    j = enqueue(conn, "distribute", "x")
    owner_conn(conn).execute("UPDATE jobs SET attempts = 3 WHERE id = %s", (j,))
    claim(conn)                                   # 4th attempt: 2 h * 8 = 16 h, capped to 6 h
    fail(conn, j)
    assert job(conn, j)["run_after"] == T0 + dt.timedelta(hours=6)
    at(conn, T0 + dt.timedelta(hours=6))
    claim(conn)
    fail(conn, j, retry_after="10 minutes")       # the agent knows better (e.g. Retry-After)
    assert job(conn, j)["run_after"] == T0 + dt.timedelta(hours=6, minutes=10)


def test_fail_job_without_retry_is_dead_at_once(conn):
    at(conn, T0)
    j = enqueue(conn, "distribute", "x")
    claim(conn)
    assert fail(conn, j, error="host key mismatch", retry=False) == "dead"
    row = job(conn, j)
    assert (row["state"], row["attempts"], row["last_error"], row["finished"]) == ("dead", 1, "host key mismatch", T0)
    # a dead job is not active: the subject may be enqueued again
    assert enqueue(conn, "distribute", "x") is not None


def test_fail_job_needs_the_holder(conn):
    j = enqueue(conn, "mail_reminder", "x")
    assert_refused(conn, "SELECT fail_job(%s, %s::uuid, 'e')", (j, lease_of(conn, j, "a1"),), sqlstate="SP022", match="is queued")
    claim(conn, "a1")
    assert_refused(conn, "SELECT fail_job(%s, %s::uuid, 'e')", (j, lease_of(conn, j, "a2"),), sqlstate="SP022", match="under agent a1")
    assert_refused(conn, "SELECT fail_job(%s, %s::uuid, 'e')", (j + 1000, lease_of(conn, j + 1000, "a1"),), sqlstate="SP002")
    # an empty error is still an error
    assert fail(conn, j, error="") == "failed"
    assert job(conn, j)["last_error"] == "unspecified error"


def test_fail_job_keeps_keys_out_of_the_error(conn):
    j = enqueue(conn, "distribute", "x")
    claim(conn)
    error = "cannot write /etc/ssl/k.pem: -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----\n"
    fail(conn, j, error=error)
    assert job(conn, j)["last_error"] == "cannot write /etc/ssl/k.pem: (private key removed)"
    reasons = conn.execute("SELECT reason FROM events WHERE job = %s", (j,)).fetchall()
    assert reasons and all("PRIVATE KEY" not in r[0] for r in reasons)


def test_dead_issue_job_deletes_its_reserved_instance(conn):
    at(conn, T0)
    cert = add_cert(conn)
    [(job_id, _name, inst, _why)] = conn.execute("SELECT * FROM request_create()").fetchall()
    assert conn.execute("SELECT state FROM certinstances WHERE id = %s", (inst,)).fetchone()[0] == "reserved"
    [row] = claim(conn, kinds=["issue_acme"])
    assert row["instance"] == inst
    assert fail(conn, job_id, error="rate limited", retry=False) == "dead"
    assert conn.execute("SELECT count(*) FROM certinstances WHERE certificate = %s", (cert,)).fetchone()[0] == 0
    assert job(conn, job_id)["instance"] is None              # the reference went with the row
    deleted = conn.execute("SELECT from_state, to_state, job, reason FROM events "
                           "WHERE instance = %s AND job_state IS NULL ORDER BY id", (inst,)).fetchall()
    assert deleted[-1] == ("reserved", None, job_id, f"issue job {job_id} failed for good")
    outcome = conn.execute("SELECT instance, job_state, reason FROM events WHERE job = %s AND job_state IS NOT NULL",
                           (job_id,)).fetchall()
    assert outcome == [(inst, "dead", f"issue_acme job {job_id}: rate limited")]
    # the next pass issues anew
    plan = conn.execute("SELECT action FROM plan() WHERE certificate = 'www.example.org'").fetchall()
    assert plan == [("issue",)]


def test_dead_issue_job_after_max_attempts(conn):
    at(conn, T0)
    cert = add_cert(conn, cert_type="local")
    [(job_id, _name, inst, _why)] = conn.execute("SELECT * FROM request_create()").fetchall()
    assert job(conn, job_id)["max_attempts"] == 3
    now = T0
    for attempt in (1, 2, 3):
        [row] = claim(conn)
        assert row["attempts"] == attempt
        outcome = fail(conn, job_id, error=f"ca offline {attempt}")
        assert outcome == ("dead" if attempt == 3 else "failed")
        assert conn.execute("SELECT count(*) FROM certinstances WHERE id = %s", (inst,)).fetchone()[0] == \
            (0 if attempt == 3 else 1)
        now += dt.timedelta(hours=1)
        at(conn, now)
    assert conn.execute("SELECT count(*) FROM certinstances WHERE certificate = %s", (cert,)).fetchone()[0] == 0


# --------------------------------------------------------------------------- completing

def test_complete_issue_job_stores_the_pairs_and_keeps_keys_out_of_jobs(conn):
    at(conn, T0)
    cert = add_cert(conn, algo="rsa_plus_ec", hosts=("web1.example.org", "web2.example.org"))
    conn.execute("SELECT * FROM schedule()").fetchall()
    [row] = claim(conn)
    assert row["kind"] == "issue_acme" and row["args"]["then"] == "distribute"
    result = pairs_for(conn, row, T0)
    result["order"] = {"uri": "https://acme.example/order/1", "account_key": "-----BEGIN EC PRIVATE KEY-----\nsecret"}
    complete(conn, row["id"], result=result)

    stored = conn.execute("SELECT encryption_algo, convert_from(cert, 'UTF8'), convert_from(key, 'UTF8') "
                          "FROM certkeydata WHERE certinstance = %s ORDER BY encryption_algo", (row["instance"],)).fetchall()
    by_algo = {p["algo"]: p for p in result["pairs"]}
    assert [(a, c, k) for a, c, k in stored] == [(a, by_algo[a]["cert"], by_algo[a]["key"]) for a in ("rsa", "ec")]
    inst = conn.execute("SELECT state, not_before, not_after FROM certinstances WHERE id = %s", (row["instance"],)).fetchone()
    assert inst == ("issued", T0, T0 + dt.timedelta(days=90))
    done = job(conn, row["id"])
    assert (done["state"], done["locked_by"], done["finished"]) == ("done", None, T0)
    # the certificates are kept as the agent reported them, the keys are not
    assert [p.get("cert") for p in done["result"]["pairs"]] == [p["cert"] for p in result["pairs"]]
    assert all("key" not in p for p in done["result"]["pairs"])
    assert done["result"]["order"] == {"uri": "https://acme.example/order/1"}
    # what follows: one distribution job per disthost
    follow = conn.execute("SELECT kind, instance, d.fqdn FROM jobs j JOIN disthosts d ON d.id = j.disthost "
                          "WHERE j.state = 'queued' ORDER BY d.fqdn").fetchall()
    assert follow == [("distribute", row["instance"], "web1.example.org"), ("distribute", row["instance"], "web2.example.org")]
    run_jobs(conn, T0)
    assert conn.execute("SELECT state FROM certinstances WHERE id = %s", (row["instance"],)).fetchone()[0] == "deployed"
    # no row of the queue holds key material, in its arguments or its result
    leaks = conn.execute("SELECT id FROM jobs WHERE args::text LIKE '%%PRIVATE KEY%%' "
                         "OR coalesce(result::text, '') LIKE '%%PRIVATE KEY%%'").fetchall()
    assert leaks == []
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 3
    assert cert


@pytest.mark.parametrize("bad, match", [
    ({"pairs": []}, "the certificate wants"),
    ({"pairs": [{"algo": "rsa"}, {"algo": "ec"}]}, "a pair lacks its algo, cert or key"),
    ("ec-only", "issued pairs {ec}, the certificate wants {ec,rsa}"),
    ("rsa-twice", "issued pairs {rsa,rsa}, the certificate wants {ec,rsa}"),
    ("no-cert", "a pair lacks its algo, cert or key"),
    ("no-key", "a pair lacks its algo, cert or key"),
    ("no-algo", "a pair lacks its algo, cert or key"),
    ("bad-cacert", 'a result with "chain" names its issuer by the chain, not by "cacert"'),
])
def test_complete_issue_job_with_a_bad_result_is_refused(conn, bad, match):
    at(conn, T0)
    add_cert(conn, algo="rsa_plus_ec")
    conn.execute("SELECT * FROM request_create()").fetchall()
    [row] = claim(conn)
    good = pairs_for(conn, row, T0)
    rsa, ec = sorted(good["pairs"], key=lambda p: p["algo"], reverse=True)
    if bad == "ec-only":
        bad = {"pairs": [ec]}
    elif bad == "rsa-twice":
        bad = {"pairs": [rsa, rsa]}
    elif bad == "no-cert":
        bad = {"pairs": [rsa, {"algo": "ec", "key": ec["key"]}]}
    elif bad == "no-key":
        bad = {"pairs": [rsa, {"algo": "ec", "cert": ec["cert"]}]}
    elif bad == "no-algo":
        bad = {"pairs": [rsa, {**ec, "algo": None}]}
    elif bad == "bad-cacert":
        bad = {**good, "cacert": row["instance"]}
    before_jobs = jobs_snapshot(conn)
    events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert_refused(conn, *completion_call(conn, row["id"], lease_of(conn, row["id"], "a1"), bad), sqlstate="SP023", match=match)
    assert jobs_snapshot(conn) == before_jobs
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == events
    # the job is still the agent's: the right result is accepted
    complete(conn, row["id"], result=good)
    assert job(conn, row["id"])["state"] == "done"


def test_a_completion_takes_typed_arguments_not_json(conn):
    """The outcome travels as the completion's typed arguments: a JSON result, or a pair that is not
    (algo, cert, key, chain) text, does not reach any function; the job stays the agent's."""
    at(conn, T0)
    add_cert(conn, algo="ec")
    conn.execute("SELECT * FROM request_create()").fetchall()
    [row] = claim(conn)
    token = lease_of(conn, row["id"], "a1")
    before = jobs_snapshot(conn)
    with pytest.raises(psycopg.errors.UndefinedFunction):
        conn.execute("SELECT complete_issue(%s, %s::uuid, %s::jsonb)", (row["id"], token, json.dumps(pairs_for(conn, row, T0))))
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        conn.execute("SELECT complete_issue(%s, %s::uuid, ARRAY[%s::jsonb::text]::dd.issued_pair[])",
                     (row["id"], token, json.dumps({"algo": "ec"})))
    assert jobs_snapshot(conn) == before
    complete(conn, row["id"], result=pairs_for(conn, row, T0))
    assert job(conn, row["id"])["state"] == "done"


def test_complete_issue_job_with_an_unknown_cacert_is_refused(conn):
    at(conn, T0)
    add_cert(conn, cert_type="local")   # an ACME result names its issuer by the chain
    conn.execute("SELECT * FROM request_create()").fetchall()
    [row] = claim(conn)
    good = pairs_for(conn, row, T0)
    before_jobs = jobs_snapshot(conn)
    assert_refused(conn, *completion_call(conn, row["id"], lease_of(conn, row["id"], "a1"), {**good, "cacert": 999999}),
                   sqlstate="SP023", match="cacert 999999")
    assert jobs_snapshot(conn) == before_jobs


def test_complete_issue_job_whose_instance_is_gone_is_refused(conn):
    at(conn, T0)
    add_cert(conn)
    conn.execute("SELECT * FROM request_create()").fetchall()
    [row] = claim(conn)
    owner_conn(conn).execute("UPDATE certinstances SET state = 'revoked' WHERE id = %s", (row["instance"],))
    assert_refused(conn, *completion_call(conn, row["id"], lease_of(conn, row["id"], "a1"), pairs_for(conn, row, T0)),
                   sqlstate="SP023", match="reserved instance is gone")
    # the hint says what to do, and it works
    assert fail(conn, row["id"], error="instance gone", retry=False) == "dead"


def test_complete_job_needs_the_holder(conn):
    j = enqueue(conn, "mail_reminder", "x")
    assert_refused(conn, *completion_call(conn, j, lease_of(conn, j, "a1")), sqlstate="SP022", match="is queued")
    claim(conn, "a1")
    assert_refused(conn, *completion_call(conn, j, lease_of(conn, j, "a2")), sqlstate="SP022")
    complete(conn, j, "a1", {"sent_to": ["ops@example.org"]})
    assert_refused(conn, *completion_call(conn, j, lease_of(conn, j, "a1")), sqlstate="SP022", match="is done")
    assert job(conn, j)["result"] == {"sent_to": ["ops@example.org"]}


def test_tlsa_job_completes_when_the_wanted_set_changed_meanwhile(conn):
    """A publish_tlsa job runs while the active instance is revoked: its completion enqueues the new wish."""
    dep = deployed_cert(conn, tlsa=True)
    cert, active = dep["certificate"], dep["instance"]
    # rule 9: 30 days before the end (a third of 90 days), issue a successor and prepublish it
    day61 = T0 + dt.timedelta(days=61)
    at(conn, day61)
    conn.execute("SELECT * FROM schedule()").fetchall()
    run_jobs(conn, day61, kinds=list(ISSUE_KINDS))
    succ = conn.execute("SELECT id FROM certinstances WHERE certificate = %s AND state = 'issued'", (cert,)).fetchone()[0]
    [tlsa] = claim(conn, kinds=["publish_tlsa"])
    assert tlsa["args"]["instances"] == [active, succ] and tlsa["args"]["prepublish"] == succ
    conn.execute("SELECT * FROM request_revoke(%s, 'keyCompromise')", (active,))
    complete(conn, tlsa["id"])
    assert job(conn, tlsa["id"])["state"] == "done"
    assert conn.execute("SELECT state FROM certinstances WHERE id = %s", (succ,)).fetchone()[0] == "prepublished"
    [again] = conn.execute("SELECT args FROM jobs WHERE kind = 'publish_tlsa' AND state = 'queued'").fetchone()
    assert again["instances"] == [succ]


def successor_while_tlsa_runs(conn) -> dict:
    """A deployed instance with TLSA; a publish_tlsa job (-T) running under agent a1; then, as an issue
    job's follow-up does, a successor is issued and enqueue_tlsa asked to prepublish it."""
    dep = deployed_cert(conn, tlsa=True)
    cert, active = dep["certificate"], dep["instance"]
    day10 = T0 + dt.timedelta(days=10)
    at(conn, day10)
    owner_conn(conn).execute("SELECT enqueue_tlsa(%s, 'test: -T')", (cert,))
    [tlsa] = claim(conn, kinds=["publish_tlsa"])
    conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY['www.example.org']))").fetchall()
    run_jobs(conn, day10, kinds=list(ISSUE_KINDS))
    succ = conn.execute("SELECT id FROM certinstances WHERE certificate = %s AND state = 'issued'", (cert,)).fetchone()[0]
    return {"certificate": cert, "active": active, "successor": succ, "tlsa": tlsa}


def queued_tlsa_args(conn, cert: int) -> list[dict]:
    return [r[0] for r in conn.execute("SELECT args FROM jobs WHERE kind = 'publish_tlsa' AND certificate = %s "
                                       "AND state = 'queued'", (cert,))]


@pytest.mark.parametrize("asked_by", ["enqueue_tlsa", "enqueue_tlsa_many"])
def test_a_prepublication_asked_while_the_tlsa_job_runs_is_enqueued_by_its_completion(conn, asked_by):
    """The running job takes no new args and its re-check compares only what DNS should hold without the
    successor: the request waits in tlsa_wishes, and the completion enqueues it (it was dropped before)."""
    r = successor_while_tlsa_runs(conn)
    cert, succ = r["certificate"], r["successor"]
    call = ("SELECT enqueue_tlsa(%s, 'issued by job 7: prepublish TLSA', %s)" if asked_by == "enqueue_tlsa" else
            "SELECT * FROM enqueue_tlsa_many(ARRAY[%s], ARRAY['issued by job 7: prepublish TLSA'], ARRAY[%s])")
    owner_conn(conn).execute(call, (cert, succ))
    assert job(conn, r["tlsa"]["id"])["args"] == r["tlsa"]["args"], "the running job's args changed under its agent"
    assert queued_tlsa_args(conn, cert) == []
    complete(conn, r["tlsa"]["id"])
    assert queued_tlsa_args(conn, cert) == [{"instances": [r["active"], succ], "prepublish": succ, "remove": False}]
    [reason] = conn.execute("SELECT reason FROM jobs WHERE kind = 'publish_tlsa' AND state = 'queued'").fetchone()
    assert reason == f"issued by job 7: prepublish TLSA (asked while job {r['tlsa']['id']} ran)"
    assert owner_conn(conn).execute("SELECT count(*) FROM tlsa_wishes").fetchone()[0] == 0
    run_jobs(conn, T0 + dt.timedelta(days=10), kinds=["publish_tlsa"])
    assert conn.execute("SELECT state FROM certinstances WHERE id = %s", (succ,)).fetchone()[0] == "prepublished"


def wishes(conn) -> int:
    return owner_conn(conn).execute("SELECT count(*) FROM tlsa_wishes").fetchone()[0]


def test_the_newest_wish_counts_and_a_gone_successor_is_not_prepublished(conn):
    """A removal asked while the job runs replaces a prepublication and is carried out; a later plain wish
    replaces the removal and keeps no successor (the removal dropped it); a successor no longer issued is
    not prepublished, the records of what is wanted are published again."""
    r = successor_while_tlsa_runs(conn)
    cert, succ = r["certificate"], r["successor"]
    owner = owner_conn(conn)
    owner.execute("SELECT enqueue_tlsa(%s, 'prepublish', %s)", (cert, succ))
    owner.execute("SELECT enqueue_tlsa(%s, 'certificate disabled: remove', NULL, true)", (cert,))
    wish = lambda: owner.execute("SELECT prepublish, remove, reason FROM tlsa_wishes").fetchall()
    assert wish() == [(None, True, "certificate disabled: remove")]
    owner.execute("SELECT enqueue_tlsa(%s, 'configuration changed')", (cert,))
    assert wish() == [(None, False, "configuration changed")]
    owner.execute("SELECT enqueue_tlsa(%s, 'prepublish', %s)", (cert, succ))
    owner.execute("SELECT enqueue_tlsa(%s, 'configuration changed')", (cert,))
    assert wish() == [(succ, False, "configuration changed")]
    owner.execute("UPDATE certinstances SET state = 'expired' WHERE id = %s", (succ,))
    complete(conn, r["tlsa"]["id"])
    assert queued_tlsa_args(conn, cert) == [{"instances": [r["active"]], "prepublish": None, "remove": False}]
    assert wishes(conn) == 0


def test_a_removal_asked_while_the_tlsa_job_runs_is_carried_out(conn):
    """It was lost: the running job published, and its re-check saw the same instances wanted."""
    r = successor_while_tlsa_runs(conn)
    owner_conn(conn).execute("SELECT enqueue_tlsa(%s, 'certificate disabled: remove', NULL, true)", (r["certificate"],))
    complete(conn, r["tlsa"]["id"])
    assert queued_tlsa_args(conn, r["certificate"]) == [{"instances": [], "prepublish": None, "remove": True}]


def test_a_wish_kept_for_a_job_that_fails_goes_with_the_pending_job(conn):
    """The job fails and waits for its retry: a later plain wish carries the kept prepublication on, a
    removal (-R) replaces it; either way the retried job's completion has no old wish to carry out."""
    r = successor_while_tlsa_runs(conn)
    cert, succ = r["certificate"], r["successor"]
    owner = owner_conn(conn)
    owner.execute("SELECT enqueue_tlsa(%s, 'prepublish', %s)", (cert, succ))
    assert fail(conn, r["tlsa"]["id"]) == "failed"
    owner.execute("SELECT enqueue_tlsa(%s, 'instance deployed: the active one only')", (cert,))
    assert job(conn, r["tlsa"]["id"])["args"] == {"instances": [r["active"], succ], "prepublish": succ, "remove": False}
    assert wishes(conn) == 0
    owner.execute("SELECT enqueue_tlsa(%s, 'prepublish', %s)", (cert, succ))   # pending: no wish to keep
    owner.execute("SELECT enqueue_tlsa(%s, 'requested (-R)', NULL, true)", (cert,))
    at(conn, T0 + dt.timedelta(days=11))
    [again] = claim(conn, kinds=["publish_tlsa"])
    assert again["id"] == r["tlsa"]["id"] and again["args"]["remove"] is True
    complete(conn, again["id"])
    assert queued_tlsa_args(conn, cert) == [] and wishes(conn) == 0


def test_a_wish_kept_for_a_job_that_dies_is_not_carried_out(conn):
    """The dying job's transaction takes no lock_tlsa (it would deadlock with an enqueue_tlsa waiting for
    the job's row); its wish stays, but no later job carries it out: the next request replaces it."""
    r = successor_while_tlsa_runs(conn)
    cert = r["certificate"]
    owner_conn(conn).execute("SELECT enqueue_tlsa(%s, 'prepublish', %s)", (cert, r["successor"]))
    assert fail(conn, r["tlsa"]["id"], retry=False) == "dead"
    owner_conn(conn).execute("SELECT enqueue_tlsa(%s, 'test: -T')", (cert,))
    assert queued_tlsa_args(conn, cert) == [{"instances": [r["active"]], "prepublish": None, "remove": False}]
    assert wishes(conn) == 0


def test_a_plain_request_keeps_the_prepublication_a_pending_job_was_asked(conn):
    """A configuration change or a -T while the prepublish job waits must not drop the successor from it."""
    r = successor_while_tlsa_runs(conn)
    cert, succ = r["certificate"], r["successor"]
    complete(conn, r["tlsa"]["id"])
    owner = owner_conn(conn)
    owner.execute("SELECT enqueue_tlsa(%s, 'prepublish', %s)", (cert, succ))
    owner.execute("SELECT enqueue_tlsa(%s, 'test: -T')", (cert,))
    owner.execute("SELECT * FROM enqueue_tlsa_many(ARRAY[%s], ARRAY['the pass'], ARRAY[NULL]::int[])", (cert,))
    assert queued_tlsa_args(conn, cert) == [{"instances": [r["active"], succ], "prepublish": succ, "remove": False}]


def test_the_pass_deleting_a_wished_successor_while_the_tlsa_job_completes_is_no_lock_cycle(conn, dsn):
    """The scheduler deletes instances (rules 1, 4) before it takes lock_tlsa_many; the completion holds
    lock_tlsa and reads the wishes: the wish must not be locked through the deleted instance."""
    r = successor_while_tlsa_runs(conn)
    cert, succ = r["certificate"], r["successor"]
    ts = owner_conn(conn)
    ts.execute("SELECT enqueue_tlsa(%s, 'prepublish', %s)", (cert, succ))
    with psycopg.connect(dsn, autocommit=True) as tp:
        at(tp, T0 + dt.timedelta(days=10))
        tp.execute("SET lock_timeout = '10s'")
        ts.execute("BEGIN")
        ts.execute("DELETE FROM certinstances WHERE id = %s", (succ,))   # as rule 4 does, before lock_tlsa_many
        outcome: dict = {}
        worker = in_thread(outcome, complete, tp, r["tlsa"]["id"])      # lock_tlsa, then the wish
        worker.join(5)
        completion_waited = worker.is_alive()
        ts.execute("SELECT lock_tlsa_many(ARRAY[%s])", (cert,))           # the pass goes on
        ts.execute("COMMIT")
        worker.join(15)
        assert not worker.is_alive() and "error" not in outcome, outcome.get("error")
    assert not completion_waited, "the completion waited for the pass's deleted instance"
    assert job(conn, r["tlsa"]["id"])["state"] == "done" and wishes(conn) == 0


def test_a_TLSA_owner_added_to_a_certificate_in_service_is_published_by_the_next_run(conn):
    """A TLSA service linked, a service's prefix changed: the records of the deployed instance follow now,
    not at the next renewal (tlsa_owners_changed); a certificate with nothing in DNS gets no job, nor does an
    alt name (not in the instance served) or an update that changes no owner."""
    dep = deployed_cert(conn, tlsa=True)
    cert, active = dep["certificate"], dep["instance"]
    add_cert(conn, "later.example.org", tlsa=True)
    assert queued_tlsa_args(conn, cert) == []

    def published(change: str, *args) -> str:
        conn.execute(change, args)
        [(job_id, args_, reason)] = conn.execute("SELECT id, args, reason FROM jobs WHERE kind = 'publish_tlsa' "
                                                 "AND state = 'queued'").fetchall()
        assert args_ == {"instances": [active], "prepublish": None, "remove": False}
        run_jobs(conn, T0, kinds=["publish_tlsa"])
        return reason

    conn.execute("SELECT add_tlsa_service('submissions', 465, '_465._tcp.{}. 3600 IN TLSA 3 1 1')")
    assert "www.example.org changed (a TLSA service linked to it)" in published("SELECT add_service('www.example.org', 'submissions', 465)")
    assert "www.example.org changed (a TLSA service's prefix or port)" in published("UPDATE services SET tlsaprefix = '_465._tcp.{}. 3600 IN TLSA 2 1 1' WHERE port = 465")
    # the instance in service does not carry a new alt name: its records come with the successor's
    conn.execute("SELECT add_altname('www.example.org', 'alt.example.org')")
    conn.execute("UPDATE subjects SET remarks = 'no owner changes' WHERE name = 'alt.example.org'")
    conn.execute("UPDATE services SET remarks = 'nor here' WHERE port = 465")
    assert conn.execute("SELECT count(*) FROM jobs WHERE kind = 'publish_tlsa' AND state = 'queued'").fetchone()[0] == 0



def test_a_TLSA_owner_that_goes_has_its_records_withdrawn_by_the_next_run(conn):
    """A service detached, an alt name removed or renamed: a publish_tlsa job follows (tlsa_owners_changed),
    whose handler deletes the RRsets of the owners gone (tlsa_owners_in_dns). A certificate removed, or an
    update that changes no owner, gets none."""
    dep = deployed_cert(conn, tlsa=True)
    cert = dep["certificate"]
    conn.execute("SELECT add_tlsa_service('submissions', 465, '_465._tcp.{}. 3600 IN TLSA 3 1 1')")
    conn.execute("SELECT add_service('www.example.org', 'submissions', 465)")
    conn.execute("SELECT add_altname('www.example.org', 'alt.example.org')")
    run_jobs(conn, T0, kinds=["publish_tlsa"])

    def reason_of_job_after(change: str, *args) -> str:
        conn.execute(change, args)
        [(reason,)] = conn.execute("SELECT reason FROM jobs WHERE kind = 'publish_tlsa' AND state = 'queued'").fetchall()
        run_jobs(conn, T0, kinds=["publish_tlsa"])
        return reason

    assert "(a TLSA service detached)" in reason_of_job_after("SELECT remove_service('www.example.org', 'submissions', 465)")
    assert "(a name changed)" in reason_of_job_after("UPDATE subjects SET name = 'alt2.example.org' WHERE name = 'alt.example.org'")
    assert "(a name removed)" in reason_of_job_after("SELECT remove_altname('www.example.org', 'alt2.example.org')")
    conn.execute("UPDATE subjects SET remarks = 'no owner changes' WHERE certificate = %s", (cert,))
    # a publish_tlsa job that may still write records: not removed until it ended (SP029), nothing changed
    conn.execute("SELECT add_service('www.example.org', 'submissions', 465)")
    [(job,)] = conn.execute("SELECT id FROM jobs WHERE kind = 'publish_tlsa' AND state = 'queued'").fetchall()
    err = assert_refused(conn, "SELECT remove_cert('www.example.org')", sqlstate="SP029",
                         match=f"has publish_tlsa job {job} (queued), which may write TLSA records")
    assert f"WHERE id = {job}" in err.diag.message_hint
    # (a completion that reports no owner in DNS); an owner kept whose zone went elsewhere refuses it too,
    # until the operator, who removed the records there, forgets it
    run_jobs(conn, T0, kinds=["publish_tlsa"])
    owner_conn(conn).execute("INSERT INTO tlsa_owners_in_dns (owner, certificate) VALUES ('_443._tcp.www.moved.example.', %s)", (cert,))
    err = assert_refused(conn, "SELECT remove_cert('www.example.org')", sqlstate="SP029",
                         match="has TLSA records in DNS at _443._tcp.www.moved.example.")
    assert "SELECT forget_tlsa_owners('www.example.org')" in err.diag.message_hint
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary))
    assert conn.execute("SELECT * FROM forget_tlsa_owners('www.example.org', ARRAY['_25._tcp.other.example.'])").fetchall() == []
    assert notices == ["certificate www.example.org: _25._tcp.other.example. not kept as in DNS for it, nothing to forget there"]
    assert_refused(conn, "SELECT * FROM forget_tlsa_owners('www.example.org', ARRAY['www.moved.example.'])", sqlstate="SP001",
                   match="www.moved.example. is not a TLSA owner name")
    assert conn.execute("SELECT * FROM forget_tlsa_owners('WWW.example.org', ARRAY['_443._TCP.www.moved.example'])"
                        ).fetchall() == [("_443._tcp.www.moved.example.",)]
    conn.execute("SELECT remove_cert('www.example.org')")
    assert conn.execute("SELECT count(*) FROM jobs WHERE kind = 'publish_tlsa' AND state = 'queued'").fetchone()[0] == 0


def test_remove_cert_waits_for_a_completion_that_hands_an_owner_to_the_certificate(conn, dsn):
    """A name moved to X: Y's publish_tlsa completion drops Y's record of the owner and enqueues X's job (its
    records follow). remove_cert(X) while that completion is not committed waits for it, then is refused for
    X's job (SP029): checked before, it would see neither, and X would go with Y's records left in DNS."""
    x = deployed_cert(conn, tlsa=True)["certificate"]
    y = deployed_cert(conn, "other.example.org", tlsa=True)["certificate"]
    moved = "_443._tcp.www.example.org."
    owner = owner_conn(conn)
    owner.execute("DELETE FROM tlsa_owners_in_dns")
    owner.execute("INSERT INTO tlsa_owners_in_dns VALUES (%s, %s)", (moved, y))
    owner.execute("SELECT enqueue_tlsa(%s, 'test: the name moved')", (y,))
    [of_y] = claim(conn, kinds=["publish_tlsa"])
    assert of_y["certificate"] == y
    token = lease_of(conn, of_y["id"], "a1")
    outcome: dict = {}
    with psycopg.connect(dsn) as completing, psycopg.connect(dsn, autocommit=True) as operator:
        at(completing, T0)
        at(operator, T0)
        completing.execute(*completion_call(completing, of_y["id"], token, {"in_dns": ["_443._tcp.other.example.org."]}))
        remover = in_thread(outcome, operator.execute, "SELECT remove_cert('www.example.org')")
        remover.join(1)
        assert remover.is_alive(), "remove_cert did not wait for the completion that enqueued a job of it"
        completing.commit()
        remover.join(15)
    assert outcome["error"].diag.sqlstate == "SP029" and "has publish_tlsa job" in outcome["error"].diag.message_primary
    assert conn.execute("SELECT count(*) FROM certificates WHERE id = %s", (x,)).fetchone()[0] == 1


def test_the_publish_tlsa_completion_keeps_the_owners_in_DNS_and_refuses_a_malformed_or_foreign_list(conn):
    """keep_owners_in_dns: the owners written become the certificate's, the ones withdrawn or abandoned
    (their zone given up) go, a refused one stays for the next job; one it had that another certificate in service
    configures now goes to that one's job; owner names compare in lower case; an owner not of the job's
    certificate, or not an owner name, is refused (SP023)."""
    cert = deployed_cert(conn, name="WWW.example.org", tlsa=True)["certificate"]
    other = deployed_cert(conn, name="moved.example.org", tlsa=True)["certificate"]
    owner_conn(conn).execute("SELECT enqueue_tlsa(%s, 'test: -T')", (cert,))
    [j] = claim(conn, kinds=["publish_tlsa"])
    call = "SELECT complete_publish_tlsa(%s, %s::uuid, %s::jsonb)"
    lease = lease_of(conn, j["id"], "a1")
    assert_refused(conn, call, (j["id"], lease, json.dumps({"in_dns": "_443._tcp.www.example.org."})),
                   sqlstate="SP023", match='"in_dns" is not a list of TLSA owner names')
    assert_refused(conn, call, (j["id"], lease, json.dumps({"withdrawn": [443]})), sqlstate="SP023")
    assert_refused(conn, call, (j["id"], lease, json.dumps({"abandoned": ["not a name"]})), sqlstate="SP023")
    assert_refused(conn, call, (j["id"], lease, json.dumps({"in_dns": ["_25._tcp.handmade.example.net."]})),
                   sqlstate="SP023", match="names _25._tcp.handmade.example.net. as written, not an owner of its certificate")
    # the owners the certificate had: withdrawn, abandoned, and one whose name moved to the other certificate
    owner_conn(conn).execute("INSERT INTO tlsa_owners_in_dns (owner, certificate) VALUES ('_25._tcp.www.example.org.', %s), "
                             "('_443._tcp.old.example.net.', %s), ('_443._tcp.given-up.example.net.', %s), "
                             "('_443._tcp.moved.example.org.', %s)", (cert, cert, cert, cert))
    conn.execute(call, (j["id"], lease, json.dumps({"in_dns": ["_443._tcp.WWW.example.org."],
                                                    "withdrawn": ["_25._tcp.www.example.org."],
                                                    "abandoned": ["_443._tcp.given-up.example.net."],
                                                    "not_withdrawn": ["_443._tcp.old.example.net."]})))
    assert conn.execute("SELECT owner, certificate FROM tlsa_owners_in_dns ORDER BY owner").fetchall() == [
        ("_443._tcp.old.example.net.", cert), ("_443._tcp.www.example.org.", cert)]
    [(reason,)] = conn.execute("SELECT reason FROM jobs WHERE kind = 'publish_tlsa' AND state = 'queued' AND certificate = %s",
                               (other,)).fetchall()
    assert reason.startswith(f"TLSA owner _443._tcp.moved.example.org. came from WWW.example.org (publish_tlsa job {j['id']})"), reason
    assert conn.execute("SELECT owner FROM tlsa_owners WHERE certificate = %s", (cert,)).fetchall() == [
        ("_443._tcp.www.example.org.",)]

def test_a_disabled_certificate_whose_records_were_removed_gets_none_back_by_a_configuration_change(conn):
    dep = deployed_cert(conn, tlsa=True)
    owner_conn(conn).execute("SELECT enqueue_tlsa(%s, 'test: -R', remove => true)", (dep["certificate"],))
    run_jobs(conn, T0, kinds=["publish_tlsa"])
    assert conn.execute("SELECT count(*) FROM certinstances WHERE tlsa_published IS NOT NULL").fetchone()[0] == 0
    conn.execute("SELECT disable_cert('www.example.org')")
    conn.execute("SELECT add_altname('www.example.org', 'alt.example.org')")
    conn.execute("SELECT remove_altname('www.example.org', 'alt.example.org')")
    conn.execute("SELECT add_tlsa_service('submissions', 465, '_465._tcp.{}. 3600 IN TLSA 3 1 1')")
    conn.execute("SELECT add_service('www.example.org', 'submissions', 465)")
    assert conn.execute("SELECT count(*) FROM jobs WHERE kind = 'publish_tlsa' AND state = 'queued'").fetchone()[0] == 0

def rollover_while_tlsa_runs(conn) -> dict:
    """An active instance and a prepublished successor (TLSA out for 2 x TTL); running under agent a1: a
    publish_tlsa job for both (-T) and the successor's distribute job, whose completion deploys it."""
    dep = deployed_cert(conn, tlsa=True)
    cert, active = dep["certificate"], dep["instance"]
    day61 = T0 + dt.timedelta(days=61)
    at(conn, day61)
    conn.execute("SELECT * FROM schedule()").fetchall()
    run_jobs(conn, day61)                     # issue the successor, prepublish its TLSA
    succ = conn.execute("SELECT id FROM certinstances WHERE certificate = %s AND state = 'prepublished'",
                        (cert,)).fetchone()[0]
    later = day61 + dt.timedelta(days=1)      # TTL 3600 s: twice it has passed
    at(conn, later)
    owner_conn(conn).execute("SELECT enqueue_tlsa(%s, 'test: -T')", (cert,))
    owner_conn(conn).execute("SELECT enqueue_distribution(ARRAY[%s], selection(), 'deploy', 'test: -D')", (succ,))
    [tlsa] = claim(conn, kinds=["publish_tlsa"])
    [dist] = claim(conn, kinds=["distribute"])
    assert tlsa["args"]["instances"] == [active, succ]
    return {"certificate": cert, "active": active, "successor": succ, "tlsa": tlsa["id"], "distribute": dist["id"],
            "when": later}


def waits_for(conn, other: psycopg.Connection) -> list[str]:
    """The kinds of lock the other session waits for."""
    return [r[0] for r in conn.execute("SELECT locktype FROM pg_locks WHERE pid = %s AND NOT granted",
                                       (other.info.backend_pid,)).fetchall()]


def in_thread(outcome: dict, call, *args) -> threading.Thread:
    def run():
        try:
            call(*args)
        except psycopg.Error as exc:          # reported by the test
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    return worker


def blocked_until_commit(conn, holder: psycopg.Connection, waiter: psycopg.Connection, call, *args) -> list[str]:
    """Run call(waiter, *args) in a thread while holder's transaction is open, commit holder, and return
    the kinds of lock the waiter waited for meanwhile (empty: it did not wait); the call must succeed."""
    outcome: dict = {}
    worker = in_thread(outcome, call, waiter, *args)
    time.sleep(0.5)
    locks = waits_for(conn, waiter) if worker.is_alive() else []
    holder.execute("COMMIT")
    worker.join(15)
    assert not worker.is_alive() and "error" not in outcome, outcome.get("error")
    return locks


def test_tlsa_job_completing_while_a_change_commits_publishes_the_change(conn, dsn):
    """A distribute job's completion (TD) deploys the successor while the publish_tlsa job completes (TP):
    TD's enqueue_tlsa leaves the running job alone, so TP's re-check must see TD's change. It waits for
    TD's lock_tlsa; without it, it read the old wanted set and the new one was never published."""
    r = rollover_while_tlsa_runs(conn)
    with psycopg.connect(dsn, autocommit=True) as td, psycopg.connect(dsn, autocommit=True) as tp:
        at(td, r["when"])
        at(tp, r["when"])
        tp.execute("SET lock_timeout = '10s'")
        td.execute("BEGIN")
        complete(td, r["distribute"])         # successor deployed, active expired; publish_tlsa is running
        locks = blocked_until_commit(conn, td, tp, complete, r["tlsa"])
    assert job(conn, r["tlsa"])["state"] == "done"
    wanted = owner_conn(conn).execute("SELECT tlsa_wanted(%s)", (r["certificate"],)).fetchone()[0]
    assert wanted == [r["successor"]]
    queued = conn.execute("SELECT args FROM jobs WHERE kind = 'publish_tlsa' AND certificate = %s AND state = 'queued'",
                          (r["certificate"],)).fetchall()
    assert [q[0]["instances"] for q in queued] == [wanted], "the deployment's TLSA wish was lost"
    assert locks == ["advisory"], f"the publish_tlsa completion did not wait (waited for {locks})"


def test_change_committing_while_a_tlsa_job_completes_enqueues_afresh(conn, dsn):
    """The other order: TP completes the publish_tlsa job first (its re-check finds nothing new) and holds
    lock_tlsa; TD's enqueue_tlsa waits for it, then finds the job done and enqueues a fresh one."""
    r = rollover_while_tlsa_runs(conn)
    with psycopg.connect(dsn, autocommit=True) as td, psycopg.connect(dsn, autocommit=True) as tp:
        at(td, r["when"])
        at(tp, r["when"])
        td.execute("SET lock_timeout = '10s'")
        tp.execute("BEGIN")
        complete(tp, r["tlsa"])
        assert tp.execute("SELECT count(*) FROM jobs WHERE kind = 'publish_tlsa' AND state = 'queued'").fetchone()[0] == 0
        locks = blocked_until_commit(conn, tp, td, complete, r["distribute"])
    assert locks == ["advisory"], f"the deployment's enqueue_tlsa did not wait for lock_tlsa ({locks})"
    assert job(conn, r["tlsa"])["state"] == "done"
    [(fresh, args)] = conn.execute("SELECT id, args FROM jobs WHERE kind = 'publish_tlsa' AND certificate = %s "
                                   "AND state = 'queued'", (r["certificate"],)).fetchall()
    assert fresh > r["tlsa"]
    assert args["instances"] == [r["successor"]] == owner_conn(conn).execute("SELECT tlsa_wanted(%s)", (r["certificate"],)).fetchone()[0]


def test_a_prepublication_committing_while_the_tlsa_job_completes_is_not_lost(conn, dsn):
    """TD asks the running job's certificate for a prepublication and holds lock_tlsa; TP (the job's
    completion) holds the job's row and waits for that lock, then reads TD's wish: no lock cycle (the wish
    is not written to the job's row), nothing lost."""
    r = successor_while_tlsa_runs(conn)
    td = owner_conn(conn)                      # enqueue_tlsa is internal: an issue completion's follow-up
    with psycopg.connect(dsn, autocommit=True) as tp:
        at(tp, T0 + dt.timedelta(days=10))
        tp.execute("SET lock_timeout = '10s'")
        td.execute("BEGIN")
        td.execute("SELECT enqueue_tlsa(%s, 'prepublish', %s)", (r["certificate"], r["successor"]))
        locks = blocked_until_commit(conn, td, tp, complete, r["tlsa"]["id"])
    assert locks == ["advisory"], f"the publish_tlsa completion did not wait (waited for {locks})"
    assert [a["prepublish"] for a in queued_tlsa_args(conn, r["certificate"])] == [r["successor"]]


def test_enqueue_tlsa_many_does_what_enqueue_tlsa_does_row_by_row(conn):
    """The set-based variant for the scheduler: a new job, a pending job given the newest wish, a running one left alone."""
    fresh, pending, running = (deployed_cert(conn, f"{n}.example.org", tlsa=True)["certificate"]
                               for n in ("fresh", "pending", "running"))
    day10 = T0 + dt.timedelta(days=10)
    at(conn, day10)
    conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY['fresh.example.org']))").fetchall()
    run_jobs(conn, day10)
    succ = conn.execute("SELECT id FROM certinstances WHERE certificate = %s AND state = 'issued'", (fresh,)).fetchone()[0]
    owner_conn(conn).execute("SELECT enqueue_tlsa(%s, 'old wish')", (running,))
    [busy] = claim(conn, kinds=["publish_tlsa"])
    owner_conn(conn).execute("SELECT enqueue_tlsa(%s, 'old wish')", (pending,))
    # a certificate given twice: the last counts, as with calls one after the other
    certs, reasons, prepublish = ([fresh, pending, running, pending], ["why fresh", "why pending", "why running", "why pending again"],
                                  [succ, None, None, None])
    columns = "kind, subject_key, reason, args, certificate, state, priority, max_attempts, run_after, locked_by"

    # the enqueue functions are internal: the owner compares them, each in a transaction of its own
    owner = owner_conn(conn)

    def queue():
        return (owner.execute(f"SELECT {columns} FROM jobs ORDER BY certificate, id").fetchall(),
                owner.execute("SELECT certificate, prepublish, remove, reason FROM tlsa_wishes ORDER BY 1").fetchall())

    owner.execute("BEGIN")
    one_by_one = [owner.execute("SELECT enqueue_tlsa(%s, %s, %s)", (c, r, p)).fetchone()[0]
                  for c, r, p in zip(certs, reasons, prepublish)]
    expected = queue()
    owner.execute("ROLLBACK")
    owner.execute("BEGIN")
    many = owner.execute("SELECT job, certificate FROM enqueue_tlsa_many(%s, %s, %s) ORDER BY certificate",
                         (certs, reasons, prepublish)).fetchall()
    got = queue()
    owner.execute("COMMIT")
    assert got == expected
    assert [c for _j, c in many] == [fresh, pending]
    assert one_by_one[2] is None and many[1][0] == one_by_one[1]
    new = job(conn, many[0][0])
    assert new["args"] == {"instances": sorted([deployed_instance(conn, fresh), succ]), "prepublish": succ, "remove": False}
    assert job(conn, many[1][0])["reason"] == "why pending again"
    assert job(conn, busy["id"])["reason"] == "old wish" and got[1] == [(running, None, False, "why running")]
    assert owner_conn(conn).execute("SELECT count(*) FROM enqueue_tlsa_many('{}', '{}', '{}')").fetchone()[0] == 0


def deployed_instance(conn, cert: int) -> int:
    return conn.execute("SELECT id FROM certinstances WHERE certificate = %s AND state = 'deployed'", (cert,)).fetchone()[0]


# --------------------------------------------------------------------------- without_secrets

@pytest.mark.parametrize("doc, expected", [
    ({"a": 1, "key": "k"}, {"a": 1}),
    ({"private_key": "x", "passphrase": "p", "password": "w", "secret": "s", "hmac_key": "h", "account_key": "k"}, {}),
    ({"pairs": [{"algo": "ec", "cert": "C", "key": "K"}]}, {"pairs": [{"algo": "ec", "cert": "C"}]}),
    ({"nested": {"deeper": [{"tsig": {"name": "t", "secret": "s"}}]}}, {"nested": {"deeper": [{"tsig": {"name": "t"}}]}}),
    ({"note": "-----BEGIN PRIVATE KEY-----\nMII..."}, {"note": "(private key removed)"}),
    ({"log": ["ok", "-----BEGIN EC PRIVATE KEY-----\nAB"]}, {"log": ["ok", "(private key removed)"]}),
    ({"k": "-----BEGIN ENCRYPTED PRIVATE KEY-----"}, {"k": "(private key removed)"}),
    ({"cert": "-----BEGIN CERTIFICATE-----\nMII..."}, {"cert": "-----BEGIN CERTIFICATE-----\nMII..."}),
    ({"n": None, "b": True, "i": 3, "f": 1.5, "e": [], "o": {}}, {"n": None, "b": True, "i": 3, "f": 1.5, "e": [], "o": {}}),
    ([1, "two", {"key": 3}], [1, "two", {}]),
    ({"Passphrase": "p", "KEY": "k", "Account_Key": "a", "keys": ["kept"]}, {"keys": ["kept"]}),
    ({"ok": 1, "inner": {"\u212aey": "hunter2"}}, {"ok": 1, "inner": {}}),   # a Kelvin sign: lower() gives 'key'
    ("-----BEGIN RSA PRIVATE KEY-----", "(private key removed)"),
    ("plain", "plain"),
    (42, 42),
    (None, None),
])
def test_without_secrets(conn, doc, expected):
    got = owner_conn(conn).execute("SELECT without_secrets(%s::jsonb)", (None if doc is None else json.dumps(doc),)).fetchone()[0]
    assert got == expected


def test_without_secrets_of_sql_null(conn):
    assert owner_conn(conn).execute("SELECT without_secrets(NULL)").fetchone()[0] is None


# --------------------------------------------------------------------------- NOTIFY

def test_schedule_notifies_listening_agents(conn, dsn):
    add_cert(conn)
    at(conn, T0)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pki_jobs")
        # plan writes nothing and wakes nobody
        assert conn.execute("SELECT action FROM plan()").fetchall() == [("issue",)]
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        conn.execute("SELECT * FROM schedule()").fetchall()
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in got] == [("pki_jobs", "enqueued")]
        assert got[0].pid == conn.info.backend_pid


def test_notification_waits_for_commit(conn, dsn):
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pki_jobs")
        add_cert(conn)
        conn.execute("BEGIN")
        conn.execute("SELECT * FROM request_create()").fetchall()   # enqueues, as -C does
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        conn.execute("COMMIT")
        assert len(list(listener.notifies(timeout=5, stop_after=1))) == 1


# --------------------------------------------------------------------------- report views

@pytest.fixture
def fleet(conn):
    """Two certificates: one deployed to two disthosts (one in a jail), one whose issue job failed."""
    conn.execute("SELECT add_disthost('jails.example.org', '/usr/jails')")
    conn.execute("SELECT add_jail('mail', 'jails.example.org')")
    dep = deployed_cert(conn, "www.example.org", hosts=("web1.example.org",))
    conn.execute("SELECT add_target('www.example.org', 'jails.example.org', 'mail', 'nginx')")
    # the new target gets the instance with -K (consolidate), which adds a deployment
    conn.execute("SELECT * FROM request_consolidate_certs()").fetchall()
    run_jobs(conn, T0)
    add_cert(conn, "mail.example.org", cert_type="LE")
    at(conn, T0 + dt.timedelta(hours=1))
    [(issue_id, _n, issue_inst, _w)] = conn.execute(
        "SELECT * FROM request_create(selection(only_certs => ARRAY['mail.example.org']))").fetchall()
    claim(conn, "a1")
    fail(conn, issue_id, error="DNS update refused")
    return {**dep, "failed_job": issue_id, "reserved": issue_inst}


def test_jobs_summary(conn, fleet):
    rows = conn.execute("SELECT kind, state, jobs, last_error FROM jobs_summary").fetchall()
    # distribute: web1 when issued, then web1 and the jail with -K
    assert rows == [("distribute", "done", 3, None), ("issue_acme", "done", 1, None),
                    ("issue_acme", "failed", 1, "DNS update refused")]


def test_jobs_summary_newest_error_is_deterministic(conn):
    ids = [enqueue(conn, "mail_reminder", f"r{i}") for i in range(3)]
    conn.execute("BEGIN")                          # one transaction: the same updated stamp for all
    claim(conn, n=3)
    for i in ids:
        fail(conn, i, error=f"error of job {i}")
    conn.execute("COMMIT")
    assert conn.execute("SELECT jobs, last_error FROM jobs_summary WHERE state = 'failed'").fetchall() == \
        [(3, f"error of job {ids[-1]}")]


def test_jobs_overview(conn, fleet):
    rows = conn.execute("SELECT id, kind, state, certificate, instance, disthost, attempts, locked_by, last_error "
                        "FROM jobs_overview").fetchall()
    assert [r[0] for r in rows] == sorted((r[0] for r in rows), reverse=True)
    assert rows[0] == (fleet["failed_job"], "issue_acme", "failed", "mail.example.org", fleet["reserved"], None, 1, None,
                       "DNS update refused")
    dist = sorted((r[5], r[3], r[4], r[2]) for r in rows if r[1] == "distribute")
    assert dist == [("jails.example.org", "www.example.org", fleet["instance"], "done"),
                    ("web1.example.org", "www.example.org", fleet["instance"], "done"),
                    ("web1.example.org", "www.example.org", fleet["instance"], "done")]
    assert len(rows) == conn.execute("SELECT count(*) FROM jobs").fetchone()[0]


def test_expiring(conn, fleet):
    at(conn, T0 + dt.timedelta(days=80))
    # the issuer of the ACME certificate (an instance of its own, stored from the chain) expires in 2099
    rows = conn.execute("SELECT certificate, type, instance, state, not_after, remaining FROM expiring "
                        "WHERE remaining < interval '1 year'").fetchall()
    assert rows == [("www.example.org", "LE", fleet["instance"], "deployed", T0 + dt.timedelta(days=90),
                     dt.timedelta(days=10))]
    assert conn.execute("SELECT count(*) FROM expiring WHERE remaining < interval '30 days'").fetchone()[0] == 1
    at(conn, T0)
    assert conn.execute("SELECT count(*) FROM expiring WHERE remaining < interval '30 days'").fetchone()[0] == 0


def test_deployed_where(conn, fleet):
    rows = conn.execute("SELECT disthost, jail, place, certificate, instance, state, deployed FROM deployed_where").fetchall()
    assert rows == [("jails.example.org", "mail", "nginx", "www.example.org", fleet["instance"], "deployed", T0),
                    ("web1.example.org", None, "nginx", "www.example.org", fleet["instance"], "deployed", T0)]


def test_instance_history(conn, fleet):
    rows = conn.execute("SELECT certificate, at, from_state, to_state, job_state, reason FROM instance_history "
                        "WHERE instance = %s", (fleet["instance"],)).fetchall()
    transitions = [(r[2], r[3]) for r in rows if r[4] is None]
    assert transitions == [(None, "reserved"), ("reserved", "issued"), ("issued", "deployed")]
    outcomes = sorted(r[5].split(":")[0].split(" job ")[0] for r in rows if r[4] == "done")
    assert outcomes == ["distribute", "distribute", "distribute", "issue_acme"]
    assert {r[0] for r in rows} == {"www.example.org"}
    assert {r[1] for r in rows} == {T0}
    reserved = conn.execute("SELECT to_state, job_state FROM instance_history WHERE instance = %s",
                            (fleet["reserved"],)).fetchall()
    assert reserved == [("reserved", None), (None, "failed")]


def test_report_views_hold_no_key_material(conn, fleet):
    for view in ("jobs_summary", "jobs_overview", "expiring", "deployed_where", "instance_history"):
        text = conn.execute(f"SELECT coalesce(string_agg(v::text, ' '), '') FROM {view} v").fetchone()[0]
        assert "PRIVATE KEY" not in text, view
    assert snapshot(conn)["certkeydata"]          # the keys exist, the views just do not show them
