"""A run acts only on its selection (-a -i -e -o -s -l -N): after its action, operate_serverPKI's
drain claims only the jobs of the certificates it selected, on the disthosts it may reach, and the
jobs its requests returned; other due jobs wait for a run that selects them. pki.claim_jobs decides
(its comment has the rule); `serverpki agent` (no selection) claims every due job.

First the rule on a queue of every sort of job, then on the lab: a run with -s jailhost makes no
SSH login to that host although a distribute job for it is due; a run with -o X runs no job of
another certificate (Pebble issues nothing for the LE certificate whose issue job is due)."""

from __future__ import annotations

import json

import psycopg
import pytest

import helpers

SEL = "selection(%(all)s, %(inc)s, %(exc)s, %(only)s, %(skip)s, %(limit)s, %(no_tlsa)s)"


@pytest.fixture
def queue(conn):
    """Two certificates on two hosts, a disabled third, and a due job of every sort; name -> job id."""
    for host in ("web1.example.org", "web2.example.org"):
        conn.execute("SELECT add_disthost(%s)", (host,))
    conn.execute("SELECT add_place('nginx', 'separate', '/etc/ssl')")
    for name, host in (("a.example.org", "web1.example.org"), ("b.example.org", "web2.example.org"),
                       ("c.example.org", "web1.example.org")):
        conn.execute("SELECT * FROM add_cert(%s, 'server', 'local', 'rsa', false, NULL, NULL, NULL, %s, NULL, 'nginx')",
                     (name, host))
    conn.execute("SELECT disable_cert('c.example.org')")
    owner = helpers.owner_conn(conn)   # enqueue is the request functions' tool, no role's

    def enqueue(kind, key, args=None, cert=None, host=None):
        return owner.execute(
            "SELECT enqueue(%s, %s, 'test', %s, (SELECT certificate FROM subjects WHERE name = %s AND NOT isaltname), "
            "NULL, (SELECT id FROM disthosts WHERE fqdn = %s))",
            (kind, key, json.dumps(args or {}), cert, host)).fetchone()[0]

    def reminder(*names):
        return {"certificates": [{"name": n, "instance": None, "not_after": None} for n in names]}

    jobs = {
        "dist a web1": enqueue("distribute", "d1", cert="a.example.org", host="web1.example.org"),
        "dist b web2": enqueue("distribute", "d2", cert="b.example.org", host="web2.example.org"),
        "dist c web1": enqueue("distribute", "d3", cert="c.example.org", host="web1.example.org"),
        "issue a": enqueue("issue_local", "i1", cert="a.example.org"),
        "tlsa a": enqueue("publish_tlsa", "t1", cert="a.example.org"),
        "remind a": enqueue("mail_reminder", "r1", reminder("a.example.org")),
        "remind a b": enqueue("mail_reminder", "r2", reminder("a.example.org", "b.example.org")),
        "remind c": enqueue("mail_reminder", "r3", reminder("c.example.org")),
        "-X": conn.execute("SELECT request_key_encryption(true)").fetchone()[0],
        "-I": conn.execute("SELECT request_local_ca('Local CA', 'rsa')").fetchone()[0],   # the CA's certificate
        "-Z": conn.execute("SELECT request_acme_account('https://acme.example.org/dir')").fetchone()[0],
    }
    return jobs


def claimed(conn, jobs, sel: dict | None, requested: list[str] = ()) -> set[str]:
    """The names of the jobs claim_jobs gives a run with this selection (None: serverpki agent); kept nothing."""
    names = {v: k for k, v in jobs.items()}
    params = {"all": False, "inc": [], "exc": [], "only": [], "skip": [], "limit": [], "no_tlsa": False, **(sel or {}),
              "requested": [jobs[r] for r in requested]}
    with conn.transaction(force_rollback=True):
        rows = conn.execute(f"SELECT id FROM claim_jobs('t', NULL, 100, NULL, {SEL if sel is not None else 'NULL'}, "
                            "%(requested)s::bigint[])", params).fetchall()
    return {names[r[0]] for r in rows}


CERT_JOBS_A = {"dist a web1", "issue a", "tlsa a", "remind a"}
INSTALLATION = {"-X", "-I", "-Z"}


def test_the_agent_and_a_run_of_everything_claim_every_job_of_enabled_certificates(conn, queue):
    every = set(queue)
    assert claimed(conn, queue, None) == every                        # serverpki agent
    assert claimed(conn, queue, {"all": True}) == every               # the cron run -S -a
    # without -a a disabled certificate's jobs wait (its reminder too lists a certificate the run has)
    assert claimed(conn, queue, {}) == every - {"dist c web1"}
    assert claimed(conn, queue, {"inc": ["c.example.org"]}) == every


def test_only_claims_the_certificates_jobs_and_the_requested_ones(conn, queue):
    assert claimed(conn, queue, {"only": ["a.example.org"]}) == CERT_JOBS_A
    # -I -o a: the CA job it requested runs, the other installation jobs wait
    assert claimed(conn, queue, {"only": ["a.example.org"]}, requested=["-I"]) == CERT_JOBS_A | {"-I"}
    # -e b: no job of b, no reminder that lists b; the installation's jobs wait for a run that names none
    assert claimed(conn, queue, {"exc": ["b.example.org"], "all": True}) == CERT_JOBS_A | {"dist c web1", "remind c"}


