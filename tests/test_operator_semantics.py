"""Issue 13: what the operator's options mean, as the original serverPKI 0.9.11's manual says.

1. a disabled certificate is left alone by the scheduler, with or without -a/-i (the cron line is
   `-S -q -a`); -a/-i keep their meaning for the explicit actions; reminders still go out, marked;
3. -r N: local certificates only, for -C, -D and the listing (renewal_candidates);
4. -N: rollovers go on without TLSA changes, with a warning; no flag leaves an active instance
   past its not_after without an 'overdue' row;
5. -D with DANE: the successor's TLSA is published at once; the row says when it will be deployed.

Driven as tests/test_lifecycle.py drives the lifecycle (its helpers: the simulated agent).
"""

from __future__ import annotations

from serverpki import reports
from serverpki.operate import _selection

from helpers import owner_conn
from test_lifecycle import (TTL, WEB1, WEB2, add_cert, day, deploy_le, deploy_local, fleet, in_state,  # noqa: F401
                            instances, issue_on_request, jobs, last_job, plan, request, rows, run_all_jobs,
                            schedule, set_now, state_of, the, value)


def by_action(plan_rows, action: str) -> dict:
    return {(r.certificate, r.instance): r.reason for r in plan_rows if r.action == action}


# ---------------------------------------------------------------- 1. disabled means disabled

def test_disabled_certificates_are_left_alone_by_a_year_of_cron_runs_with_all(fleet):
    """`operate_serverPKI -S -q -a` once a day for a year: the enabled certificate rolls over, the disabled
    ones get no new instance, no distribution and no TLSA change; their old instances are still cleaned
    up, the disabled local one is reminded (marked), and past not_after each is reported 'overdue'."""
    conn = fleet
    add_cert(conn, "www.example.org")                          # LE with TLSA: rolls over
    add_cert(conn, "off.example.org")                          # LE with TLSA, disabled after its first deployment
    add_cert(conn, "loc.example.org", "local", tlsa=False)    # local, disabled after its first deployment
    deploy_le(conn, "www.example.org")
    off = deploy_le(conn, "off.example.org")
    loc = deploy_local(conn, "loc.example.org")
    run_all_jobs(conn)
    for name in ("off.example.org", "loc.example.org"):
        conn.execute("SELECT disable_cert(%s)", (name,))
    # a leftover of the disabled certificate: cleanup (rule 1) still runs for it
    leftover = value(owner_conn(conn), "INSERT INTO certinstances (certificate, state) "
                                       "VALUES (cert_id('off.example.org'), 'reserved') RETURNING id")
    before = last_job(conn)
    skipped, overdue = set(), set()
    for n in range(1, 366):
        set_now(conn, day(n))
        done = schedule(conn, all_certs=True)
        skipped |= {r.certificate for r in done if r.action == "skip"}
        overdue |= {r.certificate for r in done if r.action == "overdue"}
        for r in done:
            if r.certificate != "www.example.org":
                assert r.action in ("skip", "overdue", "remind", "delete"), (n, r)
                if r.action == "skip":
                    assert r.reason.startswith("rule 6: the certificate is disabled"), r
        run_all_jobs(conn)
    assert state_of(conn, leftover) is None
    assert instances(conn, "off.example.org") == [(off, "deployed")]
    assert instances(conn, "loc.example.org") == [(loc, "deployed")]
    later = jobs(conn, after=before)
    assert not [j for j in later if j.certificate in (value(conn, "SELECT cert_id('off.example.org')"),
                                                      value(conn, "SELECT cert_id('loc.example.org')"))]
    assert not [j for j in later if j.kind == "publish_tlsa" and j.certificate != value(conn, "SELECT cert_id('www.example.org')")]
    assert len(value(conn, "SELECT array_agg(DISTINCT instance) FROM events WHERE to_state = 'deployed' "
                           "AND certificate = cert_id('www.example.org')")) >= 4      # the enabled one rolled over
    assert skipped == overdue == {"off.example.org", "loc.example.org"}
    (mail,) = [j for j in later if j.kind == "mail_reminder"]
    assert [(c["name"], c["disabled"]) for c in mail.args["certificates"]] == [("loc.example.org", True)]
    p = plan(conn, all_certs=True)
    assert "the certificate is disabled" in by_action(p, "overdue")[("off.example.org", off)]
    assert "-i off.example.org" in by_action(p, "overdue")[("off.example.org", off)]


