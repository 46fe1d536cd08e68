"""A job kind is one file in db/jobs/ and one handler module; the queue and the agent need nothing else.

The queue (db/functions/060_queue.sql) knows nothing of certificates: each kind's file registers its
completion and its clean-up with define_job_kind, the allow-list grants every registered completion to
pki_agent, and the agent calls the completion its handler's Completion is for."""

from __future__ import annotations

import re
import shutil

import psycopg
import pytest

from helpers import owner_conn
from lab import roles
from serverpki import migrate
from serverpki.agent import Agent
from serverpki.config import Config
from serverpki.errors import GiveUp
from serverpki.handlers import HANDLERS, Completion, load_all

DEFINE = re.compile(r"define_job_kind\('(\w+)'")

# a kind of its own: one SQL file, as a release would ship it in db/jobs/
ECHO_SQL = """
-- 900_echo: echo jobs repeat their words (a test's kind)
CREATE OR REPLACE FUNCTION pki.complete_echo(job_id bigint, lease_token uuid, words text[], report jsonb DEFAULT '{}')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := completing(job_id, lease_token, ARRAY['echo']);
BEGIN
    IF cardinality(words) = 0 THEN
        PERFORM raise_error('SP023', format('job %s: an echo without words', j.id), 'say something');
    END IF;
    PERFORM job_done(j, jsonb_build_object('words', words) || report);
END
$$;

CREATE OR REPLACE FUNCTION pki.echo_dead(j pki.jobs)
RETURNS void LANGUAGE sql
SET search_path = pki, dd, pg_temp
AS $$ UPDATE pki.jobs SET args = args || '{"cleaned up": true}' WHERE id = j.id $$;

SELECT pki.define_job_kind('echo', 'repeat the words of the job', 1, 0, 'complete_echo', 'echo_dead');
"""


def test_every_kind_is_one_file_of_db_jobs_and_one_handler(conn, repo_root):
    kinds = dict(conn.execute("SELECT kind, complete_with FROM job_kinds").fetchall())
    defined: dict[str, str] = {}
    for f in sorted((repo_root / "db" / "jobs").glob("*.sql")):
        found = DEFINE.findall(f.read_text())
        assert found, f"{f.name} defines no job kind"
        for kind in found:
            assert kind not in defined, f"{kind} defined in {defined[kind]} and {f.name}"
            defined[kind] = f.name
    assert set(defined) == set(kinds)
    assert set(load_all()) == set(kinds), "a handler for every kind, a kind for every handler"
    # each completion is the agent's, SECURITY DEFINER, and takes (job_id, lease_token, ..., report)
    for kind, function in kinds.items():
        row = owner_conn(conn).execute(
            "SELECT p.prosecdef, p.proargnames, has_function_privilege('pki_agent', p.oid, 'EXECUTE') "
            "FROM pg_proc p WHERE p.pronamespace = 'pki'::regnamespace AND p.proname = %s", (function,)).fetchall()
        assert len(row) == 1, f"{kind}: {function} must exist once"
        definer, names, agent_may = row[0]
        assert definer and agent_may, f"{kind}: {function}"
        assert names[:2] == ["job_id", "lease_token"] and names[-1] == "report", f"{kind}: {function}{names}"


def test_a_completion_refuses_a_job_of_another_kind(conn):
    owner = owner_conn(conn)
    job = owner.execute("SELECT enqueue('mail_reminder', 'x', 'test')").fetchone()[0]
    [(token,)] = conn.execute("SELECT lease_token FROM claim_jobs('a1', ARRAY['mail_reminder'], 1)").fetchall()
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT complete_distribute(%s, %s)", (job, token))
    assert info.value.diag.sqlstate == "SP026"
    assert info.value.diag.message_primary == f"job {job} is a mail_reminder job, not one of distribute"
    assert info.value.diag.message_hint.startswith("complete it with pki.complete_job;")
    conn.execute("SELECT complete_job(%s, %s, '{\"sent_to\": []}')", (job, token))
    assert conn.execute("SELECT state FROM jobs WHERE id = %s", (job,)).fetchone()[0] == "done"


def test_a_new_kind_is_one_sql_file_and_one_handler(conn, pg_server, dbname, tmp_path, monkeypatch):
    """The whole of a new kind: db/jobs/900_echo.sql and a handler. The installer loads the file (no
    line in the allow-list: the completion is granted as a kind's), `serverpki agent` as pki_worker
    runs the job and calls the completion with typed arguments; a job that dies gets its clean-up."""
    root = tmp_path / "db"
    shutil.copytree(migrate.sql_root(), root)
    (root / "jobs" / "900_echo.sql").write_text(ECHO_SQL)
    monkeypatch.setattr(migrate, "sql_root", lambda: root)
    owner = owner_conn(conn)
    migrate.upgrade(owner, log=lambda _l: None)

    def echo(job, ctx):
        if not job.args.get("words"):
            raise GiveUp("nothing to repeat")
        return Completion(args={"words": job.args["words"]}, report={"agent": ctx.agent_name})

    monkeypatch.setitem(HANDLERS, "echo", echo)
    said = owner.execute("""SELECT enqueue('echo', 'echo:1', 'test', '{"words": ["hello", "world"]}')""").fetchone()[0]
    mute = owner.execute("SELECT enqueue('echo', 'echo:2', 'test')").fetchone()[0]
    agent = Agent(pg_server.dsn(dbname, roles.WORKER), Config(), name="echo-agent", kinds=["echo"])
    try:
        stats = agent.drain()
    finally:
        agent.close()
    assert dict(stats.outcomes) == {"done": 1, "dead": 1}
    state, result = owner.execute("SELECT state::text, result FROM jobs WHERE id = %s", (said,)).fetchone()
    assert (state, result) == ("done", {"words": ["hello", "world"], "agent": "echo-agent"})
    events = owner.execute("SELECT job_state::text, reason FROM events WHERE job = %s ORDER BY id", (mute,)).fetchall()
    assert events == [("dead", f"echo job {mute}: nothing to repeat")]
    assert owner.execute("SELECT args FROM jobs WHERE id = %s", (mute,)).fetchone()[0] == {"cleaned up": True}


@pytest.mark.parametrize("call, says", [
    ("SELECT pki.define_job_kind('t_bad', 'test', 1, 0, 'complete_job', NULL, 'parallel')",
     "job kind t_bad: concurrency 'parallel' is none of serial, pooled, overlapped"),
    ("SELECT pki.define_job_kind('t_bad', 'test', 1, 0, 'complete_job', NULL, NULL)",
     "job kind t_bad: concurrency NULL is none of serial, pooled, overlapped"),
    ("SELECT pki.define_job_kind('t_bad', 'test', 1, 0, 'complete_job', 'no_such_cleanup')",
     "job kind t_bad: no clean-up function pki.no_such_cleanup(pki.jobs)"),
])
def test_a_kind_registered_wrongly_is_refused_by_name(conn, call, says):
    """define_job_kind names what is wrong with a kind's file, and registers nothing."""
    owner = owner_conn(conn)
    with pytest.raises(psycopg.Error, match=re.escape(says)):
        owner.execute(call)
    assert owner.execute("SELECT count(*) FROM job_kinds WHERE kind = 't_bad'").fetchone()[0] == 0
