"""The real original serverPKI 0.9.11, for testing `serverpki db import-legacy` against data it made itself.

What it takes (issue 16, item 6):

- `legacy_venv()`: a virtualenv with `pip install serverPKI==0.9.11` from the package registry, cached
  across runs in SERVERPKI_TEST_CACHE (default ~/.cache/serverpki-tests), keyed on the original's
  version and this Python's; built under a file lock (pytest-xdist workers share it). No registry:
  the test fails saying so (never a skip).
- `make_legacy_database(pg_server, home)` (the session fixture `legacy_db` calls it): a database in the tests' cluster made from the original's own SQL
  (shipped in its wheel: <venv>/share/serverPKI/db), filled with its own psql functions (add_cert,
  add_altname, add_service, add_target) and INSERTs, then by its own `operate_serverPKI`: `-I` (local
  CA, passphrase typed through a pty), `-C` for the local certificates, `-X` (encrypt keys); then
  `-n -v -a`, whose output is kept (`LegacyDatabase.listing`, parsed by `listing_tables`).

What the original needed to run here (Python 3.11, PostgreSQL 15 from Debian), nothing more:
1. py-postgresql 1.3 cannot parse Debian's server_version "15.x (Debian 15.x-...)":
   postgresql/versionstring.py splits on whitespace first (`patch_versionstring`).
2. Its fresh install writes schema version 5 where 0.9.11 expects 6:
   `UPDATE pki.revision SET schemaversion = 6` (upgrade_to_6.sql's UNIQUE is already in the fresh schema).
3. Its EncAlgo asserts 'rsa plus ec', but its own enum value is 'rsa_plus_ec': any run that loads an
   rsa_plus_ec certificate dies on an AssertionError; serverPKI/cert.py maps the enum's spelling
   first (`patch_encalgo`). So 0.9.11 as published cannot have run with an rsa_plus_ec certificate.
4. Its SQL grants to the role "serverPKI", which must exist first; it connects over TCP with
   py-postgresql (no Unix socket in its config, no password): we give it 127.0.0.1 and the cluster's port.

Quirks of the original the import must know (seen in its code and in the data made here):
- Instance dates: certinstances.not_before/not_after are stored as DATEs (midnight), while the
  certificate itself says the time; `-n -v` prints those midnights. A CA instance's cacert is itself.
- States (dd.cert_state): reserved, issued, prepublished, deployed, revoked, expired, archived; `-C`
  leaves a new instance 'issued'. Instance 1 is a placeholder ('No cert', type CA, reserved, disabled,
  no key data, so not in `-n -v`); its fresh install sets the sequences so that real ids start at 3.
- Keys live in pki.certkeydata.key (bytea, PEM, "traditional" OpenSSL); `-X` re-encrypts them with
  BestAvailableEncryption -> traditional PEM ("BEGIN RSA PRIVATE KEY", Proc-Type: 4,ENCRYPTED,
  DEK-Info: AES-256-CBC,<iv>), passphrase = the whole
  db_encryption_key file's bytes (trailing newline included); revision.keysencrypted becomes true.
- `-X` skips CA keys: the local CA key made by `-I` before `-X` stays in clear in the database. The
  passphrase `-I` asks for is only compared with its repetition, never used to encrypt the CA key.
- Local issuance makes RSA keys only, whatever the certificate's encryption_algo: an 'ec' local
  certificate gets one certkeydata row holding an RSA key labelled 'ec'. A local 'rsa_plus_ec' one cannot
  be issued at all (its EncAlgoCKS asserts 'rsa' or 'ec'), so the local certificates here are rsa and ec.
- Its EncAlgo spells 'rsa plus ec' where its enum says 'rsa_plus_ec' (patch 3 above). Its LE issuance
  (not run here: dns-01 updates go to 127.0.0.1 port 53, hard-wired) is the only path that makes
  rsa_plus_ec instances (two certkeydata rows, 'rsa' and 'ec'); the rsa_plus_ec certificate here has none.
- certificates.disabled does not show in `-n -v`. LE certificates keep authorized_until on the certificate.
- The Let's Encrypt account is a JSON file {"key": PEM, "uri": ...} (automatoes' Account.serialize).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from lab.process import remove_dir, temp_dir
from test_json import grids

VERSION = "0.9.11"
ROLE = "serverPKI"                      # the role its SQL grants to and its config logs in as
CA_PASSPHRASE = "legacy CA passphrase"  # typed at -I's prompts
SQL_ORDER = ["create_schema_dd.sql", "create_extension_citext.sql", "create_schema_pki.sql",
             "create_triggers_pki.sql", "load_services.sql"]   # its README's order; citext needs dd first
VERSIONSTRING_BROKEN = "v = vstr.strip().split('.')"
VERSIONSTRING_FIXED = "v = vstr.strip().split()[0].split('.')  # serverPKI tests: Debian's '15.x (Debian ...)'"
ENCALGO_BROKEN = "        assert content in ('rsa', 'ec', 'rsa plus ec')\n"
ENCALGO_FIXED = ("        content = 'rsa plus ec' if content == 'rsa_plus_ec' else content  # serverPKI tests: its enum's spelling\n"
                 + ENCALGO_BROKEN)


class LegacyUnavailable(RuntimeError):
    """The original could not be installed or run; the message says why."""


def cache_dir() -> Path:
    """Where the tests keep what outlives a run (the original's virtualenv)."""
    return Path(os.environ.get("SERVERPKI_TEST_CACHE") or Path.home() / ".cache" / "serverpki-tests")


# the original's dependencies, pinned: its own requirements are open-ended (cryptography>=2.9.2, ...)
CONSTRAINTS = Path(__file__).with_name("legacy-constraints.txt")


def legacy_venv() -> Path:
    """A virtualenv holding serverPKI 0.9.11 with its pinned dependencies (patched), built once and reused
    while it is complete; a change of the pins builds a new one."""
    pins = hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()[:12]
    venv = cache_dir() / f"serverPKI-{VERSION}-py{sys.version_info.major}.{sys.version_info.minor}-{pins}"
    ready = venv / ".ready"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)     # one builder; the others wait and reuse
        if not ready.exists():
            shutil.rmtree(venv, ignore_errors=True)   # a half-built one from an interrupted run
            base_python = getattr(sys, "_base_executable", sys.executable)
            _run_or_fail([base_python, "-m", "venv", str(venv)], "cannot create a virtualenv")
            _run_or_fail([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q",
                          "--timeout", "30", "--retries", "2", "-c", str(CONSTRAINTS), f"serverPKI=={VERSION}"],
                         f"pip cannot install serverPKI=={VERSION} (is the package registry reachable?)")
            ready.write_text(VERSION + "\n")
        # on every use (they are idempotent): a venv of an older harness gets the patches of this one
        patch_versionstring(venv)
        patch_encalgo(venv)
    return venv


