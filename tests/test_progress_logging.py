"""What an operator sees of a run: operate_serverPKI as the cron role on a lab (sshd disthosts, BIND 9),
with stderr on a real pseudo-terminal or on a pipe.

On a terminal a progress bar shows the jobs done of a total that grows as follow-up jobs are
enqueued, and every log line appears whole above it; on a pipe, and with -q, there is no bar;
-q prints nothing but errors. Each log line of a job names its certificate and its disthost, and
a DNS wait names the records, the owner, the servers and the timeout, and says when they were seen.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import re
import struct
import subprocess
import sys
import termios
import threading

import dns.name
import dns.rdatatype
import pytest

from helpers import need_root
from lab import roles
from lab.bind import BindLab
from lab.lab import secret
from lab.sshd import SSHLab
from serverpki import dnsupdate
from serverpki import log as log_module
from serverpki.handlers import Job
from serverpki.log import ProgressBar, setup_logging
from serverpki.config import Config, LoggingConfig

ZONE = "progress.serverpki.test"
WEB1, WEB2 = f"web1.{ZONE}", f"web2.{ZONE}"
CERTS = (f"www.{ZONE}", f"mail.{ZONE}", f"api.{ZONE}")
TLSA_CERT = CERTS[0]
BAR_GLYPHS = "━╸╺"
# the control sequences the bar is drawn with: colours and the cursor's hiding change no position;
# erasing a line and moving the cursor do
STYLE = re.compile(r"\x1b\[(?:[0-9;]*m|\?25[lh])")
MOVE = re.compile(r"\x1b\[[0-9;]*[A-HJK]")


# --------------------------------------------------------------------------- the lab and its world

@pytest.fixture(scope="module")
def peers():
    need_root("the SSH lab's sshd chroots each disthost")
    with BindLab(zones=(ZONE,)) as bind, SSHLab([WEB1, WEB2]) as ssh:
        yield bind, ssh


@pytest.fixture
def world(peers, pg_server, dbname, conn, tmp_path) -> dict[str, str]:
    """Three local server certificates on two disthosts, one with TLSA records in BIND, the local CA
    made; returns the environment of operate_serverPKI as the cron role."""
    bind, ssh = peers
    ssh.reset()
    bind.reset()
    config = tmp_path / "serverpki.toml"
    settings = {
        "local_ca": {"passphrase_file": secret(tmp_path / "ca.pass", "ca pass"), "key_type": "ec", "key_size": 256},
        "x509": {"ec_curve": "secp256r1"},
        "ssh": {**{k: str(v) for k, v in ssh.ssh_settings().items()}, "connect_timeout_seconds": 3,
                "command_timeout_seconds": 5},
        "dns": {"tsig_key_file": str(bind.key_file), "primary": bind.primary, "propagation_timeout_seconds": 10},
        "logging": {"syslog_address": ""},
    }
    config.write_text("".join(f"[{section}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())
                              for section, keys in settings.items()))
    for host in (WEB1, WEB2):
        conn.execute("SELECT add_disthost(%s)", (host,))
    conn.execute("SELECT add_place('nginx', 'separate', '/etc/nginx/ssl')")
    for n, name in enumerate(CERTS):
        service = ("'https'", "443") if name == TLSA_CERT else ("NULL", "NULL")
        conn.execute(f"SELECT * FROM add_cert(%s, 'server', 'local', 'ec', false, NULL, {service[0]}, {service[1]}, "
                     "%s, NULL, 'nginx')", (name, (WEB1, WEB2)[n % 2]))
    conn.execute("SELECT add_target(%s, %s, NULL, 'nginx')", (CERTS[0], WEB2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(pg_server.env(dbname, roles.CRON), SERVERPKI_CONFIG=str(config), TERM="xterm-256color",
               COLUMNS="120", LINES="40")
    env.pop("NO_COLOR", None), env.pop("FORCE_COLOR", None)
    made = cli(env, "-I")
    assert made.returncode == 0, made.stderr
    return env


def _toml(value) -> str:
    return str(value) if isinstance(value, int) else '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """operate_serverPKI with stdout and stderr on pipes."""
    return subprocess.run([sys.executable, "-m", "serverpki.operate", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def on_terminal(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """operate_serverPKI as a person at a terminal runs it: stderr on a pseudo-terminal of 120 x 40, stdout
    on a pipe (to tell them apart); (exit status, stdout, every byte the terminal received)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    received = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:   # EIO: every writer closed the terminal
                return
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    try:
        try:
            proc = subprocess.Popen([sys.executable, "-m", "serverpki.operate", *args], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                                    start_new_session=True)
        finally:
            os.close(slave)   # ours closed: the reader sees the end when the command's is
        reader.start()
        out, _ = proc.communicate(timeout=300)
        reader.join(timeout=30)
    finally:
        os.close(master)
    return proc.returncode, out.decode(), received.decode("utf-8", "replace")


