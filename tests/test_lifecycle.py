"""The certificate lifecycle (docs/lifecycle.md), rule by rule, driven as the agent drives it:
schedule() / request_*() enqueue, claim_jobs() hands the work out, the kinds' completions /
fail_job() report back. Time travels with SET pki.now; nothing here changes a state
column itself except where a test proves that the database refuses exactly that.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import psycopg
import pytest
from psycopg.rows import namedtuple_row

from certfactory import issue_result
from helpers import assert_refused, complete, lease_of, owner_conn, remember_leases, snapshot

T0 = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
WEB1, WEB2 = HOSTS = ("web1.example.org", "web2.example.org")
AGENT = "lifecycle-agent"
TTL = dt.timedelta(seconds=3600)        # the preloaded https/443 TLSA service
ISSUE_KINDS = ("issue_acme", "issue_local", "issue_local_ca")

STATES = ["reserved", "issued", "prepublished", "deployed", "revoked", "expired", "archived"]
# the lifecycle's table (None: no row before / the row is deleted); the database's copy is checked below
ALLOWED = {
    (None, "reserved"), ("reserved", "issued"), ("reserved", None),
    ("issued", "prepublished"), ("issued", "deployed"), ("prepublished", "deployed"),
    ("deployed", "expired"), ("issued", "expired"), ("prepublished", "expired"),
    ("expired", "archived"), ("archived", None),
    ("reserved", "revoked"), ("issued", "revoked"), ("prepublished", "revoked"), ("deployed", "revoked"),
    ("expired", "revoked"), ("revoked", "archived"),
    # cleanup (rules 1 and 4)
    ("issued", None), ("prepublished", None), ("deployed", None), ("expired", None),
}
ILLEGAL = [(f, t) for f in [None, *STATES] for t in [*STATES, None] if f != t and (f, t) not in ALLOWED]


# ---------------------------------------------------------------- helpers

def day(n: float, hours: float = 0, minutes: float = 0) -> dt.datetime:
    return T0 + dt.timedelta(days=n, hours=hours, minutes=minutes)


def set_now(conn, when: dt.datetime) -> None:
    """SET pki.now: travel in time (for this session)."""
    conn.execute("SELECT set_config('pki.now', %s, false)", (when.isoformat(),))


def rows(conn, sql: str, params=()) -> list:
    return conn.cursor(row_factory=namedtuple_row).execute(sql, params).fetchall()


def value(conn, sql: str, params=()):
    return conn.execute(sql, params).fetchone()[0]


def sel_sql(**kw) -> tuple[str, list]:
    """A selection as SQL: selection(name => value, ...), or NULL (the default) without arguments."""
    if not kw:
        return "NULL::dd.selection", []
    parts = [f"{k} => %s::{'boolean' if isinstance(v, bool) else 'text[]'}" for k, v in kw.items()]
    return f"selection({', '.join(parts)})", list(kw.values())


def plan(conn, **sel) -> list:
    s, params = sel_sql(**sel)
    return rows(conn, f"SELECT certificate, instance, action, reason FROM plan({s})", params)


def schedule(conn, **sel) -> list:
    s, params = sel_sql(**sel)
    return rows(conn, f"SELECT certificate, instance, action, reason FROM schedule({s})", params)


def request(conn, function: str, remaining_days: int | None = None, **sel) -> list:
    s, params = sel_sql(**sel)
    extra = ", %s" if function in ("request_create", "request_distribute") else ""
    return rows(conn, f"SELECT job, certificate, instance, reason FROM {function}({s}{extra})",
                params + ([remaining_days] if extra else []))


def actions(plan_rows) -> set[tuple]:
    """The (certificate, instance, action) of plan rows, without the reasons."""
    return {(r.certificate, r.instance, r.action) for r in plan_rows}


def add_cert(conn, name: str, cert_type: str = "LE", tlsa: bool = True, hosts=HOSTS) -> int:
    """A server certificate with a target on each host and, with tlsa, the https/443 TLSA service."""
    conn.execute("SELECT * FROM add_cert(%s, 'server', %s, 'ec', false, NULL, %s, %s, %s, NULL, 'nginx')",
                 (name, cert_type, "https" if tlsa else None, 443 if tlsa else None, hosts[0]))
    for host in hosts[1:]:
        conn.execute("SELECT add_target(%s, %s, NULL, 'nginx')", (name, host))
    return value(conn, "SELECT cert_id(%s)", (name,))


def cert_name(conn, cert: int) -> str:
    return value(conn, "SELECT name::text FROM subjects WHERE certificate = %s AND NOT isaltname", (cert,))


def run_all_jobs(conn, when: dt.datetime | None = None, lifetimes: dict[str, int] | int = 90,
                 kinds: list[str] | None = None, fail_hosts=()) -> list:
    """Be the agent: claim every due job (of these kinds) and complete it, until none is left.
    Issue jobs get a fresh certificate valid from now for lifetimes[name] days; distribution
    to fail_hosts fails (retry later). Returns the jobs run, in order."""
    if when is not None:
        set_now(conn, when)
    ran = []
    for _ in range(100):
        batch = remember_leases(conn, rows(conn, "SELECT * FROM claim_jobs(%s, %s::text[], 10)", (AGENT, kinds)))
        if not batch:
            return ran
        for job in batch:
            host = value(conn, "SELECT fqdn::text FROM disthosts WHERE id = %s", (job.disthost,)) if job.disthost else None
            if job.kind in ISSUE_KINDS:
                name = cert_name(conn, job.certificate)
                days = lifetimes if isinstance(lifetimes, int) else lifetimes.get(name, 90)
                not_before = value(conn, "SELECT pki.now()")
                result = issue_result(conn, job.kind, job.certificate, not_before, days)
            elif job.kind == "distribute" and host in fail_hosts:
                conn.execute("SELECT fail_job(%s, %s, %s)", (job.id, lease_of(conn, job.id, AGENT), f"ssh {host}: connection refused"))
                ran.append(job)
                continue
            else:
                result = {}
            complete(conn, job.id, lease_of(conn, job.id, AGENT), result)
            ran.append(job)
    raise AssertionError("the queue never drained")


def instances(conn, name: str) -> list[tuple[int, str]]:
    """(id, state) of a certificate's instances, from the inst view (one row per instance: one key pair)."""
    return [tuple(r) for r in conn.execute(
        'SELECT DISTINCT "Serial", "State"::text FROM inst WHERE "Cert Name" = %s ORDER BY 1', (name,)).fetchall()]


def state_of(conn, instance: int) -> str | None:
    row = conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (instance,)).fetchone()
    return row[0] if row else None


def in_state(conn, name: str, state: str) -> list[int]:
    return [i for i, s in instances(conn, name) if s == state]


def the(conn, name: str, state: str) -> int:
    ids = in_state(conn, name, state)
    assert len(ids) == 1, f"{name}: expected one {state} instance, have {instances(conn, name)}"
    return ids[0]


def jobs(conn, kind: str | None = None, after: int = 0, cert: str | None = None) -> list:
    return rows(conn, """
        SELECT j.id, j.kind, j.certificate, j.instance, d.fqdn::text AS host, j.args, j.state::text, j.reason, j.last_error
          FROM jobs j LEFT JOIN disthosts d ON d.id = j.disthost
         WHERE j.id > %s AND (%s::text IS NULL OR j.kind = %s) AND (%s::text IS NULL OR j.certificate = cert_id(%s))
         ORDER BY j.id""", (after, kind, kind, cert, cert))


def last_job(conn) -> int:
    return value(conn, "SELECT coalesce(max(id), 0) FROM jobs")


def transitions(conn, instance: int) -> list[tuple]:
    """(from, to, reason) of an instance's state events, oldest first."""
    return [tuple(r) for r in conn.execute(
        "SELECT from_state::text, to_state::text, reason FROM events WHERE instance = %s AND job_state IS NULL ORDER BY id",
        (instance,)).fetchall()]


def counts(conn) -> dict[str, int]:
    return {t: value(conn, f"SELECT count(*) FROM pki.{t}") for t in ("jobs", "events", "deployments", "certinstances")}


