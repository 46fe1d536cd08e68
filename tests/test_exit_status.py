"""The exit statuses cron acts on (docs/cli.md, errors.ExitStatus), each produced for real by the commands
run as processes under their login roles: 0 success, 1 a job failed, 2 usage error, 3 database unreachable
or schema incompatible, 4 -n found configuration problems (warnings do not count)."""

from __future__ import annotations

import socket

import psycopg
import pytest

from commands import OPERATE, SERVERPKI, environment, one_warning, run
from helpers import small_cli_world
from lab import roles
from serverpki.errors import ExitStatus

FUTURE = "9999_from_a_newer_release"


@pytest.fixture
def cli(pg_server, dbname, conn, tmp_path):
    """c1 (a local certificate with a target) in a fresh database; the environments of the cron run and the
    monitoring login."""
    config = small_cli_world(conn, tmp_path)
    return {role: environment(pg_server, dbname, role, config) for role in (roles.CRON, roles.READER, roles.OPERATOR)}


def one_line(done, program: str = "operate_serverPKI") -> str:
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"{program}: ") and "Traceback" not in err, done.stderr
    return err


def test_the_statuses_are_those_of_the_documented_table(repo_root):
    table = (repo_root / "docs" / "cli.md").read_text().split("## Exit statuses", 1)[1]
    documented = {int(line.split("|")[1]) for line in table.splitlines() if line[:3] in {f"| {n}" for n in range(10)}}
    assert documented == {int(status) for status in ExitStatus} == {0, 1, 2, 3, 4}


def test_0_when_every_job_succeeded(cli):
    assert run(OPERATE, "-I", env=cli[roles.CRON]).returncode == 0
    done = run(OPERATE, "-C", "-o", "c1", env=cli[roles.CRON])
    assert done.returncode == 0, done.stderr


def test_1_when_a_job_failed(cli, conn):
    # no local CA: the issue job gives up (dead), the run says so
    done = run(OPERATE, "-C", "-o", "c1", env=cli[roles.CRON])
    assert done.returncode == 1, done.stderr
    assert "no local CA" in done.stderr
    assert conn.execute("SELECT kind, state FROM jobs").fetchall() == [("issue_local", "dead")]


@pytest.mark.parametrize("args, message", [
    (["-W"], "No such option"),                                          # a bad option
    (["-X", "-Y"], "contradict"),                                        # a bad combination
    (["-S", "-o", "nosuch"], 'SP024: unknown certificate(s) "nosuch"'),  # a bad selection
    (["-S", "--json"], "--json goes with the listings of -n: -n [-v], -S -n, -r N -n, -D -r N -n"),
    (["-C", "--json"], "--json goes with"),
])
def test_2_for_a_usage_error_and_nothing_done(cli, conn, args, message):
    done = run(OPERATE, *args, env=cli[roles.CRON])
    assert done.returncode == 2, done.stderr
    assert message in one_line(done) and done.stdout == ""
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


