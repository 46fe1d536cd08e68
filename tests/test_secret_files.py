"""Files that hold a secret (secretfile), and passphrases as the original serverPKI made them.

Each kind of secret file, read by the code that uses it (keystore.read_passphrase for
db_encryption_key and local_ca.passphrase_file, dnsupdate.read_tsig_key, the mail handler's
password, load_config for a configuration with a DSN password or an EAB HMAC key), is
refused when group or others may read it, when it is a symbolic link and when another
user owns it; the refusal names the file and the command that fixes it, never the
secret. A 0600 file of ours is read.

Then keys encrypted exactly the way serverPKI 0.9.11 did (BestAvailableEncryption,
TraditionalOpenSSL, the passphrase = the whole content of an ssh-keygen file) open
with ours, and -Y / -X turn them into clear / our PKCS#8.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from helpers import need_root, owner_conn
from serverpki import dnsupdate, keystore, x509util
from serverpki.config import load_config, parse_config
from serverpki.errors import ConfigError, GiveUp
from serverpki.handlers import mail as mail_handler
from test_local_ca import config, fill, keys_encrypted, request_keys, run_job  # noqa: F401  (config: fixture)

AGENT = str(Path(keystore.__file__).parents[1])
OTHER_UID = 65534  # nobody: root may give a file away, as an installation gone wrong does
TSIG_SECRET = "c2VjcmV0LXRzaWcta2V5LWZvci10ZXN0cw=="
DSN_PASSWORD = "s3cr3t-dsn-pw"


# --------------------------------------------------------------------------- the kinds of secret file

def _passphrase(path: Path) -> bytes:
    return keystore.read_passphrase(path)


def _tsig(path: Path):
    conf = path.parent / "tsig-user.toml"
    conf.write_text(f'[dns]\ntsig_key_file = "{path}"\n')  # holds no secret: may stay 0644
    return dnsupdate.read_tsig_key(load_config(conf)).secret


def _mail(path: Path) -> str:
    config = parse_config({"mail": {"sender": "pki@example.org", "recipients": ["a@example.org"],
                                    "relay_host": "127.0.0.1", "username": "pki", "password_file": str(path)}},
                          path.parent / "serverpki.toml")
    return mail_handler.relay_password(config.mail)


def _config(path: Path) -> str:
    return load_config(path).database.dsn


KINDS = {
    # name: (content, reader, the exception of a refusal, what a read returns, the secret in the content)
    "passphrase file": (b"db passphrase\n", _passphrase, keystore.PassphraseUnavailable, b"db passphrase\n",
                        "db passphrase"),
    "[dns] tsig_key_file": (f'key "upd" {{\n\talgorithm hmac-sha256;\n\tsecret "{TSIG_SECRET}";\n}};\n'.encode(),
                            _tsig, ConfigError, b"secret-tsig-key-for-tests", TSIG_SECRET),
    "mail.password_file": (b"smtp-pw\n", _mail, GiveUp, "smtp-pw", "smtp-pw"),
    "configuration file": (f'[database]\ndsn = "postgresql://pki:{DSN_PASSWORD}@db.example.org/pki"\n'.encode(),
                           _config, ConfigError, f"postgresql://pki:{DSN_PASSWORD}@db.example.org/pki", DSN_PASSWORD),
}


def make(tmp_path: Path, kind: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secret.file"
    path.write_bytes(KINDS[kind][0])
    path.chmod(mode)
    return path


def refusal(kind: str, path: Path) -> str:
    _, read, error, _, secret = KINDS[kind]
    with pytest.raises(error) as info:
        read(path)
    message = str(info.value)
    assert kind in message and str(path) in message, message
    assert secret not in message and "\n" not in message
    return message


@pytest.mark.parametrize("kind", KINDS)
def test_a_private_file_of_ours_is_read(tmp_path, kind):
    _, read, _, expected, _ = KINDS[kind]
    assert read(make(tmp_path, kind)) == expected
    assert read(make(tmp_path, kind, 0o400)) == expected


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o620])
def test_a_file_open_to_group_or_others_is_refused(tmp_path, kind, mode):
    path = make(tmp_path, kind, mode)
    message = refusal(kind, path)
    assert f"is open to group or others (mode {mode:04o})" in message and f"chmod 600 {path}" in message


@pytest.mark.parametrize("kind", KINDS)
def test_a_symbolic_link_is_refused_even_to_a_private_file(tmp_path, kind):
    target = make(tmp_path, kind)
    link = tmp_path / "link.file"
    link.symlink_to(target)
    message = refusal(kind, link)
    assert "symbolic link" in message and f"realpath {link}" in message


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_of_another_user_is_refused(tmp_path, kind):
    need_root("giving a file to another user needs it")
    path = make(tmp_path, kind)
    os.chown(path, OTHER_UID, -1)
    message = refusal(kind, path)
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert f"not to {me} who runs serverPKI: chown {me} {path}" in message


def test_a_fifo_does_not_hang_and_is_refused(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    with pytest.raises(keystore.PassphraseUnavailable, match=f"passphrase file {path} is not a regular file"):
        keystore.read_passphrase(path)


def test_a_path_with_a_space_gets_a_fix_that_works_in_a_shell(tmp_path):
    path = tmp_path / "my secret"
    path.write_text("x\n")
    path.chmod(0o644)
    with pytest.raises(keystore.PassphraseUnavailable) as info:
        keystore.read_passphrase(path)
    fix = str(info.value).rsplit(": ", 1)[1]
    subprocess.run(fix, shell=True, check=True)
    assert keystore.read_passphrase(path) == b"x\n"
    assert fix == f"chmod 600 {shlex.quote(str(path))}"


def test_a_configuration_without_secrets_may_be_shared_and_linked(tmp_path):
    real = tmp_path / "real.toml"
    real.write_text('[database]\ndsn = "host=/run/postgresql dbname=pki"\n[acme]\neab_kid = "k"\n'
                    'eab_hmac_key = "c2VjcmV0"\n')
    real.chmod(0o644)
    with pytest.raises(ConfigError, match=r"\(it holds \[acme\] eab_hmac_key\)"):
        load_config(real)
    real.write_text('[database]\ndsn = "host=/run/postgresql dbname=pki"\n')
    link = tmp_path / "serverpki.toml"
    link.symlink_to(real)
    assert load_config(link).database.dsn == "host=/run/postgresql dbname=pki"


def test_the_cli_prints_the_refusal_in_one_line_with_status_2(tmp_path):
    from serverpki.operate import app

    path = make(tmp_path, "configuration file", 0o644)
    result = CliRunner().invoke(app, ["-n", "-f", str(path)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"operate_serverPKI: configuration file {path} is open to group or others (mode 0644), so the secret "
        f"in it is not: chmod 600 {path} (it holds [database] dsn's password)")


# --------------------------------------------------------------------------- the original serverPKI's keys

@pytest.fixture
def ssh_keygen_file(tmp_path) -> Path:
    """The db_encryption_key of the original's tutorial: ssh-keygen -t ed25519 (~400 bytes, one fixed first line)."""
    path = tmp_path / "db_encryption_key.pem"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    assert path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    return path