def _run_or_fail(cmd: list[str], why: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise LegacyUnavailable(f"{why}: {' '.join(cmd)} exited {done.returncode}\n{done.stderr[-3000:]}")


def patch_versionstring(venv: Path) -> None:
    """py-postgresql 1.3 splits server_version on dots only; Debian's has a suffix after a space."""
    _patch(venv, "postgresql/versionstring.py", VERSIONSTRING_BROKEN, VERSIONSTRING_FIXED)


def patch_encalgo(venv: Path) -> None:
    """serverPKI 0.9.11's EncAlgo accepts 'rsa plus ec' but its database's enum says 'rsa_plus_ec':
    without this, any run that loads an rsa_plus_ec certificate (-n, -X, -C ...) dies on an assert."""
    _patch(venv, "serverPKI/cert.py", ENCALGO_BROKEN, ENCALGO_FIXED)


def _patch(venv: Path, module: str, broken: str, fixed: str) -> None:
    [path] = venv.glob(f"lib/python*/site-packages/{module}")
    text = path.read_text()
    if fixed not in text:
        if broken not in text:
            raise LegacyUnavailable(f"{path}: the line to patch is gone ({broken!r})")
        path.write_text(text.replace(broken, fixed, 1))


def legacy_sql_dir(venv: Path) -> Path:
    """The original's own SQL, as its wheel installs it."""
    return venv / "share" / "serverPKI" / "db"


# ---------------------------------------------------------------- an installation: config and files


@dataclass
class LegacyInstall:
    """Paths of one installation of the original: its venv, config, and the flat files the config names."""
    venv: Path
    home: Path
    config: Path
    work: Path
    db_encryption_key: Path
    ca_cert: Path
    ca_key: Path
    le_account: Path
    dbname: str
    db_port: int
    dsn: str = ""      # its database as the superuser (for what a test sets up beside the original)
    ca_passphrase: str = CA_PASSPHRASE

    @property
    def operate(self) -> Path:
        return self.venv / "bin" / "operate_serverPKI"


def legacy_install(venv: Path, home: Path, host: str, port: int, dbname: str) -> LegacyInstall:
    """A home folder with the original's config (example_config.conf's shape) for dbname, a
    db_encryption_key made as its docs say (ssh-keygen -t ed25519 -m PEM) and an LE account file."""
    db = home / "db"
    work = home / "work"
    for folder in (db, work, work / "TLSA"):
        folder.mkdir(parents=True, exist_ok=True)
    inst = LegacyInstall(venv=venv, home=home, config=home / "serverpki.conf", work=work,
                         db_encryption_key=db / "db_encryption_key.pem", ca_cert=db / "ca_cert.pem",
                         ca_key=db / "ca_key.pem", le_account=db / "account.json", dbname=dbname, db_port=port)
    inst.config.write_text(CONFIG.format(home=home, host=host, port=port, user=ROLE, dbname=dbname))
    if not inst.db_encryption_key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-m", "PEM", "-N", "", "-C", "legacy",
                        "-f", str(inst.db_encryption_key)], check=True, capture_output=True)
    if not inst.le_account.exists():   # written by the original's ACME library, as -Z would (offline)
        subprocess.run([str(venv / "bin" / "python"), "-c", ACCOUNT_SCRIPT, str(inst.le_account)],
                       check=True, capture_output=True)
    return inst


