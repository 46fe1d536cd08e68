"""The agent loop against a real database: outcomes, crashes, leases, follow-ups, LISTEN, reconnects."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest

from helpers import owner_conn
from lab import roles
from lab.postgres import PostgresCluster
from serverpki import migrate
from serverpki.agent import Agent
from serverpki.config import Config
from serverpki.errors import GiveUp, RetryLater
from serverpki.handlers import Completion

CONFIG = Config()   # every default: these handlers read none of it


def make_agent(dsn, handlers: dict, **kw) -> Agent:
    agent = Agent(dsn, CONFIG, name=kw.pop("name", "test-agent"), **kw)
    agent.handlers = handlers
    agent.kinds = sorted(handlers)
    return agent


@pytest.fixture
def kinds(conn):
    owner_conn(conn).execute("""INSERT INTO job_kinds (kind, description, max_attempts) VALUES
        ('t_ok', 'test', 3), ('t_crash', 'test', 3), ('t_retry', 'test', 3), ('t_giveup', 'test', 3), ('t_slow', 'test', 3)""")


def enqueue(conn, kind, key="x", args="{}"):
    return owner_conn(conn).execute("SELECT enqueue(%s, %s, 'test', %s::jsonb)", (kind, key, args)).fetchone()[0]


def job(conn, job_id):
    return conn.execute("SELECT state, attempts, last_error, result FROM jobs WHERE id = %s", (job_id,)).fetchone()


def test_done_job_stores_result_and_event(conn, dsn, kinds):
    jid = enqueue(conn, "t_ok")
    stats = make_agent(dsn, {"t_ok": lambda j, ctx: Completion(report={"echo": j.id})}).drain()
    assert stats.outcomes["done"] == 1 and stats.all_succeeded
    state, attempts, error, result = job(conn, jid)
    assert (state, attempts, error, result) == ("done", 1, None, {"echo": jid})
    assert conn.execute("SELECT job_state FROM events WHERE job = %s", (jid,)).fetchone()[0] == "done"


def test_crashing_handler_becomes_a_failed_job_not_a_crashed_run(conn, dsn, kinds):
    crash = enqueue(conn, "t_crash")
    ok = enqueue(conn, "t_ok")

    def boom(j, ctx):
        raise ZeroDivisionError("handler bug")

    stats = make_agent(dsn, {"t_crash": boom, "t_ok": lambda j, ctx: Completion()}).drain()
    assert stats.outcomes == {"failed": 1, "done": 1}
    assert not stats.all_succeeded
    state, _, error, _ = job(conn, crash)
    assert state == "failed" and error == "ZeroDivisionError: handler bug"
    assert job(conn, ok)[0] == "done"
    row = conn.execute("SELECT state, last_error FROM jobs_overview WHERE id = %s", (crash,)).fetchone()
    assert row == ("failed", "ZeroDivisionError: handler bug")


def test_retry_later_honours_retry_after_and_give_up_is_dead(conn, dsn, kinds):
    retry = enqueue(conn, "t_retry")
    giveup = enqueue(conn, "t_giveup")

    def later(j, ctx):
        raise RetryLater("server busy", retry_after=3600)

    def hopeless(j, ctx):
        raise GiveUp("no such zone")

    make_agent(dsn, {"t_retry": later, "t_giveup": hopeless}).drain()
    assert job(conn, giveup)[:3] == ("dead", 1, "no such zone")
    state, _, error, _ = job(conn, retry)
    assert (state, error) == ("failed", "server busy")
    wait = conn.execute("SELECT run_after - updated FROM jobs WHERE id = %s", (retry,)).fetchone()[0]
    assert 3590 <= wait.total_seconds() <= 3610


def test_drain_runs_follow_ups_enqueued_by_completion(conn, dsn, kinds):
    enqueue(conn, "t_ok", key="first")
    seen = []

    def chain(j, ctx):
        seen.append(j.args.get("n", 0))
        if len(seen) < 3:   # a follow-up, as a completion enqueues it (the agent's role may not)
            enqueue(conn, "t_ok", f"n{len(seen)}", f'{{"n": {len(seen)}}}')
        return Completion()

    stats = make_agent(dsn, {"t_ok": chain}, batch=1).drain()
    assert seen == [0, 1, 2] and stats.outcomes["done"] == 3


def test_heartbeat_keeps_the_lease_of_a_slow_handler(conn, dsn, kinds):
    jid = enqueue(conn, "t_slow")
    leases = []

    def slow(j, ctx):
        for _ in range(3):
            time.sleep(1.2)
            leases.append(conn.execute("SELECT locked_until FROM jobs WHERE id = %s", (j.id,)).fetchone()[0])
        return Completion()

    stats = make_agent(dsn, {"t_slow": slow}, lease=3).drain()
    assert stats.outcomes["done"] == 1
    assert leases[-1] > leases[0], "the lease was not extended while the handler worked"
    assert job(conn, jid)[0] == "done"


def test_result_of_an_agent_whose_lease_was_taken_is_dropped(conn, dsn, kinds):
    jid = enqueue(conn, "t_ok")
    first = make_agent(dsn, {"t_ok": lambda j, ctx: Completion()}, name="slowpoke")
    [claimed] = first.claim()
    # the lease runs out and another agent takes the job over
    owner_conn(conn).execute("UPDATE jobs SET locked_until = now() - interval '1 second' WHERE id = %s", (jid,))
    owner_conn(conn).execute("UPDATE jobs SET run_after = now() - interval '1 second' WHERE id = %s", (jid,))
    owner_conn(conn).execute("SELECT requeue_expired_leases()")
    owner_conn(conn).execute("UPDATE jobs SET run_after = now() - interval '1 second' WHERE id = %s", (jid,))
    second = make_agent(dsn, {"t_ok": lambda j, ctx: Completion(report={"by": "second"})}, name="second")
    assert second.drain().outcomes["done"] == 1
    assert first.run_job(claimed) == "lost"
    assert job(conn, jid)[3] == {"by": "second"}


def test_forever_wakes_on_notify_and_survives_a_database_restart():
    base = Path(tempfile.mkdtemp(prefix="serverpki-test-agent-"))
    os.chmod(base, 0o755)
    cluster = PostgresCluster(base / "pg")
    cluster.start()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE DATABASE a")
        owner_dsn = cluster.dsn("a")
        with psycopg.connect(owner_dsn, autocommit=True) as c:
            migrate.upgrade(c, log=lambda _: None)
            roles.create_login_roles(c)
            c.execute("INSERT INTO pki.job_kinds (kind, description) VALUES ('t_ok', 'test')")
        done = []
        # the agent as serverpki agent runs in production: the worker's login role
        agent = make_agent(cluster.dsn("a", roles.WORKER), {"t_ok": lambda j, ctx: done.append(j.id) or Completion()})
        stop = threading.Event()
        worker = threading.Thread(target=agent.forever, kwargs={"poll_seconds": 60, "stop": stop}, daemon=True)
        worker.start()
        time.sleep(1)

        def enqueue_and_wait(key):
            with psycopg.connect(owner_dsn, autocommit=True) as c:   # pki.enqueue is internal
                jid = c.execute("SELECT pki.enqueue('t_ok', %s, 'test')", (key,)).fetchone()[0]
            deadline = time.monotonic() + 20
            while jid not in done and time.monotonic() < deadline:
                time.sleep(0.1)
            return jid in done

        # woken by NOTIFY: far sooner than the 60 s poll
        assert enqueue_and_wait("before-restart")
        cluster.restart()
        time.sleep(0.5)
        deadline = time.monotonic() + 30
        ok = False
        while time.monotonic() < deadline and not ok:
            try:
                ok = enqueue_and_wait("after-restart")
            except psycopg.OperationalError:
                time.sleep(0.5)
        assert ok, "the agent did not come back after the database restarted"
        stop.set()
        worker.join(timeout=70)
    finally:
        cluster.destroy()


def test_while_completions_are_on_their_way_only_jobs_that_depend_on_nothing_are_claimed(conn, dsn, kinds):
    """The next claim overlaps the completions of issue_local jobs (_Completions): it takes only kinds whose
    job_kinds.concurrency is overlapped then (pki.kinds_to_claim). A job of another kind (a publish_tlsa) claimed while an issue completion's
    follow-up asks it to prepublish the new instance too would run without it, and the request was lost."""
    jid = enqueue(conn, "t_ok")
    agent = make_agent(dsn, {"t_ok": lambda j, ctx: Completion()})
    assert agent.claim(on_reader=True) == [], "a job of a kind not overlapped was claimed beside completions"
    assert agent.claim(ahead=True) == [], "a job of a kind not overlapped was claimed ahead"
    assert job(conn, jid)[0] == "queued"
    assert [j.id for j in agent.claim()] == [jid], "claimed with no completion on its way, the job is taken"
    # a kind registered as acting only inside the agent is claimed beside completions, and ahead
    owner_conn(conn).execute("UPDATE job_kinds SET concurrency = 'overlapped' WHERE kind = 't_ok'")
    beside, ahead = enqueue(conn, "t_ok", key="beside"), enqueue(conn, "t_ok", key="ahead")
    one_by_one = make_agent(dsn, {"t_ok": lambda j, ctx: Completion()}, batch=1)
    assert [j.id for j in one_by_one.claim(on_reader=True)] == [beside]
    assert [j.id for j in one_by_one.claim(ahead=True)] == [ahead]


def test_a_pooled_drain_that_ends_abnormally_does_not_begin_the_jobs_it_has_not_begun(conn, dsn, kinds, monkeypatch):
    """An error in the drain's own loop (here Ctrl-C as the first outcome is counted) while jobs of a pooled
    kind wait for the pool: those not begun are not begun any more (cancelled) but handed back, due again
    at once; the one running ends."""
    from dataclasses import replace

    from serverpki import agent as agent_module
    owner_conn(conn).execute("UPDATE job_kinds SET concurrency = 'pooled' WHERE kind = 't_ok'")
    ids = [enqueue(conn, "t_ok", key=f"host{i}") for i in range(5)]
    ran = []

    def handler(j, ctx):
        ran.append(j.id)
        time.sleep(0.2)
        return Completion()

    def interrupt_at_the_first(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(agent_module.ProgressBar, "advance", interrupt_at_the_first)
    agent = make_agent(dsn, {"t_ok": handler}, batch=5)
    agent.config = replace(CONFIG, ssh=replace(CONFIG.ssh, max_parallel_hosts=1))
    try:
        with pytest.raises(KeyboardInterrupt):
            agent.drain()
    finally:
        agent.close()
    states = {i: job(conn, i)[0] for i in ids}
    back = [i for i, in conn.execute("SELECT job FROM events WHERE reason LIKE '%%handed back by agent%%' ORDER BY job")]
    assert ran and back and sorted(set(ran) | set(back)) == ids and not set(ran) & set(back), (ran, back)
    assert {states[i] for i in ran} == {"done"} and {states[i] for i in back} == {"queued"}, states


def test_a_drain_that_hands_back_begins_no_job(conn, dsn, kinds):
    """Once a drain hands its jobs back (a thread still running after a second Ctrl-C), run_job begins none:
    the job is not run, its lease not renewed, and release_jobs takes it back."""
    jid = enqueue(conn, "t_ok")
    called = []
    agent = make_agent(dsn, {"t_ok": lambda j, ctx: called.append(j.id) or Completion()})
    try:
        [claimed] = agent.claim()
        assert [j.id for j in agent._held.to_hand_back(interrupted=True)] == [jid]
        assert agent.run_job(claimed) == "lost" and called == []
        assert job(conn, jid)[0] == "running"
    finally:
        agent.close()


def test_a_heartbeat_connect_to_a_host_that_never_answers_gives_up_in_time(monkeypatch, caplog):
    """A database host gone during a failover may drop packets: libpq would wait for it forever, and the one
    heartbeat thread with it, letting every lease of the agent run out. It gives up after connect_timeout
    and tries again at the next beat. (A listener that accepts and never answers: the error path a real
    PostgreSQL cannot produce.)"""
    import socket

    from serverpki.agent import _Heartbeats
    from serverpki.handlers import Job

    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    silent = socket.create_server(("127.0.0.1", 0))
    accepted = []
    taker = threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True)
    taker.start()
    beats = _Heartbeats(f"host=127.0.0.1 port={silent.getsockname()[1]} dbname=pki user=pki_worker", lease=12)
    assert beats.every == 4 and beats.connect_timeout == 2
    beats.start()
    started = time.monotonic()
    try:
        with caplog.at_level("WARNING", logger="serverpki.agent"):
            beats.watch(Job(7, "publish_tlsa", None, None, None, None, {}, 1, 3, lease="t"))
            deadline = started + 4 + 2 + 5
            while time.monotonic() < deadline and "the database connection was lost" not in caplog.text:
                time.sleep(0.1)
        assert "job 7 publish_tlsa: lease not extended, the database connection was lost" in caplog.text
        assert time.monotonic() - started < 4 + 2 + 3
    finally:
        beats.close()
        silent.close()
    assert accepted, "the heartbeat never reached the silent host"