def original_encrypted(key, passphrase_file: Path) -> str:
    """serverPKI 0.9.11's cert._encrypt_key, with DB_Encryption.key = open(db_encryption_key, 'rb').read()."""
    with open(passphrase_file, "rb") as f:
        password = f.read()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.BestAvailableEncryption(password)).decode("ascii")


@pytest.mark.parametrize("algo", ["rsa", "ec"])
def test_a_key_the_original_encrypted_opens_with_the_whole_ssh_keygen_file(ssh_keygen_file, algo):
    key = x509util.new_key(algo)
    pem = original_encrypted(key, ssh_keygen_file)
    assert "Proc-Type: 4,ENCRYPTED" in pem and "DEK-Info: AES-256-CBC," in pem
    passphrase = keystore.read_passphrase(ssh_keygen_file)
    assert len(passphrase) == ssh_keygen_file.stat().st_size and passphrase.endswith(b"\n")
    assert keystore.dump_key(keystore.load_key(pem, passphrase)) == keystore.dump_key(key)
    # the old "first line" passphrase is the public constant; it must not open the key
    with pytest.raises(keystore.WrongPassphrase):
        keystore.load_key(pem, b"-----BEGIN OPENSSH PRIVATE KEY-----")
    # -X rewrites it as our PKCS#8, which opens with the same file
    ours = keystore.encrypt_pem(pem, passphrase)
    assert ours.startswith(keystore.ENCRYPTED_MARK)
    assert keystore.dump_key(keystore.load_key(ours, passphrase)) == keystore.dump_key(key)


