"""What no session of the login roles may forge (docs/security.md): the clock that leases, guards
and events use; the reason and job of an event; another agent's claim. Each attack of the review
that found them is replayed here, as the roles an operator creates (lab.roles)."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest
from psycopg.rows import dict_row

from certfactory import make_pair
from helpers import assert_refused, completion_call, owner_conn, snapshot
from serverpki import migrate
from lab import roles

UTC = dt.timezone.utc


def as_role(pg_server, dbname: str, role: str) -> psycopg.Connection:
    return psycopg.connect(pg_server.dsn(dbname, role), autocommit=True)


def travel(conn: psycopg.Connection, when: dt.datetime | str) -> None:
    conn.execute("SELECT set_config('pki.now', %s, false)", (when if isinstance(when, str) else when.isoformat(),))


@pytest.fixture
def no_time_travel(conn):
    """The database as installed: time travel off (the template of the tests has it on)."""
    owner_conn(conn).execute("UPDATE pki.time_travel SET enabled = false")
    return conn


def one_cert(conn, name: str = "www.example.org", cert_type: str = "local", tlsa: bool = False) -> None:
    if not conn.execute("SELECT 1 FROM places WHERE name = 'nginx'").fetchone():
        conn.execute("SELECT add_place('nginx', 'separate', '/etc/ssl/{}')")
        conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT * FROM add_cert(%s, 'server', %s, 'ec', false, NULL, %s, %s, 'web1.example.org', NULL, 'nginx')",
                 (name, cert_type, "https" if tlsa else None, 443 if tlsa else None))


def claim(conn, agent: str, kinds=None) -> list[dict]:
    return conn.cursor(row_factory=dict_row).execute("SELECT * FROM claim_jobs(%s, %s, 5)", (agent, kinds)).fetchall()


# --------------------------------------------------------------------------- the clock

def test_a_fresh_install_has_time_travel_off(pg_server):
    name = f"t_fresh_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as su:
        su.execute(f"CREATE DATABASE {name}")
    try:
        with psycopg.connect(pg_server.dsn(name), autocommit=True) as owner:
            migrate.upgrade(owner, log=lambda _line: None)
            assert owner.execute("SELECT enabled FROM pki.time_travel").fetchone()[0] is False
    finally:
        pg_server.drop_database(name)


def test_no_role_can_move_the_clock_unless_the_owner_enabled_time_travel(no_time_travel, pg_server, dbname):
    for role in (roles.CRON, roles.WORKER, roles.READER, roles.OPERATOR):
        with as_role(pg_server, dbname, role) as c:
            assert c.execute("SELECT pki.now() = now()").fetchone()[0]
            travel(c, "2100-01-01")
            with pytest.raises(psycopg.Error) as info:
                c.execute("SELECT pki.now()")
            assert info.value.diag.sqlstate == "SP025", (role, info.value)
            assert "time travel is not enabled" in info.value.diag.message_primary
            assert "RESET pki.now" in info.value.diag.message_hint
            # the switch is the owner's
            c.execute("RESET pki.now")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("UPDATE pki.time_travel SET enabled = true")
    # PGOPTIONS is a SET too
    one_cert(no_time_travel)
    with psycopg.connect(pg_server.dsn(dbname, roles.CRON), autocommit=True, options="-c pki.now=2100-01-01") as c:
        assert_refused(c, "SELECT * FROM request_create()", sqlstate="SP025")


def test_a_future_clock_cannot_take_over_a_running_job(no_time_travel, pg_server, dbname):
    """The review's attack: pki_agent with pki.now = 2100 claimed another agent's running job."""
    conn = no_time_travel
    one_cert(conn)
    conn.execute("SELECT request_local_ca('Local CA', 'ec')")
    with as_role(pg_server, dbname, roles.WORKER) as honest, as_role(pg_server, dbname, roles.WORKER) as rogue:
        [job] = claim(honest, "honest")
        travel(rogue, "2100-01-01")
        before = snapshot(owner_conn(conn))
        assert_refused(rogue, "SELECT * FROM claim_jobs('rogue')", sqlstate="SP025")
        assert snapshot(owner_conn(conn)) == before
        assert conn.execute("SELECT state, locked_by FROM jobs WHERE id = %s", (job["id"],)).fetchone() == ("running", "honest")


def test_the_dane_guard_is_not_fooled_by_a_session_clock(no_time_travel, pg_server, dbname):
    """The review's attack: a session clock past 2 x TTL let complete_distribute deploy a successor early."""
    conn = no_time_travel
    owner = owner_conn(conn)
    one_cert(conn, tlsa=True)
    cert = conn.execute("SELECT cert_id('www.example.org')").fetchone()[0]
    # an active instance and a successor whose TLSA records went out just now (set up by the owner)
    active = owner.execute("INSERT INTO certinstances (certificate, state) VALUES (%s, 'reserved') RETURNING id", (cert,)).fetchone()[0]
    pair = make_pair("www.example.org", "ec", dt.datetime.now(UTC) - dt.timedelta(days=1), 90)
    owner.execute("INSERT INTO certkeydata (certinstance, encryption_algo, cert, key) VALUES (%s, 'ec', %s, %s)",
                  (active, pair["cert"].encode(), pair["key"].encode()))
    for state in ("issued", "deployed"):
        owner.execute("UPDATE certinstances SET state = %s WHERE id = %s", (state, active))
    succ = owner.execute("INSERT INTO certinstances (certificate, state) VALUES (%s, 'reserved') RETURNING id", (cert,)).fetchone()[0]
    pair = make_pair("www.example.org", "ec", dt.datetime.now(UTC), 90)
    owner.execute("INSERT INTO certkeydata (certinstance, encryption_algo, cert, key) VALUES (%s, 'ec', %s, %s)",
                  (succ, pair["cert"].encode(), pair["key"].encode()))
    owner.execute("UPDATE certinstances SET state = 'issued' WHERE id = %s", (succ,))
    owner.execute("UPDATE certinstances SET state = 'prepublished', tlsa_published = now() WHERE id = %s", (succ,))
    with as_role(pg_server, dbname, roles.CRON) as cron:
        travel(cron, dt.datetime.now(UTC) + dt.timedelta(days=1))
        assert_refused(cron, "SELECT * FROM request_distribute(selection(only_certs => ARRAY['www.example.org']))",
                       sqlstate="SP025")
        cron.execute("RESET pki.now")
        # on the real clock the successor is held back, as the DANE-safe order says
        [(job, reason)] = cron.execute(
            "SELECT job, reason FROM request_distribute(selection(only_certs => ARRAY['www.example.org']))").fetchall()
        assert "held back" in reason and "will be deployed after" in reason
        # what it enqueued is the TLSA publication, no distribution
        assert job is None or conn.execute("SELECT kind FROM jobs WHERE id = %s", (job,)).fetchone()[0] == "publish_tlsa"
    assert conn.execute("SELECT count(*) FROM jobs WHERE kind = 'distribute'").fetchone()[0] == 0
    assert conn.execute("SELECT state FROM certinstances WHERE id = %s", (succ,)).fetchone()[0] == "prepublished"


