"""A year in one test (issue 7, item 3): a small fleet on the real lab — PostgreSQL, BIND,
Pebble, two sshd disthosts (one target in a jail), an SMTP relay — driven by hourly
scheduler runs over a simulated year. Each hour sets pki.now on the test connection and,
only when the plan has something other than 'wait', runs schedule() and drains the queue
with the real Agent (whose DSN carries the same clock). After every such step the
invariants of the lifecycle (docs/lifecycle.md) are checked against the database, the hosts' files and the
TLSA records as a validating resolver (unbound) returns them from BIND's signed zone: each must validate (AD).

Pebble issues from its real clock, so before each ACME issuance it is restarted with
validity_days = (simulated now - real now) + 90, giving every certificate a 90-day
lifetime in simulated time (and its account is registered again, Pebble forgets it).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from serverpki.agent import Agent
from serverpki.config import parse_config
from serverpki.handlers.distribute import file_names, target_root, under
from lab.bind import BindLab
from lab.pebble import PebbleLab
from lab.resolver import ValidatingResolver
from lab.smtp import SMTPLab
from lab.sshd import SSHLab
from lab.lab import secret

UTC = dt.timezone.utc
ZONE = "demo.serverpki.test"
WEB, JAILHOST = f"web1.{ZONE}", f"jailhost.{ZONE}"
WWW, API = f"www.{ZONE}", f"api.{ZONE}"          # the two LE certificates
INTRANET, CLIENT = f"intranet.{ZONE}", "backup_op"  # the local server and client certificates
LE_CERTS, LOCAL_CERTS = (WWW, API), (INTRANET, CLIENT)
OFF = f"off.{ZONE}"                                 # an LE certificate, disabled: the cron line's -a leaves it alone
INFORMATIONAL = ("wait", "skip", "warn", "overdue")  # plan rows that schedule() does nothing for
DAYS = 365

SHIMS = {  # the lab's disthosts are Linux chroots: stand-ins for FreeBSD's service(8) and jexec(8)
    "service": '#!/bin/sh\necho "service $*" >> /var/log/reloads\n',
    "jexec": '#!/bin/sh\njail="$1"; shift\necho "jexec $jail $*" >> /var/log/reloads\n',
}


@pytest.fixture(scope="module")
def lab():
    # the resolver caches nothing: the database clock travels, its cache would live in real time
    with BindLab(zones=(ZONE,)) as bind, ValidatingResolver(bind, cache_max_ttl=0) as resolver, \
            SSHLab([WEB, JAILHOST]) as ssh, SMTPLab() as smtp:
        pebble = PebbleLab(dns_port=bind.port, validity_days=90).start()
        try:
            for host in ssh.hosts.values():
                for folder in ("usr/sbin", "var/log"):
                    (host.root / folder).mkdir(mode=0o755, parents=True, exist_ok=True)
                for name, script in SHIMS.items():
                    (host.root / "usr/sbin" / name).write_text(script)
                    (host.root / "usr/sbin" / name).chmod(0o755)
            ssh.write_known_hosts()
            ssh.write_client_config()
            yield bind, resolver, pebble, ssh, smtp
        finally:
            pebble.close()


def configure(conn) -> None:
    """The fleet, as an operator would load it with psql."""
    for sql in (
        f"SELECT add_disthost('{WEB}')",
        f"SELECT add_disthost('{JAILHOST}', '/usr/jails')",
        f"SELECT add_jail('mail', '{JAILHOST}')",
        "SELECT add_place('nginx', 'separate', '/usr/local/etc/nginx/ssl', NULL, NULL, NULL, NULL, false, false, "
        "'service nginx reload')",
        "SELECT add_place('postfix', 'separate', '/usr/local/etc/postfix/ssl', '/usr/local/etc/postfix/private', "
        "NULL, NULL, NULL, false, false, 'jexec {} service postfix reload')",
        "SELECT add_place('pg_client', 'separate', '/var/db/postgres/.postgresql')",
        f"SELECT * FROM add_cert('{WWW}', 'server', 'LE', 'rsa_plus_ec', false, 'mail.{ZONE}', 'https', 443, "
        f"'{WEB}', NULL, 'nginx')",
        f"SELECT add_service('{WWW}', 'smtp', 25)",
        f"SELECT add_target('{WWW}', '{JAILHOST}', 'mail', 'postfix')",
        f"SELECT * FROM add_cert('{API}', 'server', 'LE', 'ec', false, NULL, 'https', 443, '{WEB}', NULL, 'nginx')",
        f"SELECT * FROM add_cert('{INTRANET}', 'server', 'local', 'ec', false, NULL, NULL, NULL, '{WEB}', NULL, 'nginx')",
        f"SELECT * FROM add_cert('{CLIENT}', 'client', 'local', 'ec', false, NULL, NULL, NULL, '{WEB}', NULL, 'pg_client')",
        f"SELECT * FROM add_cert('{OFF}', 'server', 'LE', 'ec', false, NULL, NULL, NULL, '{WEB}', NULL, 'nginx')",
        f"SELECT disable_cert('{OFF}')",
    ):
        conn.execute(sql)


def validated_tlsa(resolver: ValidatingResolver, owner: str) -> set[str]:
    """The TLSA records of owner as a DANE client gets them; they must have validated (AD)."""
    answer = resolver.tlsa(owner)
    assert answer.validated, (owner, answer)
    return {record.lower() for record in answer.records}


class Year:
    def __init__(self, conn, dsn, config, resolver, pebble, ssh):
        self.conn, self.dsn, self.config = conn, dsn, config
        self.resolver, self.pebble, self.ssh = resolver, pebble, ssh
        self.now: dt.datetime | None = None
        self.hour = 0
        self.states: dict[int, tuple[str, int]] = {}     # instance -> (state, hour seen)
        self.active: dict[str, int] = {}                 # certificate -> deployed instance
        self.deployed_ever: dict[str, list[int]] = defaultdict(list)
        self.local_instances: dict[str, set[int]] = defaultdict(set)
        self.pebble_restarts = 0
        self.archived = self.deleted = 0                 # expired -> archived, archived -> deleted, as seen

    def at(self, now: dt.datetime) -> None:
        self.now = now
        self.conn.execute(f"SET pki.now = '{now.isoformat()}'")

    def drain(self, kinds: list[str] | None = None) -> None:
        agent = Agent(make_conninfo(self.dsn, options=f"-c pki.now={self.now.isoformat()}"), self.config,
                      name="year-test", lease=120, kinds=kinds)
        try:
            stats = agent.drain()
        finally:
            agent.close()
        assert stats.all_succeeded, (self.now, stats.errors)

    def register_account(self) -> None:
        self.conn.execute("SELECT request_acme_account(%s, %s)",
                          (self.config.acme.directory_url, self.config.acme.contact_email))
        self.drain(["register_acme"])  # only the account: the queued issue_acme jobs must use the new one

    def pebble_for_now(self) -> None:
        """Restart Pebble so that what it issues now expires 90 simulated days from now."""
        ahead = (self.now - dt.datetime.now(UTC)).total_seconds() / 86400
        self.pebble.stop()
        self.pebble.validity_days = max(1, math.ceil(ahead)) + 90 if ahead > 0 else 90
        self.pebble.start()
        self.pebble_restarts += 1
        self.register_account()

    def quiet(self) -> bool:
        n = self.conn.execute("SELECT count(*) FROM plan(selection(true)) WHERE action <> ALL (%s)",
                              (list(INFORMATIONAL),)).fetchone()[0]
        return n == 0

    def run(self) -> None:
        """One cron run: the scheduler, then the agent until the queue is empty."""
        self.conn.execute("SELECT * FROM schedule(selection(true))").fetchall()
        queued = self.conn.execute("SELECT count(*) FROM jobs WHERE kind = 'issue_acme' AND state = 'queued'").fetchone()[0]
        if queued:
            self.pebble_for_now()
        self.drain()

    # -- the invariants

    def check(self) -> None:
        now, conn = self.now, self.conn
        rows = self._instances()
        current = {r[0]: r for r in rows}

        # expired instances are archived on the next run and deleted on the one after
        for inst, (state, hour) in list(self.states.items()):
            if state == "expired":
                assert current.get(inst, (None, None, None, None))[3] == "archived", (now, inst, "expired -> archived")
                assert self.hour == hour + 1, (now, inst, "archived on the next hourly run")
                self.archived += 1
            if state == "archived":
                assert inst not in current, (now, inst, "archived -> deleted")
                assert self.hour == hour + 1, (now, inst, "deleted on the next hourly run")
                self.deleted += 1
        self.states = {inst: (r[3], self.hour) for inst, r in current.items()}

        for name, ctype in [(n, "LE") for n in LE_CERTS] + [(n, "local") for n in LOCAL_CERTS]:
            mine = [r for r in rows if r[1] == name]
            if ctype == "local":
                self.local_instances[name] |= {r[0] for r in mine}
                assert len(self.local_instances[name]) == 1, (now, name, "local certificates are issued on request only")
            deployed = [r for r in mine if r[3] == "deployed"]
            assert len(deployed) <= 1, (now, name, deployed)
            if ctype == "local" and deployed and now >= deployed[0][5]:
                continue  # nobody ran -C after the reminder: past its not_after it is no longer checked
            assert len(deployed) == 1, (now, name, "a deployed instance", mine)
            inst, _n, _t, _s, nb, na, published, ttl = deployed[0]
            assert nb <= now < na, (now, name, inst, nb, na)
            if self.active.get(name) != inst:
                if name in self.active:  # a successor: DANE-safe order
                    assert published is not None and published + 2 * ttl <= now, (now, name, inst, published, ttl)
                self.active[name] = inst
                self.deployed_ever[name].append(inst)
            self.check_files(name, inst)

        # TLSA in DNS, validated: exactly the deployed and prepublished instances
        owners = conn.execute("SELECT DISTINCT certificate, owner FROM tlsa_owners ORDER BY 2").fetchall()
        assert len(owners) == 5, owners   # www + mail for https and smtp, api for https
        for cert, owner in owners:
            want = {f"{u} {s} {m} {d}".lower() for u, s, m, d in conn.execute("""
                SELECT td.usage, td.selector, td.matching, td.data FROM tlsa_desired td
                  JOIN certinstances ci ON ci.id = td.instance
                 WHERE td.certificate = %s AND td.owner = %s AND ci.state IN ('deployed', 'prepublished')""",
                (cert, owner)).fetchall()}
            assert want, (now, owner)
            assert validated_tlsa(self.resolver, owner) == want, (now, owner)

    def _instances(self):
        return self.conn.execute("""
            SELECT ci.id, s.name::text, c.type::text, ci.state::text, ci.not_before, ci.not_after, ci.tlsa_published,
                   tlsa_ttl(c.id)
              FROM certinstances ci
              JOIN certificates c ON c.id = ci.certificate
              JOIN subjects s ON s.certificate = c.id AND NOT s.isaltname
             WHERE s.type <> 'CA'""").fetchall()

    def check_files(self, name: str, inst: int) -> None:
        targets = self.conn.execute("""
            SELECT t.id, d.fqdn, d.jailroot, j.name, p.cert_path, s.type::text,
                   EXISTS (SELECT 1 FROM deployments dp WHERE dp.instance = %s AND dp.target = t.id)
              FROM targets t JOIN disthosts d ON d.id = t.disthost JOIN places p ON p.id = t.place
              LEFT JOIN jails j ON j.id = t.jail
              JOIN subjects s ON s.certificate = t.certificate AND NOT s.isaltname
             WHERE t.certificate = cert_id(%s)""", (inst, name)).fetchall()
        assert targets
        pairs = self.conn.execute("SELECT encryption_algo::text, cert FROM certkeydata WHERE certinstance = %s",
                                  (inst,)).fetchall()
        assert pairs
        for _t, fqdn, jailroot, jail, cert_path, subject_type, deployed in targets:
            assert deployed, (self.now, name, inst, fqdn, "deployments row")
            folder = under(target_root(jailroot, jail), cert_path, name)
            for algo, cert in pairs:
                path = self.ssh.host(fqdn).root / folder.lstrip("/") / file_names(name, subject_type, algo)["cert"]
                stored = bytes(cert)
                assert path.read_bytes() == (stored if stored.endswith(b"\n") else stored + b"\n"), (self.now, path)


@pytest.mark.slow
def test_a_year_of_hourly_cron_runs(lab, conn, dsn, tmp_path):
    bind, resolver, pebble, ssh, smtp = lab
    started = time.monotonic()
    config = parse_config({
        "database": {"dsn": dsn},
        "paths": {"work_dir": str(tmp_path / "work"),
                  "db_encryption_key": str(secret(tmp_path / "db_key", "year test key passphrase"))},
        "local_ca": {"key_type": "ec", "passphrase_file": str(secret(tmp_path / "ca.pass", "year test CA passphrase"))},
        "x509": {"country": "DE", "organization": "serverPKI year", "server_lifetime_days": 200,
                 "client_lifetime_days": 200},
        "acme": {"directory_url": pebble.directory_url, "contact_email": f"pki@{ZONE}", "agree_tos": True,
                 "ca_bundle": str(pebble.ca_bundle)},
        "dns": {"tsig_key_file": str(bind.key_file), "primary": bind.primary, "propagation_timeout_seconds": 10},
        "ssh": {k: str(v) for k, v in ssh.ssh_settings().items()},
        "mail": {"relay_host": "127.0.0.1", "relay_port": smtp.port, "sender": f"serverpki@{ZONE}",
                 "recipients": [f"pki-admins@{ZONE}"]},
        "logging": {"syslog_address": ""},
    }, tmp_path / "serverpki.toml")
    configure(conn)
    year = Year(conn, dsn, config, resolver, pebble, ssh)
    t0 = (dt.datetime.now(UTC) + dt.timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)

    # the start, as an operator does it: -I, -Z, -C for the local certificates
    year.at(t0)
    conn.execute("SELECT request_local_ca(%s, %s)", (config.local_ca.name, config.local_ca.key_type))
    year.drain()
    year.register_account()
    requested = conn.execute("SELECT * FROM request_create(selection(only_certs => %s), NULL)",
                             (list(LOCAL_CERTS),)).fetchall()
    assert len(requested) == 2, requested
    year.drain()

    steps = 0
    for hour in range(DAYS * 24 + 1):
        year.hour = hour
        year.at(t0 + dt.timedelta(hours=hour))
        if year.quiet():
            continue
        year.run()
        steps += 1
        year.check()

    rollovers = {name: len(year.deployed_ever[name]) - 1 for name in LE_CERTS}
    assert all(n >= 3 for n in rollovers.values()), rollovers
    # every replaced instance went expired -> archived -> deleted (the last one may still be on its way)
    assert sum(rollovers.values()) - 2 <= year.deleted <= year.archived <= sum(rollovers.values()), \
        (rollovers, year.archived, year.deleted)
    reloads = (ssh.host(JAILHOST).root / "var/log/reloads").read_text().splitlines()
    assert reloads and set(reloads) == {"jexec mail service postfix reload"}, reloads

    mails = Counter()
    for received in smtp.messages:
        body = received.message.get_body(("plain",)).get_content()
        mails.update(re.findall(r"operate_serverPKI -C -o (\S+)", body))
    assert mails == Counter({INTRANET: 1, CLIENT: 1}), (mails, len(smtp.messages))

    # issue 13.1: `-S -a` every hour for a year, and the disabled certificate got nothing
    assert conn.execute("SELECT count(*) FROM events WHERE certificate = cert_id(%s)", (OFF,)).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM jobs WHERE certificate = cert_id(%s)", (OFF,)).fetchone()[0] == 0
    assert [a for (a,) in conn.execute("SELECT action FROM plan(selection(true)) WHERE certificate = %s", (OFF,))] == ["skip"]

    jobs = dict(conn.execute("SELECT state::text, count(*) FROM jobs GROUP BY 1").fetchall())
    assert set(jobs) == {"done"}, jobs
    print(f"\nyear: {steps} steps run of {DAYS * 24 + 1} hours, rollovers {rollovers}, reminder mails {dict(mails)}, "
          f"{year.deleted} instances archived and deleted, {jobs['done']} jobs done, Pebble restarted {year.pebble_restarts} times, "
          f"{time.monotonic() - started:.0f} s")