def test_minus_y_and_minus_x_handle_keys_the_original_encrypted(conn, config, tmp_path, ssh_keygen_file):
    """A database carried over from the original: keys in its encrypted form, keysencrypted set."""
    config.paths.db_encryption_key = str(ssh_keygen_file)
    _, clear = fill(conn, config)
    owner = owner_conn(conn)   # the rows as the original wrote them, before our triggers: the owner's setup
    owner.execute("SET session_replication_role = replica")
    for key_id, pem in clear.items():
        old = original_encrypted(keystore.load_key(pem), ssh_keygen_file)
        owner.execute("UPDATE certkeydata SET key = %s WHERE id = %s", (old.encode(), key_id))
    owner.execute("UPDATE revision SET keysencrypted = true")
    owner.execute("SET session_replication_role = origin")

    result = run_job(conn, request_keys(conn, False), config)  # -Y
    assert not isinstance(result, GiveUp), result
    assert keys_encrypted(conn) is False
    assert dict(conn.execute("SELECT id, key FROM keys_under_db_passphrase()").fetchall()) == clear

    result = run_job(conn, request_keys(conn, True), config)  # -X: our PKCS#8 at KDF_ROUNDS
    assert not isinstance(result, GiveUp), result
    encrypted = dict(conn.execute("SELECT id, key FROM keys_under_db_passphrase()").fetchall())
    assert sorted(encrypted) == sorted(clear)
    for key_id, pem in encrypted.items():
        assert pem.startswith(keystore.ENCRYPTED_MARK)
        # the README's way to open one with openssl: the whole file through an environment variable
        key_file = tmp_path / "key.pem"
        key_file.write_text(pem)
        script = (f"IFS= read -r -d '' PASS < {shlex.quote(str(ssh_keygen_file))}; export PASS; "
                  f"openssl pkey -in {shlex.quote(str(key_file))} -passin env:PASS")
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout == clear[key_id]


def test_our_encrypted_key_uses_the_chosen_kdf_cost(tmp_path):
    pem = keystore.dump_key(x509util.new_key("ec"), b"pass")
    (tmp_path / "k.pem").write_text(pem)
    parsed = subprocess.run(["openssl", "asn1parse", "-in", str(tmp_path / "k.pem")], capture_output=True,
                            text=True, check=True).stdout
    assert ":PBES2" in parsed and ":PBKDF2" in parsed and ":hmacWithSHA256" in parsed and ":aes-256-cbc" in parsed
    rounds = format(keystore.KDF_ROUNDS, "X")
    assert f"prim: INTEGER           :{rounds.zfill(len(rounds) + len(rounds) % 2)}\n" in parsed
    assert keystore.KDF_ROUNDS >= 600_000


def test_a_configuration_may_still_come_from_a_pipe(tmp_path):
    done = subprocess.run(["bash", "-c", f"cd {shlex.quote(str(tmp_path))} && PYTHONPATH={shlex.quote(AGENT)} "
                           f"{shlex.quote(sys.executable)} -c 'from serverpki.config import load_config, parse_config; "
                           f"print(load_config(\"/dev/stdin\").x509.country)'"],
                          input='[x509]\ncountry = "DE"\n', capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "DE\n", done.stderr


@pytest.mark.parametrize("setting", ["local_ca.passphrase_file", "paths.db_encryption_key"])
@pytest.mark.parametrize("flaw", ["symbolic link", "another user's"])
def test_minus_i_and_minus_x_give_up_on_a_passphrase_file_that_is_not_private(conn, config, tmp_path, setting, flaw):
    """Through the handlers: -I reads local_ca.passphrase_file, -X db_encryption_key; nothing changes."""
    from test_local_ca import job_row

    if flaw == "another user's":
        need_root("giving a file to another user needs it")
    real = tmp_path / "real.pass"
    real.write_text("a passphrase\n")
    real.chmod(0o600)
    path = tmp_path / "configured.pass"
    if flaw == "symbolic link":
        path.symlink_to(real)
    else:
        path.write_text("a passphrase\n")
        path.chmod(0o600)
        os.chown(path, OTHER_UID, -1)
    section, key = setting.split(".")
    setattr(getattr(config, section), key, str(path))
    request = "SELECT request_local_ca('Local CA', 'ec')" if section == "local_ca" else "SELECT request_key_encryption(true)"
    job_id = conn.execute(request).fetchone()[0]
    outcome = run_job(conn, job_id, config)
    assert isinstance(outcome, GiveUp) and f"passphrase file {path}" in str(outcome)
    assert ("realpath" if flaw == "symbolic link" else "chown") in str(outcome)
    assert job_row(conn, job_id)["state"] == "dead" and "a passphrase" not in job_row(conn, job_id)["last_error"]
    assert conn.execute("SELECT count(*) FROM certinstances").fetchone()[0] == 0
    assert keys_encrypted(conn) is False
