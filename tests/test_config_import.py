"""`serverpki config import`: serverPKI 0.9.11's serverpki.conf (configobj) becomes a serverpki.toml that
load_config takes, every key not carried over is listed, no secret is shown, and the two days that live
in the database's settings are applied (--dsn, as the operator's role) or printed for psql.

The original's own example configuration comes from its wheel, downloaded from the package registry
once per test session (nothing here reads a copy on this machine)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import configobj
import pytest

from lab import roles
from serverpki.config import load_config

from commands import LIBPQ_VARS, SERVERPKI, run

EXAMPLE_MEMBER = "serverPKI-0.9.11.data/data/share/serverPKI/example_config.conf"
SECRET = "s3cr3t-Never-Shown"


@pytest.fixture(scope="session")
def legacy_example(tmp_path_factory) -> Path:
    """install/example_config.conf of serverPKI 0.9.11, as its wheel on the registry ships it."""
    folder = tmp_path_factory.mktemp("serverpki-0.9.11")
    subprocess.run([sys.executable, "-m", "pip", "download", "serverPKI==0.9.11", "--no-deps",
                    "--only-binary=:all:", "-q", "-d", str(folder)], check=True, capture_output=True, text=True)
    (wheel,) = folder.glob("serverPKI-0.9.11-*.whl")
    path = folder / "example_config.conf"
    path.write_bytes(zipfile.ZipFile(wheel).read(EXAMPLE_MEMBER))
    return path


def plain_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in LIBPQ_VARS}, **extra}


def config_import(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run(SERVERPKI, "config", "import", *args, env=env or plain_env())


def listed_keys(stdout: str) -> set[str]:
    """The key column of the table of keys not carried over."""
    rows = [line.split("|")[1].strip() for line in stdout.splitlines() if line.startswith("| ")]
    return {row for row in rows[1:] if row}   # rows[0]: the header


# ---------------------------------------------------------------- the original's example

def test_the_originals_example_config(legacy_example, tmp_path):
    out = tmp_path / "serverpki.toml"
    done = config_import(str(legacy_example), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    config = load_config(out)
    # $db and $home are resolved as 0.9.11 resolved them
    assert config.paths.db_encryption_key == Path("/tmp/db/db_encryption_key.pem")
    assert config.paths.work_dir == Path("/tmp/work")
    assert config.local_ca.passphrase_file == config.paths.db_encryption_key   # what 0.9.11 encrypted its CA key with
    assert config.database.dsn == "host=localhost port=5432 user=serverPKI dbname=serverPKI"
    assert (config.x509.country, config.x509.locality, config.x509.organization) == ("DE", "Some city", "Some Org")
    assert (config.x509.server_lifetime_days, config.x509.client_lifetime_days, config.x509.rsa_key_size) == (375, 375, 2048)
    assert (config.local_ca.name, config.local_ca.key_size, config.local_ca.lifetime_days) == ("Local CA", 4096, 3680)
    assert config.acme.directory_url == "https://acme-staging-v02.api.letsencrypt.org/directory"
    assert config.acme.contact_email == "admin@example.org"
    assert config.dns.tsig_key_file == Path("/usr/local/etc/namedb/dns-keys/ddns-key.conf")
    assert config.dns.primary == "127.0.0.1:53"
    assert config.ssh.user == "root"
    assert (config.mail.relay_host, config.mail.sender, config.mail.recipients) == (
        "my.outgoing.relay.example.org", "serverPKI@example.org", ("admin@example.org",))
    assert config.logging.syslog_facility == "local6"

    # every key of the example is carried over or listed: nothing silently dropped
    carried = {"[Pathes] db_encryption_key", "[Pathes] work", "[Pathes] ddns_key_file", "[X509atts] lifetime",
               "[X509atts] bits", "[X509atts][names] C", "[X509atts][names] L", "[X509atts][names] O",
               "[DBAccount] dbHost", "[DBAccount] dbPort", "[DBAccount] dbUser", "[DBAccount] dbSslRequired",
               "[DBAccount] dbDatabase", "[Misc] SSH_CLIENT_USER_NAME", "[Misc] LE_SERVER", "[Misc] LE_EMAIL",
               "[Misc] LE_ZONE_UPDATE_METHOD", "[Misc] LOCAL_CA_BITS", "[Misc] LOCAL_CA_LIFETIME",
               "[Misc] SUBJECT_LOCAL_CA", "[Misc] PRE_PUBLISH_TIMEDELTA", "[Misc] LOCAL_ISSUE_MAIL_TIMEDELTA",
               "[Misc] MAIL_RELAY", "[Misc] MAIL_SENDER", "[Misc] MAIL_RECIPIENT", "[Misc] SYSLOG_FACILITY"}
    empty = {"[Pathes] tlsa_dns_master", "[DBAccount] dbDbaUser", "[DBAccount] dbCert", "[DBAccount] dbCertKey"}
    every = set()
    conf = configobj.ConfigObj(str(legacy_example))
    conf.walk(lambda section, key: every.add(
        "".join(f"[{s}]" for s in _path(section)) + " " + key))
    listed = listed_keys(done.stdout)
    assert listed == every - carried - empty, done.stdout
    assert {"[Pathes] le_account", "[Pathes] ca_key", "[Misc] MAIL_SUBJECT", "[X509atts][names] CN"} <= listed
    assert f"{len(listed)} key(s) not carried over" in done.stdout
    # the days of the database's settings: printed for psql, as no --dsn was given
    assert "\\set name pre_publish_days\n\\set value 30\n" in done.stdout


def _path(section) -> list[str]:
    names = []
    while section.parent is not section:
        names.insert(0, section.name)
        section = section.parent
    return names


# ---------------------------------------------------------------- every section, and keys of nobody

EVERY_SECTION = f"""
# every section and key 0.9.11 knew, and some it did not
top_level_key = 1
[Pathes]
    home = /srv/pki
    db = $home/db
    ca_cert = $db/ca_cert.pem
    ca_key = $db/ca_key.pem
    db_encryption_key = $db/db_encryption_key.pem
    le_account = $db/account.json
    work = $home/work
    work_tlsa = $work/TLSA
    tlsa_dns_master = ns1.example.org
    zone_file_root = /var/named
    dns_key = $db/dns
    zone_tlsa_inc_mode = 0640
    zone_tlsa_inc_uid = 53
    zone_tlsa_inc_gid = 53
    zone_file_include_name = acme.inc
    ddns_key_file = $db/ddns.key
