"""TLSA owners that come and go by configuration, against the real BIND 9 of the demo's fleet.

A publish_tlsa job replaces the RRsets of the owners a certificate has now; the owners it wrote are kept in
pki.tlsa_owners_in_dns, so that
- an owner that goes (a TLSA service detached, an alt name removed) has its RRset deleted by the next run:
  the configuration trigger enqueues the job, the job's UPDATE deletes what is configured no more;
- an alt name added while the successor keeps the key gets records before the successor goes live: the
  records at the old owners do not change, but the new owner has none (pki.tlsa_unchanged says so), so the
  successor is prepublished and waits the DANE-safe time like any other.

operate_serverPKI runs as cron runs it, the configuration changes are made as pki_operator.
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from fleet import Fleet
from lab import roles
from lab.lab import ZONE

NAME = f"owners.{ZONE}"             # local, ec, its key kept for one renewal
ALT1, ALT2 = f"alt1.{ZONE}", f"alt2.{ZONE}"
WEB = f"web1.{ZONE}"


def owner(port: int, name: str) -> str:
    return f"_{port}._tcp.{name}."


def operator(fleet: Fleet, sql: str, *args) -> None:
    with psycopg.connect(fleet.role_dsn(roles.OPERATOR), autocommit=True) as op:
        op.execute(sql, args)


def in_dns(fleet: Fleet) -> set[str]:
    return {o for (o,) in fleet.conn.execute("SELECT owner FROM tlsa_owners_in_dns WHERE certificate = cert_id(%s)", (NAME,))}


def queued_reasons(fleet: Fleet) -> list[str]:
    return [r for (r,) in fleet.conn.execute("SELECT reason FROM jobs WHERE kind = 'publish_tlsa' AND state = 'queued'")]


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as fleet:
        operator(fleet, "SELECT add_tlsa_service('https-key', 443, '_443._tcp.{}. 300 IN TLSA 3 1 1')")
        operator(fleet, "SELECT add_tlsa_service('smtp-key', 25, '_25._tcp.{}. 300 IN TLSA 3 1 1')")
        operator(fleet, "SELECT * FROM add_cert(%s, 'server', 'local', 'ec', false, %s, 'https-key', 443, %s, NULL, 'nginx')",
                 NAME, ALT1, WEB)
        operator(fleet, "SELECT add_service(%s, 'smtp-key', 25)", NAME)
        operator(fleet, "SELECT set_key_reuse(%s, 1, NULL)", NAME)
        run = fleet.cli("-C", "-o", NAME, "-o", f"intranet.{ZONE}", "-o", "backup_op")   # local: made on request
        assert run.returncode == 0, run.stdout + run.stderr
        fleet.settle()
        assert fleet.problems() == []
        yield fleet


def test_an_owner_that_goes_has_its_records_withdrawn_by_the_next_run(fleet):
    owners = {owner(p, n) for p in (443, 25) for n in (NAME, ALT1)}
    assert all(fleet.tlsa_served(o) for o in owners) and in_dns(fleet) == owners
    key_record = fleet.tlsa_served(owner(443, NAME))

    operator(fleet, "SELECT remove_service(%s, 'smtp-key', 25)", NAME)
    assert [r for r in queued_reasons(fleet) if "(a TLSA service detached)" in r]
    fleet.settle()
    assert fleet.tlsa_served(owner(25, NAME)) == set() and fleet.tlsa_served(owner(25, ALT1)) == set()
    assert fleet.tlsa_served(owner(443, NAME)) == key_record == fleet.tlsa_served(owner(443, ALT1))
    assert in_dns(fleet) == {owner(443, NAME), owner(443, ALT1)}

    operator(fleet, "SELECT remove_altname(%s, %s)", NAME, ALT1)
    assert [r for r in queued_reasons(fleet) if "(a name removed)" in r]
    fleet.settle()
    assert fleet.tlsa_served(owner(443, ALT1)) == set()
    assert fleet.tlsa_served(owner(443, NAME)) == key_record
    assert in_dns(fleet) == {owner(443, NAME)}
    assert fleet.problems() == []


def test_an_alt_name_added_gets_records_before_a_successor_with_the_same_key_goes_live(fleet):
    active = fleet.deployed()[NAME]
    key_record = fleet.tlsa_served(owner(443, NAME))
    operator(fleet, "SELECT add_altname(%s, %s)", NAME, ALT2)
    assert queued_reasons(fleet) == []       # the instance in service does not carry it

    # the renewal window: a local certificate's successor is issued on request (its reminder says when); it keeps the key
    fleet.now = fleet.active_not_after(NAME) - dt.timedelta(days=25)
    for args in (["-C", "-o", NAME], ["-S", "-a"]):
        run = fleet.cli(*args)
        assert run.returncode == 0, run.stdout + run.stderr
    [(successor, reused_from)] = fleet.conn.execute(
        "SELECT instance, (args ->> 'reuse_from')::int FROM jobs WHERE kind = 'issue_local' AND certificate = cert_id(%s) "
        "AND instance > %s", (NAME, active)).fetchall()
    assert reused_from == active
    assert fleet.conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (successor,)).fetchone()[0] == "issued"

    # the rollover day: the records at the old owner stay as they are, but the new owner has none: the
    # successor is prepublished (not deployed at once), and waits the DANE-safe time like any other
    fleet.to_rollover_day(NAME)
    run = fleet.cli("-S", "-a")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{NAME} instance {successor} prepublish: rule 7: DANE-safe order" in run.stderr, run.stderr
    assert fleet.deployed()[NAME] == active
    assert fleet.tlsa_served(owner(443, ALT2)) == key_record == fleet.tlsa_served(owner(443, NAME))
    assert owner(443, ALT2) in in_dns(fleet)

    fleet.later(minutes=11)                # 2 x TTL
    run = fleet.cli("-S", "-a")
    assert run.returncode == 0, run.stdout + run.stderr
    assert fleet.deployed()[NAME] == successor
    assert fleet.tlsa_served(owner(443, ALT2)) == key_record
    assert [p for p in fleet.problems() if NAME in p] == []


def test_an_owner_in_a_zone_given_up_is_forgotten_and_a_refused_one_retried_without_holding_back_the_records(fleet):
    """Owners the certificate had: one in a zone the primary does not hold any more is forgotten with a
    warning; one whose zone refuses the update (here: the configuration maps its name to a zone it is not
    in, BIND answers NOTZONE) is not withdrawn and stays for the next job. The job completes either way."""
    lost, refused = "_443._tcp.www.given-up.test.", "_443._tcp.www.mapped.test."
    fleet.conn.execute("INSERT INTO tlsa_owners_in_dns (owner, certificate) VALUES (%s, cert_id(%s)), (%s, cert_id(%s))",
                       (lost, NAME, refused, NAME))
    config = fleet.base / "mapped.toml"
    config.write_text(fleet.lab.config.read_text().replace(
        "[dns]\n", f'[dns]\nzones = {{ "mapped.test" = "{ZONE}" }}\n', 1))
    run = fleet.cli("-T", "-o", NAME, SERVERPKI_CONFIG=str(config))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"TLSA records at {lost} forgotten, not withdrawn" in run.stderr, run.stderr
    assert f"TLSA records at {refused} not withdrawn" in run.stderr and "the next job tries again" in run.stderr, run.stderr
    [(state, report)] = fleet.conn.execute("SELECT state::text, result FROM jobs WHERE kind = 'publish_tlsa' "
                                           "ORDER BY id DESC LIMIT 1").fetchall()
    assert state == "done" and report["abandoned"] == [lost] and report["not_withdrawn"] == [refused], report
    assert lost not in in_dns(fleet) and {refused, owner(443, NAME)} <= in_dns(fleet)
    # without the mapping the primary holds no zone of it either: forgotten by the next job
    run = fleet.cli("-T", "-o", NAME)
    assert run.returncode == 0 and f"TLSA records at {refused} forgotten" in run.stderr, run.stdout + run.stderr
    assert fleet.problems() == []


def test_a_certificate_with_records_in_dns_is_removed_only_once_they_are_withdrawn(fleet):
    """remove_cert of a certificate whose TLSA records are in DNS is refused (SP029), nothing changed: gone, it
    would leave records vouching for its keys that nobody withdraws. -R withdraws them (an hourly run in
    between does not bring them back); then it goes."""
    gone = f"gone.{ZONE}"
    operator(fleet, "SELECT * FROM add_cert(%s, 'server', 'local', 'ec', false, NULL, 'https-key', 443, %s, NULL, 'nginx')",
             gone, WEB)
    run = fleet.cli("-C", "-o", gone)
    assert run.returncode == 0, run.stdout + run.stderr
    fleet.settle()
    records = fleet.tlsa_served(owner(443, gone))
    assert records

    with psycopg.connect(fleet.role_dsn(roles.OPERATOR), autocommit=True) as op, \
            pytest.raises(psycopg.Error) as refused:
        op.execute("SELECT remove_cert(%s)", (gone,))
    assert refused.value.diag.sqlstate == "SP029"
    assert f"has TLSA records in DNS at {owner(443, gone)}" in refused.value.diag.message_primary
    assert f"operate_serverPKI -R -o {gone}" in refused.value.diag.message_hint
    assert fleet.conn.execute("SELECT count(*) FROM certificates WHERE id = cert_id(%s)", (gone,)).fetchone()[0] == 1
    assert fleet.tlsa_served(owner(443, gone)) == records

    for args in (["-R", "-o", gone], ["-S", "-q", "-a"]):
        run = fleet.cli(*args)
        assert run.returncode == 0, run.stdout + run.stderr
    assert fleet.tlsa_served(owner(443, gone)) == set()
    assert fleet.conn.execute("SELECT count(*) FROM tlsa_owners_in_dns WHERE owner = %s", (owner(443, gone),)).fetchone()[0] == 0
    operator(fleet, "SELECT remove_cert(%s)", gone)
    assert fleet.conn.execute("SELECT count(*) FROM certificates c JOIN subjects s ON s.certificate = c.id "
                              "WHERE s.name = %s", (gone,)).fetchone()[0] == 0