def test_skip_and_limit_never_claim_a_job_for_the_host(conn, queue):
    every = set(queue)
    assert claimed(conn, queue, {"all": True, "skip": ["web1.example.org"]}) == every - {"dist a web1", "dist c web1"}
    assert claimed(conn, queue, {"all": True, "limit": ["web2.example.org"]}) == every - {"dist a web1", "dist c web1"}
    assert claimed(conn, queue, {"all": True, "limit": ["web1.example.org"]}) == every - {"dist b web2"}
    # requested or not, a job for an excluded host is not claimed
    assert "dist a web1" not in claimed(conn, queue, {"skip": ["web1.example.org"]}, requested=["dist a web1"])


def test_no_tlsa_claims_no_tlsa_job(conn, queue):
    assert claimed(conn, queue, {"all": True, "no_tlsa": True}) == set(queue) - {"tlsa a"}


def test_a_selection_with_unknown_names_is_refused(conn, queue):
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT * FROM claim_jobs('t', NULL, 1, NULL, ROW(false, '{}', '{}', ARRAY['nosuch'], '{}', '{}', false)::dd.selection)")
    assert err.value.diag.sqlstate == "SP024"


# --- on the lab: real sshd disthosts and Pebble

@pytest.fixture(scope="module")
def fleet():
    from fleet import Fleet
    with Fleet() as f:     # its start ran -I and -Z
        yield f


def test_a_run_acts_only_on_its_selection(fleet):
    from lab.lab import ZONE
    local, acme = f"intranet.{ZONE}", f"www.{ZONE}"
    web1, jail = fleet.lab.ssh.host(f"web1.{ZONE}"), fleet.lab.ssh.host(f"jailhost.{ZONE}")
    cron = psycopg.connect(fleet.role_dsn(), autocommit=True)   # the cron role enqueues without draining

    def job_states(kind):
        return fleet.conn.execute("SELECT state::text, attempts FROM jobs WHERE kind = %s ORDER BY id", (kind,)).fetchall()

    # an issue job for the local certificate is due; a run with -o the LE one runs none of it
    cron.execute("SELECT * FROM request_create(selection(only_certs => ARRAY[%s]))", (local,)).fetchall()
    run = fleet.cli("-S", "-o", acme)
    assert run.returncode == 0, run.stderr
    assert job_states("issue_local") == [("queued", 0)], "a run with -o www ran the local certificate's job"
    assert fleet.conn.execute("SELECT state::text FROM certinstances WHERE certificate = cert_id(%s)",
                              (local,)).fetchall() == [("reserved",)]
    # ... while its own certificate was ordered, and the follow-ups (distribute to both hosts,
    # then publish_tlsa) ran in the same drain: deployed
    assert len(fleet.pebble_issued()) == 2
    assert fleet.conn.execute("SELECT state::text FROM certinstances WHERE certificate = cert_id(%s)",
                              (acme,)).fetchall() == [("deployed",)]
    assert job_states("distribute") == [("done", 1), ("done", 1)]
    assert job_states("publish_tlsa") == [("done", 1)]

    # distribute jobs of the LE certificate to both hosts due
    cron.execute("SELECT * FROM request_consolidate_certs(selection(only_certs => ARRAY[%s]))", (acme,)).fetchall()
    due = fleet.conn.execute("SELECT d.fqdn::text FROM jobs j JOIN disthosts d ON d.id = j.disthost "
                             "WHERE j.state = 'queued' ORDER BY 1").fetchall()
    assert due == [(f"jailhost.{ZONE}",), (f"web1.{ZONE}",)]
    web1_before, jail_before = web1.accepted_logins(), jail.accepted_logins()

    # everything but the jail host: no login there, its job waits; web1's ran
    for args in (("-S", "-a", "-s", f"jailhost.{ZONE}"), ("-K", "-l", f"web1.{ZONE}")):
        run = fleet.cli(*args)
        assert run.returncode == 0, (args, run.stderr)
        assert jail.accepted_logins() == jail_before, f"{args} logged in to the jail host"
    assert web1.accepted_logins() > web1_before
    waiting = fleet.conn.execute("SELECT state::text, attempts FROM jobs j JOIN disthosts d ON d.id = j.disthost "
                                 "WHERE d.fqdn = %s AND j.state <> 'done'", (f"jailhost.{ZONE}",)).fetchall()
    assert waiting == [("queued", 0)]

    # the cron run selects everything: the jail host's job runs, nothing is left waiting
    run = fleet.cli("-S", "-a")
    assert run.returncode == 0, run.stderr
    assert jail.accepted_logins() > jail_before
    assert fleet.conn.execute("SELECT kind, state::text FROM jobs WHERE state <> 'done'").fetchall() == []
    cron.close()
