"""Secrets on the wire, in logs and on the targets, with the real lab.

1. The demo's story (lab.demo.Demo: PostgreSQL, BIND, Pebble, two sshd, SMTP), run
   in-process with every operate_serverPKI run captured, plus runs with -v and -d that
   handle keys (-D, -X, -K after tampering, -C, -E, -Y, a reminder mail, a wrong passphrase).
   PostgreSQL runs with log_statement=all, as an operator hunting a problem would set it (the
   agent hands issued keys to complete_issue as bind parameters: migrate.configure_database keeps
   their values out of the server log). Then every text is scanned for private key material
   with test_privileges.KeyMaterial: each run's stdout and stderr, the demo's own output, the
   PostgreSQL log, the sshd and SFTP logs, the Pebble and BIND logs, the mails; and every row of
   every table (jobs: args, result, last_error; events) but the key columns themselves. The keys looked for: every key the database ever held during
   the story (read after each run: certificates, the local CA, the ACME accounts, orders in
   flight), in clear and as stored, the lab's SSH client key; the passphrases and the TSIG
   secret verbatim. Positive controls plant keys into copies of each source and must be found.
2. Key files on the targets, from the server side: the lab's internal-sftp logs every open
   (with the mode it creates), chown, chmod and rename to syslog inside each chroot; every
   file that ends up holding a key is followed from its creation: born 0600, never given a
   group or other bit (beyond a place's configured group mode, and then only after the chown).
3. Reload commands and configuration values: shell metacharacters in jail, disthost,
   certificate, place names are refused by SQL; in paths they only name files (SFTP, no
   shell); the jail name in a reload command is quoted. Marker files inside the chroot prove
   that nothing ran that the operator did not write.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from unittest import mock

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from psycopg.rows import dict_row

from lab import demo as demo_module
from serverpki import handlers as handler_registry
from serverpki import sshclient
from serverpki.agent import Agent
from serverpki.config import Config, LocalCAConfig, PathsConfig, SshConfig, X509Config
from serverpki.handlers import HANDLERS
from serverpki.handlers import distribute as distribute_handler
from serverpki.handlers import issue_local as _issue_local  # noqa: F401  (registers issue_local, issue_local_ca)
from lab.sshd import SSHLab
from lab.lab import secret as _secret
from test_privileges import B64_WINDOW, KeyMaterial, _b64_shifts, _windows, pem_body

DEMO_DB = demo_module.DEMO_DB
DEMO_DB_PASS = "demo passphrase of the stored keys"
DEMO_CA_PASS = "demo passphrase of the local CA"
GROUP_OTHER = 0o077


# =========================================================================== the SFTP log of a chrooted host

class SftpLog:
    """internal-sftp of a lab host logs to syslog; in its chroot that is ROOT/dev/log: receive it there."""

    def __init__(self, root: Path):
        (root / "dev").mkdir(mode=0o755, exist_ok=True)
        self.path = root / "dev" / "log"
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.lines.append(data.decode("utf-8", errors="replace"))

    def text(self) -> list[str]:
        time.sleep(0.2)   # the last datagrams of a closed session
        with self._lock:
            return list(self.lines)

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


_OPEN = re.compile(r'internal-sftp\[(\d+)\]: open "(.*)" flags (\S+) mode (0[0-7]+)$')
_SET_MODE = re.compile(r'internal-sftp\[(\d+)\]: set "(.*)" mode (0[0-7]+)$')
_SET_OWNER = re.compile(r'internal-sftp\[(\d+)\]: set "(.*)" owner (\d+) group (\d+)$')
_RENAME = re.compile(r'internal-sftp\[(\d+)\]: (?:posix-)?rename old "(.*)" new "(.*)"$')


@dataclasses.dataclass
class Written:
    """One file's life in the SFTP log: created (mode), chown'ed, chmod'ed, renamed to its final path."""

    host: str
    temp: str
    created_mode: int | None = None
    flags: str = ""
    steps: list[tuple[str, int | tuple[int, int]]] = dataclasses.field(default_factory=list)
    final: str | None = None


def parse_sftp(host: str, lines: list[str]) -> tuple[list[Written], list[str]]:
    """The files written (by path before the rename) and the lines about paths never opened (e.g. a chmod of a
    file in place), from one host's SFTP log."""
    files: dict[str, Written] = {}
    order: list[Written] = []
    strays: list[str] = []
    for line in lines:
        line = line.rstrip("\n")
        if m := _OPEN.search(line):
            if "WRITE" in m.group(3) or "CREATE" in m.group(3):
                w = Written(host, m.group(2), int(m.group(4), 8), m.group(3))
                files[w.temp] = w
                order.append(w)
        elif m := _SET_MODE.search(line):
            if m.group(2) in files:
                files[m.group(2)].steps.append(("mode", int(m.group(3), 8)))
            else:
                strays.append(line)
        elif m := _SET_OWNER.search(line):
            if m.group(2) in files:
                files[m.group(2)].steps.append(("owner", (int(m.group(3)), int(m.group(4)))))
            else:
                strays.append(line)
        elif m := _RENAME.search(line):
            old, new = m.group(2), m.group(3)
            if old in files:
                files[old].final = new
                files[new] = files.pop(old)   # a later chmod of the final path belongs to it too
    return order, strays