ACCOUNT_SCRIPT = """
import sys
from automatoes.crypto import generate_rsa_key
from automatoes.model import Account
acct = Account(key=generate_rsa_key(2048), uri="https://acme.lab.example/acme/acct/legacy-1")
open(sys.argv[1], "wb").write(acct.serialize())
"""

CONFIG = """\
[Pathes]
    home = {home}
    db = $home/db
    ca_cert = $db/ca_cert.pem
    ca_key = $db/ca_key.pem
    db_encryption_key = $db/db_encryption_key.pem
    le_account = $db/account.json
    work = $home/work
    work_tlsa = $work/TLSA
    tlsa_dns_master =
    zone_file_root = $home/zones
    dns_key = $db/dns
    zone_tlsa_inc_mode = 0660
    zone_tlsa_inc_uid = 53
    zone_tlsa_inc_gid = 2053
    zone_file_include_name = acme_challenges.inc
    ddns_key_file = $db/ddns-key.conf

[X509atts]
    lifetime = 375
    bits = 2048
    [[names]]
        C = DE
        L = Some city
        O = Legacy Org
        CN = Legacy Org internal CA
    [[extensions]]

[DBAccount]
    dbHost = {host}
    dbPort = {port}
    dbUser = {user}
    dbDbaUser =
    dbSslRequired = no
    dbDatabase = {dbname}
    dbSearchPath = pki,dd,public
    dbCert =
    dbCertKey =

[Misc]
    SSH_CLIENT_USER_NAME = root
    LE_SERVER = https://acme.lab.example/dir
    LE_EMAIL = admin@lab.example
    LE_ZONE_UPDATE_METHOD = ddns
    LOCAL_CA_BITS = 4096
    LOCAL_CA_LIFETIME = 3680
    SUBJECT_LOCAL_CA = Local CA
    SUBJECT_LE_CA = Lets Encrypt CA
    PRE_PUBLISH_TIMEDELTA = 30
    LOCAL_ISSUE_MAIL_TIMEDELTA = 30
    MAIL_RELAY = 127.0.0.1
    MAIL_SUBJECT = Local TEST certificate issue reminder
    MAIL_SENDER = serverPKI@lab.example
    MAIL_RECIPIENT = admin@lab.example,
    SYSLOG_FACILITY = syslog.LOG_LOCAL6
"""


# ---------------------------------------------------------------- running the original