def test_explicit_actions_keep_all_and_include_for_disabled_certificates(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    deploy_le(conn, "www.example.org")
    run_all_jobs(conn)
    conn.execute("SELECT disable_cert('www.example.org')")
    for function in ("request_create", "request_consolidate_certs", "request_consolidate_tlsa", "request_remove_tlsa"):
        assert request(conn, function) == [], function
        assert {r.certificate for r in request(conn, function, all_certs=True)} == {"www.example.org"}, function
        run_all_jobs(conn)
    assert {r.certificate for r in request(conn, "request_create", include=["www.example.org"])} == {"www.example.org"}
    run_all_jobs(conn)
    assert request(conn, "request_distribute") == []
    assert {r.certificate for r in request(conn, "request_distribute", include=["www.example.org"])} == {"www.example.org"}


# ---------------------------------------------------------------- 3. -r N

def test_remaining_days_are_local_certificates_only_for_create_distribute_and_the_listing(fleet):
    conn = fleet
    add_cert(conn, "short.example.org", "local", tlsa=False)
    add_cert(conn, "long.example.org", "local", tlsa=False)
    add_cert(conn, "le.example.org", tlsa=False)
    deploy_local(conn, "short.example.org", lifetime=60)            # expires day 60
    deploy_local(conn, "long.example.org", lifetime=90)              # expires day 90
    deploy_le(conn, "le.example.org", lifetime=60)
    run_all_jobs(conn)
    set_now(conn, day(1))
    long_succ = issue_on_request(conn, "long.example.org")            # issued day 1
    set_now(conn, day(25))
    made = request(conn, "request_create", remaining_days=40)
    assert [(r.certificate, r.reason) for r in made] == [
        ("short.example.org", f"requested (-C -r 40): deployed instance expires {value(conn, 'SELECT %s::timestamptz::text', (day(60),))}")]
    run_all_jobs(conn, lifetimes={"short.example.org": 90})
    short_succ = the(conn, "short.example.org", "issued")
    le_succ = issue_on_request(conn, "le.example.org")               # an LE successor, issued now: never with -r
    set_now(conn, day(55))
    # -D -r 40: local only (the LE successor was issued within 40 days, its active instance expires within
    # 40 days: it was distributed too); long: its successor was issued 54 days ago, more than 40
    before = last_job(conn)
    sent = request(conn, "request_distribute", remaining_days=40)
    assert {(r.certificate, r.instance) for r in sent} == {("short.example.org", short_succ)}
    assert {(j.kind, j.instance) for j in jobs(conn, after=before)} == {("distribute", short_succ)}
    assert state_of(conn, le_succ) == "issued" and state_of(conn, long_succ) == "issued"
    cands = rows(conn, "SELECT * FROM renewal_candidates(NULL, 40, true)")
    assert [(r.certificate, r.instance) for r in cands] == [("short.example.org", short_succ)]
    assert "issued" in cands[0].reason
    # the listing (-r 40 -n, -D -r 40 -n) asks the same function, with the selection of no options (selection())
    no_options = _selection(False, None, None, None, None, None, False)
    assert listed(reports.renew_table(conn, no_options, 40)) == {"short.example.org", "long.example.org"}
    assert {r.certificate for r in rows(conn, "SELECT * FROM renewal_candidates(NULL, 40)")} == {"short.example.org", "long.example.org"}
    assert listed(reports.renew_table(conn, no_options, 40, distribute=True)) == {"short.example.org"}


def listed(table: str) -> set[str]:
    """The Cert Name column of a report grid."""
    lines = [line for line in table.splitlines() if line.startswith("|")]
    col = [c.strip() for c in lines[0].strip("|").split("|")].index("Cert Name")
    return {[c.strip() for c in line.strip("|").split("|")][col] for line in lines[1:]}


# ---------------------------------------------------------------- 4. -N, and overdue

def test_no_tlsa_rollover_proceeds_without_tlsa_changes_and_warns(fleet):
    """-S -N: the rollover of certificates with TLSA services goes on (it stalled: the active instance
    stayed deployed past not_after); no TLSA job is enqueued; every run warns."""
    conn = fleet
    add_cert(conn, "www.example.org")          # a successor issued ahead (rule 9), deployed at rule 7
    add_cert(conn, "api.example.org")          # no successor at rule 7: issued and distributed at once
    www = deploy_le(conn, "www.example.org")
    api = deploy_le(conn, "api.example.org")
    run_all_jobs(conn)
    before = last_job(conn)
    set_now(conn, day(60))                                    # rule 9: issue only, nothing published
    p = plan(conn, no_tlsa=True, only_certs=["www.example.org"])
    assert [(r.instance, r.action) for r in p] == [(www, "issue"), (www, "warn")]
    assert p[1].reason.startswith("-N (no TLSA changes): the TLSA records of www.example.org are left as they are")
    assert schedule(conn, no_tlsa=True, only_certs=["www.example.org"]) == p
    run_all_jobs(conn)
    www_succ = the(conn, "www.example.org", "issued")
    set_now(conn, day(61))
    assert [(r.instance, r.action) for r in plan(conn, no_tlsa=True, only_certs=["www.example.org"])] == [(www_succ, "warn")]
    set_now(conn, day(89, hours=12))                          # rule 7 for both
    p = plan(conn, no_tlsa=True)
    assert [(r.certificate, r.instance, r.action) for r in p] == [
        ("api.example.org", api, "issue"), ("api.example.org", api, "warn"),
        ("www.example.org", www_succ, "distribute"), ("www.example.org", www_succ, "warn")]
    assert "-N: distribute the successor without the DANE-safe wait" in p[2].reason
    assert all("deployed now" in r.reason for r in p if r.action == "warn")
    assert schedule(conn, no_tlsa=True) == p
    run_all_jobs(conn)
    assert in_state(conn, "www.example.org", "deployed") == [www_succ] and state_of(conn, www) == "expired"
    api_succ = the(conn, "api.example.org", "deployed")
    assert api_succ != api and state_of(conn, api) == "expired"
    assert [j for j in jobs(conn, after=before) if j.kind == "publish_tlsa"] == []
    assert all(j.args["no_tlsa"] for j in jobs(conn, after=before) if j.kind == "distribute")
    assert {r.action for r in plan(conn, no_tlsa=True)} == {"archive"}     # the old ones; nothing else to do or say


def test_an_active_instance_past_not_after_is_reported_overdue_on_every_run(fleet):
    conn = fleet
    add_cert(conn, "app.example.org", "local", tlsa=False)
    app = deploy_local(conn, "app.example.org")               # not_after day 90; nobody runs -C
    set_now(conn, day(89, hours=23))
    assert by_action(plan(conn), "overdue") == {}
    for n in (90, 91, 120):
        set_now(conn, day(n))
        for sel in ({}, {"no_tlsa": True}, {"all_certs": True}):
            (reason,) = by_action(plan(conn, **sel), "overdue").values()
            assert reason.startswith(f"active instance {app} expired ") and "still in service" in reason
            assert "operate_serverPKI -C -o app.example.org" in reason
        assert by_action(schedule(conn), "overdue") == by_action(plan(conn), "overdue")
        run_all_jobs(conn)
    assert state_of(conn, app) == "deployed"


# ---------------------------------------------------------------- 5. -D with DANE

def test_distribute_publishes_the_successors_tlsa_at_once_and_says_when_it_deploys(fleet):
    conn = fleet
    add_cert(conn, "www.example.org")
    active = deploy_le(conn, "www.example.org")
    run_all_jobs(conn)
    set_now(conn, day(40))                                    # long before rule 9 (day 60) and rule 7 (day 89)
    succ = issue_on_request(conn, "www.example.org")
    before = last_job(conn)
    about = value(conn, "SELECT %s::timestamptz::text", (day(40) + 2 * TTL,))
    (row,) = request(conn, "request_distribute")
    (tlsa,) = jobs(conn, after=before)
    assert (tlsa.kind, tlsa.args["prepublish"], tlsa.args["deploy"], tlsa.args["instances"]) == ("publish_tlsa", succ, succ, [active, succ])
    assert (row.job, row.instance) == (tlsa.id, succ)
    assert row.reason.startswith("held back: DANE-safe order") and \
        f"after its TLSA records are published and 2 x TTL has passed, about {about}" in row.reason
    (p,) = plan(conn)
    assert (p.instance, p.action) == (succ, "wait") and "requested (-D)" in p.reason and f"about {about}" in p.reason
    run_all_jobs(conn)                                        # the -D run drains: the TLSA is out
    assert state_of(conn, succ) == "prepublished"
    set_now(conn, day(40, hours=1))
    deploy_at = value(conn, "SELECT %s::timestamptz::text", (day(40) + 2 * TTL,))
    (p,) = plan(conn)
    assert (p.instance, p.action) == (succ, "wait") and f"deploy after {deploy_at}" in p.reason
    (again,) = request(conn, "request_distribute")            # asked again: says when, enqueues nothing
    assert again.job is None and f"it will be deployed after {deploy_at}" in again.reason
    assert schedule(conn) == [p] and last_job(conn) == tlsa.id
    set_now(conn, day(40) + 2 * TTL)                          # the next -S run deploys it
    (p,) = schedule(conn)
    assert (p.instance, p.action) == (succ, "distribute") and p.reason.startswith("rule 7: requested (-D)")
    run_all_jobs(conn)
    assert instances(conn, "www.example.org") == [(active, "expired"), (succ, "deployed")]
    assert value(conn, "SELECT count(*) FROM jobs WHERE state <> 'done'") == 0      # nothing failed: exit status 0