def key_file_violations(written: list[Written], holds_key, allowed_group: dict[str, tuple[int, int]] | None = None
                        ) -> list[str]:
    """Every write of a file that ends up holding a key: created without group/other bits, never chmod'ed to
    other bits, and to group bits only where allowed_group[final path] = (gid, mode) says so, after the chown."""
    allowed_group = allowed_group or {}
    bad = []
    for w in written:
        if w.final is None or not holds_key(w.host, w.final):
            continue
        where = f"{w.host}:{w.final} (written as {w.temp})"
        if w.created_mode is None or w.created_mode & GROUP_OTHER:
            bad.append(f"{where}: created with mode {w.created_mode:04o}")
        if "EXCL" not in w.flags:
            bad.append(f"{where}: opened {w.flags}, not exclusively (an existing file would keep its mode)")
        owner = None
        for kind, value in w.steps:
            if kind == "owner":
                owner = value
            elif value & 0o007 or (value & 0o070 and allowed_group.get(w.final) is None):
                bad.append(f"{where}: chmod {value:04o}")
            elif value & 0o070:
                gid, mode = allowed_group[w.final]
                if owner is None or owner[1] != gid or value != mode:
                    bad.append(f"{where}: chmod {value:04o} with owner {owner}, expected group {gid} and {mode:04o}")
    return bad


# =========================================================================== the demo, recorded

@dataclasses.dataclass
class Output:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    pgoptions: str | None


class RecordingDemo(demo_module.Demo):
    """The demo with every subprocess's output captured, the keys the database holds read after each
    run, and the SFTP logs of the disthosts received."""

    def __init__(self, base: Path):
        super().__init__(base)
        self.lab.ssh.sftp_log_level = "INFO"
        # the server logs every statement, with its parameters, as an operator hunting a problem would have it
        self.cluster.extra_options = "-c log_statement=all -c log_min_messages=debug1"
        self.outputs: list[Output] = []
        self.keys_seen: dict[str, tuple[str, bytes | None]] = {}   # stored PEM -> (label, its certificate)
        self.sftp: dict[str, SftpLog] = {}

    def start(self) -> None:
        super().start()
        for fqdn, host in self.lab.ssh.hosts.items():
            self.sftp[fqdn] = SftpLog(host.root)

    def run_recorded(self, cmd, *args, **kwargs):
        kwargs.pop("capture_output", None)
        kwargs.pop("stderr", None)   # both streams are captured apart (a scene may ask stderr to go to stdout)
        done = subprocess.run(cmd, *args, capture_output=True, text=True,
                              **{k: v for k, v in kwargs.items() if k != "check"})
        env = kwargs.get("env") or {}
        self.outputs.append(Output(list(cmd), done.returncode, done.stdout, done.stderr, env.get("PGOPTIONS")))
        sys.stdout.write(done.stdout)
        sys.stdout.write(done.stderr)
        self.read_keys()
        if kwargs.get("check") and done.returncode:
            raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
        return done

    def read_keys(self) -> None:
        """Every private key the database holds now (the ones of instances deleted later are kept here)."""
        try:
            with psycopg.connect(self.cluster.dsn(DEMO_DB), autocommit=True) as conn:
                for (table,) in conn.execute(
                        "SELECT c.relname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                        "WHERE c.relnamespace = to_regnamespace('pki') AND c.relkind = 'r' "
                        "AND a.attname = 'key' AND NOT a.attisdropped").fetchall():
                    for row in conn.cursor(row_factory=dict_row).execute(f"SELECT * FROM pki.{table} WHERE key IS NOT NULL"):
                        pem = bytes(row["key"]).decode() if isinstance(row["key"], (bytes, memoryview)) else row["key"]
                        cert = bytes(row["cert"]) if row.get("cert") is not None else None
                        self.keys_seen.setdefault(pem, (f"{table} key {len(self.keys_seen) + 1}", cert))
        except psycopg.OperationalError:
            pass   # the database is not there yet

    def operate(self, *args: str, now: dt.datetime | None = None, log_to_stdout: bool = False) -> int:
        with mock.patch.object(demo_module, "subprocess", types.SimpleNamespace(run=self.run_recorded, STDOUT=subprocess.STDOUT)):
            return super().operate(*args, now=now, log_to_stdout=log_to_stdout)

    def psql(self, *args: str) -> None:
        with mock.patch.object(demo_module, "subprocess", types.SimpleNamespace(run=self.run_recorded)):
            return super().psql(*args)


@dataclasses.dataclass
class Story:
    outputs: list[Output]
    printed: str
    logs: dict[str, str]            # name -> text (PostgreSQL, sshd, Pebble, BIND, SFTP)
    mails: list[str]
    rows: dict[str, list[dict]]     # table -> rows (key columns left out)
    material: KeyMaterial
    sftp: dict[str, list[str]]
    files: dict[str, dict[str, tuple[int, bool]]]   # host -> path -> (mode, holds a key)
    exported: dict[str, int]
    pems: list[str]                 # every private key the database held during the story, as stored
    seconds: float