def run_operate(inst: LegacyInstall, *args: str, timeout: float = 300) -> tuple[int, str]:
    """Run its operate_serverPKI with the config on a pty (it reads passphrases from /dev/tty),
    answering every passphrase prompt with the CA passphrase. Returns (exit status, all output)."""
    pid, fd = pty.fork()
    if pid == 0:   # the child: the pty is its controlling terminal, stdin, stdout and stderr
        try:
            os.execv(str(inst.operate), [str(inst.operate), "-f", str(inst.config), *args])
        finally:
            os._exit(127)
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~termios.ECHO        # what we type is not output
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    out, pending, deadline = b"", b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:      # EIO: the child closed the pty
                break
            if not chunk:
                break
            out, pending = out + chunk, pending + chunk
            if re.search(rb"passphrase[^:\n]*: $", pending):
                os.write(fd, inst.ca_passphrase.encode() + b"\n")
                pending = b""
        else:
            os.kill(pid, 9)
            raise LegacyUnavailable(f"operate_serverPKI {' '.join(args)} did not end in {timeout}s:\n{out.decode(errors='replace')}")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace").replace("\r\n", "\n")


def operate_ok(inst: LegacyInstall, *args: str) -> str:
    """run_operate, which must succeed; its output."""
    status, out = run_operate(inst, *args)
    if status:
        raise LegacyUnavailable(f"operate_serverPKI {' '.join(args)} exited {status}:\n{out}")
    return out


def operate_plain(inst: LegacyInstall, *args: str) -> subprocess.CompletedProcess:
    """Run its operate_serverPKI without a terminal, stdout and stderr apart (for listings: no prompt there)."""
    return subprocess.run([str(inst.operate), "-f", str(inst.config), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)


def listing_tables(text: str) -> list[list[dict[str, str]]]:
    """The original's `-n -v` output as its two grids (certificates, then instances): rows as dicts by column."""
    return [[dict(zip(grid[0], cells)) for cells in grid[1:]] for grid in grids(text)]


# ---------------------------------------------------------------- a legacy database with data


PLACES = {   # one place per cert_file_type (dd.place_cert_file_type)
    "cert only": "INSERT INTO places(name, cert_file_type, cert_path) VALUES ('p_cert_only', 'cert only', '/etc/ssl/certs')",
    "separate": "INSERT INTO places(name, cert_file_type, cert_path, key_path, uid, gid, mode, chownboth, reload_command) "
                "VALUES ('p_separate', 'separate', '/usr/local/etc/nginx/ssl', '/usr/local/etc/nginx/private', 80, 80, 288, true, 'service nginx reload')",
    "combine key": "INSERT INTO places(name, cert_file_type, cert_path, reload_command) "
                   "VALUES ('p_combine_key', 'combine key', '/usr/local/etc/haproxy', 'service haproxy reload')",
    "combine cacert": "INSERT INTO places(name, cert_file_type, cert_path, key_path) "
                      "VALUES ('p_combine_cacert', 'combine cacert', '/usr/local/etc/mail/certs', '/usr/local/etc/mail/keys')",
    "combine both": "INSERT INTO places(name, cert_file_type, cert_path, uid, gid, pglink) "
                    "VALUES ('p_combine_both', 'combine both', '/var/db/postgres/data15', 770, 770, true)",
}

# what an operator types in psql, as the original's docs show; add_cert's arguments: name, subject type,
# cert type, algo, must staple, altname, TLSA service name, port, disthost, jail, place
DATA = "\n".join([
    "SET search_path = pki, dd, public;",
    "INSERT INTO disthosts(fqdn) VALUES ('www.lab.example');",
    "INSERT INTO disthosts(fqdn, jailroot) VALUES ('jails.lab.example', '/usr/jails');",
    "INSERT INTO jails(name, disthost) SELECT 'web1', id FROM disthosts WHERE fqdn = 'jails.lab.example';",
    "INSERT INTO jails(name, disthost) SELECT 'mail1', id FROM disthosts WHERE fqdn = 'jails.lab.example';",
    *(sql + ";" for sql in PLACES.values()),
    "SELECT add_cert('www.lab.example', 'server', 'local', 'rsa', false, 'alias.lab.example', 'https', 443, 'www.lab.example', NULL, 'p_separate');",
    "SELECT add_altname('www.lab.example', 'alias2.lab.example');",
    "SELECT add_target('www.lab.example', 'www.lab.example', NULL, 'p_cert_only');",
    "SELECT add_cert('jailed.lab.example', 'server', 'local', 'ec', false, NULL, 'https', 443, 'jails.lab.example', 'web1', 'p_combine_key');",
    "SELECT add_target('jailed.lab.example', 'jails.lab.example', 'web1', 'p_combine_both');",
    "SELECT add_cert('dual.lab.example', 'server', 'local', 'rsa', true, 'mx.lab.example', 'smtp', 25, 'jails.lab.example', 'mail1', 'p_combine_cacert');",
    "SELECT add_service('dual.lab.example', 'imap', 587);",
    "SELECT add_cert('client1@lab.example', 'client', 'local', 'rsa', false, NULL, NULL, NULL, 'www.lab.example', NULL, 'p_separate');",
    "SELECT add_cert('old.lab.example', 'server', 'local', 'rsa', false, NULL, NULL, NULL, 'www.lab.example', NULL, 'p_combine_key');",
    "SELECT add_cert('le.lab.example', 'server', 'LE', 'rsa_plus_ec', false, 'www2.lab.example', 'https', 443, 'www.lab.example', NULL, 'p_separate');",
    "UPDATE certificates SET authorized_until = '2027-01-05 12:00' "
    "WHERE id = (SELECT certificate FROM subjects WHERE name = 'le.lab.example');",
])
LOCAL_CERTS = ["www.lab.example", "jailed.lab.example", "dual.lab.example", "client1@lab.example", "old.lab.example"]
DISABLED = "old.lab.example"   # disabled after its instance was issued
LE_CERTS = ["le.lab.example"]
ALL_CERTS = LOCAL_CERTS + LE_CERTS


@dataclass
class LegacyDatabase:
    """A populated database of the original: dsn (superuser) of the encrypted one, and of a copy taken
    before -X (clear keys); the installation that made it; the `-n -v -a` listing after -X."""
    dsn: str
    clear_dsn: str
    install: LegacyInstall
    listing: str
    log: str   # everything the original printed while making the data


def psql(dsn: str, script: str) -> str:
    """Run a script with psql as an operator would (stops at the first error)."""
    done = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn], input=script,
                          text=True, capture_output=True)
    if done.returncode:
        raise LegacyUnavailable(f"psql failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def create_legacy_schema(pg_server, venv: Path, dbname: str) -> str:
    """dbname made as the original's README says, from its own SQL, at schema version 6; its superuser dsn."""
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [ROLE]).fetchone():
            try:
                conn.execute(f'CREATE ROLE "{ROLE}" LOGIN')
            except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                pass    # another test process (xdist) made it in the meantime: it is cluster-wide
        conn.execute(f"CREATE DATABASE {dbname}")
    dsn = pg_server.dsn(dbname)
    sql = legacy_sql_dir(venv)
    for name in SQL_ORDER:
        psql(dsn, (sql / name).read_text())
    psql(dsn, "UPDATE pki.revision SET schemaversion = 6;")
    return dsn


