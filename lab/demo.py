"""`make demo` / `serverpki demo`: the whole job on a self-contained local setup.

Starts the lab on loopback — a private PostgreSQL, BIND 9 with the zone
demo.serverpki.test signed (DNSSEC) and a TSIG key, unbound validating that
zone with its key as trust anchor, Pebble resolving through that BIND, two
OpenSSH servers as disthosts (one with a jail), an SMTP relay — loads the
example configuration through psql as an operator would, creates the local CA,
registers the ACME account and runs the cron job. Then it travels in time
(SET pki.now, shared by every session of a run through PGOPTIONS) through the
prepublication and the rollover of the ACME certificate, showing the states and
the TLSA records as a DANE client gets them: through the validating resolver.
It ends with a key compromise: the deployed ACME certificate is revoked with
--reason keyCompromise, and that one run puts its successor on the hosts and in
DNS (the emergency rollover). Everything it starts is stopped at the end, also
on Ctrl-C.

Pebble issues certificates from its real clock; for the rollover scene it is
restarted with a longer validity, so the successor outlives its predecessor as
it would at a real CA.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import psycopg
from cryptography import x509

from serverpki import migrate
from . import roles
from .lab import ZONE, Lab
from .process import keep_running, remove_dir, temp_dir

DEMO_DB = "serverpki_demo"
ACME_CERT = f"www.{ZONE}"

class Demo:
    def __init__(self, base: Path):
        self.lab = Lab(base)
        self.cluster = self.lab.cluster
        self.config = self.lab.config

    def start(self) -> None:
        banner("starting the lab on loopback")
        self.lab.start()

    def stop(self) -> None:
        self.lab.stop()

    # -- what an operator does

    def psql(self, *args: str) -> None:
        env = {**os.environ, **self.cluster.env(DEMO_DB, roles.OPERATOR)}   # a person with psql
        subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-P", "pager=off", *args], env=env, check=True)

    def operate(self, *args: str, now: dt.datetime | None = None, log_to_stdout: bool = False) -> int:
        """One run as cron runs it; log_to_stdout: its log too on stdout, where the scene shows what it said."""
        env = {**os.environ, **self.cluster.env(DEMO_DB, roles.CRON), "SERVERPKI_CONFIG": str(self.config)}
        if now:  # time travel: every session of the run shares the clock
            env["PGOPTIONS"] = f"-c pki.now={now.isoformat()}"
        print(f"$ operate_serverPKI {' '.join(args)}" + (f"      (pki.now = {now:%Y-%m-%d %H:%M})" if now else ""), flush=True)
        rc = subprocess.run([sys.executable, "-m", "serverpki.operate", *args], env=env,
                            stderr=subprocess.STDOUT if log_to_stdout else None).returncode
        if "-n" not in args:
            print(f"(exit status {rc}{': every job it ran succeeded' if rc == 0 else ''})")
        return rc

    def monitor(self, *args: str, now: dt.datetime | None = None) -> None:
        """`serverpki metrics ARGS` as the monitoring login (pki_reader), as Nagios or node_exporter runs it."""
        env = {**os.environ, **self.cluster.env(DEMO_DB, roles.READER)}
        if now:
            env["PGOPTIONS"] = f"-c pki.now={now.isoformat()}"
        print(f"$ serverpki metrics {' '.join(args)}", flush=True)
        done = subprocess.run([sys.executable, "-m", "serverpki.admin", "metrics", *args], env=env,
                              capture_output=True, text=True)
        wanted = ("serverpki_certificate_days_left", "serverpki_alerts", "serverpki_schedule_last_run_age")
        lines = done.stdout.splitlines() if "--check" in args else \
            [line for line in done.stdout.splitlines() if line.startswith(wanted)]
        print("\n".join(lines) + done.stderr)
        print(f"(exit status {done.returncode})")

    def show_instances(self) -> None:
        self.psql("-c", 'SELECT "Serial", "Cert Name", "State", "ALGO", "not before"::date, "not after"::date FROM inst '
                        'WHERE "Type" = \'LE\' OR "Cert Name" <> \'Local CA\' ORDER BY 1, 4')

    def show_tlsa(self) -> None:
        """The TLSA records as a DANE client gets them: through the validating resolver, with its AD flag."""
        with psycopg.connect(self.cluster.dsn(DEMO_DB, roles.OPERATOR), autocommit=True) as conn:
            owners = [r[0] for r in conn.execute("SELECT DISTINCT owner FROM tlsa_owners ORDER BY 1")]
        for owner in owners:
            answer = self.lab.resolver.tlsa(owner)
            verdict = "validated (AD)" if answer.validated else f"NOT validated ({answer.rcode}, no AD)"
            print(f"{owner}  {len(answer.records)} TLSA record(s), {verdict}")
            for record in answer.records:
                print(f"    {record[:24]}…{record[-8:]}")

    def show_files(self) -> None:
        for fqdn, host in self.lab.ssh.hosts.items():
            for path in sorted(p for p in host.root.rglob("*.pem") if not str(p).startswith(str(host.root / "usr/lib"))):
                st = path.lstat()
                print(f"{fqdn}:/{path.relative_to(host.root)}  mode {st.st_mode & 0o777:04o}")
            reloads = host.root / "var/log/reloads"
            if reloads.exists():
                print(f"{fqdn}: reload commands run: {'; '.join(reloads.read_text().splitlines())}")

    def show_served_certificates(self) -> None:
        """Which instance the ACME certificate's files on the disthosts hold (matched with certkeydata)."""
        with psycopg.connect(self.cluster.dsn(DEMO_DB, roles.OPERATOR), autocommit=True) as conn:
            stored = {x509.load_pem_x509_certificate(bytes(cert)): inst for inst, cert in conn.execute(
                "SELECT certinstance, cert FROM certkeydata WHERE certinstance IN "
                "(SELECT id FROM certinstances WHERE certificate = cert_id(%s))", (ACME_CERT,))}
        for fqdn, host in self.lab.ssh.hosts.items():
            for path in sorted(host.root.rglob(f"{ACME_CERT}_*.pem")):
                content = path.read_bytes()
                if b"CERTIFICATE" in content:
                    served = x509.load_pem_x509_certificates(content)[0]
                    print(f"{fqdn}:/{path.relative_to(host.root)}  instance {stored.get(served, '?')} "
                          f"(X.509 serial {served.serial_number:x})")

    def active_instance(self) -> int:
        with psycopg.connect(self.cluster.dsn(DEMO_DB, roles.READER), autocommit=True) as conn:
            return conn.execute('SELECT max("Serial") FROM inst WHERE "Cert Name" = %s AND "State" = \'deployed\'',
                                (ACME_CERT,)).fetchone()[0]

    def active_not_after(self) -> dt.datetime:
        with psycopg.connect(self.cluster.dsn(DEMO_DB, roles.READER), autocommit=True) as conn:
            return conn.execute('SELECT max("not after") FROM inst WHERE "Cert Name" = %s AND "State" = \'deployed\'',
                                (ACME_CERT,)).fetchone()[0]

    # -- the story

    def run(self) -> None:
        self.start()
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DEMO_DB}")
        banner("installing the schema (serverpki db init)")
        with psycopg.connect(self.cluster.dsn(DEMO_DB), autocommit=True) as conn:
            migrate.upgrade(conn)
            banner("the login roles (README): only the installer above ran as the owner")
            print(roles.__doc__.split("\n\n")[1].rstrip())
            roles.create_login_roles(conn)
            print("(the demo travels in time: the owner enables it for this database, off on every install)")
            roles.enable_time_travel(conn)
        example = Path(str(resources.files("serverpki") / "examples" / "example_config.sql"))
        banner(f"the operator loads the configuration with psql -f {example.name}")
        self.psql("-q", "-f", str(example))
        self.psql("-c", "SELECT * FROM certs")

        banner("create the local CA, register the ACME account, issue the local certificates")
        self.operate("-I")
        self.operate("-Z")
        self.operate("-C", "-o", f"intranet.{ZONE}", "-o", "backup_op")
        banner("what the hourly cron run will do now, and why")
        self.operate("-S", "-n", "-a")
        banner("the cron run: operate_serverPKI -S -a")
        self.operate("-S", "-a")
        self.operate("-n", "-v")
        banner("the files on the disthosts")
        self.show_files()
        banner("the TLSA records, as the validating resolver (unbound) returns them")
        self.show_tlsa()

        expiry = self.active_not_after()
        scene = expiry - dt.timedelta(days=25)
        banner(f"{scene:%Y-%m-%d}: 25 days before the ACME certificate expires (prepublish window)")
        print("(Pebble restarts with a validity of 180 days, so the successor outlives its predecessor; "
              "its account is registered again)")
        self.lab.restart_pebble(180)
        self.operate("-Z", now=scene)
        self.operate("-S", "-n", "-a", now=scene)
        self.operate("-S", "-a", now=scene)
        self.show_instances()
        banner("prepublished: the TLSA records of the active instance and its successor")
        self.show_tlsa()

        scene = expiry - dt.timedelta(hours=20)
        banner(f"{scene:%Y-%m-%d %H:%M}: less than a day before expiry (expire_grace): the rollover")
        self.operate("-S", "-a", now=scene)
        self.show_instances()
        banner("after the rollover the TLSA records hold the active instance only")
        self.show_tlsa()
        scene += dt.timedelta(days=1)
        banner(f"{scene:%Y-%m-%d}: the next runs archive and delete the old instance")
        self.operate("-S", "-a", now=scene)
        self.operate("-S", "-a", now=scene + dt.timedelta(hours=1))
        self.show_instances()

        banner("the job summary and the history of the ACME certificate")
        self.psql("-c", "SELECT kind, state, jobs FROM jobs_summary")
        self.psql("-c", "SELECT instance, at::date, from_state, to_state, reason FROM instance_history "
                        f"WHERE certificate = '{ACME_CERT}' AND to_state IS DISTINCT FROM from_state")

        banner("monitoring: what Prometheus (node_exporter's textfile) and a Nagios check see")
        self.monitor(now=scene + dt.timedelta(hours=1))
        self.monitor("--check", now=scene + dt.timedelta(hours=1))

        scene += dt.timedelta(hours=2)
        revoked = self.active_instance()
        banner(f"{scene:%Y-%m-%d %H:%M}: the key of {ACME_CERT} is compromised: revoke instance {revoked}; "
               "the same run replaces it everywhere (emergency rollover, no DANE wait)")
        self.operate("--revoke", str(revoked), "--reason", "keyCompromise", now=scene, log_to_stdout=True)
        self.show_instances()
        banner(f"the new serial on the hosts and in DNS: instance {self.active_instance()} (revoked: {revoked})")
        self.show_served_certificates()
        self.show_tlsa()


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run_demo(keep: bool = False) -> None:
    # SIGTERM too stops everything the lab started, whenever it comes (lab.process)
    base = temp_dir("serverpki-demo-", 0o755)  # the postgres user needs to reach its data folder
    demo = Demo(base)
    print(f"the lab lives in {base} (removed at the end)", flush=True)
    try:
        demo.run()
        if keep:
            env = " ".join(f"{k}={v}" for k, v in demo.cluster.env(DEMO_DB, roles.OPERATOR).items())
            print(f"\nthe lab keeps running; connect with: {env} psql; configuration: {demo.config}")
            return
    finally:
        if keep:
            keep_running()   # --keep: left running, as it is
        else:
            demo.stop()
            remove_dir(base)
    print("\ndemo finished; everything it started is stopped")