def deployed_to(conn, instance: int) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT d.fqdn::text FROM deployments x JOIN targets t ON t.id = x.target JOIN disthosts d ON d.id = t.disthost "
        "WHERE x.instance = %s ORDER BY 1", (instance,)).fetchall()]


def deploy_le(conn, name: str, lifetime: int = 90) -> int:
    """Rule 2 for one LE certificate: schedule it and run the jobs; returns its active instance."""
    schedule(conn, only_certs=[name])
    run_all_jobs(conn, lifetimes={name: lifetime})
    return the(conn, name, "deployed")


def issue_on_request(conn, name: str, lifetime: int = 90, **sel) -> int:
    """-C for one certificate, and the issue job run; returns the issued instance."""
    made = request(conn, "request_create", only_certs=[name], **sel)
    assert len(made) == 1, made
    run_all_jobs(conn, lifetimes={name: lifetime})
    assert state_of(conn, made[0].instance) == "issued"
    return made[0].instance


def deploy_local(conn, name: str, lifetime: int = 90) -> int:
    """A local certificate goes live: -C, then a scheduler pass distributes it (rule 7, nothing active)."""
    inst = issue_on_request(conn, name, lifetime)
    schedule(conn, only_certs=[name])
    run_all_jobs(conn)
    assert state_of(conn, inst) == "deployed"
    return inst


def roll_to_prepublished(conn, name: str, when: dt.datetime, lifetime: int = 90) -> tuple[int, int]:
    """Rule 9 at `when`: a successor is issued and its TLSA prepublished; returns (active, successor)."""
    active = the(conn, name, "deployed")
    set_now(conn, when)
    schedule(conn, only_certs=[name])
    run_all_jobs(conn, lifetimes={name: lifetime})
    return active, the(conn, name, "prepublished")


@pytest.fixture
def fleet(conn):
    """Two disthosts and a place; the clock at T0."""
    for host in HOSTS:
        conn.execute("SELECT add_disthost(%s)", (host,))
    conn.execute("SELECT add_place('nginx', 'separate', '/etc/ssl/{}')")
    set_now(conn, T0)
    return conn


# ---------------------------------------------------------------- rule 1: cleanup