def _key_material(keys_seen: dict, identity: Path, tsig_file: Path) -> KeyMaterial:
    material = KeyMaterial()
    for pem, (label, cert) in keys_seen.items():
        material.add_key(pem, label, (None, DEMO_DB_PASS.encode(), DEMO_CA_PASS.encode()), cert)
    # the lab's SSH client key (OpenSSH format): its base64 and its private bytes
    ssh_key = serialization.load_ssh_private_key(identity.read_bytes(), None)
    raw = ssh_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    public = ssh_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_windows = set()
    for shifted in _b64_shifts(serialization.load_ssh_public_key(public).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)):
        public_windows |= _windows(shifted, B64_WINDOW)
    public_windows |= _windows(public.split()[1].decode(), B64_WINDOW)
    for shifted in _b64_shifts(raw):
        for w in _windows(shifted, 40) - public_windows:
            material.b64.setdefault(w, "the SSH client key")
    for w in _windows(pem_body(identity.read_text()), B64_WINDOW) - public_windows:
        material.b64.setdefault(w, "the SSH client key")
    material.hex.update({raw.hex(): "the SSH client key"})
    material.labels.append("the SSH client key")
    material.add_secret(DEMO_DB_PASS, "db_encryption_key passphrase")
    material.add_secret(DEMO_CA_PASS, "local CA passphrase")
    secret = re.search(r'secret\s+"([^"]+)"', tsig_file.read_text())
    assert secret, tsig_file.read_text()
    material.add_secret(secret.group(1), "TSIG secret")
    return material


def _all_rows(conn) -> dict[str, list[dict]]:
    """Every row of every table of pki and dd, the private key columns left out."""
    out = {}
    for schema, table in conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                      "WHERE n.nspname IN ('pki', 'dd') AND c.relkind = 'r' ORDER BY 1, 2").fetchall():
        cols = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (f"{schema}.{table}",))]
        keep = [c for c in cols if c not in ("key", "private_key")]
        out[f"{schema}.{table}"] = conn.cursor(row_factory=dict_row).execute(
            f"SELECT {', '.join(chr(34) + c + chr(34) for c in keep)} FROM {schema}.{table}").fetchall()
    return out


def _mail_text(message) -> str:
    """A mail as sent (headers, transfer-encoded body) and its decoded text parts: quoted-printable splits lines."""
    parts = [message.as_string()]
    for part in message.walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            if payload:
                parts.append(payload.decode("utf-8", errors="replace"))
    return "\n".join(parts)


def _files_on(host) -> dict[str, tuple[int, bool]]:
    """Every regular file the deployments left on a host: its mode, and whether it holds a private key."""
    out = {}
    for path in host.root.rglob("*"):
        rel = "/" + str(path.relative_to(host.root))
        if path.is_symlink() or not path.is_file() or rel.startswith(("/usr/lib", "/usr/bin", "/usr/sbin", "/lib", "/bin")):
            continue
        out[rel] = (stat.S_IMODE(path.lstat().st_mode), "PRIVATE KEY" in path.read_text(errors="replace"))
    return out


@pytest.fixture(scope="module")
def story() -> Story:
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="serverpki-demo-secrets-"))
    os.chmod(base, 0o755)   # the postgres user reaches its data folder
    demo = RecordingDemo(base)
    printed = []
    real_stdout = sys.stdout

    class Recorder:
        """sys.stdout for the demo's prints (and the runs' output that run_recorded writes there)."""

        def write(self, text):
            printed.append(text)
            return len(text)

        def flush(self):
            pass

    sys.stdout = Recorder()
    try:
        demo.run()
        # --- more runs that handle keys, with -v and -d (debug logs are the likeliest leak)
        demo.operate("-D", "-a", "-v")
        demo.operate("-X", "-d")
        web1 = demo.lab.ssh.host(f"web1.{demo_module.ZONE}")
        keyfiles = sorted(p for p in web1.root.rglob("*key*.pem") if not p.is_symlink())
        assert keyfiles, "no key file on web1 after the demo"
        os.chmod(keyfiles[0], 0o644)                 # drift: mode (consolidate rewrites it)
        keyfiles[-1].write_text("tampered\n")        # drift: content
        demo.operate("-K", "-a", "-d")
        demo.operate("-D", "-a", "-d")               # the keys are encrypted in the database now
        demo.operate("-C", "-o", f"intranet.{demo_module.ZONE}", "-o", "backup_op", "-d")
        demo.operate("-D", "-o", f"intranet.{demo_module.ZONE}", "-o", "backup_op", "-v")
        with psycopg.connect(demo.cluster.dsn(DEMO_DB), autocommit=True) as conn:
            serial = conn.execute("SELECT max(\"Serial\") FROM inst WHERE \"Cert Name\" = 'backup_op' "
                                  "AND \"State\" = 'deployed'").fetchone()[0]
        demo.operate("-E", str(serial), "-d")
        demo.operate("-n", "-v")
        demo.operate("-Y", "-d")
        # the reminder mail of the local certificates, 20 days before they expire
        with psycopg.connect(demo.cluster.dsn(DEMO_DB), autocommit=True) as conn:
            expiry = conn.execute("SELECT min(\"not after\") FROM inst WHERE \"Type\" = 'local' AND \"State\" = 'deployed' "
                                  "AND \"Cert Name\" <> 'Local CA'").fetchone()[0]
        demo.operate("-S", "-o", f"intranet.{demo_module.ZONE}", "-o", "backup_op", "-d",
                     now=expiry - dt.timedelta(days=20))
        # a wrong passphrase: the errors of keys that do not open
        passfile = base / "db_encryption_key"
        right = passfile.read_text()
        demo.operate("-X", "-v")
        passfile.write_text("not the passphrase\n")
        os.chmod(keyfiles[0], 0o640)
        demo.operate("-K", "-a", "-d")
        demo.operate("-Y", "-d")
        passfile.write_text(right)
        demo.operate("-K", "-a", "-v")
        # --- collect everything before the lab goes
        sftp = {fqdn: log.text() for fqdn, log in demo.sftp.items()}
        logs = {"postgresql.log": demo.cluster.log.read_text(errors="replace")}
        for fqdn, host in demo.lab.ssh.hosts.items():
            logs[f"sshd {fqdn}"] = host.log.read_text(errors="replace")
            logs[f"sftp {fqdn}"] = "".join(line if line.endswith("\n") else line + "\n" for line in sftp[fqdn])
            reloads = host.root / "var/log/reloads"
            if reloads.exists():
                logs[f"reloads {fqdn}"] = reloads.read_text()
        logs["pebble.log"] = demo.lab.pebble.log.read_text(errors="replace")
        logs["named.log"] = demo.lab.bind.log.read_text(errors="replace")
        mails = [_mail_text(m.message) for m in demo.lab.smtp.messages]
        with psycopg.connect(demo.cluster.dsn(DEMO_DB), autocommit=True) as conn:
            rows = _all_rows(conn)
        demo.read_keys()
        material = _key_material(demo.keys_seen, demo.lab.ssh.identity, demo.lab.bind.key_file)
        files = {fqdn: _files_on(host) for fqdn, host in demo.lab.ssh.hosts.items()}
        work = base / "work"
        exported = {str(p.relative_to(work)): stat.S_IMODE(p.stat().st_mode) for p in work.rglob("*") if p.is_file()}
    finally:
        sys.stdout = real_stdout
        for log in demo.sftp.values():
            log.close()
        demo.stop()
        shutil.rmtree(base, ignore_errors=True)
    return Story(demo.outputs, "".join(printed), logs, mails, rows, material, sftp, files, exported,
                 list(demo.keys_seen), time.monotonic() - started)