def test_2_for_a_bad_configuration_file(cli, tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("[database\n")
    done = run(OPERATE, "-n", "-f", str(bad), env=cli[roles.CRON])
    assert done.returncode == 2 and str(bad) in one_line(done)


@pytest.mark.parametrize("args, message", [
    (["jobs", "--state", "nosuch"], "--state nosuch: not a job state (queued, running, done, failed, dead)"),
    (["jobs", "--limit", "-1"], "--limit"),
    (["jobs", "--bogus"], "--bogus"),
])
def test_2_for_a_usage_error_of_serverpki(cli, args, message):
    done = run(SERVERPKI, *args, env=cli[roles.READER])
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stdout == ""


@pytest.fixture
def nobody_listens():
    """A TCP port on loopback that is bound, but not listening: every connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.mark.parametrize("program, args, role", [
    (OPERATE, ["-n"], roles.CRON), (OPERATE, ["-S", "-q", "-a"], roles.CRON),
    (SERVERPKI, ["jobs", "--json"], roles.READER), (SERVERPKI, ["db", "status"], roles.OPERATOR),
], ids=["operate -n", "operate -S", "serverpki jobs", "serverpki db status"])
def test_3_when_the_database_is_unreachable_naming_where_but_not_the_password(cli, nobody_listens, program, args, role):
    env = {**cli[role], "PGHOST": "127.0.0.1", "PGPORT": str(nobody_listens), "PGPASSWORD": "s3cret-Passw0rd"}
    done = run(program, *args, env=env)
    assert done.returncode == 3, done.stderr
    err = one_line(done, "operate_serverPKI" if program is OPERATE else "serverpki")
    assert f"cannot connect to the database {env['PGDATABASE']} on 127.0.0.1 port {nobody_listens} as {role}" in err, err
    assert "refused" in err and "s3cret" not in done.stderr + done.stdout and done.stdout == ""


def test_3_never_shows_the_password_of_the_configured_dsn(cli, nobody_listens, tmp_path):
    config = tmp_path / "dsn.toml"
    config.write_text(f'[database]\ndsn = "postgresql://pki_cron:s3cret-Passw0rd@127.0.0.1:{nobody_listens}/pki"\n'
                      '[logging]\nsyslog_address = ""\n')
    config.chmod(0o600)
    done = run(OPERATE, "-n", "-f", str(config), env=cli[roles.CRON])
    assert done.returncode == 3, done.stderr
    assert f"the database pki on 127.0.0.1 port {nobody_listens} as pki_cron" in one_line(done)
    assert "s3cret" not in done.stderr + done.stdout


@pytest.mark.parametrize("args", [("-n",), ("-S", "-q", "-a")])
def test_3_when_the_schema_is_of_another_release(cli, owner, args):
    owner.execute("INSERT INTO pki.schema_migrations (version) VALUES (%s)", (FUTURE,))
    done = run(OPERATE, *args, env=cli[roles.CRON])
    assert done.returncode == 3, done.stderr
    assert FUTURE in one_line(done) and "upgrade serverPKI" in done.stderr
    done = run(SERVERPKI, "db", "status", env=cli[roles.OPERATOR])
    assert done.returncode == 3 and FUTURE in done.stdout


def test_3_when_the_database_has_no_serverpki_schema(pg_server, cli):
    """The monitoring login cannot read the migrations (pki_report): a schema it lacks is status 3 all the same."""
    with psycopg.connect(pg_server.dsn(), autocommit=True) as su:
        su.execute("CREATE DATABASE t_empty_exit_status")
    try:
        env = {**cli[roles.READER], "PGDATABASE": "t_empty_exit_status"}
        done = run(SERVERPKI, "jobs", env=env)
        assert done.returncode == 3, done.stderr
        assert "does not exist (no serverPKI schema, or one of another release" in one_line(done, "serverpki")
        done = run(OPERATE, "-n", env={**cli[roles.CRON], "PGDATABASE": "t_empty_exit_status"})
        assert done.returncode == 3 and "no serverPKI schema" in one_line(done)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as su:
            su.execute("DROP DATABASE t_empty_exit_status WITH (FORCE)")


def test_4_when_n_finds_a_problem_and_0_for_a_warning_alone(cli, conn, owner):
    conn.execute("SELECT * FROM add_cert('lonely', 'server', 'local', 'rsa', false, NULL, NULL, NULL, NULL, NULL, NULL)")
    assert run(OPERATE, "-I", env=cli[roles.CRON]).returncode == 0   # no "no local CA" problem
    assert run(OPERATE, "-C", "-o", "c1", env=cli[roles.CRON]).returncode == 0
    for args in (["-n"], ["-n", "-v"], ["-S", "-n"], ["-r", "30", "-n"], ["-n", "--json"]):
        done = run(OPERATE, *args, env=cli[roles.CRON])
        assert done.returncode == 4, (args, done.stdout, done.stderr)
        assert "lonely" in done.stdout and done.stderr == ""
    assert run(OPERATE, "-n", "-o", "c1", env=cli[roles.CRON]).returncode == 0   # the selection's check is sound

    warning = one_warning(owner, "c1")   # a warning alone
    done = run(OPERATE, "-n", "-o", "c1", env=cli[roles.CRON])
    assert done.returncode == 0, done.stdout
    assert done.stdout.splitlines() == ["No syntax errors found in configuration.", warning]