def make_legacy_database(pg_server, home: Path, prefix: str = "legacy_") -> LegacyDatabase:
    """A legacy database with the data the original made (see the module's docstring); takes about a minute."""
    venv = legacy_venv()
    name = f"{prefix}{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    dsn = create_legacy_schema(pg_server, venv, name)
    info = conninfo_to_dict(dsn)
    host = info.get("host", "127.0.0.1")
    host = "127.0.0.1" if host.startswith("/") else host   # py-postgresql speaks TCP; the lab listens there too
    inst = legacy_install(venv, home, host, int(info.get("port", 5432)), name)
    psql(dsn, DATA)
    log = operate_ok(inst, "-I")
    log += operate_ok(inst, "-C", *[a for c in LOCAL_CERTS for a in ("-o", c)])
    psql(dsn, f"UPDATE pki.certificates SET disabled = true "
              f"WHERE id = (SELECT certificate FROM pki.subjects WHERE name = '{DISABLED}');")
    clear = f"{name}_clear"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {clear} TEMPLATE {name}")
    log += operate_ok(inst, "-X")
    shown = operate_plain(inst, "-n", "-v", "-a")
    if shown.returncode:
        raise LegacyUnavailable(f"operate_serverPKI -n -v -a exited {shown.returncode}:\n{shown.stderr}")
    listing = shown.stdout
    return LegacyDatabase(dsn=dsn, clear_dsn=pg_server.dsn(clear), install=inst, listing=listing, log=log)


