"""Hostile input on the command line: the real operate_serverPKI, run as a process.

Bad options, bad combinations, unknown or hostile certificate and disthost
names, bad -E / -r values and unreadable or broken configuration files must
each end in one line on stderr (no traceback, no framed box), exit status 2,
and nothing done: the configuration, the instances, the job queue and the
event history exactly as before.

Tests run as root, for whom chmod 000 does not make a file unreadable; an
unreadable configuration is therefore a directory, a missing file, a file
that is not UTF-8, not TOML, or TOML of the wrong shape (the unreadable-by-mode
case runs only when the tests do not run as root).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from helpers import snapshot
from strategies import HOSTILE, host_names, hostile, huge, simple_names

EXAMPLES = 30  # each example starts a process (~0.5 s)
COUNTS: Counter = Counter()
PROGRAM = Path(sys.executable).with_name("operate_serverPKI")
COMMAND = [str(PROGRAM)] if PROGRAM.exists() else [sys.executable, "-m", "serverpki.operate"]


class Cli:
    """The module's database with a small configuration, the configuration file and the environment."""

    def __init__(self, conn: psycopg.Connection, env: dict[str, str], workdir: Path):
        self.conn, self.env, self.workdir = conn, env, workdir

    def __repr__(self) -> str:
        return "Cli(...)"

    def state(self):
        """Everything an action could change: configuration, instances, jobs, events, deployments."""
        counts = self.conn.execute("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM events), "
                                   "(SELECT count(*) FROM deployments)").fetchone()
        return snapshot(self.conn), counts

    def run(self, *args, env: dict | None = None, under: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        argv = [os.fsencode(a) if isinstance(a, str) else a for a in (*under, *COMMAND, *args)]
        return subprocess.run(argv, env={**self.env, **(env or {})}, capture_output=True, cwd=self.workdir, timeout=120)

    def refused(self, *args, env: dict | None = None, match: str = "", under: tuple[str, ...] = ()) -> str:
        """Run with args (under a wrapper command, if given); assert one line on stderr, exit status 2,
        nothing on stdout, nothing done."""
        before = self.state()
        result = self.run(*args, env=env, under=under)
        COUNTS["runs"] += 1
        err = result.stderr.decode("utf-8", "replace")
        assert result.returncode == 2, f"exit status {result.returncode} for {args!r}: {err[-2000:]}"
        assert "Traceback" not in err and "╭" not in err, err[-2000:]
        assert err.endswith("\n") and err.count("\n") == 1, f"not one line for {args!r}: {err[-2000:]!r}"
        assert err.startswith("operate_serverPKI: "), err[:200]
        assert result.stdout == b"", result.stdout[:500]
        if match:
            assert match in err, err[:2000]
        assert self.state() == before, f"{args!r} changed the database"
        assert not (self.workdir / "work").exists(), f"{args!r} wrote to the work directory"  # where -E exports
        return err


@pytest.fixture(scope="module")
def cli(pg_server, template_db, tmp_path_factory):
    name = pg_server.new_database(template_db, "c_")
    try:
        with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
            conn.execute("SELECT add_disthost('web1.example.org')")
            conn.execute("SELECT add_place('nginx', 'separate', '/etc/ssl')")
            conn.execute("SELECT * FROM add_cert('www.example.org', 'server', 'LE', 'ec', false, 'example.org', "
                         "'https', 443, 'web1.example.org', NULL, 'nginx')")
            conn.execute("SELECT * FROM add_cert('client1', 'client', 'local', 'rsa', false, NULL, NULL, NULL, "
                         "'web1.example.org', NULL, 'nginx')")
            workdir = tmp_path_factory.mktemp("hostile-cli")
            config = workdir / "serverpki.toml"
            config.write_text('[logging]\nsyslog_address = ""\n[paths]\nwork_dir = "work"\n')
            env = {**os.environ, **pg_server.env(name), "SERVERPKI_CONFIG": str(config)}
            env.pop("PGPASSFILE", None)
            yield Cli(conn, env, workdir)
    finally:
        pg_server.drop_database(name)
        print(f"\nhostile CLI: {COUNTS['runs']} refused runs of operate_serverPKI "
              f"({COUNTS['hypothesis']} of them hypothesis examples)")


def test_a_good_run_still_works(cli):
    """The harness itself: a valid check-only run exits 0 (so the refusals below are not an artefact)."""
    result = cli.run("-n", "-o", "www.example.org")
    assert result.returncode == 0, result.stderr.decode()


BAD_OPTIONS = [
    ["-W"], ["--frobnicate=1"], ["-o"], ["-f"], ["-S", "extra"], ["--onl=www.example.org", "-S"], ["-SW"],
    ["-r", "abc", "-n"], ["-r", "1.5", "-C"], ["-r", "-5", "-n"], ["-r", "3651", "-C"], ["-r", "99999999999999999999", "-n"],
]


@pytest.mark.parametrize("args", BAD_OPTIONS, ids=" ".join)
def test_bad_options(cli, args):
    cli.refused(*args)


BAD_COMBINATIONS = [
    (["-E", "3", "-n"], "-E (export) may not be combined"),
    (["-Z", "-C"], "-Z (register) may not be combined"),
    (["-X", "-Y"], "contradict"),
    (["-r", "5", "-S"], "-r REMAINING_DAYS goes with"),   # -r 5 alone is -C -r 5
    (["-r", "5", "-T"], "-r REMAINING_DAYS goes with"),
    (["-E", "3", "-r", "5"], "-E (export) may not be combined"),
    ([], "no action given"),
    (["-a", "-v"], "no action given"),
    (["-S", "-s", "web1.example.org", "-l", "WEB1.example.org"], "both skipped (-s) and the only ones (-l)"),
]


@pytest.mark.parametrize("args, message", BAD_COMBINATIONS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_bad_combinations(cli, args, message):
    cli.refused(*args, match=message)


UNKNOWN_NAMES = [
    (["-S", "-o", "nosuch.example.org"], 'unknown certificate(s) "nosuch.example.org"'),
    (["-C", "-i", "nosuch"], 'unknown certificate(s) "nosuch"'),
    (["-D", "-e", "example.org"], 'unknown certificate(s) "example.org"'),  # an alt name is not a certificate name
    (["-K", "-s", "nohost.example.org"], 'unknown disthost(s) "nohost.example.org"'),
    (["-T", "-l", "www.example.org"], 'unknown disthost(s) "www.example.org"'),  # a certificate is not a disthost
    (["-n", "-v", "-o", "nosuch"], 'unknown certificate(s) "nosuch"'),
    (["-n", "-r", "30", "-l", "nohost"], 'unknown disthost(s) "nohost"'),
    (["-S", "-o", "a\nb"], 'unknown certificate(s) "a\\nb"'),
    (["-S", "-o", "$(reboot)", "-s", "`reboot`"], 'unknown certificate(s) "$(reboot)"'),
    (["-S", "--only=-rf"], 'unknown certificate(s) "-rf"'),
    (["-S", "-o", ""], 'unknown certificate(s) ""'),
    (["-S", "-o", "\u202ewww.example.org"], "\\u202e"),
    (["-S", "-o", "x" * 100_000], "unknown certificate(s)"),
    (["-S", "-o", b"\xff\xfe"], "is not valid UTF-8"),
    (["-E", "abc"], "CERT_SERIAL is the number"),
    (["-E", "\u00b2"], "CERT_SERIAL is the number"),
    (["-E", "-1"], "CERT_SERIAL is the number"),
    (["-E", "1"], "no instance with that serial"),
    (["-E", "1" * 5000], "no instance with that serial"),  # beyond Python's 4300 digits for int()
]


@pytest.mark.parametrize("args, message", UNKNOWN_NAMES, ids=lambda a: repr(a)[:60] if isinstance(a, list) else "")
def test_unknown_names(cli, args, message):
    cli.refused(*args, match=message)


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


CONFIGS = [
    (lambda d: d / "missing.toml", "No such file or directory"),
    (lambda d: d, "Is a directory"),
    (lambda d: _write(d / "bad.toml", b"[database\n"), "is not valid TOML"),
    (lambda d: _write(d / "latin1.toml", b'[x509]\norganization = "M\xfcller"\n'), "is not UTF-8"),
    (lambda d: _write(d / "types.toml", b"[database]\ndsn = 5\n"), "[database] dsn: must be a string"),
    (lambda d: _write(d / "section.toml", b"[databse]\n"), "unknown section"),
    (lambda d: _write(d / "key.toml", b"[agent]\nleese_seconds = 5\n"), "unknown key"),
    (lambda d: _write(d / "range.toml", b"[agent]\nlease_seconds = -1\n"), "must be a positive number"),
    (lambda d: _write(d / "table.toml", b"database = 1\n"), "must be a table"),
    (lambda d: _write(d / "dsn.toml", b'[database]\ndsn = "host=\'unterminated"\n'), "not a libpq connection string"),
    (lambda d: _write(d / "nul.toml", b"[logging]\nlevel = \"info\x00\"\n"), "is not valid TOML"),
    (lambda d: _write(d / "huge.toml", b"[x509]\nstate = \"" + b"a" * 1_000_000 + b"\n"), "is not valid TOML"),
]


# every broken file with -f; the first three (missing, a directory, not TOML) also through $SERVERPKI_CONFIG
@pytest.mark.parametrize("make, message, how", [(*c, "-f") for c in CONFIGS] + [(*c, "SERVERPKI_CONFIG") for c in CONFIGS[:3]])
def test_unreadable_or_broken_config(cli, tmp_path, make, message, how):
    path = make(tmp_path)
    if how == "-f":
        err = cli.refused("-n", "-f", str(path), match=message)
    else:
        err = cli.refused("-n", env={"SERVERPKI_CONFIG": str(path)}, match=message)
    assert str(path) in err


# root reads a file of mode 000 anyway: as root, the run loses the capabilities that let it
NO_DAC = ("setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search") \
    if os.geteuid() == 0 else ()


def test_config_without_read_permission(cli, tmp_path):
    path = tmp_path / "secret.toml"
    path.write_text("[agent]\n")
    path.chmod(0)
    cli.refused("-n", "-f", str(path), match="is not readable", under=NO_DAC)
    cli.refused("-n", env={"SERVERPKI_CONFIG": str(path)}, match="Permission denied", under=NO_DAC)


# --------------------------------------------------------------------------- hypothesis: hostile option values

LONG = {"-o": "--only", "-e": "--exclude", "-i": "--include", "-s": "--skip-disthost", "-l": "--limit-to-disthost",
        "-E": "--export-cert-and-key", "-r": "--renew-local-certs", "-f": "--config-file"}
KNOWN = {"www.example.org", "client1", "web1.example.org"}
# at most 100,000 characters of at most 3 bytes: one argument may have 128 KiB (MAX_ARG_STRLEN)
values = hostile(st.one_of(host_names(), simple_names), huge([64, 254, 1025, 10_001, 40_000]))


@settings(HOSTILE, max_examples=EXAMPLES)
@given(option=st.sampled_from(sorted(LONG)), value=values,
       action=st.sampled_from([["-S"], ["-C"], ["-D"], ["-K"], ["-T"], ["-R"], ["-n"], ["-n", "-v"], ["-S", "-n"]]),
       long_form=st.booleans())
def test_hostile_option_values(cli, option, value, action, long_form):
    """Any text as the value of an option that takes one: refused on one line with status 2, nothing done."""
    assume(value.lower() not in KNOWN)  # a known name is a valid request, not a hostile one
    if option == "-r":  # a valid number of days makes -r valid with -C, -D and -n
        try:
            days = int(value)
        except ValueError:
            days = None
        assume(days is None or not 0 <= days <= 3650 or action == ["-S"])
    if option == "-f":
        assume(not os.path.isfile(os.path.join(cli.workdir, value)))
    if option == "-E":
        action = []
    args = [*action, f"{LONG[option]}={value}"] if long_form or value.startswith("-") else [*action, option, value]
    COUNTS["hypothesis"] += 1
    cli.refused(*args)