# --------------------------------------------------------------------------- the story ran

def operate_runs(story: Story) -> list[Output]:
    return [o for o in story.outputs if o.command[1:3] == ["-m", "serverpki.operate"]]


def test_the_story_ran_with_debug_runs_that_touched_keys(story):
    runs = operate_runs(story)
    flags = [" ".join(o.command[3:]) for o in runs]
    # every run succeeded but the two under a wrong passphrase
    failed = [f for o, f in zip(runs, flags) if o.returncode != 0]
    assert failed == ["-K -a -d", "-Y -d"], (failed, "\n=====\n".join(o.stdout[-3000:] + o.stderr[-3000:]
                                                                       for o in runs if o.returncode))
    assert all("wrong passphrase" in o.stdout + o.stderr for o in runs if o.returncode)
    assert sum("-d" in o.command for o in runs) >= 8 and sum("-v" in o.command for o in runs) >= 4
    # debug runs log the libraries' info too (paramiko's SSH and SFTP sessions), with timestamps and logger names
    debug = "".join(o.stderr for o in runs if "-d" in o.command)
    assert "paramiko.transport" in debug and "serverpki.agent" in debug, debug[-2000:]
    # -K found the tampered key files and rewrote them; -E wrote the key to the work directory, privately
    consolidate = next(o for o in runs if "-K" in o.command)
    assert consolidate.returncode == 0
    keys = [p for p in story.exported if "key" in p]
    assert keys and all(story.exported[p] & GROUP_OTHER == 0 for p in keys), story.exported
    print(f"\nthe story: {len(runs)} operate runs, {len(story.outputs) - len(runs)} psql runs, "
          f"{len(story.material.labels)} keys known, {story.seconds:.1f} s")


# --------------------------------------------------------------------------- the scan

def texts(story: Story) -> dict[str, str]:
    out = {}
    for n, o in enumerate(story.outputs):
        out[f"run {n} `{' '.join(o.command[3:] if o.command[0] == sys.executable else o.command[-2:])}` stdout"] = o.stdout
        out[f"run {n} `{' '.join(o.command[3:] if o.command[0] == sys.executable else o.command[-2:])}` stderr"] = o.stderr
    out["the demo's output"] = story.printed
    out.update(story.logs)
    for n, mail in enumerate(story.mails):
        out[f"mail {n}"] = mail
    return out


def scan_texts(material: KeyMaterial, named: dict[str, str]) -> tuple[list[str], int]:
    leaks, lines = [], 0
    for name, text in named.items():
        lines += len(text.splitlines())
        leaks += material.check(name, text)
    return leaks, lines


def scan_rows(material: KeyMaterial, rows: dict[str, list[dict]]) -> tuple[list[str], int, int]:
    leaks, n_rows, n_values = [], 0, 0
    for table, table_rows in rows.items():
        for row in table_rows:
            n_rows += 1
            for col, value in row.items():
                if value is None:
                    continue
                n_values += 1
                text = (bytes(value) if isinstance(value, (bytes, memoryview)) else
                        json.dumps(value) if isinstance(value, (dict, list)) else str(value))
                leaks += material.check(f"{table}.{col} (row {row.get('id', '?')})", text)
    return leaks, n_rows, n_values


def test_no_output_or_log_of_the_story_holds_key_material(story, record_property):
    named = texts(story)
    for must in ("postgresql.log", "pebble.log", "named.log", "the demo's output"):
        assert named[must].strip(), f"{must} is empty: is it the right file?"
    assert any(k.startswith("sftp ") and v.count("open ") > 10 for k, v in named.items())
    leaks, lines = scan_texts(story.material, named)
    assert leaks == [], "\n".join(leaks[:20])
    record_property("log lines scanned", lines)
    print(f"\n{len(named)} texts, {lines} lines, {sum(len(t) for t in named.values())} characters: no key material")