def test_rule1_reserved_without_issue_job_is_deleted(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    active = deploy_le(conn, "www.example.org")
    # a leftover reservation (its issue job is gone: a restore, an operator's DELETE)
    leftover = value(owner_conn(conn), "INSERT INTO certinstances (certificate, state) VALUES (cert_id('www.example.org'), 'reserved') RETURNING id")
    set_now(conn, day(1))
    p = plan(conn)
    assert [(r.instance, r.action, r.reason) for r in p] == [(leftover, "delete", "rule 1: reserved, and no issue job is pending")]
    assert schedule(conn) == p
    assert state_of(conn, leftover) is None
    assert instances(conn, "www.example.org") == [(active, "deployed")]
    assert transitions(conn, leftover)[-1][:2] == ("reserved", None)
    assert "rule 1" in transitions(conn, leftover)[-1][2]


@pytest.mark.parametrize("job_state", ["queued", "running", "failed"])
def test_rule1_reserved_with_pending_issue_job_is_kept(fleet, job_state):
    conn = fleet
    add_cert(conn, "www.example.org")
    schedule(conn)
    reserved = the(conn, "www.example.org", "reserved")
    (job,) = jobs(conn, "issue_acme")
    if job_state != "queued":
        assert [j.id for j in remember_leases(conn, rows(conn, "SELECT * FROM claim_jobs(%s, NULL, 5)", (AGENT,)))] == [job.id]
    if job_state == "failed":
        assert value(conn, "SELECT fail_job(%s, %s, 'ACME server busy')", (job.id, lease_of(conn, job.id, AGENT))) == "failed"
    set_now(conn, day(0, minutes=1))
    p = plan(conn)
    assert [(r.instance, r.action) for r in p] == [(None, "wait")]
    assert "issue job is pending" in p[0].reason
    schedule(conn)
    assert instances(conn, "www.example.org") == [(reserved, "reserved")]
    assert len(jobs(conn)) == 1


def test_rule1_archived_is_deleted_next_run(fleet):
    conn = fleet
    add_cert(conn, "www.example.org", tlsa=False)
    active = deploy_le(conn, "www.example.org")
    conn.execute("SELECT * FROM request_revoke(%s, 'keyCompromise')", (active,))
    set_now(conn, day(1))
    assert ("www.example.org", active, "archive") not in actions(plan(conn))   # its revocation is not done yet
    run_all_jobs(conn, kinds=["revoke"])   # the CA revoked it
    assert ("www.example.org", active, "archive") in actions(schedule(conn))
    assert state_of(conn, active) == "archived"
    set_now(conn, day(1, hours=1))
    p = plan(conn)
    assert ("www.example.org", active, "delete") in actions(p)
    assert "rule 1: archived in an earlier run" in [r.reason for r in p if r.instance == active]
    schedule(conn)
    assert state_of(conn, active) is None
    assert [t[:2] for t in transitions(conn, active)][-3:] == [("deployed", "revoked"), ("revoked", "archived"), ("archived", None)]


def test_rule1_older_issued_duplicate_is_deleted(fleet):
    """Two -C requests leave two issued instances: only the newest survives."""
    conn = fleet
    add_cert(conn, "app.example.org", "local", tlsa=False)
    active = deploy_local(conn, "app.example.org")
    set_now(conn, day(61))
    older = issue_on_request(conn, "app.example.org")
    newer = issue_on_request(conn, "app.example.org")
    p = plan(conn, only_certs=["app.example.org"])
    assert ("app.example.org", older, "delete") in actions(p)
    assert any(r.reason == "rule 1: an older issued instance (a newer one exists)" for r in p)
    schedule(conn)
    assert in_state(conn, "app.example.org", "issued") == [newer]
    assert in_state(conn, "app.example.org", "deployed") == [active]


@pytest.mark.parametrize("state", ["issued", "prepublished", "deployed", "expired"])
def test_rule1_older_duplicates_per_state_are_deleted(fleet, state):
    """Whatever put two instances in one state (a crash, an operator), only the newest stays."""
    conn = fleet
    add_cert(conn, "dup.example.org", tlsa=False)
    conn.execute("SELECT disable_cert('dup.example.org')")      # rule 6: nothing but cleanup and rule 3 runs
    older = issue_on_request(conn, "dup.example.org", include=["dup.example.org"])
    newer = issue_on_request(conn, "dup.example.org", include=["dup.example.org"])
    path = {"issued": [], "prepublished": ["prepublished"], "deployed": ["deployed"], "expired": ["expired"]}[state]
    for inst in (older, newer):
        for step in path:
            owner_conn(conn).execute("UPDATE certinstances SET state = %s WHERE id = %s", (step, inst))
    set_now(conn, day(1))
    p = plan(conn)
    deletes = [r for r in p if r.action == "delete"]
    assert [(r.instance, r.reason) for r in deletes] == [(older, f"rule 1: an older {state} instance (a newer one exists)")]
    schedule(conn)
    assert state_of(conn, older) is None
    # the newest survives (an expired one is archived by rule 3 in the same pass)
    assert instances(conn, "dup.example.org") == [(newer, "archived" if state == "expired" else state)]


# ---------------------------------------------------------------- rule 2: nothing left

def test_rule2_le_nothing_left_is_issued_and_distributed(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    assert [tuple(r) for r in plan(conn)] == [("www.example.org", None, "issue", "rule 2: nothing left; issue one and distribute it")]
    schedule(conn)
    (job,) = jobs(conn)
    assert job.kind == "issue_acme" and job.args["then"] == "distribute"
    assert instances(conn, "www.example.org") == [(job.instance, "reserved")]
    ran = run_all_jobs(conn)
    assert [j.kind for j in ran] == ["issue_acme", "distribute", "distribute", "publish_tlsa"]
    assert sorted(value(conn, "SELECT fqdn::text FROM disthosts WHERE id = %s", (j.disthost,)) for j in ran if j.kind == "distribute") == list(HOSTS)
    assert instances(conn, "www.example.org") == [(job.instance, "deployed")]
    assert deployed_to(conn, job.instance) == list(HOSTS)
    assert [t[:2] for t in transitions(conn, job.instance)] == [(None, "reserved"), ("reserved", "issued"), ("issued", "deployed")]
    tlsa = jobs(conn, "publish_tlsa")[-1]
    assert tlsa.args["instances"] == [job.instance] and tlsa.args["prepublish"] is None
    assert plan(conn) == []


def test_rule2_local_nothing_left_waits_for_create_request(fleet):
    conn = fleet
    add_cert(conn, "app.example.org", "local")
    p = plan(conn)
    assert [(r.certificate, r.instance, r.action) for r in p] == [("app.example.org", None, "wait")]
    assert "rule 2" in p[0].reason and "-C" in p[0].reason
    assert schedule(conn) == p
    assert jobs(conn) == [] and instances(conn, "app.example.org") == []
    # on request it is issued, and the next pass distributes it
    inst = issue_on_request(conn, "app.example.org")
    assert [(r.instance, r.action) for r in plan(conn)] == [(inst, "distribute")]


# ---------------------------------------------------------------- rule 3: expire and archive

def test_rule3_expired_is_archived_next_run(fleet):
    conn = fleet
    add_cert(conn, "www.example.org", tlsa=False)
    old = deploy_le(conn, "www.example.org")
    set_now(conn, day(60))
    schedule(conn)                          # rule 9 without TLSA: a successor is issued, nothing published
    run_all_jobs(conn)
    new = the(conn, "www.example.org", "issued")
    set_now(conn, day(89))
    assert ("www.example.org", new, "distribute") in actions(schedule(conn))
    run_all_jobs(conn)
    assert instances(conn, "www.example.org") == [(old, "expired"), (new, "deployed")]
    set_now(conn, day(89, hours=1))
    p = plan(conn)
    assert [(r.instance, r.action, r.reason) for r in p] == [(old, "archive", "rule 3: expired in an earlier run")]
    schedule(conn)
    assert state_of(conn, old) == "archived"
    set_now(conn, day(89, hours=2))
    schedule(conn)
    assert state_of(conn, old) is None
    assert [t[:2] for t in transitions(conn, old)] == [
        (None, "reserved"), ("reserved", "issued"), ("issued", "deployed"),
        ("deployed", "expired"), ("expired", "archived"), ("archived", None)]


def test_rule3_prepublished_successor_past_not_after_expires(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    active = deploy_le(conn, "www.example.org")
    # the CA handed out a successor that is valid for 20 days only
    _, succ = roll_to_prepublished(conn, "www.example.org", day(60), lifetime=20)
    set_now(conn, day(80, hours=23, minutes=59))
    assert not any(r.action == "expire" for r in plan(conn))
    set_now(conn, day(81))              # not_after (day 80) + expire_grace (1 day)
    p = plan(conn)
    assert ("www.example.org", succ, "expire") in actions(p)
    assert "rule 3" in next(r.reason for r in p if r.action == "expire")
    # with the successor gone, rule 9 wants a new one
    assert ("www.example.org", active, "issue") in actions(p)
    schedule(conn)
    assert state_of(conn, succ) == "expired"
    assert transitions(conn, succ)[-1][:2] == ("prepublished", "expired")


def test_rule3_undeployed_issued_instance_expires(fleet):
    """Distribution was skipped (-s), so the instance never went live; it expires after not_after + grace."""
    conn = fleet
    add_cert(conn, "www.example.org", tlsa=False)
    schedule(conn, skip_hosts=[WEB2])
    run_all_jobs(conn, lifetimes=10)
    inst = the(conn, "www.example.org", "issued")
    set_now(conn, day(10, hours=23))
    assert not any(r.action == "expire" for r in plan(conn, skip_hosts=[WEB2]))
    set_now(conn, day(11))
    assert ("www.example.org", inst, "expire") in actions(schedule(conn, skip_hosts=[WEB2]))
    assert state_of(conn, inst) == "expired"


# ---------------------------------------------------------------- rule 4: useless successor

def test_rule4_local_successor_expiring_too_soon_is_deleted(fleet):
    conn = fleet
    add_cert(conn, "app.example.org", "local", tlsa=False)
    active = deploy_local(conn, "app.example.org")          # not_after day 90
    set_now(conn, day(1))
    early = issue_on_request(conn, "app.example.org")        # not_after day 91 < day 90 + 30
    p = plan(conn)
    assert [(r.instance, r.action) for r in p] == [(early, "delete")] and p[0].reason.startswith("rule 4:")
    schedule(conn)
    assert instances(conn, "app.example.org") == [(active, "deployed")]
    assert transitions(conn, early)[-1][:2] == ("issued", None) and "rule 4" in transitions(conn, early)[-1][2]
    # one that lives long enough is kept
    set_now(conn, day(61))
    later = issue_on_request(conn, "app.example.org")        # not_after day 151
    assert not any(r.instance == later for r in plan(conn))
    schedule(conn)
    assert state_of(conn, later) == "issued"


def test_rule4_le_successor_expiring_too_soon_is_deleted_and_replaced(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    active = deploy_le(conn, "www.example.org")               # not_after day 90
    set_now(conn, day(1))
    early = issue_on_request(conn, "www.example.org")         # -C: not_after day 91
    assert plan(conn) == []                                   # a new one would be no better yet
    set_now(conn, day(60))
    p = plan(conn)
    assert ("www.example.org", early, "delete") in actions(p)
    assert next(r.reason for r in p if r.instance == early).startswith("rule 4:")
    assert ("www.example.org", active, "issue") in actions(p)           # rule 9 issues a proper one
    schedule(conn)
    assert state_of(conn, early) is None
    assert "rule 4" in transitions(conn, early)[-1][2]
    run_all_jobs(conn)
    assert the(conn, "www.example.org", "prepublished")
    assert plan(conn) == []


def test_rule4_does_not_make_every_pass_issue_when_the_ca_shortens_lifetimes(fleet):
    """The CA now issues 45-day certificates: a successor issued at day 60 ends at day 105, before
    day 90 + 30; deleting it would only issue another one just as short at every pass."""
    conn = fleet
    add_cert(conn, "www.example.org", tlsa=False)
    active = deploy_le(conn, "www.example.org")               # 90 days
    set_now(conn, day(60))
    schedule(conn)
    run_all_jobs(conn, lifetimes=45)
    succ = the(conn, "www.example.org", "issued")
    issued_so_far = len(jobs(conn, "issue_acme"))
    for when in [day(60, hours=h) for h in range(1, 24)] + [day(d) for d in range(61, 75)]:
        set_now(conn, when)
        schedule(conn)
        run_all_jobs(conn, lifetimes=45)
    assert len(jobs(conn, "issue_acme")) == issued_so_far
    assert state_of(conn, succ) == "issued"
    # from day 75 a new 45-day instance ends after day 90 + 30: now the short one is replaced, once
    set_now(conn, day(75))
    assert actions(plan(conn)) == {("www.example.org", succ, "delete"), ("www.example.org", active, "issue")}
    schedule(conn)
    run_all_jobs(conn, lifetimes=45)
    succ = the(conn, "www.example.org", "issued")
    for d in range(76, 89):
        set_now(conn, day(d))
        schedule(conn)
        run_all_jobs(conn, lifetimes=45)
    assert len(jobs(conn, "issue_acme")) == issued_so_far + 1
    set_now(conn, day(89))
    assert [(r.instance, r.action) for r in schedule(conn)] == [(succ, "distribute")]
    run_all_jobs(conn)
    assert instances(conn, "www.example.org") == [(active, "expired"), (succ, "deployed")]


# ---------------------------------------------------------------- rule 5: reminder

def test_rule5_reminder_is_sent_once_and_reset_by_a_new_deployment(fleet):
    conn = fleet
    add_cert(conn, "app.example.org", "local", tlsa=False)
    add_cert(conn, "vpn.example.org", "local", tlsa=False)
    app = deploy_local(conn, "app.example.org")             # not_after day 90
    vpn = deploy_local(conn, "vpn.example.org")
    set_now(conn, day(59, hours=23))
    assert not any(r.action == "remind" for r in plan(conn))
    set_now(conn, day(60))                                   # not_after - local_issue_mail_days
    p = plan(conn)
    assert {(r.certificate, r.instance) for r in p if r.action == "remind"} == {("app.example.org", app), ("vpn.example.org", vpn)}
    assert all(r.reason.startswith("rule 5:") for r in p if r.action == "remind")
    schedule(conn)
    (mail,) = jobs(conn, "mail_reminder")
    assert [(c["name"], c["instance"]) for c in mail.args["certificates"]] == [("app.example.org", app), ("vpn.example.org", vpn)]
    assert value(conn, "SELECT authorized_until FROM certificates WHERE id = cert_id('app.example.org')") == day(60)
    # once: neither while the mail is pending nor after it was sent
    set_now(conn, day(60, hours=1))
    assert not any(r.action == "remind" for r in plan(conn))
    schedule(conn)
    run_all_jobs(conn)
    assert value(conn, "SELECT state::text FROM jobs WHERE id = %s", (mail.id,)) == "done"
    set_now(conn, day(70))
    schedule(conn)
    assert len(jobs(conn, "mail_reminder")) == 1
    # the operator issues a successor (-C); it goes live; the next reminder is due before *it* expires
    successor = issue_on_request(conn, "app.example.org")        # not_after day 160
    set_now(conn, day(89))
    schedule(conn, only_certs=["app.example.org"])
    run_all_jobs(conn)
    assert state_of(conn, successor) == "deployed"
    assert value(conn, "SELECT authorized_until FROM certificates WHERE id = cert_id('app.example.org')") is None
    set_now(conn, day(129, hours=23))
    assert not any(r.action == "remind" for r in plan(conn, only_certs=["app.example.org"]))
    set_now(conn, day(130))
    schedule(conn, only_certs=["app.example.org"])
    (_, second) = jobs(conn, "mail_reminder")
    assert [(c["name"], c["instance"]) for c in second.args["certificates"]] == [("app.example.org", successor)]


# ---------------------------------------------------------------- rule 6: disabled certificates

def test_rule6_disabled_certificate_is_skipped_even_with_all_or_include(fleet):
    """Issue 13.1: the cron line is -S -q -a; -a and -i do not make the scheduler issue a disabled certificate."""
    conn = fleet
    add_cert(conn, "www.example.org")
    conn.execute("SELECT disable_cert('www.example.org')")
    for sel in ({}, {"all_certs": True}, {"include": ["www.example.org"]}):
        p = plan(conn, **sel)
        assert [(r.instance, r.action) for r in p] == [(None, "skip")], sel
        assert p[0].reason.startswith("rule 6: the certificate is disabled") and "rule 2: nothing left" in p[0].reason
        assert schedule(conn, **sel) == p
    assert jobs(conn) == []
    assert request(conn, "request_create") == []                   # -C skips it too
    # the explicit actions keep the seed's meaning of -a and -i
    assert [r.certificate for r in request(conn, "request_create", include=["www.example.org"])] == ["www.example.org"]
    assert [j.kind for j in jobs(conn)] == ["issue_acme"]


def test_rule6_disabled_certificate_is_not_distributed_but_cleaned_and_reminded(fleet):
    conn = fleet
    add_cert(conn, "www.example.org", tlsa=False)
    add_cert(conn, "app.example.org", "local", tlsa=False)
    le = deploy_le(conn, "www.example.org")
    app = deploy_local(conn, "app.example.org")
    set_now(conn, day(60))
    schedule(conn, only_certs=["www.example.org"])
    run_all_jobs(conn)
    le_succ = the(conn, "www.example.org", "issued")
    conn.execute("SELECT disable_cert('www.example.org')")
    conn.execute("SELECT disable_cert('app.example.org')")
    leftover = value(owner_conn(conn), "INSERT INTO certinstances (certificate, state) VALUES (cert_id('www.example.org'), 'reserved') RETURNING id")
    set_now(conn, day(89, hours=12))
    before = last_job(conn)
    p = plan(conn)
    assert actions(p) == {("www.example.org", leftover, "delete"), ("www.example.org", le_succ, "skip"),
                          ("app.example.org", app, "remind"), ("app.example.org", app, "skip")}
    assert [r.reason for r in p if r.action == "remind"][0].endswith("[DISABLED]")
    # -a (or -i) changes nothing for the scheduler (rule 6)
    assert plan(conn, all_certs=True) == p == plan(conn, include=["www.example.org", "app.example.org"])
    assert schedule(conn, all_certs=True) == p
    (mail,) = jobs(conn, after=before)
    assert mail.kind == "mail_reminder"
    assert mail.args["certificates"] == [{"name": "app.example.org", "instance": app, "disabled": True,
                                          "not_after": mail.args["certificates"][0]["not_after"]}]
    assert instances(conn, "www.example.org") == [(le, "deployed"), (le_succ, "issued")]
    # the explicit action does: -D -i distributes it
    sent = request(conn, "request_distribute", include=["www.example.org"])
    assert {(r.certificate, r.instance) for r in sent} == {("www.example.org", le_succ)}


# ---------------------------------------------------------------- rule 7: replace

def test_rule7_prepublished_successor_is_distributed_after_two_ttl(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    old = deploy_le(conn, "www.example.org")
    _, succ = roll_to_prepublished(conn, "www.example.org", day(60))
    set_now(conn, day(88, hours=23, minutes=59))
    assert plan(conn) == []
    set_now(conn, day(89))                              # active.not_after - expire_grace
    p = plan(conn)
    assert [(r.instance, r.action) for r in p] == [(succ, "distribute")]
    assert p[0].reason.startswith("rule 7:") and "2 x TTL" in p[0].reason
    before = last_job(conn)
    schedule(conn)
    assert sorted((j.kind, j.instance, j.host) for j in jobs(conn, after=before)) == [
        ("distribute", succ, WEB1), ("distribute", succ, WEB2)]
    run_all_jobs(conn)
    # the old active instance expired once its successor was deployed (not before)
    assert instances(conn, "www.example.org") == [(old, "expired"), (succ, "deployed")]
    old_end = transitions(conn, old)[-1]
    assert old_end[:2] == ("deployed", "expired") and f"successor {succ} deployed" in old_end[2]
    exp_at, dep_at = (value(conn, "SELECT at FROM events WHERE instance = %s AND to_state = %s", (i, s))
                      for i, s in ((old, "expired"), (succ, "deployed")))
    assert exp_at == dep_at == day(89)


def test_rule7_old_active_stays_while_successor_is_partly_distributed(fleet):
    """Partial failure: one host fails; the successor stays prepublished, the plan and the job say why."""
    conn = fleet
    add_cert(conn, "www.example.org")
    old = deploy_le(conn, "www.example.org")
    _, succ = roll_to_prepublished(conn, "www.example.org", day(60))
    set_now(conn, day(89))
    schedule(conn)
    run_all_jobs(conn, fail_hosts=[WEB2])
    assert instances(conn, "www.example.org") == [(old, "deployed"), (succ, "prepublished")]
    assert deployed_to(conn, succ) == [WEB1]
    (failed,) = [j for j in jobs(conn, "distribute") if j.state == "failed"]
    assert failed.host == WEB2 and "connection refused" in failed.last_error
    p = plan(conn)
    assert [(r.instance, r.action) for r in p] == [(succ, "wait")]
    assert "connection refused" in p[0].reason and WEB2 in p[0].reason
    # the retry succeeds: now it is live
    run_all_jobs(conn, day(89, minutes=5))
    assert instances(conn, "www.example.org") == [(old, "expired"), (succ, "deployed")]


def test_rule7_prefers_the_prepublished_successor_over_a_newer_issued_one(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    old = deploy_le(conn, "www.example.org")
    _, pre = roll_to_prepublished(conn, "www.example.org", day(60))
    set_now(conn, day(62))
    newer = issue_on_request(conn, "www.example.org")          # an operator's -C
    assert plan(conn) == []                                     # rule 9: a prepublished successor exists
    set_now(conn, day(89))
    assert [(r.instance, r.action) for r in plan(conn)] == [(pre, "distribute")]
    schedule(conn)
    run_all_jobs(conn)
    assert instances(conn, "www.example.org") == [(old, "expired"), (pre, "deployed"), (newer, "issued")]


def test_rule7_waits_when_no_target_is_on_a_selected_host(fleet):
    conn = fleet
    conn.execute("SELECT add_disthost('web3.example.org')")
    add_cert(conn, "app.example.org", "local", tlsa=False)
    inst = issue_on_request(conn, "app.example.org")
    p = plan(conn, only_hosts=["web3.example.org"])
    assert [(r.instance, r.action) for r in p] == [(inst, "wait")] and "-s/-l" in p[0].reason
    before = last_job(conn)
    assert schedule(conn, only_hosts=["web3.example.org"]) == p
    assert jobs(conn, after=before) == []


def test_rule7_local_without_successor_waits(fleet):
    conn = fleet
    add_cert(conn, "app.example.org", "local", tlsa=False)
    active = deploy_local(conn, "app.example.org")
    set_now(conn, day(89))
    p = plan(conn)
    wait = [r for r in p if r.action == "wait"]
    assert [(r.instance) for r in wait] == [active]
    assert wait[0].reason.startswith("rule 7:") and "-C" in wait[0].reason
    assert {r.action for r in p} == {"wait", "remind"}
    before = last_job(conn)
    schedule(conn)
    assert [j.kind for j in jobs(conn, after=before)] == ["mail_reminder"]
    assert instances(conn, "app.example.org") == [(active, "deployed")]


def test_rule7_le_without_successor_issues_one(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")              # with TLSA: issued, then prepublished, then distributed
    add_cert(conn, "api.example.org", tlsa=False)  # without: issued and distributed at once
    www = deploy_le(conn, "www.example.org")
    api = deploy_le(conn, "api.example.org")
    set_now(conn, day(89))                         # no pass ran since day 0: no successor yet
    p = plan(conn)
    assert actions(p) == {("www.example.org", www, "issue"), ("api.example.org", api, "issue")}
    assert all(r.reason.startswith("rule 7:") and "no successor" in r.reason for r in p)
    schedule(conn)
    issue = {cert_name(conn, j.certificate): j for j in jobs(conn, "issue_acme") if j.state == "queued"}
    assert issue["www.example.org"].args["then"] == "prepublish"
    assert issue["api.example.org"].args["then"] == "distribute"
    run_all_jobs(conn)
    api_new = the(conn, "api.example.org", "deployed")
    assert api_new != api and state_of(conn, api) == "expired"
    www_new = the(conn, "www.example.org", "prepublished")
    assert the(conn, "www.example.org", "deployed") == www
    set_now(conn, day(89, hours=2))
    assert ("www.example.org", www_new, "distribute") in actions(schedule(conn))
    run_all_jobs(conn)
    assert instances(conn, "www.example.org") == [(www, "expired"), (www_new, "deployed")]


# ---------------------------------------------------------------- rule 8: local certificates stop before prepublish

def test_rule8_local_certificate_is_not_prepublished(fleet):
    conn = fleet
    add_cert(conn, "app.example.org", "local")
    add_cert(conn, "www.example.org")
    local = deploy_local(conn, "app.example.org")
    deploy_le(conn, "www.example.org")
    set_now(conn, day(61))
    succ = issue_on_request(conn, "app.example.org")
    p = plan(conn)
    assert [r.action for r in p if r.certificate == "app.example.org"] == ["remind"]
    assert [r.action for r in p if r.certificate == "www.example.org"] == ["issue"]       # LE: rule 9
    before = last_job(conn)
    schedule(conn)
    assert not [j for j in jobs(conn, after=before, cert="app.example.org") if j.kind == "publish_tlsa"]
    assert state_of(conn, succ) == "issued" and state_of(conn, local) == "deployed"


# ---------------------------------------------------------------- rule 9: prepublish (LE)

def test_rule9_successor_is_prepublished_with_both_instances(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    active = deploy_le(conn, "www.example.org")
    set_now(conn, day(59, hours=23, minutes=59))
    assert plan(conn) == []
    set_now(conn, day(60))                             # not_after - pre_publish_days
    p = plan(conn)
    assert [(r.instance, r.action) for r in p] == [(active, "issue")]
    assert p[0].reason.startswith("rule 9:")
    schedule(conn)
    (issue,) = [j for j in jobs(conn, "issue_acme") if j.state == "queued"]
    assert issue.args["then"] == "prepublish"
    run_all_jobs(conn, kinds=["issue_acme"])
    succ = the(conn, "www.example.org", "issued")
    (tlsa,) = [j for j in jobs(conn, "publish_tlsa") if j.state == "queued"]
    assert tlsa.args["instances"] == [active, succ] and tlsa.args["prepublish"] == succ
    run_all_jobs(conn)
    assert instances(conn, "www.example.org") == [(active, "deployed"), (succ, "prepublished")]
    assert value(conn, "SELECT tlsa_published FROM certinstances WHERE id = %s", (succ,)) == day(60)
    assert transitions(conn, succ)[-1][:2] == ("issued", "prepublished")
    assert "publish_tlsa" in transitions(conn, succ)[-1][2]
    # prepublished: rule 9 has nothing more to do
    set_now(conn, day(70))
    assert plan(conn) == []


def test_rule9_issued_successor_is_prepublished_without_new_issue(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    active = deploy_le(conn, "www.example.org")
    set_now(conn, day(61))
    succ = issue_on_request(conn, "www.example.org")           # -C: issued, nothing follows
    p = plan(conn)
    assert [(r.instance, r.action) for r in p] == [(succ, "prepublish")]
    before = last_job(conn)
    schedule(conn)
    (tlsa,) = jobs(conn, after=before)
    assert tlsa.kind == "publish_tlsa" and tlsa.args["instances"] == [active, succ] and tlsa.args["prepublish"] == succ
    run_all_jobs(conn)
    assert state_of(conn, succ) == "prepublished"


@pytest.mark.parametrize("lifetime", [6, 45])
def test_rule9_pre_publish_days_capped_to_a_third_of_a_short_lifetime(fleet, lifetime):
    conn = fleet
    add_cert(conn, "short.example.org")
    active = deploy_le(conn, "short.example.org", lifetime=lifetime)
    third = dt.timedelta(days=lifetime) / 3
    set_now(conn, T0 + dt.timedelta(days=lifetime) - third - dt.timedelta(minutes=1))
    assert plan(conn) == []
    start = T0 + dt.timedelta(days=lifetime) - third
    set_now(conn, start)
    assert [(r.instance, r.action) for r in plan(conn)] == [(active, "issue")]
    schedule(conn)
    run_all_jobs(conn, lifetimes=lifetime)
    succ = the(conn, "short.example.org", "prepublished")      # not deleted by rule 4 (its margin is capped too)
    set_now(conn, day(lifetime - 1))                            # not_after - expire_grace
    assert [(r.instance, r.action) for r in schedule(conn)] == [(succ, "distribute")]
    run_all_jobs(conn, lifetimes=lifetime)
    assert instances(conn, "short.example.org") == [(active, "expired"), (succ, "deployed")]


# ---------------------------------------------------------------- rule 10: after the replacement

def test_rule10_after_rollover_tlsa_holds_the_active_instance_only(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    deploy_le(conn, "www.example.org")
    old, succ = roll_to_prepublished(conn, "www.example.org", day(60))
    set_now(conn, day(89))
    schedule(conn)
    run_all_jobs(conn, kinds=["distribute"])
    (tlsa,) = [j for j in jobs(conn, "publish_tlsa") if j.state == "queued"]
    assert tlsa.args == {"instances": [succ], "prepublish": None, "remove": False}
    run_all_jobs(conn)
    published = dict(conn.execute("SELECT id, tlsa_published FROM certinstances WHERE certificate = cert_id('www.example.org')").fetchall())
    assert published == {old: None, succ: day(60)}
    # and it stays so through archive and delete
    for hours in (1, 2):
        set_now(conn, day(89, hours=hours))
        schedule(conn)
        run_all_jobs(conn)
    assert instances(conn, "www.example.org") == [(succ, "deployed")]
    assert jobs(conn, "publish_tlsa")[-1].args["instances"] == [succ]


# ---------------------------------------------------------------- the state machine

def test_state_transitions_table_is_lifecycle_md(conn):
    assert {tuple(r) for r in conn.execute("SELECT from_state::text, to_state::text FROM state_transitions")} == ALLOWED


def make_instance_in(conn, state: str) -> int:
    """An instance of x.example.org (no TLSA) taken to `state` along allowed transitions."""
    inst = value(owner_conn(conn), "INSERT INTO certinstances (certificate, state) VALUES (cert_id('x.example.org'), 'reserved') RETURNING id")
    path = {"reserved": [], "issued": ["issued"], "prepublished": ["issued", "prepublished"],
            "deployed": ["issued", "deployed"], "revoked": ["revoked"], "expired": ["issued", "expired"],
            "archived": ["issued", "expired", "archived"]}[state]
    for step in path:
        owner_conn(conn).execute("UPDATE certinstances SET state = %s WHERE id = %s", (step, inst))
    assert state_of(conn, inst) == state
    return inst


@pytest.mark.parametrize("from_state,to_state", ILLEGAL, ids=[f"{f or 'none'}-{t or 'deleted'}" for f, t in ILLEGAL])
def test_illegal_transition_is_refused_naming_both_states(fleet, from_state, to_state):
    conn = fleet
    add_cert(conn, "x.example.org", tlsa=False)
    events_before = value(conn, "SELECT count(*) FROM events")
    if from_state is None:
        assert_refused(owner_conn(conn), "INSERT INTO certinstances (certificate, state) VALUES (cert_id('x.example.org'), %s)",
                       (to_state,), sqlstate="SP020", match=f"(none) -> {to_state} is not an allowed transition")
    else:
        inst = make_instance_in(conn, from_state)
        events_before = value(conn, "SELECT count(*) FROM events")
        if to_state is None:
            assert_refused(owner_conn(conn), "DELETE FROM certinstances WHERE id = %s", (inst,),
                           sqlstate="SP020", match=f"instance {inst}: {from_state} -> (deleted)")
        else:
            assert_refused(owner_conn(conn), "UPDATE certinstances SET state = %s WHERE id = %s", (to_state, inst),
                           sqlstate="SP020", match=f"instance {inst}: {from_state} -> {to_state}")
        assert state_of(conn, inst) == from_state
    assert value(conn, "SELECT count(*) FROM events") == events_before


def test_illegal_transitions_are_all_the_others():
    assert len(ILLEGAL) == 8 * 8 - 8 - len(ALLOWED)


# ---------------------------------------------------------------- DANE-safe order

def test_dane_successor_is_not_deployed_before_two_ttl(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    active = deploy_le(conn, "www.example.org")
    set_now(conn, day(89))                 # no successor yet, and the active one is due for replacement
    schedule(conn)
    run_all_jobs(conn)
    succ = the(conn, "www.example.org", "prepublished")
    assert value(conn, "SELECT tlsa_published FROM certinstances WHERE id = %s", (succ,)) == day(89)
    set_now(conn, day(89, hours=1, minutes=59))
    p = plan(conn)
    assert [(r.instance, r.action) for r in p] == [(succ, "wait")]
    assert "DANE-safe order" in p[0].reason and "deploy after" in p[0].reason
    before = last_job(conn)
    schedule(conn)
    assert jobs(conn, after=before) == []
    # nobody gets around it: a direct promotion is refused
    assert_refused(owner_conn(conn), "UPDATE certinstances SET state = 'deployed' WHERE id = %s", (succ,),
                   sqlstate="SP021", match=f"instance {succ} cannot be deployed yet")
    # neither does -D
    (held,) = request(conn, "request_distribute")
    assert held.job is None and held.instance == succ and "held back: DANE-safe order" in held.reason
    assert f"deployed after {value(conn, 'SELECT %s::timestamptz::text', (day(89) + 2 * TTL,))}" in held.reason
    assert jobs(conn, after=before) == []
    set_now(conn, day(89) + 2 * TTL)
    assert [(r.instance, r.action) for r in schedule(conn)] == [(succ, "distribute")]
    run_all_jobs(conn)
    assert instances(conn, "www.example.org") == [(active, "expired"), (succ, "deployed")]


def test_dane_unpublished_successor_is_refused_too(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    deploy_le(conn, "www.example.org")
    set_now(conn, day(61))
    succ = issue_on_request(conn, "www.example.org")
    assert_refused(owner_conn(conn), "UPDATE certinstances SET state = 'deployed' WHERE id = %s", (succ,),
                   sqlstate="SP021", match="are not published")


# ---------------------------------------------------------------- plan and schedule

def build_fleet_at_day_89(conn) -> dict[str, int]:
    """Certificates in every situation at day 89; returns the instances that matter."""
    got = {}
    add_cert(conn, "roll.example.org")                       # LE, prepublished successor: distribute
    add_cert(conn, "app.example.org", "local", tlsa=False)   # local, expiring: remind, wait
    got["roll"] = deploy_le(conn, "roll.example.org")
    got["app"] = deploy_local(conn, "app.example.org")
    set_now(conn, day(29))
    add_cert(conn, "pre.example.org")                         # LE deployed day 29, successor issued by -C: prepublish
    got["pre"] = deploy_le(conn, "pre.example.org")
    add_cert(conn, "old.example.org", "local", tlsa=False)   # disabled, undeployed and past not_after: expire
    conn.execute("SELECT disable_cert('old.example.org')")
    got["old"] = issue_on_request(conn, "old.example.org", lifetime=30, include=["old.example.org"])
    set_now(conn, day(60))
    got["roll_succ"] = roll_to_prepublished(conn, "roll.example.org", day(60))[1]
    set_now(conn, day(89))
    got["pre_succ"] = issue_on_request(conn, "pre.example.org")
    add_cert(conn, "new.example.org")                         # LE, nothing yet: issue
    add_cert(conn, "gone.example.org", tlsa=False)            # LE, active revoked: archive; --revoke's successor pending
    got["gone"] = deploy_le(conn, "gone.example.org")
    conn.execute("SELECT * FROM request_revoke(%s, 'cessationOfOperation')", (got["gone"],))
    run_all_jobs(conn, kinds=["revoke"])                      # revoked at the CA: the scheduler may archive it
    got["leftover"] = value(owner_conn(conn), "INSERT INTO certinstances (certificate, state) "
                                  "VALUES (cert_id('pre.example.org'), 'reserved') RETURNING id")   # delete
    set_now(conn, day(89, minutes=30))
    return got


def test_plan_writes_nothing_and_schedule_does_exactly_what_it_listed(fleet):
    conn = fleet
    got = build_fleet_at_day_89(conn)
    before, before_counts = snapshot(conn), counts(conn)
    planned = plan(conn)
    assert plan(conn) == planned
    assert snapshot(conn) == before and counts(conn) == before_counts
    assert actions(planned) == {
        ("app.example.org", got["app"], "remind"),
        ("app.example.org", got["app"], "wait"),
        ("gone.example.org", got["gone"], "archive"),
        ("gone.example.org", None, "wait"),                  # the emergency rollover's issue job (request_revoke)
        ("new.example.org", None, "issue"),
        ("old.example.org", got["old"], "expire"),
        ("old.example.org", None, "skip"),                   # rule 6: disabled, rule 2 would wait for -C
        ("pre.example.org", got["leftover"], "delete"),
        ("pre.example.org", got["pre_succ"], "prepublish"),
        ("roll.example.org", got["roll_succ"], "distribute"),
    }
    assert all(r.reason for r in planned)

    first_new = last_job(conn) + 1
    done = schedule(conn)
    assert Counter(done) == Counter(planned)
    new = jobs(conn, after=first_new - 1)
    made = sorted((j.kind, cert_name(conn, j.certificate) if j.certificate else None, j.host) for j in new)
    assert made == [
        ("distribute", "roll.example.org", WEB1), ("distribute", "roll.example.org", WEB2),
        ("issue_acme", "new.example.org", None),
        ("mail_reminder", None, None),
        ("publish_tlsa", "pre.example.org", None),
    ]
    by_kind = {j.kind: j for j in new}
    assert by_kind["publish_tlsa"].args["prepublish"] == got["pre_succ"]
    assert [c["name"] for c in by_kind["mail_reminder"].args["certificates"]] == ["app.example.org"]
    assert all(j.reason for j in new)
    assert {j.instance for j in new if j.kind == "distribute"} == {got["roll_succ"]}
    assert state_of(conn, got["leftover"]) is None
    assert state_of(conn, got["gone"]) == "archived"
    assert state_of(conn, got["old"]) == "expired"
    for j in new:
        if j.kind == "issue_acme":
            assert state_of(conn, j.instance) == "reserved"
    # nothing else changed state: one event per listed delete / archive / expire, and one per reservation
    assert value(conn, "SELECT count(*) FROM events") - before_counts["events"] == 3 + 1


def test_schedule_twice_enqueues_nothing_new(fleet):
    conn = fleet
    build_fleet_at_day_89(conn)
    schedule(conn)
    after_first = last_job(conn)
    second = schedule(conn)
    assert last_job(conn) == after_first
    assert not {r.action for r in second} & {"issue", "distribute", "prepublish", "remind"}
    # with the first run's jobs done (their follow-ups enqueued by their completions), still nothing new from schedule
    run_all_jobs(conn)
    after_jobs = last_job(conn)
    third = schedule(conn)
    assert last_job(conn) == after_jobs, jobs(conn, after=after_jobs)
    assert not {r.action for r in third} & {"issue", "distribute", "prepublish", "remind"}


# ---------------------------------------------------------------- selection

SELECTION_CALLS = [
    "SELECT * FROM plan({sel})",
    "SELECT * FROM schedule({sel})",
    "SELECT * FROM request_create({sel})",
    "SELECT * FROM request_distribute({sel})",
    "SELECT * FROM request_consolidate_certs({sel})",
    "SELECT * FROM request_consolidate_tlsa({sel})",
    "SELECT * FROM request_remove_tlsa({sel})",
]


@pytest.mark.parametrize("call", SELECTION_CALLS, ids=lambda c: c.split()[3].split("(")[0])
def test_selection_with_unknown_names_is_refused_before_anything(fleet, call):
    conn = fleet
    add_cert(conn, "www.example.org")
    add_cert(conn, "app.example.org", "local")
    # a raw selection (selection() would refuse it already), so each function's own check is proven
    sel = ("ROW(false, ARRAY['nope.example.org', 'www.example.org'], ARRAY['gone.example.org'], ARRAY['nix.example.org'],"
           " ARRAY['bad1.example.org', 'web1.example.org'], ARRAY['bad2.example.org'], false)::dd.selection")
    err = assert_refused(conn, call.format(sel=sel), sqlstate="SP024")
    message = err.diag.message_primary
    for name in ("nope.example.org", "gone.example.org", "nix.example.org", "bad1.example.org", "bad2.example.org"):
        assert f'"{name}"' in message
    assert '"www.example.org"' not in message and '"web1.example.org"' not in message
    assert jobs(conn) == [] and value(conn, "SELECT count(*) FROM events") == 0


def test_selection_constructor_refuses_unknown_names(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    err = assert_refused(conn, "SELECT selection(only_certs => ARRAY['a.example.org', 'www.example.org'], only_hosts => ARRAY['h.example.org'])",
                         sqlstate="SP024")
    assert '"a.example.org"' in err.diag.message_primary and '"h.example.org"' in err.diag.message_primary
    assert_refused(conn, "SELECT selection(skip_hosts => ARRAY[%s], only_hosts => ARRAY[%s])", (WEB1, WEB1),
                   sqlstate="SP024", match=WEB1)


@pytest.mark.parametrize("sel", [{"skip_hosts": [WEB2]}, {"only_hosts": [WEB1]}], ids=["skip", "only"])
def test_skipped_host_leaves_instance_not_deployed(fleet, sel):
    conn = fleet
    add_cert(conn, "www.example.org")
    schedule(conn, **sel)
    (issue,) = jobs(conn)
    assert issue.args["skip_hosts"] == sel.get("skip_hosts", []) and issue.args["only_hosts"] == sel.get("only_hosts", [])
    ran = run_all_jobs(conn)
    assert [j.kind for j in ran] == ["issue_acme", "distribute"]
    inst = the(conn, "www.example.org", "issued")
    assert deployed_to(conn, inst) == [WEB1]
    # an unrestricted pass distributes to every target, and then it is deployed
    set_now(conn, day(0, hours=1))
    assert [(r.instance, r.action) for r in schedule(conn)] == [(inst, "distribute")]
    run_all_jobs(conn)
    assert state_of(conn, inst) == "deployed" and deployed_to(conn, inst) == list(HOSTS)


def test_exclude_and_only_limit_the_pass(fleet):
    conn = fleet
    for name in ("a.example.org", "b.example.org", "c.example.org"):
        add_cert(conn, name)
    assert {r.certificate for r in plan(conn, exclude=["b.example.org"])} == {"a.example.org", "c.example.org"}
    assert {r.certificate for r in plan(conn, only_certs=["b.example.org"])} == {"b.example.org"}
    schedule(conn, only_certs=["b.example.org"], exclude=["b.example.org"])
    assert jobs(conn) == []


def test_no_tlsa_selection_does_not_prepublish(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    deploy_le(conn, "www.example.org")
    set_now(conn, day(61))
    succ = issue_on_request(conn, "www.example.org")
    p = plan(conn, no_tlsa=True)
    # issue 13.4: nothing to do yet, and a warning that the rollover will go on without TLSA changes
    assert [(r.instance, r.action) for r in p] == [(succ, "warn")] and p[0].reason.startswith("-N (no TLSA changes)")
    before = last_job(conn)
    assert schedule(conn, no_tlsa=True) == p
    assert jobs(conn, after=before) == []


# ---------------------------------------------------------------- request functions

def test_request_create_issues_the_selected_certificates(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    add_cert(conn, "app.example.org", "local")
    add_cert(conn, "off.example.org", "local")
    conn.execute("SELECT disable_cert('off.example.org')")
    made = request(conn, "request_create")
    assert sorted((r.certificate, r.reason) for r in made) == [("app.example.org", "requested (-C)"), ("www.example.org", "requested (-C)")]
    queued = {j.id: j for j in jobs(conn)}
    assert set(queued) == {r.job for r in made}
    for r in made:
        j = queued[r.job]
        assert j.kind == ("issue_acme" if r.certificate == "www.example.org" else "issue_local")
        assert j.instance == r.instance and state_of(conn, r.instance) == "reserved" and j.args["then"] is None
    # asking again while they are pending enqueues nothing
    assert request(conn, "request_create") == []
    run_all_jobs(conn)
    assert {state_of(conn, r.instance) for r in made} == {"issued"}
    assert [r.certificate for r in request(conn, "request_create", only_certs=["app.example.org"])] == ["app.example.org"]


def test_request_create_with_remaining_days_takes_expiring_local_ones(fleet):
    conn = fleet
    add_cert(conn, "long.example.org", "local", tlsa=False)
    add_cert(conn, "short.example.org", "local", tlsa=False)
    add_cert(conn, "www.example.org", tlsa=False)
    deploy_local(conn, "long.example.org", lifetime=90)
    short = deploy_local(conn, "short.example.org", lifetime=30)
    deploy_le(conn, "www.example.org", lifetime=20)            # LE: never with -r
    set_now(conn, day(1))
    made = request(conn, "request_create", remaining_days=40)
    expires = value(conn, "SELECT not_after::text FROM certinstances WHERE id = %s", (short,))
    assert [(r.certificate, r.reason) for r in made] == [("short.example.org", f"requested (-C -r 40): deployed instance expires {expires}")]
    (job,) = jobs(conn, "issue_local")[-1:]
    assert job.id == made[0].job and job.instance == made[0].instance
    assert request(conn, "request_create", remaining_days=10) == []
    assert_refused(conn, "SELECT * FROM request_create(NULL, -1)", sqlstate="SP005")


def test_request_distribute_sends_issued_instances_and_holds_back_for_dane(fleet):
    conn = fleet
    add_cert(conn, "app.example.org", "local", tlsa=False)
    add_cert(conn, "www.example.org")
    app = issue_on_request(conn, "app.example.org")
    deploy_le(conn, "www.example.org")
    set_now(conn, day(61))
    succ = issue_on_request(conn, "www.example.org")
    before = last_job(conn)
    got = request(conn, "request_distribute")
    sent = sorted((r.certificate, r.instance, r.reason) for r in got if r.certificate == "app.example.org")
    assert sent == [("app.example.org", app, "requested (-D)")] * 2
    held = [r for r in got if r.certificate == "www.example.org"]
    assert [(r.certificate, r.instance) for r in held] == [("www.example.org", succ)]
    assert held[0].reason.startswith("held back: DANE-safe order")
    new = jobs(conn, after=before)
    assert sorted((j.kind, j.instance, j.host, j.args.get("mode")) for j in new if j.kind == "distribute") == [
        ("distribute", app, WEB1, "deploy"), ("distribute", app, WEB2, "deploy")]
    # issue 13.5: the successor's TLSA is published at once (test_operator_semantics.py follows it through)
    (tlsa,) = [j for j in new if j.kind == "publish_tlsa"]
    assert tlsa.args["prepublish"] == succ and held[0].job == tlsa.id
    assert {j.id for j in new} == {r.job for r in got}
    run_all_jobs(conn, kinds=["distribute"])
    assert state_of(conn, app) == "deployed" and state_of(conn, succ) == "issued"


def test_request_consolidate_certs_redistributes_deployed(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    active = deploy_le(conn, "www.example.org")
    before, events_before = last_job(conn), value(conn, "SELECT count(*) FROM events WHERE job_state IS NULL")
    got = request(conn, "request_consolidate_certs")
    new = jobs(conn, after=before)
    assert sorted((j.kind, j.instance, j.host, j.args["mode"]) for j in new) == [
        ("distribute", active, WEB1, "consolidate"), ("distribute", active, WEB2, "consolidate")]
    assert sorted(r.job for r in got) == [j.id for j in new] and all(r.instance == active for r in got)
    assert all(r.reason.startswith("requested (-K)") for r in got)
    run_all_jobs(conn)
    assert state_of(conn, active) == "deployed"
    assert value(conn, "SELECT count(*) FROM events WHERE job_state IS NULL") == events_before


def test_request_consolidate_tlsa_publishes_the_wanted_records(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    add_cert(conn, "plain.example.org", tlsa=False)
    deploy_le(conn, "www.example.org")
    active, succ = roll_to_prepublished(conn, "www.example.org", day(60))
    deploy_le(conn, "plain.example.org")
    before = last_job(conn)
    got = request(conn, "request_consolidate_tlsa")
    (job,) = jobs(conn, after=before)
    assert [(r.job, r.certificate) for r in got] == [(job.id, "www.example.org")]
    assert job.kind == "publish_tlsa" and job.args == {"instances": [active, succ], "prepublish": None, "remove": False}
    assert_refused(conn, "SELECT * FROM request_consolidate_tlsa(selection(no_tlsa => true))", sqlstate="SP024", match="-N")


def test_request_remove_tlsa_empties_the_records(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    deploy_le(conn, "www.example.org")
    before = last_job(conn)
    got = request(conn, "request_remove_tlsa")
    (job,) = jobs(conn, after=before)
    assert [(r.job, r.certificate) for r in got] == [(job.id, "www.example.org")]
    assert job.kind == "publish_tlsa" and job.args["instances"] == [] and job.args["remove"] is True
    assert_refused(conn, "SELECT * FROM request_remove_tlsa(selection(no_tlsa => true))", sqlstate="SP024", match="-N")


# ---------------------------------------------------------------- revocation

def test_revoked_instance_is_archived_next_run_then_deleted(fleet):
    conn = fleet
    add_cert(conn, "www.example.org", tlsa=False)
    active = deploy_le(conn, "www.example.org")
    got = rows(conn, "SELECT * FROM request_revoke(%s, 'keyCompromise')", (active,))
    assert state_of(conn, active) == "revoked"
    assert transitions(conn, active)[-1] == ("deployed", "revoked", "revoked (keyCompromise) by pki_cron with --revoke")
    # it was the active instance: its successor is issued in the same run (the emergency rollover), and
    # deployed at once (no TLSA services here)
    [issue] = [j for j in jobs(conn, "issue_acme") if j.state == "queued"]
    assert issue.args["then"] == "rollover" and issue.instance in [r.instance for r in got]
    run_all_jobs(conn, kinds=["revoke"])   # the CA revoked it: now the scheduler may let the instance go
    set_now(conn, day(1))
    p = plan(conn)
    assert ("www.example.org", active, "archive") in actions(p)
    assert ("www.example.org", None, "wait") in actions(p)             # rule 7: an issue job is pending
    schedule(conn)
    assert state_of(conn, active) == "archived"
    run_all_jobs(conn)
    set_now(conn, day(1, hours=1))
    schedule(conn)
    assert state_of(conn, active) is None
    assert len(in_state(conn, "www.example.org", "deployed")) == 1
    assert_refused(conn, "SELECT * FROM request_revoke(999999, 'superseded')", sqlstate="SP002", match="999999")
    assert_refused(conn, "SELECT * FROM request_revoke(%s, 'certificateHold')", (the(conn, "www.example.org", "deployed"),),
                   sqlstate="SP011", match="certificateHold")


# ---------------------------------------------------------------- events

def test_events_are_append_only(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    deploy_le(conn, "www.example.org")
    first = value(conn, "SELECT min(id) FROM events")
    n = value(conn, "SELECT count(*) FROM events")
    for sql in ("UPDATE events SET reason = 'rewritten' WHERE id = %s", "DELETE FROM events WHERE id = %s"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):   # the roles may not write history at all
            conn.execute(sql, (first,))
        with pytest.raises(psycopg.Error) as info:                  # and the trigger stops even the owner
            owner_conn(conn).execute(sql, (first,))
        assert info.value.diag.sqlstate == "SP012" and f"event {first}" in info.value.diag.message_primary
    assert value(conn, "SELECT count(*) FROM events") == n
    assert value(conn, "SELECT reason FROM events WHERE id = %s", (first,)) != "rewritten"


def test_every_transition_wrote_one_event_with_a_reason(fleet):
    """Through two full rollovers, every instance's history is an unbroken chain of transitions."""
    conn = fleet
    add_cert(conn, "www.example.org")
    add_cert(conn, "app.example.org", "local", tlsa=False)
    deploy_le(conn, "www.example.org")
    deploy_local(conn, "app.example.org")
    seen: dict[int, list[str | None]] = {}

    def observe():
        for inst, state in conn.execute("SELECT id, state::text FROM certinstances"):
            if not seen.get(inst) or seen[inst][-1] != state:
                seen.setdefault(inst, []).append(state)

    for d in range(1, 181):
        set_now(conn, day(d))
        if d in (61, 121):
            issue_on_request(conn, "app.example.org")
        schedule(conn)
        observe()
        run_all_jobs(conn)
        observe()
    for inst, states in seen.items():
        chain = transitions(conn, inst)
        assert chain and chain[0][:2] == (None, "reserved"), chain
        assert all(reason and not reason.startswith("changed directly") for _, _, reason in chain), chain
        for (_, to, _), (frm, _, _) in zip(chain, chain[1:]):
            assert to == frm, chain
        assert all((f, t) in ALLOWED for f, t, _ in chain), chain
        assert chain[-1][1] == state_of(conn, inst)
        # every state the instance was seen in is in its history, in the order seen
        recorded = iter(t for _, t, _ in chain)
        assert all(any(s == t for t in recorded) for s in states), (states, chain)
    # both certificates rolled over twice
    for name in ("www.example.org", "app.example.org"):
        assert value(conn, "SELECT count(DISTINCT instance) FROM events WHERE certificate = cert_id(%s)", (name,)) >= 3