# --------------------------------------------------------------------------- events

def test_events_take_their_reason_and_job_from_the_code_not_from_the_session(conn, pg_server, dbname):
    one_cert(conn)
    conn.execute("SET pki.reason = 'forged reason'")
    conn.execute("SET pki.job = '424242'")
    conn.execute("SELECT * FROM request_create()").fetchall()
    reasons = conn.execute("SELECT reason, job FROM events").fetchall()
    assert reasons == [("issue job enqueued", None)]
    # the context is written by the owner's code only
    for role in (roles.CRON, roles.WORKER, roles.OPERATOR):
        with as_role(pg_server, dbname, role) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT set_context('forged', 1)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("INSERT INTO pki.event_context VALUES (pg_backend_pid(), pg_current_xact_id(), 'forged', 1)")


def test_a_context_of_an_earlier_transaction_is_not_reused(conn):
    """The owner's code wrote a context in one transaction; a later transaction of the same backend that
    changes a state without one records the session user, not the stale reason."""
    owner = owner_conn(conn)
    one_cert(conn)
    cert = conn.execute("SELECT cert_id('www.example.org')").fetchone()[0]
    owner.execute("SELECT set_context('an old reason', 7)")
    inst = owner.execute("INSERT INTO certinstances (certificate, state) VALUES (%s, 'reserved') RETURNING id", (cert,)).fetchone()[0]
    assert owner.execute("SELECT reason, job FROM events WHERE instance = %s", (inst,)).fetchone()[0].startswith("changed directly by")


# --------------------------------------------------------------------------- leases

