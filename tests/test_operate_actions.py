"""operate_serverPKI's actions end to end through the real command line: the SQL
request, the agent draining the queue with the real handlers, openssl checking
the outcome from outside, a real SMTP server receiving the reminder."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from lab.smtp import SMTPLab
from serverpki.operate import app
from lab.lab import secret

runner = CliRunner()
CA_PASS = "ca secret"
DB_PASS = "db secret"


@pytest.fixture
def smtp():
    with SMTPLab() as server:
        yield server


@pytest.fixture
def env(pg_server, dbname, conn, tmp_path, smtp):
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_place('nginx', 'separate', '/etc/ssl')")
    conn.execute("SELECT * FROM add_cert('www.example.org', 'server', 'local', 'rsa_plus_ec', true, 'example.org', NULL, NULL, 'web1.example.org', NULL, 'nginx')")
    conn.execute("SELECT * FROM add_cert('client1', 'client', 'local', 'ec', false, NULL, NULL, NULL, 'web1.example.org', NULL, 'nginx')")
    config = tmp_path / "serverpki.toml"
    config.write_text(f"""
[paths]
work_dir = "{tmp_path / 'work'}"
db_encryption_key = "{secret(tmp_path / 'db.pass', DB_PASS)}"
[local_ca]
passphrase_file = "{secret(tmp_path / 'ca.pass', CA_PASS)}"
key_size = 2048
[x509]
rsa_key_size = 2048
[mail]
relay_host = "127.0.0.1"
relay_port = {smtp.port}
sender = "serverpki@example.org"
recipients = ["pki-admins@example.org"]
[logging]
syslog_address = ""
""")
    return {**pg_server.env(dbname), "SERVERPKI_CONFIG": str(config)}, tmp_path


def run(env, *args):
    return runner.invoke(app, list(args), env=env[0])


def openssl(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, text=True)


def jobs(conn):
    return conn.execute("SELECT kind, state FROM jobs ORDER BY id").fetchall()


def test_local_ca_create_export_and_verify(env, conn):
    result = run(env, "-I")
    assert result.exit_code == 0, result.output
    assert jobs(conn) == [("issue_local_ca", "done")]
    result = run(env, "-C", "-o", "www.example.org")
    assert result.exit_code == 0, result.output
    # issued; the distribution follows with -D (and waits for its handler, reported, not failed)
    assert conn.execute("""SELECT "State", count(*) FROM inst WHERE "Cert Name" = 'www.example.org' GROUP BY 1""").fetchall() == [("issued", 2)]
    serial = conn.execute("""SELECT "Serial" FROM inst WHERE "Cert Name" = 'www.example.org' LIMIT 1""").fetchone()[0]
    ca_serial = conn.execute("""SELECT "Serial" FROM inst WHERE "Cert Name" = 'Local CA' LIMIT 1""").fetchone()[0]

    assert run(env, "-X").exit_code == 0   # the stored keys encrypted: -E writes them in clear all the same
    work = env[1] / "work"
    work.mkdir()
    (work / f"key-{serial}-ec.pem").write_text("an old export\n")   # replaced, as the original overwrote it
    (work / f"key-{serial}-ec.pem").chmod(0o400)
    result = run(env, "-E", str(serial))
    assert result.exit_code == 0, result.output
    result = run(env, "-E", str(ca_serial))   # the CA's key: decrypted with the CA's passphrase
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in work.iterdir())
    assert names == sorted([f"cert-{serial}-ec.pem", f"cert-{serial}-rsa.pem", f"key-{serial}-ec.pem",
                            f"key-{serial}-rsa.pem", f"cert-{ca_serial}-rsa.pem", f"key-{ca_serial}-rsa.pem"]), names
    for name in names:
        mode = stat.S_IMODE(os.stat(work / name).st_mode)
        assert mode == (0o400 if name.startswith("key-") else 0o444), (name, oct(mode))
        if name.startswith("key-"):
            assert (work / name).read_text().startswith("-----BEGIN PRIVATE KEY-----"), name   # in clear
    ca_file = work / f"cert-{ca_serial}-rsa.pem"
    assert openssl("pkey", "-in", str(work / f"key-{ca_serial}-rsa.pem"), "-pubout").stdout == \
        openssl("x509", "-in", str(ca_file), "-pubkey", "-noout").stdout
    for algo in ("rsa", "ec"):
        cert, key = work / f"cert-{serial}-{algo}.pem", work / f"key-{serial}-{algo}.pem"
        verify = openssl("verify", "-CAfile", str(ca_file), str(cert))
        assert verify.returncode == 0 and ": OK" in verify.stdout, verify.stderr
        assert openssl("pkey", "-in", str(key), "-pubout").stdout == openssl("x509", "-in", str(cert), "-pubkey", "-noout").stdout
        text = openssl("x509", "-in", str(cert), "-noout", "-text").stdout
        assert "TLS Web Server Authentication" in text and "TLS Feature" in text and "DNS:example.org" in text
    # the CA's key stays encrypted with its own passphrase
    ca_key = conn.execute("SELECT convert_from(key, 'UTF8') FROM certkeydata WHERE certinstance = %s", (ca_serial,)).fetchone()[0]
    assert "ENCRYPTED PRIVATE KEY" in ca_key


def test_encrypt_and_decrypt_keys_round_trip(env, conn, tmp_path):
    assert run(env, "-I").exit_code == 0
    assert run(env, "-C", "-a").exit_code == 0
    clear = dict(conn.execute("SELECT id, key FROM certkeydata k WHERE certinstance IN "
                              "(SELECT i.id FROM certinstances i JOIN subjects s ON s.certificate = i.certificate "
                              "AND NOT s.isaltname WHERE s.type <> 'CA')").fetchall())
    assert len(clear) == 3 and all(b"ENCRYPTED" not in bytes(k) for k in clear.values())

    result = run(env, "-X")
    assert result.exit_code == 0, result.output
    assert conn.execute("SELECT keysencrypted FROM revision").fetchone()[0] is True
    for kid in clear:
        pem = bytes(conn.execute("SELECT key FROM certkeydata WHERE id = %s", (kid,)).fetchone()[0]).decode()
        assert "ENCRYPTED PRIVATE KEY" in pem
        out = openssl("pkey", "-passin", "pass:" + (tmp_path / "db.pass").read_text(), input=pem)  # the whole file
        assert out.returncode == 0 and "BEGIN PRIVATE KEY" in out.stdout
    # a key issued now is stored encrypted too
    assert run(env, "-C", "-o", "client1").exit_code == 0
    newest = bytes(conn.execute("SELECT key FROM certkeydata ORDER BY id DESC LIMIT 1").fetchone()[0]).decode()
    assert "ENCRYPTED PRIVATE KEY" in newest

    result = run(env, "-Y")
    assert result.exit_code == 0, result.output
    assert conn.execute("SELECT keysencrypted FROM revision").fetchone()[0] is False
    for kid, before in clear.items():
        after = bytes(conn.execute("SELECT key FROM certkeydata WHERE id = %s", (kid,)).fetchone()[0])
        assert openssl("pkey", "-pubout", input=after.decode()).stdout == openssl("pkey", "-pubout", input=bytes(before).decode()).stdout


def test_wrong_passphrase_changes_nothing_and_fails_the_run(env, conn, tmp_path):
    assert run(env, "-I").exit_code == 0
    assert run(env, "-C", "-a").exit_code == 0
    assert run(env, "-X").exit_code == 0
    before = conn.execute("SELECT id, key FROM certkeydata ORDER BY id").fetchall()
    secret(tmp_path / "db.pass", "not the passphrase")
    result = run(env, "-Y")
    assert result.exit_code == 1, result.output
    assert "wrong passphrase" in result.output
    assert conn.execute("SELECT id, key FROM certkeydata ORDER BY id").fetchall() == before
    assert conn.execute("SELECT keysencrypted FROM revision").fetchone()[0] is True


def test_schedule_mails_one_reminder_through_the_relay(env, conn, smtp):
    assert run(env, "-I").exit_code == 0
    assert run(env, "-C", "-o", "client1").exit_code == 0
    inst = conn.execute("SELECT id, not_after FROM certinstances i WHERE state = 'issued' AND certificate = "
                        "(SELECT certificate FROM subjects WHERE name = 'client1')").fetchone()
    # deploy it as the distribution would (its SSH handler is not part of this test)
    conn.execute("SELECT * FROM request_distribute(selection(only_certs => ARRAY['client1']))").fetchall()
    job, token = conn.execute("SELECT id, lease_token FROM claim_jobs('t', ARRAY['distribute'], 1)").fetchone()
    conn.execute("SELECT complete_distribute(%s, %s)", (job, token))
    later = (inst[1] - __import__("datetime").timedelta(days=10)).isoformat()
    env_later = ({**env[0], "PGOPTIONS": f"-c pki.now={later}"}, env[1])
    result = run(env_later, "-S", "-a")
    assert result.exit_code == 0, result.output
    assert len(smtp.messages) == 1 and "client1" in smtp.messages[0].message.get_content()
    assert run(env_later, "-S", "-a").exit_code == 0
    assert len(smtp.messages) == 1


def test_a_failing_job_sets_the_exit_status(env, conn):
    # no local CA: the issue job gives up, the run says so with exit status 1
    result = run(env, "-C", "-o", "client1")
    assert result.exit_code == 1
    assert "no local CA" in result.output
    assert conn.execute("SELECT state FROM jobs").fetchone()[0] == "dead"


def test_renew_alone_creates_the_local_certificates_expiring_within_the_days(env, conn):
    """-r N alone is -C -r N: a new instance of each local certificate deployed and expiring within
    N days, of no other; -r N -n lists exactly those and changes nothing."""
    import datetime as dt
    assert run(env, "-I").exit_code == 0

    def at(when):
        return ({**env[0], "PGOPTIONS": f"-c pki.now={when.isoformat()}"}, env[1])

    now = conn.execute("SELECT pki.now()").fetchone()[0]
    # client1 issued now, www.example.org 60 days later: client1 expires first
    for name, when in (("client1", now), ("www.example.org", now + dt.timedelta(days=60))):
        assert run(at(when), "-C", "-o", name).exit_code == 0
        conn.execute("SELECT set_config('pki.now', %s, false)", (when.isoformat(),))
        conn.execute("SELECT * FROM request_distribute(selection(only_certs => ARRAY[%s]))", (name,)).fetchall()
        job, token = conn.execute("SELECT id, lease_token FROM claim_jobs('t', ARRAY['distribute'], 1)").fetchone()
        conn.execute("SELECT complete_distribute(%s, %s)", (job, token))
    conn.execute("SELECT set_config('pki.now', '', false)")
    not_after = dict(conn.execute(
        "SELECT s.name::text, i.not_after FROM certinstances i JOIN subjects s ON s.certificate = i.certificate "
        "AND NOT s.isaltname WHERE i.state = 'deployed'").fetchall())
    assert not_after["www.example.org"] - not_after["client1"] > dt.timedelta(days=50), not_after
    env_at = at(not_after["client1"] - dt.timedelta(days=10))
    instances = conn.execute("SELECT max(id) FROM certinstances").fetchone()[0]

    listed = run(env_at, "-r", "20", "-n")
    assert listed.exit_code == 0, listed.output
    assert "client1" in listed.output and "www.example.org" not in listed.output, listed.output
    assert conn.execute("SELECT max(id) FROM certinstances").fetchone()[0] == instances   # nothing kept

    result = run(env_at, "-r", "20")
    assert result.exit_code == 0, result.output
    assert conn.execute(
        "SELECT s.name::text, i.state::text FROM certinstances i JOIN subjects s ON s.certificate = i.certificate "
        "AND NOT s.isaltname WHERE i.id > %s", (instances,)).fetchall() == [("client1", "issued")]
    # nothing deployed expires within 5 days: nothing to do
    assert run(env_at, "-r", "5").exit_code == 0
    assert conn.execute("SELECT count(*) FROM certinstances WHERE id > %s", (instances,)).fetchone()[0] == 1


def test_export_never_leaves_a_key_readable_by_others(env, conn, monkeypatch, tmp_path):
    """-E: each key file has mode 0400 before it gets its name, whatever the umask; a file that is
    not renamed (a failed write) is removed."""
    from serverpki import export as export_module
    assert run(env, "-I").exit_code == 0
    assert run(env, "-C", "-o", "client1").exit_code == 0
    serial = conn.execute("""SELECT "Serial" FROM inst WHERE "Cert Name" = 'client1'""").fetchone()[0]
    seen = {}
    real_replace = os.replace

    def replace(src, dst):
        seen[Path(dst).name] = stat.S_IMODE(os.stat(src).st_mode)
        return real_replace(src, dst)

    monkeypatch.setattr(export_module.os, "replace", replace)
    old = os.umask(0)
    try:
        written = export_module.export_instance(conn, str(serial), tmp_path / "out", None)
    finally:
        os.umask(old)
    assert seen == {f"cert-{serial}-ec.pem": 0o444, f"key-{serial}-ec.pem": 0o400}, seen
    assert sorted(p.name for p in written) == sorted(seen)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(seen)   # no temporary file left
