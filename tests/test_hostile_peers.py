"""Hostile peer output cannot stop the agent (issue 12, item 8).

A reload command that prints NUL bytes and invalid UTF-8 runs on the lab's real sshd;
the odd values of Retry-After (nan, inf, 1e15, negative) come from a stand-in handler,
since a real CA does not send them. Every outcome is read back from the real database:
the job is failed with a readable error, its retry is a finite, bounded time away,
and the drain goes on to the next job.
"""

from __future__ import annotations

import math
import unicodedata

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import owner_conn
from serverpki import acmeclient
from serverpki.agent import Agent
from serverpki.config import Config
from serverpki.errors import ERROR_LIMIT, RETRY_AFTER_MAX, GiveUp, RetryLater, clean_text
from serverpki.handlers import Completion
from strategies import HOSTILE, PIECES
from test_distribution import WEB1, add_cert, config, hosts, issue, jobs_by_host, lab, local_ca, one, rows, target  # noqa: F401

BACKOFF = 30.0   # the job_backoff setting: the wait after a first failure


# --------------------------------------------------------------------------- clean_text

def _allowed(ch: str) -> bool:
    return ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs")


@given(st.one_of(st.text(), st.binary(), st.lists(st.sampled_from(PIECES + ["\x00", "\udcff", "\r\n"])).map("".join)),
       st.sampled_from([None, 1, 40, 200, ERROR_LIMIT]))
@HOSTILE
def test_clean_text_leaves_no_control_character_and_respects_the_limit(text, limit):
    out = clean_text(text, limit)
    assert all(_allowed(ch) for ch in out), repr(out)
    assert "\u202e" not in out
    out.encode("utf-8")   # valid UTF-8: no lone surrogate
    if limit is not None:
        assert len(out) <= limit


def test_clean_text_spells_out_what_it_replaces_and_marks_the_cut():
    assert clean_text(b"ok\x00\x07\xff\r\nnext\tcol\x1b[31m") == "ok\\x00\\x07\ufffd\nnext\tcol\\x1b[31m"
    assert clean_text("plain text, unchanged: äöü 日本 🎉") == "plain text, unchanged: äöü 日本 🎉"
    long = "head " + "x" * 10_000 + " tail"
    out = clean_text(long, 1000)
    assert len(out) == 1000 and out.startswith("head ") and out.endswith(" tail")
    assert "[... cut to 1000 characters; the text had 10010 ...]" in out
    # far more than the limit: only what is kept is spelled out, the length told is the original's
    assert "the text had 5000000" in clean_text("\x00" * 5_000_000)


def test_a_cleaned_text_is_taken_by_a_text_column(conn):
    hostile = "".join(chr(c) for c in range(0, 0x250)) + "\ud800\udfff\u202e" + "\x00" * 5000
    # as they are, NUL and a lone surrogate are refused before they are sent
    with pytest.raises(psycopg.DataError):
        conn.execute("SELECT %s::text", ("a\x00b",))
    with pytest.raises(UnicodeEncodeError):
        conn.execute("SELECT %s::text", ("a\ud800b",))
    stored = conn.execute("SELECT %s::text", (clean_text(hostile),)).fetchone()[0]
    assert stored == clean_text(hostile) and len(stored) == ERROR_LIMIT


# --------------------------------------------------------------------------- Retry-After

@pytest.mark.parametrize("header, seconds", [
    ("120", 120.0), ("0", 1.0), (" 30 ", 30.0), ("99999999999999999999", RETRY_AFTER_MAX),
    ("nan", None), ("inf", None), ("-inf", None), ("1e15", None), ("-5", None), ("12.5", None), ("", None),
    ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_MAX), ("Mon, 01 Jan 2001 00:00:00 GMT", 1.0), ("garbage", None),
])
def test_the_acme_retry_after_header_is_parsed_strictly_and_bounded(header, seconds):
    assert acmeclient._retry_after(header) == seconds


@pytest.mark.parametrize("asked, expected", [
    (float("nan"), None), (float("inf"), RETRY_AFTER_MAX), (1e15, RETRY_AFTER_MAX), (-5, None), (0.01, 1.0), (90, 90.0),
])
def test_retry_later_bounds_the_delay(asked, expected):
    assert RetryLater("busy", retry_after=asked).retry_after == expected


@pytest.fixture
def kinds(conn):
    owner_conn(conn).execute("INSERT INTO job_kinds (kind, description, max_attempts) VALUES "
                 "('t_hostile', 'test', 3), ('t_ok', 'test', 3)")


def make_agent(dsn, handlers: dict) -> Agent:
    agent = Agent(dsn, Config(), name="hostile-test", batch=1)
    agent.handlers, agent.kinds = handlers, sorted(handlers)
    return agent


def enqueue(conn, kind: str, key: str) -> int:
    return owner_conn(conn).execute("SELECT enqueue(%s, %s, 'test')", (kind, key)).fetchone()[0]


def queued(conn, job_id: int) -> dict:
    return one(conn, "SELECT state::text, last_error, extract(epoch FROM run_after - updated)::float8 AS wait "
                     "FROM jobs WHERE id = %s", (job_id,))


@pytest.mark.parametrize("asked, wait", [
    (float("nan"), BACKOFF), (float("inf"), RETRY_AFTER_MAX), (1e15, RETRY_AFTER_MAX), (-5, BACKOFF)])