def test_no_row_of_jobs_events_or_any_table_holds_key_material(story, record_property):
    assert len(story.rows["pki.jobs"]) > 20 and len(story.rows["pki.events"]) > 20
    # the jobs hold what the handlers reported and the errors (the wrong passphrase's among them)
    assert any(r["result"] for r in story.rows["pki.jobs"]) and any(r["last_error"] for r in story.rows["pki.jobs"])
    leaks, n_rows, n_values = scan_rows(story.material, story.rows)
    assert leaks == [], "\n".join(leaks[:20])
    record_property("rows scanned", n_rows)
    print(f"\n{len(story.rows)} tables, {n_rows} rows, {n_values} values: no key material "
          f"(jobs {len(story.rows['pki.jobs'])}, events {len(story.rows['pki.events'])})")


def test_no_mail_holds_key_material(story):
    # the reminder of the local certificates, mailed by the run 20 days before they expire
    assert story.mails and all("local certificates must be issued" in m for m in story.mails), story.mails
    leaks = [hit for n, mail in enumerate(story.mails) for hit in story.material.check(f"mail {n}", mail)]
    assert leaks == []
    print(f"\n{len(story.mails)} mails scanned")


def test_the_scan_finds_keys_planted_in_every_source(story):
    """Positive controls: the same scan over the same sources, each with a key planted, finds every one;
    and the key columns the scan leaves out do hold keys it recognises."""
    material = story.material
    # the keys the story went through: the local CA, local certificates, ACME certificates and account(s)
    assert len(material.labels) >= 10, material.labels
    pems = story.pems
    assert sum(label.startswith("acme_accounts") for label in material.labels) >= 2   # registered again after -Z
    ca_only = []
    for pem in pems:
        try:
            serialization.load_pem_private_key(pem.encode(), DEMO_DB_PASS.encode() if "ENCRYPTED" in pem else None)
        except (TypeError, ValueError):
            ca_only.append(pem)
    assert ca_only and all(serialization.load_pem_private_key(p.encode(), DEMO_CA_PASS.encode()) for p in ca_only), \
        "the local CA's key (under its own passphrase) is among the keys looked for"
    clear = next(p for p in pems if "ENCRYPTED" not in p)
    encrypted = next(p for p in pems if "ENCRYPTED" in p)
    body = pem_body(clear)
    secret_piece = next(body[i:i + 41] for i in range(len(body) - 41) if body[i:i + B64_WINDOW] in material.b64)
    plants = {
        "a whole PEM": clear,
        "an encrypted PEM": encrypted,
        "a marker and the start of a key no one knows": "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBx",
        "41 characters of base64": f"DEBUG serverpki.handlers.distribute: writing {secret_piece}",
        "a JSON-escaped piece": json.dumps({"args": clear[30:200]}),
        "the passphrase": f"using passphrase {DEMO_DB_PASS}",
    }
    named = texts(story)
    for what, plant in plants.items():
        for name, text in list(named.items())[:: max(len(named) // 12, 1)] + [(k, named[k]) for k in story.logs]:
            lines = text.splitlines()
            planted = "\n".join(lines[:len(lines) // 2] + [plant] + lines[len(lines) // 2:])
            assert story.material.find(planted), f"{what} planted in {name} is not found"
    for what, plant in plants.items():
        rows = {"pki.jobs": [dict(story.rows["pki.jobs"][0], last_error=plant)]}
        assert scan_rows(material, rows)[0], f"{what} planted in a job's last_error is not found"
        rows = {"pki.jobs": [dict(story.rows["pki.jobs"][0], result={"files": [{"note": plant}]})]}
        assert scan_rows(material, rows)[0], f"{what} planted in a job's result is not found"
    if story.mails:
        assert material.find(story.mails[0] + "\n" + secret_piece)


# --------------------------------------------------------------------------- key files in the story, server side

def test_no_key_file_of_the_story_ever_had_group_or_other_bits(story, record_property):
    observed, violations, strays = 0, [], []
    for fqdn, lines in story.sftp.items():
        written, stray = parse_sftp(fqdn, lines)
        strays += stray
        holds_key = lambda host, path: story.files[host].get(path, (0, False))[1] or "key" in posixpath_name(path)
        violations += key_file_violations(written, holds_key)
        keys_written = {w.final for w in written if w.final and holds_key(fqdn, w.final)}
        observed += sum(1 for w in written if w.final and holds_key(fqdn, w.final))
        # every file on the host that holds a key was written through SFTP, under the log's eyes
        on_host = {p for p, (_, key) in story.files[fqdn].items() if key}
        assert on_host <= keys_written, f"{fqdn}: key files the log did not see written: {on_host - keys_written}"
        for path in on_host:
            assert story.files[fqdn][path][0] & GROUP_OTHER == 0, (fqdn, path, oct(story.files[fqdn][path][0]))
    assert violations == [], "\n".join(violations)
    assert strays == [], f"a chmod or chown of a file in place: {strays}"
    # the demo's key files: nginx (combine cacert, 0600), postfix in a jail (0400), the client's (0600): 6 at the
    # first deployment, 4 at the rollover, 2 for -C/-D, 3 rewritten by -K after tampering
    assert observed >= 15, observed
    record_property("key files observed", observed)
    print(f"\n{observed} writes of key files followed in the SFTP logs: created 0600, never group/other")


def posixpath_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


# =========================================================================== a lab of our own: modes and injection

HOSTS = ["keys.example.org", "jails.example.org"]
KINDS = ("issue_local", "issue_local_ca", "distribute")
MARKERS = "pwned"


@pytest.fixture(scope="module")
def lab():
    with SSHLab(HOSTS, sftp_log_level="INFO") as lab:
        logs = {fqdn: SftpLog(lab.host(fqdn).root) for fqdn in HOSTS}
        lab.sftp_logs = logs
        try:
            yield lab
        finally:
            for log in logs.values():
                log.close()


@pytest.fixture
def hosts(lab):
    """Every host up and emptied (its /tmp there, so that a stray `touch /tmp/...` would succeed), logs cleared."""
    lab.reset()
    for fqdn in HOSTS:
        log = lab.sftp_logs[fqdn]
        log.close()
        lab.sftp_logs[fqdn] = SftpLog(lab.host(fqdn).root)
        (lab.host(fqdn).root / "tmp").mkdir(mode=0o1777, exist_ok=True)
    return lab


@pytest.fixture
def agent(dsn, tmp_path, hosts):
    config = Config(
        ssh=SshConfig(**hosts.ssh_settings(), connect_timeout_seconds=3, command_timeout_seconds=5, max_parallel_hosts=2),
        paths=PathsConfig(db_encryption_key=_secret(tmp_path / "db.pass", "db pass")),
        x509=X509Config(country="DE", organization="Example e.V.", rsa_key_size=2048, ec_curve="secp256r1"),
        local_ca=LocalCAConfig(key_type="ec", key_size=256, passphrase_file=_secret(tmp_path / "ca.pass", "ca pass")),
    )
    with mock.patch.object(handler_registry, "load_all", lambda: {k: HANDLERS[k] for k in KINDS}):
        a = Agent(dsn, config, name="secrets-test", lease=60)
    a.lab_config = config
    yield a
    a.close()


def _issue_and_distribute(conn, agent, name: str) -> list[dict]:
    conn.execute("SELECT request_local_ca('Local CA', 'ec')")
    conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY[%s]))", (name,))
    assert agent.drain().all_succeeded
    jobs = [r[0] for r in conn.execute("SELECT job FROM request_distribute(selection(only_certs => ARRAY[%s])) "
                                       "WHERE job IS NOT NULL", (name,))]
    agent.drain()
    return conn.cursor(row_factory=dict_row).execute(
        "SELECT j.id, j.state::text, j.last_error, j.result, d.fqdn::text AS host FROM jobs j "
        "JOIN disthosts d ON d.id = j.disthost WHERE j.id = ANY(%s)", (jobs,)).fetchall()


def _markers(lab) -> list[str]:
    """The marker files a `touch /tmp/pwned...` (or `> /tmp/pwned...`) that ran would have left in a host's chroot
    (directories of that name are the literal paths of test values, made over SFTP)."""
    return sorted(f"{fqdn}:/{p.relative_to(lab.host(fqdn).root)}" for fqdn in HOSTS
                  for folder in ("tmp", ".", "root") for p in (lab.host(fqdn).root / folder).glob(f"{MARKERS}*")
                  if not p.is_dir())


def test_key_files_are_born_private_and_get_group_bits_only_as_configured_after_the_chown(conn, agent, hosts,
                                                                                            record_property):
    """Server side: every key file of every place layout, the default mode, 0600, 0440 and a group mode 0640
    (the operator's choice for a service's group), written, then rewritten by -K after tampering."""
    conn.execute("SELECT add_disthost(%s)", (HOSTS[0],))
    conn.execute("SELECT add_disthost(%s, '/usr/jails')", (HOSTS[1],))
    conn.execute("SELECT add_jail('mx', %s)", (HOSTS[1],))
    # name, type, cert_path, key_path, uid, gid, mode, chownboth, pglink
    places = {
        "sep": ("separate", "/etc/ssl/{}", "/etc/ssl/private", None, None, None, False, True),
        "ck": ("combine key", "/srv/ck", None, None, None, 384, False, False),
        "cc": ("combine cacert", "/srv/cc", None, 0, 80, 416, False, False),       # 0640, group 80
        "cb": ("combine both", "/srv/cb", None, 101, 102, 288, True, False),      # 0440, 101:102
    }
    for place, args in places.items():
        conn.execute("SELECT add_place(%s, %s, %s, %s, %s, %s, %s, %s, %s)", (place, *args))
    name = "www.example.org"
    conn.execute("SELECT * FROM add_cert(%s, 'server', 'local', 'rsa_plus_ec', false, NULL, NULL, NULL, NULL, NULL, NULL)",
                 (name,))
    for place in places:
        conn.execute("SELECT add_target(%s, %s, NULL, %s)", (name, HOSTS[0], place))
        conn.execute("SELECT add_target(%s, %s, 'mx', %s)", (name, HOSTS[1], place))
    jobs = _issue_and_distribute(conn, agent, name)
    assert {j["host"]: j["state"] for j in jobs} == {h: "done" for h in HOSTS}, jobs
    # tamper: a key file opened to everybody, another one's content changed; -K rewrites both
    web = hosts.host(HOSTS[0])
    open_key = web.path(f"/srv/ck/{name}_server_key_cert.pem")
    os.chmod(open_key, 0o666)
    web.path(f"/etc/ssl/private/{name}_server_ec_key.pem").write_text("tampered\n")
    consolidate = [r[0] for r in conn.execute("SELECT job FROM request_consolidate_certs(selection(only_certs => ARRAY[%s])) "
                                              "WHERE job IS NOT NULL", (name,))]
    assert agent.drain().all_succeeded
    drift = [d["path"] for r in conn.execute("SELECT result FROM jobs WHERE id = ANY(%s)", (consolidate,))
             for d in r[0]["drift"]]
    assert sorted(drift) == sorted([f"/srv/ck/{name}_server_key_cert.pem", f"/etc/ssl/private/{name}_server_ec_key.pem"])
    assert stat.S_IMODE(os.stat(open_key).st_mode) == 0o600   # the place's mode

    group_modes = {}
    for root in ("", "/usr/jails/mx"):
        for ec in ("", "ec_"):
            group_modes[f"{root}/srv/cc/{name}_server_{ec}key.pem"] = (80, 0o640)
            group_modes[f"{root}/srv/cb/{name}_server_key_{ec}cert_cacert.pem"] = (102, 0o440)
    observed, violations, strays = 0, [], []
    for fqdn in HOSTS:
        written, stray = parse_sftp(fqdn, hosts.sftp_logs[fqdn].text())
        strays += stray
        holds_key = lambda host, path: "key" in posixpath_name(path)
        violations += key_file_violations(written, holds_key, group_modes)
        keys = [w for w in written if w.final and holds_key(fqdn, w.final)]
        observed += len(keys)
        # every key file on the host: seen written, its final mode the place's
        on_host = {"/" + str(p.relative_to(hosts.host(fqdn).root)) for p in hosts.host(fqdn).root.rglob("*key*")
                   if p.is_file() and not p.is_symlink() and "PRIVATE KEY" in p.read_text()}
        assert on_host and on_host <= {w.final for w in keys}
        for w in keys:
            assert w.created_mode == 0o600 and "EXCL" in w.flags
        for path in on_host:
            mode = stat.S_IMODE(os.stat(hosts.host(fqdn).path(path)).st_mode)
            assert mode & 0o007 == 0 and (mode & 0o070 == 0 or path in group_modes), (path, oct(mode))
    assert violations == [], "\n".join(violations)
    assert strays == []
    # 2 algorithms x (sep key, ck key+cert, cc key, cb all) x 2 hosts, and the 2 rewritten by -K
    assert observed == 2 * 4 * 2 + 2, observed
    # the detector of violations works: a creation 0644, a chmod 0604, a group mode before the chown
    fake = [Written("h", "/t1", 0o644, "WRITE,CREATE,EXCL", [], "/k/a_key.pem"),
            Written("h", "/t2", 0o600, "WRITE,CREATE,EXCL", [("mode", 0o604)], "/k/b_key.pem"),
            Written("h", "/t3", 0o600, "WRITE,CREATE,EXCL", [("mode", 0o640), ("owner", (0, 80))], "/k/c_key.pem"),
            Written("h", "/t4", 0o600, "WRITE,CREATE", [("mode", 0o400)], "/k/d_key.pem"),
            Written("h", "/t5", 0o600, "WRITE,CREATE,EXCL", [("owner", (0, 80)), ("mode", 0o640)], "/k/e_key.pem")]
    found = key_file_violations(fake, lambda h, p: True, {"/k/c_key.pem": (80, 0o640), "/k/e_key.pem": (80, 0o640)})
    assert [v.split(":")[1] for v in found] == ["/k/a_key.pem (written as /t1)", "/k/b_key.pem (written as /t2)",
                                                "/k/c_key.pem (written as /t3)", "/k/d_key.pem (written as /t4)"], found
    record_property("key files observed", observed)
    print(f"\n{observed} key files followed in the SFTP logs")


SHELL_VALUES = ["mx;touch /tmp/pwned-{n}", "mx$(touch /tmp/pwned-{n})", "mx`touch /tmp/pwned-{n}`", "mx touch",
                "mx|touch /tmp/pwned-{n}", "mx&&touch /tmp/pwned-{n}", "'mx'", "mx\ntouch /tmp/pwned-{n}", "mx>/tmp/pwned-{n}",
                "../../tmp/pwned-{n}", "mx/../../pwned-{n}", "$HOME", "-rf"]


def test_names_with_shell_or_path_characters_are_refused_by_sql(conn):
    """Jail, disthost, place and certificate (server and client) names, alt names: refused with our SQLSTATE,
    through the functions and through plain SQL."""
    conn.execute("SELECT add_disthost('jails.example.org', '/usr/jails')")
    conn.execute("SELECT add_jail('mx', 'jails.example.org')")
    conn.execute("SELECT add_place('nginx', 'separate', '/etc/nginx')")
    conn.execute("SELECT * FROM add_cert('www.example.org', 'server', 'local', 'rsa', false, NULL, NULL, NULL, NULL, NULL, NULL)")
    statements = []
    for n, template in enumerate(SHELL_VALUES):
        v = template.format(n=n)
        host = v.replace("mx", "web1.example.org", 1)
        statements += [
            ("SELECT add_jail(%s, 'jails.example.org')", (v,)),
            ("UPDATE jails SET name = %s WHERE name = 'mx'", (v,)),
            ("SELECT add_disthost(%s)", (host,)),
            ("UPDATE disthosts SET fqdn = %s WHERE fqdn = 'jails.example.org'", (host,)),
            ("SELECT add_place(%s, 'separate', '/etc/x')", (v,)),
            ("SELECT * FROM add_cert(%s, 'server', 'local', 'rsa', false, NULL, NULL, NULL, NULL, NULL, NULL)", (host,)),
            ("SELECT * FROM add_cert(%s, 'client', 'local', 'ec', false, NULL, NULL, NULL, NULL, NULL, NULL)", (v,)),
            ("SELECT add_altname('www.example.org', %s)", (host,)),
            ("UPDATE subjects SET name = %s WHERE name = 'www.example.org'", (host,)),
        ]
    codes = {}
    for sql, params in statements:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql, params)
        state = info.value.diag.sqlstate
        assert state and state.startswith("SP"), (sql, params, state, info.value.diag.message_primary)
        codes[state] = codes.get(state, 0) + 1
    print(f"\n{len(statements)} names refused: {codes}")


def test_no_configuration_value_runs_a_command_on_the_host(conn, agent, hosts):
    """Paths may hold any printable character (they are SFTP paths, never shell words); the jail name in a
    reload command is quoted. Marker files would show a command that ran; the operator's own reload
    command shows that the probe sees one that did."""
    nasty = "/srv/a;touch /tmp/pwned-1/b$(touch /tmp/pwned-2)/c`touch /tmp/pwned-3`/d|touch /tmp/pwned-4&e'f\"g"
    conn.execute("SELECT add_disthost(%s, %s)", (HOSTS[1], "/usr/jails;touch /tmp/pwned-5"))
    conn.execute("SELECT add_jail('mx.a@b-1', %s)", (HOSTS[1],))
    conn.execute("SELECT add_disthost(%s)", (HOSTS[0],))
    # name, type, cert_path, key_path, uid, gid, mode, chownboth, pglink, reload_command
    conn.execute("SELECT add_place('p1', 'separate', %s, %s, NULL, NULL, NULL, false, true, %s)",
                 (nasty + "/{}", "/srv/key $(touch /tmp/pwned-6) `touch /tmp/pwned-7`",
                  "echo \"jail={}\" >> /tmp/reloads; echo {} >> /tmp/reloads"))
    conn.execute("SELECT add_place('control', 'cert only', '/srv/control', NULL, NULL, NULL, NULL, false, false, "
                 "'touch /tmp/pwned-control-{}')")
    name = "www.example.org"
    conn.execute("SELECT * FROM add_cert(%s, 'server', 'local', 'ec', false, NULL, NULL, NULL, NULL, NULL, NULL)", (name,))
    conn.execute("SELECT add_target(%s, %s, 'mx.a@b-1', 'p1')", (name, HOSTS[1]))
    conn.execute("SELECT add_target(%s, %s, NULL, 'p1')", (name, HOSTS[0]))
    conn.execute("SELECT add_target(%s, %s, NULL, 'control')", (name, HOSTS[0]))
    jobs = _issue_and_distribute(conn, agent, name)
    assert {j["host"]: j["state"] for j in jobs} == {h: "done" for h in HOSTS}, [j["last_error"] for j in jobs]
    # the files are where the literal paths say
    jail = hosts.host(HOSTS[1])
    cert_dir = jail.path(f"/usr/jails;touch /tmp/pwned-5/mx.a@b-1{nasty}/{name}")
    assert (cert_dir / f"{name}_server_ec_cert.pem").is_file()
    assert jail.path(f"/usr/jails;touch /tmp/pwned-5/mx.a@b-1/srv/key $(touch /tmp/pwned-6) `touch /tmp/pwned-7`/"
                     f"{name}_server_ec_key.pem").is_file()
    assert hosts.host(HOSTS[0]).path(f"{nasty}/{name}/{name}_server_ec_cert.pem").is_file()
    # the reload commands ran as written, the jail name one word; nothing else ran: only the control's marker
    assert jail.path("/tmp/reloads").read_text() == "jail=mx.a@b-1\nmx.a@b-1\n"
    # without a jail {} is '' (quoted: inside the operator's double quotes it stays two quote characters)
    assert hosts.host(HOSTS[0]).path("/tmp/reloads").read_text() == "jail=''\n\n"
    assert _markers(hosts) == [f"{HOSTS[0]}:/tmp/pwned-control-"], _markers(hosts)


def test_the_reload_command_quotes_a_jail_name_that_bypassed_validation(agent, hosts):
    """Defence in depth: were a jail name with shell characters in the database (validation bypassed), the
    distribute handler's plan still passes it to the remote shell as one quoted word."""
    rows = []
    for n, template in enumerate(SHELL_VALUES):
        rows.append({"target": n, "fqdn": HOSTS[1], "jailroot": "/usr/jails", "jail": template.format(n=n),
                     "place": f"p{n}", "cert_file_type": "cert only", "cert_path": f"/srv/p{n}", "key_path": None,
                     "uid": None, "gid": None, "mode": None, "chownboth": False, "pglink": False,
                     "reload_command": f"printf '%s\\n' {{}} > /tmp/arg-{n}; echo {{}} >> /tmp/all", "subject": "x.example.org",
                     "subject_type": "server", "cert_type": "local", "instance": 1, "algo": "ec", "file_name_algo": "ec", "key_file_format": "pkcs8",
                     "cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "key": None,
                     "cacert": "", "chain": ""})
    plan = distribute_handler.build_plan(rows, lambda pem: pem)
    assert len(plan.reloads) == len(SHELL_VALUES)
    with sshclient.connect(HOSTS[1], agent.lab_config.ssh) as c:
        results = distribute_handler.run_reloads(c, plan, None)
    assert all(r["exit"] == 0 for r in results), results
    root = hosts.host(HOSTS[1])
    for n, template in enumerate(SHELL_VALUES):
        assert root.path(f"/tmp/arg-{n}").read_text() == template.format(n=n) + "\n", n
    assert _markers(hosts) == []

