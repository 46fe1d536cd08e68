"""The fleet the fault tests work on: the demo's lab (real PostgreSQL, BIND 9 signing its zone, unbound
validating it, Pebble, two sshd disthosts, SMTP) with the example configuration loaded, the local CA made and the
ACME account registered — and the invariants that say the fleet has converged.

    with Fleet() as fleet:                    # in a folder of its own under /tmp, removed at the end
        fleet.cli("-S", "-a")                 # operate_serverPKI, as cron runs it
        assert fleet.problems() == []         # nothing lost, nothing left behind

Time is the database's (pki.now, set through PGOPTIONS for every session of a run);
Pebble and sshd keep the real clock.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from serverpki import migrate
from serverpki.handlers.distribute import target_root, under
from lab import roles
from lab.lab import ZONE, Lab
from lab.process import remove_dir, temp_dir

DB = "serverpki_fleet"
UTC = dt.timezone.utc
# what the agent leaves while it writes a file (sshclient.put_atomic); never after a run
TEMP_FILE = re.compile(r"^\..*\.serverpki-[^.]+\.tmp$")


class Fleet:
    def __init__(self, base: Path | None = None, lease_seconds: int = 30):
        # the postgres user must reach its data folder: pytest's tmp_path (0700 parents) will not do
        # removed also when SIGTERM ends the run; the lab's peers are registered as each starts (lab.process)
        self._own_base = base is None
        self.base = base or temp_dir("serverpki-fleet-")
        self.base.chmod(0o755)
        self.lab = Lab(self.base)
        self.lease_seconds = lease_seconds
        self.now: dt.datetime | None = None     # the database's clock for the next runs (None: the real one)
        self._conn: psycopg.Connection | None = None

    # -- life

    def start(self) -> "Fleet":
        self.lab.start()
        with self.lab.config.open("a") as config:   # short leases: a crashed agent's job returns soon
            config.write(f"[agent]\nlease_seconds = {self.lease_seconds}\n")
        with psycopg.connect(self.lab.cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DB}")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            migrate.upgrade(conn, log=lambda _line: None)
            roles.create_login_roles(conn)
            roles.enable_time_travel(conn)
        example = Path(str(resources.files("serverpki") / "examples" / "example_config.sql"))
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(example)],
                       env={**os.environ, **self.lab.cluster.env(DB, roles.OPERATOR)}, check=True, capture_output=True)
        for args in (["-I"], ["-Z"]):
            run = self.cli(*args)
            assert run.returncode == 0, (args, run.stderr)
        return self

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.lab.stop()
        if self._own_base:
            remove_dir(self.base)

    def __enter__(self) -> "Fleet":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- using it

    @property
    def dsn(self) -> str:
        """The owner's connection string: for the invariants (problems()), never for a path under test."""
        return self.lab.cluster.dsn(DB)

    @property
    def conn(self) -> psycopg.Connection:
        """An autocommit connection on the fleet's clock."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True)
        self._conn.execute("SELECT set_config('pki.now', %s, false)", (self.now.isoformat() if self.now else "",))
        return self._conn

    def role_dsn(self, role: str = roles.CRON) -> str:
        """The fleet's database as a login role (the cron run's by default): what the paths under test use."""
        return self.lab.cluster.dsn(DB, role)

    def env(self, role: str = roles.CRON, **extra: str) -> dict[str, str]:
        # a login role (the cron run's unless told), never the owner
        env = {**os.environ, **self.lab.cluster.env(DB, role), "SERVERPKI_CONFIG": str(self.lab.config), **extra}
        if self.now:
            env["PGOPTIONS"] = f"-c pki.now={self.now.isoformat()}"
        return env

    def cli(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        """operate_serverPKI with these arguments; its output captured."""
        return subprocess.run([sys.executable, "-m", "serverpki.operate", *args], env=self.env(**env),
                              capture_output=True, text=True, timeout=timeout)

    def later(self, **delta: float) -> None:
        """Move the database's clock forward (leases and back-offs run out)."""
        self.now = (self.now or dt.datetime.now(UTC)) + dt.timedelta(**delta)

    def settle(self, runs: int = 6, **env: str) -> list[subprocess.CompletedProcess]:
        """Cron runs an hour apart until one ran no failing job and left no job undone (or `runs` are used up)."""
        done = []
        for _ in range(runs):
            self.later(hours=1)
            run = self.cli("-S", "-a", **env)
            done.append(run)
            left = self.conn.execute("SELECT count(*) FROM jobs WHERE state <> 'done'").fetchone()[0]
            if run.returncode == 0 and not left:
                break
        return done

    def active_not_after(self, name: str) -> dt.datetime:
        return self.conn.execute("SELECT not_after FROM certinstances WHERE certificate = cert_id(%s) "
                                 "AND state = 'deployed'", (name,)).fetchone()[0]

    def into_rollover(self, name: str, days_left: int = 25) -> None:
        """Move the clock (never back) to days_left before the deployed instance of LE certificate
        `name` expires: inside the prepublish window. Pebble is restarted so that what it issues
        from then on lasts 90 days of that time (its clock is the real one); the account is
        registered again."""
        self.now = max(self.now or dt.datetime.now(UTC), self.active_not_after(name) - dt.timedelta(days=days_left))
        self.lab.restart_pebble((self.now - dt.datetime.now(UTC)).days + 90)
        run = self.cli("-Z")
        assert run.returncode == 0, run.stderr

    def to_rollover_day(self, name: str, hours_left: int = 20) -> None:
        """Move the clock to less than expire_grace before the deployed instance of `name` expires:
        the next run deploys its prepublished successor."""
        self.now = max(self.now, self.active_not_after(name) - dt.timedelta(hours=hours_left))

    def pebble_issued(self) -> list[str]:
        """Serial numbers of the certificates Pebble says it issued (its log), in order."""
        return re.findall(r"Issued certificate serial ([0-9a-f]+)", self.lab.pebble.log.read_text())

    def tlsa_served(self, owner: str) -> set[str]:
        return {r.lower() for r in self._ask(owner, dns.rdatatype.TLSA)}

    def _ask(self, name: str, rdtype) -> list[str]:
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~0x0100  # ask the authoritative server itself
        answer = dns.query.tcp(query, "127.0.0.1", port=self.lab.bind.port, timeout=5)
        return [rr.to_text() for rrset in answer.answer for rr in rrset]

    # -- the invariants of a converged fleet

    def problems(self) -> list[str]:
        """Everything that differs from a converged fleet; empty when all is well."""
        return (self._job_problems() + self._instance_problems() + self._file_problems()
                + self._dns_problems() + self._history_problems())

    def _job_problems(self) -> list[str]:
        return [f"job {i} {kind} is {state}: {error}" for i, kind, state, error in self.conn.execute(
            "SELECT id, kind, state::text, last_error FROM jobs WHERE state <> 'done' ORDER BY id")]

    def deployed(self) -> dict[str, int]:
        """Enabled certificate -> its deployed instance (the problems name any certificate with none or more)."""
        return dict(self.conn.execute("""
            SELECT s.name::text, ci.id FROM certinstances ci
              JOIN certificates c ON c.id = ci.certificate
              JOIN subjects s ON s.certificate = c.id AND NOT s.isaltname
             WHERE s.type <> 'CA' AND ci.state = 'deployed'""").fetchall())

    def _instance_problems(self) -> list[str]:
        found = [f"certificate {name} has {n} deployed instances" for name, n in self.conn.execute("""
            SELECT s.name::text, count(ci.id) FILTER (WHERE ci.state = 'deployed')
              FROM certificates c JOIN subjects s ON s.certificate = c.id AND NOT s.isaltname
              LEFT JOIN certinstances ci ON ci.certificate = c.id
             WHERE s.type <> 'CA' AND NOT c.disabled
             GROUP BY 1 HAVING count(ci.id) FILTER (WHERE ci.state = 'deployed') <> 1""")]
        # every live instance keeps a certificate and a key for each of its algorithms
        found += [f"instance {i} ({state}) lacks its {what}" for i, state, what in self.conn.execute("""
            SELECT ci.id, ci.state::text, 'certificate and key'
              FROM certinstances ci JOIN subjects s ON s.certificate = ci.certificate AND NOT s.isaltname
             WHERE ci.state IN ('issued', 'prepublished', 'deployed') AND s.type <> 'CA'
               AND NOT EXISTS (SELECT 1 FROM certkeydata k WHERE k.certinstance = ci.id
                                  AND k.cert IS NOT NULL AND k.key IS NOT NULL)""")]
        return found

    def _file_problems(self) -> list[str]:
        found = []
        deployed = self.deployed()
        for name, fqdn, jailroot, jail, cert_path, key_path, subject_type, mode in self.conn.execute("""
            SELECT s.name::text, d.fqdn::text, d.jailroot, j.name::text, p.cert_path, p.key_path, s.type::text, p.mode
              FROM targets t JOIN disthosts d ON d.id = t.disthost JOIN places p ON p.id = t.place
              LEFT JOIN jails j ON j.id = t.jail
              JOIN subjects s ON s.certificate = t.certificate AND NOT s.isaltname
              JOIN certificates c ON c.id = t.certificate
             WHERE NOT c.disabled""").fetchall():
            inst = deployed.get(name)
            if inst is None:
                continue
            root = self.lab.ssh.host(fqdn).root
            pairs = {algo: bytes(cert) for algo, cert in self.conn.execute(
                "SELECT encryption_algo::text, cert FROM certkeydata WHERE certinstance = %s", (inst,))}
            base = f"{name}_{subject_type}_"
            seen = set()
            for path in {cert_path, key_path or cert_path}:
                folder = root / under(target_root(jailroot, jail), path, name).lstrip("/")
                for file in sorted(folder.glob(base + "*")):
                    # the original file names: an "ec_" part marks the EC pair (distribute.file_names)
                    algo = "ec" if re.search(r"(^|_)ec_", file.name[len(base):]) else "rsa"
                    where, content = f"{fqdn}:/{file.relative_to(root)}", file.read_bytes()
                    if algo not in pairs:
                        found.append(f"{where} is left from an algorithm instance {inst} does not have")
                        continue
                    if b"CERTIFICATE" in content:
                        seen.add(algo)
                        if x509.load_pem_x509_certificates(content)[0] != x509.load_pem_x509_certificate(pairs[algo]):
                            found.append(f"{where} does not hold instance {inst}")
                    if b"PRIVATE KEY" in content:
                        file_mode = file.stat().st_mode & 0o777
                        if file_mode & 0o077 and file_mode != mode:
                            found.append(f"{where} is readable by group or others ({file_mode:04o})")
                        if not _same_key(content, pairs[algo]):
                            found.append(f"{where} does not hold the key of instance {inst}")
            found += [f"{fqdn}: no certificate file of instance {inst} ({name}, {algo})" for algo in pairs
                      if algo not in seen]
        for fqdn, host in self.lab.ssh.hosts.items():
            found += [f"{fqdn}:{p.relative_to(host.root)} is a temporary file left behind"
                      for p in host.root.rglob("*") if TEMP_FILE.match(p.name)]
        return found

    def _dns_problems(self) -> list[str]:
        found = []
        for cert, owner in self.conn.execute("SELECT DISTINCT certificate, owner FROM tlsa_owners").fetchall():
            want = {f"{u} {s} {m} {d}".lower() for u, s, m, d in self.conn.execute("""
                SELECT td.usage, td.selector, td.matching, td.data FROM tlsa_desired td
                  JOIN certinstances ci ON ci.id = td.instance
                 WHERE td.certificate = %s AND td.owner = %s AND ci.state IN ('deployed', 'prepublished')""",
                (cert, owner))}
            served = self.tlsa_served(owner)
            if served != want:
                found.append(f"TLSA {owner}: BIND serves {sorted(served)}, the database wants {sorted(want)}")
            # what a DANE client gets: the same records (or their proven absence), validated
            seen = self.lab.resolver.tlsa(owner)
            if not seen.ad or {r.lower() for r in seen.records} != want:
                found.append(f"TLSA {owner}: the validating resolver returns {seen}, the database wants {sorted(want)}")
        # an owner gone from the configuration has its records withdrawn, and is forgotten, by the next run
        for owner, cert in self.conn.execute("SELECT owner, certificate FROM tlsa_owners_in_dns "
                                             "WHERE tlsa_owner_holder(owner) IS DISTINCT FROM certificate").fetchall():
            found.append(f"TLSA {owner}: kept as holding the records of certificate {cert}, which does not configure it"
                         + (f"; BIND serves {sorted(served)}" if (served := self.tlsa_served(owner)) else ""))
        for (name,) in self.conn.execute("SELECT DISTINCT name::text FROM subjects WHERE type <> 'CA'").fetchall():
            if name.endswith(ZONE) and (left := self._ask(f"_acme-challenge.{name}", dns.rdatatype.TXT)):
                found.append(f"challenge records left for {name}: {left}")
        return found

    def _history_problems(self) -> list[str]:
        """From the events: no instance deployed twice, no successor deployed before its TLSA records
        were published for two TTLs (the DANE-safe order), but for the emergency rollover after a key
        compromise (request_revoke), which skips the wait on purpose."""
        found = [f"instance {i} was deployed {n} times" for i, n in self.conn.execute("""
            SELECT instance, count(*) FROM events WHERE to_state = 'deployed' AND from_state IS DISTINCT FROM 'deployed'
             GROUP BY 1 HAVING count(*) > 1""")]
        found += [f"instance {i} was deployed at {at} before its TLSA records had been out two TTLs ({published})"
                  for i, at, published in self.conn.execute("""
            SELECT e.instance, e.at, ci.tlsa_published FROM events e
              JOIN certinstances ci ON ci.id = e.instance
             WHERE e.to_state = 'deployed' AND e.from_state = 'prepublished'
               AND ci.state = 'deployed'   -- a replaced instance's records, and their date, are gone
               AND (ci.tlsa_published IS NULL OR e.at < ci.tlsa_published + 2 * tlsa_ttl(ci.certificate))
               AND NOT EXISTS (SELECT 1 FROM revocations r JOIN subjects s ON s.name = r.certificate AND NOT s.isaltname
                                WHERE s.certificate = ci.certificate AND r.reason = 'keyCompromise'
                                  AND e.at BETWEEN r.revoked_at AND r.revoked_at + interval '1 hour')""")]
        return found


def _same_key(key_pem: bytes, cert_pem: bytes) -> bool:
    """Whether the key in key_pem (the first private key in it) belongs to the certificate."""
    match = re.search(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----.*?-----END (?:[A-Z]+ )?PRIVATE KEY-----",
                      key_pem, re.S)
    if not match:
        return False
    key = serialization.load_pem_private_key(match.group(0), None)
    public = x509.load_pem_x509_certificate(cert_pem).public_key()
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == public.public_bytes(*fmt)