def test_a_hostile_retry_after_is_stored_as_a_finite_bounded_retry(conn, dsn, kinds, asked, wait):
    hostile, later = enqueue(conn, "t_hostile", "a"), enqueue(conn, "t_ok", "b")

    def busy(job, ctx):
        raise RetryLater("the CA is busy", retry_after=asked)

    stats = make_agent(dsn, {"t_hostile": busy, "t_ok": lambda job, ctx: Completion()}).drain()

    assert stats.outcomes == {"failed": 1, "done": 1}
    got = queued(conn, hostile)
    assert got["state"] == "failed" and got["last_error"] == "the CA is busy"
    assert math.isfinite(got["wait"]) and abs(got["wait"] - wait) < 5, got
    assert queued(conn, later)["state"] == "done"


def test_a_failure_the_database_refuses_is_reported_plainly_and_the_drain_goes_on(conn, dsn, kinds):
    hostile, later = enqueue(conn, "t_hostile", "a"), enqueue(conn, "t_ok", "b")

    def overflow(job, ctx):
        # past RetryLater's bound (set after construction): the interval overflows in the database
        exc = RetryLater("the CA is busy \u00e9")
        exc.retry_after = 1e300
        raise exc

    stats = make_agent(dsn, {"t_hostile": overflow, "t_ok": lambda job, ctx: Completion()}).drain()

    assert stats.outcomes == {"failed": 1, "done": 1}
    got = queued(conn, hostile)
    assert got["state"] == "failed" and abs(got["wait"] - BACKOFF) < 5, got
    assert got["last_error"].startswith("the database refused this failure report (22008: interval out of range")
    assert got["last_error"].endswith("the failure was: the CA is busy \\xe9")
    assert queued(conn, later)["state"] == "done"


def test_an_error_with_nul_and_control_characters_is_stored_cleaned(conn, dsn, kinds):
    hostile, later = enqueue(conn, "t_hostile", "a"), enqueue(conn, "t_ok", "b")

    def rude(job, ctx):
        raise GiveUp("peer said: \x00\x1b[2J\udcff" + "z" * 10_000)

    stats = make_agent(dsn, {"t_hostile": rude, "t_ok": lambda job, ctx: Completion()}).drain()

    assert stats.outcomes == {"dead": 1, "done": 1}
    got = queued(conn, hostile)
    assert got["state"] == "dead" and got["last_error"].startswith("peer said: \\x00\\x1b[2J\ufffdzzz")
    assert "[... cut to 4000 characters" in got["last_error"] and len(got["last_error"]) == 4000
    event = one(conn, "SELECT job_state::text, reason FROM events WHERE job = %s ORDER BY id DESC LIMIT 1", (hostile,))
    assert event["job_state"] == "dead" and f"job {hostile}: peer said: \\x00\\x1b[2J" in event["reason"]
    assert queued(conn, later)["state"] == "done"


# --------------------------------------------------------------------------- a reload that prints garbage

def test_a_reload_printing_nul_bytes_and_invalid_utf8_fails_its_job_readably_and_the_drain_goes_on(
        conn, dsn, config, hosts):
    from test_distribution import agent_for

    agent = agent_for(dsn, config)
    agent.batch = 1   # one job after the other: the garbage first, then the rest
    try:
        local_ca(conn, agent)
        conn.execute("SELECT add_disthost(%s)", (WEB1,))
        # bash's printf: NUL, an invalid UTF-8 sequence, an escape sequence; then exit 3
        conn.execute("SELECT add_place('garbage', 'cert only', '/etc/garbage', NULL, NULL, NULL, NULL, false, false, "
                     "$$printf 'bad\\000config\\377\\376 \\033[31mred\\n'; exit 3$$)")
        # the same garbage from a reload that succeeds: it lands in the job's result
        conn.execute("SELECT add_place('noisy', 'cert only', '/etc/noisy', NULL, NULL, NULL, NULL, false, false, "
                     "$$printf 'reloaded\\000\\377\\n'$$)")
        conn.execute("SELECT add_place('quiet', 'cert only', '/etc/quiet')")
        for name, place in (("garbage.example.org", "garbage"), ("noisy.example.org", "noisy"),
                            ("quiet.example.org", "quiet")):
            add_cert(conn, name)
            target(conn, name, WEB1, place)
            issue(conn, agent, name)
        ids = [one(conn, "SELECT job FROM request_distribute(selection(only_certs => ARRAY[%s])) "
                         "WHERE job IS NOT NULL", (name,))["job"]
               for name in ("garbage.example.org", "noisy.example.org", "quiet.example.org")]
        assert ids == sorted(ids)

        stats = agent.drain()   # does not raise

        assert stats.outcomes == {"failed": 1, "done": 2}
        bad, noisy, quiet = (one(conn, "SELECT state::text, last_error, result FROM jobs WHERE id = %s", (i,))
                             for i in ids)
        assert bad["state"] == "failed"
        assert "exited 3: bad\\x00config\ufffd\ufffd \\x1b[31mred" in bad["last_error"], bad["last_error"]
        overview = one(conn, "SELECT last_error FROM jobs_overview WHERE id = %s", (ids[0],))
        assert overview["last_error"] == bad["last_error"]
        assert noisy["state"] == "done" and noisy["result"]["reload"][0]["output"] == "reloaded\\x00\ufffd\n"
        assert quiet["state"] == "done"
        assert hosts.host(WEB1).path("/etc/quiet/quiet.example.org_server_ec_cert.pem").is_file()
        assert rows(conn, "SELECT id FROM jobs WHERE state = 'running'") == []
    finally:
        agent.close()