[X509atts]
    lifetime = 400
    bits = 1024
    [[names]]
        C = NL
        ST = Noord-Holland
        L = Amsterdam
        O = Example BV
        OU = Ops
        CN = Example CA
        emailAddress = ca@example.nl
    [[extensions]]
        keyUsage = critical
[DBAccount]
    dbHost = db.example.nl
    dbPort = 6432
    dbUser = pki
    dbDbaUser = postgres
    dbSslRequired = yes
    dbDatabase = pki09
    dbSearchPath = pki, dd
    dbCert = /srv/pki/client.crt
    dbCertKey = /srv/pki/client.key
    dbPassword = {SECRET}
[Misc]
    SSH_CLIENT_USER_NAME = deploy
    LE_SERVER = https://acme-v02.api.letsencrypt.org/
    LE_EMAIL = pki@example.nl
    LE_ZONE_UPDATE_METHOD = zone_file
    LOCAL_CA_BITS = 4096
    LOCAL_CA_LIFETIME = 1000
    SUBJECT_LOCAL_CA = Example Local CA
    SUBJECT_LE_CA = Lets Encrypt CA
    PRE_PUBLISH_TIMEDELTA = 21
    LOCAL_ISSUE_MAIL_TIMEDELTA = 14
    MAIL_RELAY = smtp.example.nl:587
    MAIL_SUBJECT = reminder
    MAIL_SENDER = pki@example.nl
    MAIL_RECIPIENT = a@example.nl, b@example.nl
    SYSLOG_FACILITY = LOG_DAEMON
    SMTP_TOKEN = {SECRET}
[Extra]
    something = else