def fragments(terminal: str) -> list[str]:
    """What the terminal received, cut where the cursor went back to the start of a line or down one:
    each piece is one drawing of the bar or one log line (its colours removed)."""
    text = MOVE.sub("\r", STYLE.sub("", terminal))
    assert "\x1b" not in text, f"a control sequence the bar does not use: {text!r}"
    return [piece for piece in re.split(r"\r\n|\r|\n", text) if piece.strip()]


def bar_totals(pieces: list[str], label: str) -> list[tuple[int, int]]:
    """(done, total) of every drawing of the bar named label."""
    found = []
    for piece in pieces:
        if piece.lstrip().startswith(label):
            match = re.search(r" (\d+)/(\d+) ", piece)
            assert match, f"a bar without done/total: {piece!r}"
            found.append((int(match[1]), int(match[2])))
    return found


def job_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("job ")]


def jobs_done(conn) -> list[tuple[str, str | None, str | None]]:
    return conn.execute("SELECT j.kind, s.name::text, d.fqdn::text FROM jobs j "
                        "LEFT JOIN subjects s ON s.certificate = j.certificate AND NOT s.isaltname "
                        "LEFT JOIN disthosts d ON d.id = j.disthost WHERE j.state = 'done' ORDER BY j.id").fetchall()


# --------------------------------------------------------------------------- the tests

def test_a_terminal_shows_the_bar_with_its_growing_total_and_each_log_line_whole_above_it(world, conn):
    status, out, terminal = on_terminal(world, "-C", "-D", "-a")
    assert status == 0, terminal
    assert out == ""
    done = jobs_done(conn)
    kinds = [kind for kind, _, _ in done]
    assert kinds.count("issue_local") == len(CERTS) and kinds.count("distribute") == len(CERTS) + 1, done
    assert kinds.count("publish_tlsa") == 1, done
    pieces = fragments(terminal)
    # -C: the three issue jobs; -D: the four distribute jobs at first, then the TLSA job that deploying
    # the first instance of www enqueued
    issued = bar_totals(pieces, "-C jobs")
    assert issued[0] == (0, 3) and issued[-1] == (3, 3), issued
    distributed = bar_totals(pieces, "-D jobs")
    assert distributed[0] == (0, 4) and distributed[-1] == (5, 5), distributed
    totals = [total for _, total in distributed]
    assert totals == sorted(totals) and 4 in totals and 5 in totals, totals
    # every other piece is a log line, whole: no bar glyph in it, nothing of the bar before or after it
    lines = [piece for piece in pieces if not piece.startswith(("-C jobs", "-D jobs"))]
    for line in lines:
        assert not any(glyph in line for glyph in BAR_GLYPHS), line
        assert re.match(r"(-C: |-D: |job \d+ )", line), line
    # each job's line names its certificate and disthost, and comes whole, once
    said = "\n".join(lines)
    for kind, cert, host in done[1:]:   # not -I's job (the local CA, made before)
        wanted = f" {kind} {cert}" + (f" -> {host}" if host else "") + ": done"
        assert sum(line.endswith(wanted) for line in lines) == 1, (wanted, said)
    assert "-C: 3 job(s): 3 done" in lines and "-D: 5 job(s): 5 done" in lines, said


def test_with_stderr_on_a_pipe_there_is_no_bar_and_the_same_lines(world, conn):
    run = cli(world, "-C", "-D", "-a")
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert "\r" not in run.stderr and "\x1b" not in run.stderr and not any(g in run.stderr for g in BAR_GLYPHS)
    done = jobs_done(conn)
    assert len(done) == 1 + 3 + 4 + 1, done
    for kind, cert, host in done[1:]:
        wanted = f" {kind} {cert}" + (f" -> {host}" if host else "") + ": done"
        assert sum(line.endswith(wanted) for line in job_lines(run.stderr)) == 1, (wanted, run.stderr)


def test_a_dns_wait_names_the_records_the_owner_the_servers_and_when_they_were_seen(world, peers):
    bind, _ = peers
    run = cli(world, "-C", "-D", "-a")
    assert run.returncode == 0, run.stderr
    owner = re.escape(f"_443._tcp.{TLSA_CERT}.")
    job = rf"job \d+ publish_tlsa {re.escape(TLSA_CERT)}"
    waits = [line for line in run.stderr.splitlines() if " waiting up to " in line]
    assert len(waits) == 1, run.stderr
    # the record (a TLSA hash is public), the owner, every server asked, the timeout, the zone
    assert re.fullmatch(rf"{job}: waiting up to 10 s for TLSA 3 [01] [12] [0-9a-f]{{64}} only at {owner} "
                        rf"on 127\.0\.0\.1:{bind.port} \(zone {re.escape(ZONE)}\.\)", waits[0]), waits[0]
    seen = [line for line in run.stderr.splitlines() if " seen on " in line]
    assert len(seen) == 1, run.stderr
    assert re.fullmatch(rf"{job}: TLSA records at {owner} seen on 127\.0\.0\.1:{bind.port} after \d+\.\d s",
                        seen[0]), seen[0]
    lines = run.stderr.splitlines()
    assert lines.index(waits[0]) < lines.index(seen[0])