def drop_legacy_database(pg_server, legacy: LegacyDatabase) -> None:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        for dsn in (legacy.dsn, legacy.clear_dsn):
            conn.execute(f"DROP DATABASE IF EXISTS {conninfo_to_dict(dsn)['dbname']} WITH (FORCE)")


_made: dict[str, LegacyDatabase] = {}
_failed: dict[str, str] = {}


@pytest.fixture(scope="session")
def legacy_db(pg_server) -> LegacyDatabase:
    """The populated legacy database, made once per test process (import this fixture into a test
    module: `from legacy import legacy_db`): .dsn, .clear_dsn, .install (paths: venv, config, work,
    db_encryption_key, ca files, le_account), .listing (its `-n -v -a` stdout: `listing_tables`).
    A failure to install or run the original fails the test, naming why."""
    if pg_server.base_dsn in _failed:     # once is enough: every test using it fails with the same reason
        pytest.fail(_failed[pg_server.base_dsn], pytrace=False)
    if pg_server.base_dsn not in _made:
        try:
            _made[pg_server.base_dsn] = make_legacy_database(pg_server, temp_dir("serverpki-legacy-"))
        except LegacyUnavailable as e:
            _failed[pg_server.base_dsn] = str(e)
        if pg_server.base_dsn in _failed:
            pytest.fail(_failed[pg_server.base_dsn], pytrace=False)
    yield _made[pg_server.base_dsn]
    made = _made.pop(pg_server.base_dsn, None)   # every module that imported the fixture ends here
    if made:
        drop_legacy_database(pg_server, made)
        remove_dir(made.install.home)


# ---------------------------------------------------------------- a copy to change, and the original on a network


def copy_legacy(pg_server, legacy: LegacyDatabase, home: Path) -> LegacyInstall:
    """A copy of the legacy database (encrypted keys) with an installation of its own in home (the same
    db_encryption_key and account file), for a test that lets the original change it."""
    source = conninfo_to_dict(legacy.dsn)["dbname"]
    name = f"{source}_copy{int(time.time() * 1000) % 10**6}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {source}")
    (home / "db").mkdir(parents=True, exist_ok=True)
    for path in (legacy.install.db_encryption_key, legacy.install.le_account):
        shutil.copy2(path, home / "db" / path.name)
    info = conninfo_to_dict(pg_server.dsn(name))
    inst = legacy_install(legacy.install.venv, home, "127.0.0.1", int(info.get("port", 5432)), name)
    inst.dsn = pg_server.dsn(name)
    return inst


def operate_in(prefix: list[str], inst: LegacyInstall, *args: str, answers: str = "", **env: str) -> subprocess.CompletedProcess:
    """Run its operate_serverPKI after `prefix` (e.g. PrivateNetwork.command([])), HOME = the installation's
    home (paramiko reads ~/.ssh there), no terminal, no SSH agent; `answers` on stdin (-Z asks y/n questions)."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(inst.home), "LANG": "C.UTF-8", **env}
    return subprocess.run(prefix + ["env", "-i", *(f"{k}={v}" for k, v in clean.items()), str(inst.operate),
                                     "-f", str(inst.config), *args],
                          capture_output=True, text=True, input=answers, timeout=300)


def use_acme_server(inst: LegacyInstall, le_server: str) -> None:
    """Point the installation at an ACME server (its LE_SERVER; the lab's: lab.acme_front) and give it
    what its first Let's Encrypt issuance would make itself: 0.9.11's issue_LE.py creates the
    'Lets Encrypt CA' certificate with CertType, which it never imports (a NameError after the CA
    issued, nothing stored); these are the rows its own create_CAcert_meta would insert."""
    text = inst.config.read_text()
    old = "LE_SERVER = https://acme.lab.example/dir"
    assert old in text, "the CONFIG template changed"
    inst.config.write_text(text.replace(old, f"LE_SERVER = {le_server}"))
    with psycopg.connect(inst.dsn, autocommit=True) as conn:
        conn.execute("SET search_path = pki, dd, public")   # its triggers name its tables unqualified
        cid = conn.execute("INSERT INTO pki.certificates (type) VALUES ('LE') RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO pki.subjects (type, name, isaltname, certificate) "
                     "VALUES ('CA', 'Lets Encrypt CA', false, %s)", [cid])