def test_the_agent_name_gives_no_power_over_a_job(conn, pg_server, dbname):
    """The review's attack: any pki_agent session completed, failed or extended a running job, or read
    its order key, by passing the locked_by name that jobs_overview shows."""
    one_cert(conn)
    conn.execute("SELECT request_local_ca('Local CA', 'ec')")
    with as_role(pg_server, dbname, roles.WORKER) as honest, as_role(pg_server, dbname, roles.WORKER) as rogue, \
            as_role(pg_server, dbname, roles.READER) as reader:
        [job] = claim(honest, "host-1")
        token = job["lease_token"]
        assert isinstance(token, uuid.UUID) and token.version == 4
        shown = reader.execute("SELECT * FROM jobs_overview").fetchall()
        assert str(token) not in repr(shown)
        stored = rogue.execute("SELECT locked_by, lease_hash FROM jobs WHERE id = %s", (job["id"],)).fetchone()
        assert stored[0] == "host-1" and stored[1] != token.bytes
        before = snapshot(owner_conn(conn))
        guesses = [str(uuid.uuid4()), "00000000-0000-0000-0000-000000000000",
                   str(uuid.UUID(bytes=bytes(stored[1][:16])))]   # the stored hash is no token either
        for guess in guesses:
            for sql, params in (("SELECT complete_distribute(%s, %s::uuid, '{}')", ()),
                                ("SELECT fail_job(%s, %s::uuid, 'forged', false)", ()),
                                ("SELECT extend_lease(%s, %s::uuid, '10 hours')", ()),
                                ("SELECT save_job_progress(%s, %s::uuid, '{}')", ()),
                                ("SELECT job_key(%s, %s::uuid, 'ec')", ()),
                                ("SELECT save_job_key(%s, %s::uuid, 'ec', '-----BEGIN PRIVATE KEY-----x')", ())):
                err = assert_refused(rogue, sql, (job["id"], guess, *params), sqlstate="SP022")
                assert "host-1" in err.diag.message_primary and guess not in err.diag.message_primary
        assert snapshot(owner_conn(conn)) == before
        # the claim's own token works
        honest.execute("SELECT extend_lease(%s, %s, '1 minute')", (job["id"], token))
        honest.execute("SELECT fail_job(%s, %s, 'handing it back', true)", (job["id"], token))
        # and is spent: the job was handed back
        assert_refused(honest, "SELECT fail_job(%s, %s, 'again')", (job["id"], token), sqlstate="SP022")
        assert conn.execute("SELECT lease_hash FROM jobs WHERE id = %s", (job["id"],)).fetchone()[0] is None


def test_a_reclaimed_job_refuses_the_old_token(conn, pg_server, dbname):
    """Two agents with the same name (two containers, both hostname-1): the second claim's token is
    not the first one's; the first agent's late result is dropped."""
    one_cert(conn)
    conn.execute("SELECT request_local_ca('Local CA', 'ec')")
    travel(conn, dt.datetime.now(UTC))
    with as_role(pg_server, dbname, roles.WORKER) as a, as_role(pg_server, dbname, roles.WORKER) as b:
        [first] = claim(a, "same-name-1")
        # its lease runs out (the owner moves it back), the next claim requeues it, its back-off passes
        owner_conn(conn).execute("UPDATE jobs SET locked_until = now() - interval '1 minute' WHERE id = %s", (first["id"],))
        assert claim(b, "same-name-1") == []
        owner_conn(conn).execute("UPDATE jobs SET run_after = now() - interval '1 second' WHERE id = %s", (first["id"],))
        [again] = claim(b, "same-name-1")
        assert again["id"] == first["id"] and again["lease_token"] != first["lease_token"]
        assert_refused(a, *completion_call(a, first["id"], first["lease_token"]), sqlstate="SP022")
        b.execute("SELECT extend_lease(%s, %s)", (again["id"], again["lease_token"]))


def test_an_absurd_retry_after_is_held_to_a_day(conn, pg_server, dbname):
    one_cert(conn)
    conn.execute("SELECT request_local_ca('Local CA', 'ec')")
    with as_role(pg_server, dbname, roles.WORKER) as agent:
        [job] = claim(agent, "a")
        before = agent.execute("SELECT now()").fetchone()[0]
        agent.execute("SELECT fail_job(%s, %s, 'rate limited', true, interval '300 years')", (job["id"], job["lease_token"]))
        run_after = conn.execute("SELECT run_after FROM jobs WHERE id = %s", (job["id"],)).fetchone()[0]
        assert dt.timedelta(hours=23) < run_after - before <= dt.timedelta(days=1, seconds=5)