def test_quiet_prints_only_errors_and_nothing_at_all_when_the_run_succeeds(world, peers, conn):
    _, ssh = peers
    ssh.host(WEB2).stop()          # its distribute jobs fail, to be retried later
    try:
        failing = cli(world, "-C", "-D", "-q", "-a")
        assert failing.returncode == 1 and failing.stdout == "", failing
        assert_only_errors(failing.stderr)
        # the cron run when the retries are due: -S runs the failed jobs of its selection
        later = {**world, "PGOPTIONS": f"-c pki.now={hours_later(conn, 2)}"}
        failing = cli(later, "-S", "-q", "-a")
        assert failing.returncode == 1 and failing.stdout == "", failing
        assert_only_errors(failing.stderr)
    finally:
        ssh.host(WEB2).start()
    # the host is back: the next cron run succeeds and says nothing at all, not even on a terminal
    later = {**world, "PGOPTIONS": f"-c pki.now={hours_later(conn, 4)}"}
    assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'failed'").fetchone()[0] == 2
    status, out, terminal = on_terminal(later, "-S", "-q", "-a")
    assert (status, out, terminal) == (0, "", "")
    assert conn.execute("SELECT count(*) FROM jobs WHERE state <> 'done'").fetchone()[0] == 0


def hours_later(conn, hours: int) -> str:
    """The database's clock moved forward (pki.now through PGOPTIONS, as tests/fleet.py does)."""
    return conn.execute("SELECT to_char((now() + make_interval(hours => %s)) AT TIME ZONE 'UTC', "
                        "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')", (hours,)).fetchone()[0]


def assert_only_errors(stderr: str) -> None:
    """Every line an error; those of the failed jobs name the certificate and the disthost WEB2."""
    lines = stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), stderr
    for cert in (CERTS[0], CERTS[1]):
        assert any(re.match(rf"error: job \d+ distribute {re.escape(cert)} -> {re.escape(WEB2)}: ", line)
                   for line in lines), stderr


# --------------------------------------------------------------------------- the parts, without the lab

def test_a_job_is_named_by_its_certificate_and_disthost_on_one_line():
    job = Job(12, "distribute", 3, 7, 2, None, {}, 1, 5, "token", "www.example.com", "web1.example.com")
    assert job.label == "job 12 distribute www.example.com -> web1.example.com"
    assert Job(13, "publish_tlsa", 3, None, None, "example.com", {}, 1, 5, None, "www.example.com").label == \
        "job 13 publish_tlsa www.example.com in zone example.com"
    assert Job(14, "mail_reminder", None, None, None, None, {}, 1, 5).label == "job 14 mail_reminder"
    # the names unknown (a job claimed by an older query): the ids
    assert Job(15, "distribute", 3, 7, 2, None, {}, 1, 5).label == "job 15 distribute certificate 3 -> disthost 2"
    # a name cannot break the log line
    forged = Job(16, "distribute", 3, 7, 2, None, {}, 1, 5, None, "www\nerror: forged", "web1\r\x1b[2J")
    assert "\n" not in forged.label and "\r" not in forged.label and "\x1b" not in forged.label
    assert forged.label == "job 16 distribute www\\nerror: forged -> web1\\r\\x1b[2J"


def test_a_challenge_wait_names_its_tokens_and_a_removal_the_empty_rrset():
    owner = dns.name.from_text(f"_acme-challenge.{CERTS[0]}")
    assert dnsupdate._records_text(dns.rdatatype.TXT, {owner: {'"tok-1"', '"tok-2"'}}, exactly=False) == \
        f'TXT "tok-1" + "tok-2" at {owner}'
    assert dnsupdate._records_text(dns.rdatatype.TLSA, {owner: set()}, exactly=True) == f"no TLSA record at {owner}"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def logs(monkeypatch):
    """setup_logging undone after the test: our handlers off the root logger, the levels and -q back."""
    root, ours = logging.getLogger(), logging.getLogger("serverpki")
    levels = root.level, ours.level
    monkeypatch.setattr(log_module, "_show_progress", log_module._show_progress)
    yield Config(logging=LoggingConfig(syslog_address=""))
    for handler in [h for h in root.handlers if getattr(h, "_serverpki", False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


def test_no_bar_off_a_terminal_with_q_or_without_work(logs, monkeypatch):
    setup_logging(logs)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with ProgressBar("jobs", 3) as bar:
        bar.advance()
    assert not bar.shown and sys.stderr.getvalue() == ""
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with ProgressBar("jobs", 0) as bar:   # nothing to do
        pass
    assert not bar.shown
    setup_logging(logs, quiet=True)
    with ProgressBar("jobs", 3) as bar:
        bar.advance()
    assert not bar.shown and terminal.getvalue() == ""
    setup_logging(logs)
    with ProgressBar("jobs", 3) as bar:
        assert bar.shown and log_module._live_console is not None   # the log lines go through the bar's console
    assert log_module._live_console is None