"""


def test_every_section_keys_of_nobody_and_a_secret(tmp_path):
    source = tmp_path / "serverpki.conf"
    source.write_text(EVERY_SECTION)
    out = tmp_path / "serverpki.toml"
    done = config_import(str(source), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr + out.read_text()

    config = load_config(out)
    assert config.paths.db_encryption_key == Path("/srv/pki/db/db_encryption_key.pem")
    assert config.dns.tsig_key_file == Path("/srv/pki/db/ddns.key")
    assert config.dns.primary is None   # zone_file: no dynamic updates to carry
    assert config.database.dsn == ("host=db.example.nl port=6432 user=pki dbname=pki09 sslmode=require "
                                   "sslcert=/srv/pki/client.crt sslkey=/srv/pki/client.key")
    assert (config.x509.country, config.x509.state, config.x509.organizational_unit) == ("NL", "Noord-Holland", "Ops")
    assert config.x509.rsa_key_size == 2048   # 1024 is refused by ours: listed, not written
    assert config.acme.directory_url == "https://acme-v02.api.letsencrypt.org/directory"
    assert (config.mail.relay_host, config.mail.relay_port) == ("smtp.example.nl", 587)
    assert config.mail.recipients == ("a@example.nl", "b@example.nl")
    assert (config.local_ca.name, config.ssh.user, config.logging.syslog_facility) == ("Example Local CA", "deploy", "daemon")

    listed = listed_keys(done.stdout)
    assert listed == {
        "top_level_key", "[Pathes] home", "[Pathes] db", "[Pathes] ca_cert", "[Pathes] ca_key", "[Pathes] le_account",
        "[Pathes] work_tlsa", "[Pathes] tlsa_dns_master", "[Pathes] zone_file_root", "[Pathes] dns_key",
        "[Pathes] zone_tlsa_inc_mode", "[Pathes] zone_tlsa_inc_uid", "[Pathes] zone_tlsa_inc_gid",
        "[Pathes] zone_file_include_name", "[X509atts] bits", "[X509atts][names] CN",
        "[X509atts][names] emailAddress", "[X509atts][extensions] keyUsage", "[DBAccount] dbDbaUser",
        "[DBAccount] dbSearchPath", "[DBAccount] dbPassword", "[Misc] LE_ZONE_UPDATE_METHOD",
        "[Misc] SUBJECT_LE_CA", "[Misc] MAIL_SUBJECT", "[Misc] SMTP_TOKEN", "[Extra] something"}, done.stdout
    assert "(hidden)" in done.stdout
    assert "[x509] rsa_key_size refuses 1024" in " ".join(done.stdout.split())


def test_interpolation_names_what_it_cannot_resolve(tmp_path):
    source = tmp_path / "serverpki.conf"
    source.write_text("[Pathes]\n home = /a\n db = $home/b\n db_encryption_key = ${db}/key\n"
                      " work = $nowhere/work\n")
    done = config_import(str(source), "-o", str(tmp_path / "x.toml"))
    assert done.returncode == 2
    assert "[Pathes] work" in done.stderr and "nowhere" in done.stderr
    assert not (tmp_path / "x.toml").exists()

    source.write_text("[Pathes]\n home = /a\n db = $home/b\n db_encryption_key = ${db}/key\n")
    done = config_import(str(source), "-o", str(tmp_path / "x.toml"))
    assert done.returncode == 0, done.stderr
    assert load_config(tmp_path / "x.toml").paths.db_encryption_key == Path("/a/b/key")


# ---------------------------------------------------------------- the settings in the database

def test_dsn_applies_the_days_as_the_operator_and_writes_no_password(pg_server, dbname, owner, tmp_path):
    source = tmp_path / "serverpki.conf"
    source.write_text("[Misc]\n PRE_PUBLISH_TIMEDELTA = 21\n LOCAL_ISSUE_MAIL_TIMEDELTA = 14\n")
    dsn = pg_server.dsn(dbname, roles.OPERATOR)
    out = tmp_path / "serverpki.toml"
    done = config_import(str(source), "-o", str(out), "--dsn", f"{dsn} password={SECRET} sslpassword={SECRET}x")
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr + out.read_text()   # the client key's passphrase neither
    assert "~/.pgpass" in done.stdout
    assert load_config(out).database.dsn == dsn
    days = dict(owner.execute("SELECT name, value FROM pki.settings "
                              "WHERE name IN ('pre_publish_days', 'local_issue_mail_days')").fetchall())
    assert days == {"pre_publish_days": "21", "local_issue_mail_days": "14"}


def test_a_file_that_cannot_be_written_leaves_the_settings_as_they_were(pg_server, dbname, owner, tmp_path):
    source = tmp_path / "serverpki.conf"
    source.write_text("[Misc]\n PRE_PUBLISH_TIMEDELTA = 21\n")
    before = owner.execute("SELECT value FROM pki.settings WHERE name = 'pre_publish_days'").fetchone()
    done = config_import(str(source), "-o", str(tmp_path / "missing" / "serverpki.toml"), "--dsn",
                         pg_server.dsn(dbname, roles.OPERATOR))
    assert done.returncode == 2 and "is not a folder this user may write to" in done.stderr, done.stderr
    assert owner.execute("SELECT value FROM pki.settings WHERE name = 'pre_publish_days'").fetchone() == before


def test_the_printed_days_run_in_psql_as_the_operator(psql, owner, tmp_path):
    source = tmp_path / "serverpki.conf"
    source.write_text("[Misc]\n PRE_PUBLISH_TIMEDELTA = 20\n LOCAL_ISSUE_MAIL_TIMEDELTA = 10\n")
    done = config_import(str(source), "-o", str(tmp_path / "serverpki.toml"))
    assert done.returncode == 0, done.stderr
    script = "\n".join(line for line in done.stdout.splitlines() if line.startswith(("\\set ", "UPDATE ", "-- ")))
    ran = psql(script, "-v", "ON_ERROR_STOP=1")
    assert ran.returncode == 0, ran.stderr
    days = dict(owner.execute("SELECT name, value FROM pki.settings "
                              "WHERE name IN ('pre_publish_days', 'local_issue_mail_days')").fetchall())
    assert days == {"pre_publish_days": "20", "local_issue_mail_days": "10"}


def test_a_refused_day_changes_nothing_and_writes_no_file(pg_server, dbname, owner, tmp_path):
    source = tmp_path / "serverpki.conf"
    source.write_text("[Misc]\n PRE_PUBLISH_TIMEDELTA = 21\n LOCAL_ISSUE_MAIL_TIMEDELTA = -5\n")
    out = tmp_path / "serverpki.toml"
    done = config_import(str(source), "-o", str(out), "--dsn", pg_server.dsn(dbname, roles.OPERATOR))
    assert done.returncode == 2, done
    assert "LOCAL_ISSUE_MAIL_TIMEDELTA: -5" in done.stderr and "local_issue_mail_days" in done.stderr
    assert not out.exists()
    assert owner.execute("SELECT value FROM pki.settings WHERE name = 'pre_publish_days'").fetchone()[0] == "30"


# ---------------------------------------------------------------- exit statuses

def test_a_file_that_is_not_configobj_is_a_usage_error_naming_the_line(tmp_path):
    source = tmp_path / "serverpki.conf"
    source.write_text("[Pathes]\n home = /a\nthis is no key\n")
    done = config_import(str(source), "-o", str(tmp_path / "x.toml"))
    assert done.returncode == 2
    assert "line 3" in done.stderr and "not a configobj file" in done.stderr
    assert not (tmp_path / "x.toml").exists()


def test_exit_statuses(tmp_path, legacy_example):
    out = tmp_path / "serverpki.toml"
    out.write_text("# mine\n")
    done = config_import(str(legacy_example), "-o", str(out))
    assert done.returncode == 2 and "--force" in done.stderr
    assert out.read_text() == "# mine\n"
    assert config_import(str(legacy_example), "-o", str(out), "--force").returncode == 0
    assert "[database]" in out.read_text()

    assert config_import(str(tmp_path / "missing.conf"), "-o", str(tmp_path / "a.toml")).returncode == 2
    bad_number = tmp_path / "bad.conf"
    bad_number.write_text("[X509atts]\n lifetime = a year\n")
    done = config_import(str(bad_number), "-o", str(tmp_path / "b.toml"))
    assert done.returncode == 2 and "[X509atts] lifetime" in done.stderr

    unreachable = "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2"
    done = config_import(str(legacy_example), "-o", str(tmp_path / "c.toml"), "--dsn", unreachable)
    assert done.returncode == 3, done.stderr
    assert not (tmp_path / "c.toml").exists()
