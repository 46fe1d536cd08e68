"""operate_serverPKI through its real command line (typer's CliRunner) against a real database."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from serverpki.operate import app
from serverpki.reports import INSTANCE_COLUMNS, META_COLUMNS

runner = CliRunner()


@pytest.fixture
def env(pg_server, dbname, conn, tmp_path):
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_place('nginx', 'separate', '/etc/ssl')")
    conn.execute("SELECT * FROM add_cert('www.example.org', 'server', 'LE', 'ec', false, 'example.org', 'https', 443, 'web1.example.org', NULL, 'nginx')")
    conn.execute("SELECT * FROM add_cert('client1', 'client', 'local', 'rsa', false, NULL, NULL, NULL, 'web1.example.org', NULL, 'nginx')")
    config = tmp_path / "serverpki.toml"
    config.write_text('[logging]\nsyslog_address = ""\n[paths]\nwork_dir = "work"\n')
    return {**pg_server.env(dbname), "SERVERPKI_CONFIG": str(config)}


def run(env, *args):
    return runner.invoke(app, list(args), env=env)


def header(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_check_only_exits_4_with_a_line_per_problem_and_0_when_sound(env, conn):
    """-n: a problem makes exit status 4, each on its own line naming the object and the fix;
    a sound configuration (of the selection) exits 0."""
    conn.execute("SELECT add_place('odd', 'cert only', '/etc/odd', '/etc/oddkey')")
    conn.execute("SELECT add_target('www.example.org', 'web1.example.org', NULL, 'odd')")
    conn.execute("SELECT * FROM add_cert('lonely', 'server', 'local', 'rsa', false, NULL, NULL, NULL, NULL, NULL, NULL)")
    result = run(env, "-n")
    assert result.exit_code == 4, result.output
    lines = result.output.strip().splitlines()
    assert sorted(lines) == sorted([
        "local CA: local certificates are configured, but there is no local CA certificate; fix: issue one with operate_serverPKI -I",
        "lonely: no targets: it will never be deployed; fix: add one with SELECT add_target('lonely', disthost, jail, place)",
        "www.example.org: place \"odd\" is 'cert only' but has a key_path, which is ignored; fix: set key_path to NULL "
        "or choose another cert_file_type",
    ]), lines
    # the check covers the selection: the LE certificate alone has one problem left
    result = run(env, "-n", "-o", "lonely")
    assert result.exit_code == 4 and len(result.output.strip().splitlines()) == 2, result.output
    conn.execute("SELECT remove_target('www.example.org', 'web1.example.org', NULL, 'odd')")
    result = run(env, "-n", "-o", "www.example.org")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "No syntax errors found in configuration."
    conn.execute("SELECT remove_cert('client1')")
    conn.execute("SELECT remove_cert('lonely')")
    result = run(env, "-n")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "No syntax errors found in configuration."


def test_check_only_verbose_prints_the_seeds_two_tables(env):
    result = run(env, "-n", "-v", "-o", "www.example.org")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    grids = [i for i, line in enumerate(lines) if line.startswith("| Subject") or line.startswith("| Serial")]
    assert header(lines[grids[0]]) == META_COLUMNS
    assert header(lines[grids[1]]) == INSTANCE_COLUMNS
    assert "www.example.org" in result.output and "client1" not in result.output  # -o limits
    assert lines[grids[0] - 1].startswith("+---") and set(lines[grids[0] - 1]) <= {"+", "-"}


def test_schedule_check_only_prints_the_plan_and_writes_nothing(env, conn):
    result = run(env, "-S", "-n", "-a")
    assert result.exit_code == 4, result.output   # the check's problem (no local CA) is the exit status
    assert "rule 2: nothing left; issue one and distribute it" in result.output
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM certinstances").fetchone()[0] == 0


def test_renew_check_only_lists_local_certs_and_keeps_nothing(env, conn):
    result = run(env, "-r", "30", "-n")
    assert result.exit_code == 4, result.output   # the check's problem (no local CA) is the exit status
    assert header(result.output.splitlines()[2]) == ["Subject", "Cert Name", "Type", "authorized", "Alt Name", "TLSA", "Port", "Dist Host", "Jail", "Place"]
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


@pytest.mark.parametrize("args, message", [
    (["-S", "-o", "nosuch.example.org"], 'unknown certificate(s) "nosuch.example.org"'),
    (["-S", "-s", "nohost.example.org", "-e", "nocert"], 'unknown certificate(s) "nocert"; unknown disthost(s) "nohost.example.org"'),
    (["-E", "3", "-S"], "-E (export) may not be combined"),
    (["-Z", "-C"], "-Z (register) may not be combined"),
    (["-X", "-Y"], "contradict"),
    (["-r", "5", "-S"], "-r REMAINING_DAYS goes with"),
    (["-r", "5", "-K"], "-r REMAINING_DAYS goes with"),
    (["-E", "3", "-r", "5"], "-E (export) may not be combined"),
    ([], "no action given"),
])
def test_bad_requests_are_one_line_errors_with_status_2(env, conn, args, message):
    result = run(env, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


def test_unreadable_config_file_is_named(env, tmp_path):
    bad = tmp_path / "serverpki.toml"
    bad.write_text("[database\n")
    result = run(env, "-n", "-f", str(bad))
    assert result.exit_code == 2
    assert str(bad) in result.output
