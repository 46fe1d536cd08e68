"""The agent's configuration file (serverpki.config) and its logging (serverpki.log)."""

from __future__ import annotations

import logging
import logging.handlers
import re
import socket
import tomllib
from dataclasses import fields
from importlib import resources
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from typer.testing import CliRunner

from serverpki import config as config_module
from serverpki.config import SECTIONS, Config, load_config
from serverpki.errors import ConfigError, UsageError
from serverpki.log import VERBOSE, remove_private_keys, setup_logging

EXAMPLE = Path(str(resources.files("serverpki") / "examples" / "serverpki.toml"))


@pytest.fixture(autouse=True)
def usual_places(tmp_path, monkeypatch):
    """The usual places point into tmp_path (none exists yet), and $SERVERPKI_CONFIG is unset."""
    places = (tmp_path / "cwd" / "serverpki.toml", tmp_path / "home" / "serverpki.toml",
              tmp_path / "usr-local-etc" / "serverpki.toml", tmp_path / "etc" / "serverpki.toml")
    monkeypatch.setattr(config_module, "SEARCH_PATH", places)
    monkeypatch.delenv("SERVERPKI_CONFIG", raising=False)
    return places


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def agent_named(name: str) -> str:
    return f'[agent]\nname = "{name}"\n'


# --- where the file is found ----------------------------------------------------------------------------------

def test_without_any_file_the_defaults_apply():
    config = load_config(None)
    assert config.source is None
    assert config.database.dsn == ""  # libpq's variables decide
    assert config.x509.server_lifetime_days == 375 and config.x509.ec_curve == "secp384r1"
    assert config.local_ca.key_size == 4096 and config.local_ca.name == "Local CA"
    assert config.acme.agree_tos is False
    assert config.ssh.user == "root" and config.ssh.max_parallel_hosts == 4
    assert config.mail.relay_host == "localhost" and config.mail.relay_port == 25 and config.mail.recipients == ()
    assert config.logging.syslog_facility == "local4" and config.logging.syslog_address == "/dev/log"
    assert config.agent.name.endswith(f"-{__import__('os').getpid()}")
    assert config == Config(agent=config.agent)


def test_usual_places_are_tried_in_order(usual_places):
    for i in (3, 2, 1, 0):  # each nearer place, once it exists, wins over the farther ones
        write(usual_places[i], agent_named(f"place{i}"))
        config = load_config(None)
        assert config.agent.name == f"place{i}" and config.source == usual_places[i]


def test_env_beats_usual_places_and_f_beats_env(usual_places, tmp_path, monkeypatch):
    write(usual_places[0], agent_named("usual"))
    env_file = write(tmp_path / "env.toml", agent_named("env"))
    explicit = write(tmp_path / "explicit.toml", agent_named("explicit"))
    monkeypatch.setenv("SERVERPKI_CONFIG", str(env_file))
    assert load_config(None).agent.name == "env"
    assert load_config(explicit).agent.name == "explicit"
    monkeypatch.setenv("SERVERPKI_CONFIG", "")  # empty counts as unset
    assert load_config(None).agent.name == "usual"


@pytest.mark.parametrize("how", ["-f", "env"])
def test_a_named_file_that_is_missing_is_an_error_not_a_fallback(usual_places, tmp_path, monkeypatch, how):
    write(usual_places[0], agent_named("usual"))
    missing = tmp_path / "nosuch.toml"
    if how == "env":
        monkeypatch.setenv("SERVERPKI_CONFIG", str(missing))
    with pytest.raises(ConfigError, match=re.escape(str(missing))) as info:
        load_config(missing if how == "-f" else None)
    assert "No such file" in str(info.value)
    assert ("$SERVERPKI_CONFIG" in str(info.value)) == (how == "env")


# --- every problem names the key and the file ------------------------------------------------------------------

@pytest.mark.parametrize("text, where, problem", [
    ('[x509]\ncontry = "DE"\n', "[x509] contry", "unknown key (did you mean country?)"),
    ('[x509]\nzzz = 1\n', "[x509] zzz", "unknown key (known: country, state,"),
    ('[x059]\ncountry = "DE"\n', "[x059]", "unknown section (did you mean x509?)"),
    ('x509 = 3\n', "[x509]", "must be a table"),
    ('[x509]\nserver_lifetime_days = "375"\n', "[x509] server_lifetime_days", "must be an integer, not a string"),
    ('[x509]\nserver_lifetime_days = true\n', "[x509] server_lifetime_days", "must be an integer, not true/false"),
    ('[x509]\nserver_lifetime_days = 0\n', "[x509] server_lifetime_days", "must be a positive number"),
    ('[x509]\nserver_lifetime_days = 3.5\n', "[x509] server_lifetime_days", "must be an integer, not a float"),
    ('[x509]\ncountry = "Germany"\n', "[x509] country", "two-letter country code"),
    ('[x509]\nrsa_key_size = 1024\n', "[x509] rsa_key_size", "at least 2048"),
    ('[x509]\nec_curve = "sect571k1"\n', "[x509] ec_curve", "unknown curve: give one of secp256r1 (P-256)"),
    ('[x509]\nec_curve = "brainpoolP256r1"\n', "[x509] ec_curve", "unknown curve: give one of secp256r1 (P-256)"),
    ('[local_ca]\nkey_type = "dsa"\n', "[local_ca] key_type", "must be one of rsa, ec"),
    ('[local_ca]\nkey_size = 384\n', "[local_ca] key_size", "at least 2048 bits and a multiple of 8 for an rsa CA key"),
    ('[local_ca]\nkey_type = "ec"\nkey_size = 512\n', "[local_ca] key_size", "must be 256, 384 or 521 for an ec CA key"),
    ('[local_ca]\npassphrase_file = 1\n', "[local_ca] passphrase_file", "must be a path (a string), not an integer"),
    ('[local_ca]\npassphrase_file = ""\n', "[local_ca] passphrase_file", "not an empty string"),
    ('[acme]\nagree_tos = "yes"\n', "[acme] agree_tos", "must be true or false, not a string"),
    ('[acme]\ndirectory_url = "http://acme.example.org/dir"\n', "[acme] directory_url", "https:// URL"),
    ('[acme]\ncontact_email = "nobody"\n', "[acme] contact_email", "must be a mail address"),
    ('[acme]\neab_kid = "kid-1"\n', "[acme] eab_hmac_key", "eab_kid and eab_hmac_key go together"),
    ('[acme]\neab_kid = "k"\neab_hmac_key = "not base64!"\n', "[acme] eab_hmac_key", "must be base64url"),
    ('[dns]\nprimary = "ns1.example.org:dns"\n', "[dns] primary", "must be host or host:port"),
    ('[dns]\nzones = ["example.org"]\n', "[dns] zones", "must be a table of strings, not a list"),
    ('[dns]\nzones = { "a.example.org" = 1 }\n', "[dns] zones", "must be a table of strings"),
    ('[ssh]\nmax_parallel_hosts = -1\n', "[ssh] max_parallel_hosts", "must be a positive number"),
    ('[mail]\nrecipients = "a@example.org"\n', "[mail] recipients", "must be a list of strings, not a string"),
    ('[mail]\nrecipients = ["a@example.org", 7]\n', "[mail] recipients", "must be a list of strings"),
    ('[mail]\nrecipients = ["a@example.org", "b"]\n', "[mail] recipients", "'b' must be a mail address"),
    ('[mail]\nrelay_port = 70000\n', "[mail] relay_port", "must be a port number"),
    ('[mail]\nusername = "pki"\n', "[mail] password_file", "username and password_file go together"),
    ('[logging]\nlevel = "loud"\n', "[logging] level", "must be one of debug, verbose, info"),
    ('[logging]\nsyslog_facility = "local9"\n', "[logging] syslog_facility", "unknown syslog facility"),
    ('[logging]\nsyslog_address = "loghost:syslog"\n', "[logging] syslog_address", "socket path"),
    ('[database]\ndsn = "nonsense"\n', "[database] dsn", "not a libpq connection string"),
    ('[database]\ndsn = 5432\n', "[database] dsn", "must be a string, not an integer"),
    ('[agent]\nbatch = 0\n', "[agent] batch", "must be a positive number"),
])
def test_each_problem_names_key_and_file(tmp_path, text, where, problem):
    path = write(tmp_path / "serverpki.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"configuration file {path}: {where}: "), message
    assert problem in message
    assert "\n" not in message  # one line for the command line
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path / "serverpki.toml", "[database\n")
    with pytest.raises(ConfigError, match=rf"configuration file {re.escape(str(path))} is not valid TOML"):
        load_config(path)


def test_values_are_normalized_and_typed(tmp_path):
    path = write(tmp_path / "conf" / "serverpki.toml", """
[x509]
ec_curve = "P-256"
[local_ca]
key_type = "EC"
key_size = 384
passphrase_file = "secrets/ca.pass"
[dns]
primary = "[::1]:5353"
zones = { "in.example.org" = "example.org" }
[ssh]
known_hosts = "/etc/ssh/ssh_known_hosts"
[logging]
level = "Verbose"
syslog_facility = "LOCAL0"
""")
    config = load_config(path)
    assert config.x509.ec_curve == "secp256r1" and config.local_ca.key_type == "ec"
    assert config.local_ca.passphrase_file == tmp_path / "conf" / "secrets" / "ca.pass"  # relative to the file
    assert config.ssh.known_hosts == Path("/etc/ssh/ssh_known_hosts")
    assert config.dns.primary_address == ("::1", 5353) and config.dns.zones == {"in.example.org": "example.org"}
    assert config.logging.level == "verbose" and config.logging.syslog_facility == "local0"
    with pytest.raises(AttributeError):
        config.x509.ec_curve = "secp521r1"  # frozen


# --- the example ------------------------------------------------------------------------------------------------

def test_the_example_loads_and_sets_what_it_shows():
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE
    assert config.x509.country == "DE" and config.mail.recipients == ("hostmaster@example.org",)
    assert config.dns.zones == {"internal.example.org": "example.org"}


def test_the_example_documents_every_key_with_a_comment():
    section, documented, comment_above = None, {}, False
    for line in EXAMPLE.read_text().splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line)
        key = re.fullmatch(r"#? ?(\w+) = .*", line)
        if header:
            section = header.group(1)
        elif key and section:
            documented[(section, key.group(1))] = comment_above
        comment_above = line.startswith("# ") and not key
    expected = {(name, f.name) for name, cls in SECTIONS.items() for f in fields(cls)}
    assert set(documented) == expected
    assert [k for k, commented in documented.items() if not commented] == []
    # and the commented-out ones are valid too: uncommented, the example still loads
    tomllib.loads(re.sub(r"(?m)^# (\w+ = )", r"\1", EXAMPLE.read_text()))


def test_the_example_with_every_key_set_still_loads(tmp_path):
    path = write(tmp_path / "all.toml", re.sub(r"(?m)^# (\w+ = )", r"\1", EXAMPLE.read_text()))
    path.chmod(0o600)  # it holds eab_hmac_key: a configuration with a secret must be private
    config = load_config(path)
    assert config.acme.eab_kid == "kid-1" and config.mail.username == "pki"


# --- require(), secrets, the TSIG key --------------------------------------------------------------------------

def test_require_names_action_key_and_file(tmp_path):
    path = write(tmp_path / "serverpki.toml", "[mail]\nrelay_host = \"mx.example.org\"\n")
    config = load_config(path)
    with pytest.raises(ConfigError, match=re.escape(f"reminder mails needs [mail] sender in {path}")):
        config.require("mail", "sender", "reminder mails")
    with pytest.raises(ConfigError, match=re.escape(f"this action needs [mail] recipients in {path}")):
        config.require("mail", "recipients")
    assert config.require("mail", "relay_host") == "mx.example.org"
    with pytest.raises(KeyError):
        config.require("mail", "senders")


def test_require_without_a_file_says_where_it_looked(usual_places):
    with pytest.raises(ConfigError, match=r"-E needs \[paths\] work_dir in a configuration file \(none was found: ") as info:
        load_config(None).require("paths", "work_dir", "-E")
    assert str(usual_places[3]) in str(info.value)


def test_require_of_a_path_wants_it_to_exist(tmp_path):
    path = write(tmp_path / "serverpki.toml", '[paths]\ndb_encryption_key = "pass.txt"\n')
    config = load_config(path)
    with pytest.raises(ConfigError, match=r"-X needs \[paths\] db_encryption_key, but .*pass.txt does not exist"):
        config.require("paths", "db_encryption_key", "-X")
    write(tmp_path / "pass.txt", "correct horse battery staple\n")
    assert config.require("paths", "db_encryption_key", "-X") == tmp_path / "pass.txt"


def test_secrets_are_not_in_repr(tmp_path):
    hmac = "c2VjcmV0LWhtYWMta2V5LWZyb20tdGhlLWNh"
    path = write(tmp_path / "serverpki.toml", f"""
[database]
dsn = "postgresql://pki_op:s3cr3t-pw@db.example.org/serverpki"
[acme]
eab_kid = "kid-1"
eab_hmac_key = "{hmac}"
""")
    path.chmod(0o600)  # it holds secrets: it must be private (tests/test_secret_files.py)
    config = load_config(path)
    assert config.acme.eab_hmac_key == hmac and "s3cr3t-pw" in config.database.dsn
    for text in (repr(config), repr(config.acme), repr(config.database), str(config)):
        assert hmac not in text and "s3cr3t-pw" not in text
    assert "eab_hmac_key='***'" in repr(config.acme) and "eab_kid='kid-1'" in repr(config.acme)
    assert "db.example.org" in repr(config.database) and "password=***" in repr(config.database)


def test_tsig_key_is_read_from_a_bind_key_file(tmp_path):
    from serverpki.dnsupdate import read_tsig_key

    key_file = write(tmp_path / "update.key",
                     'key "serverpki-update" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0LXRzaWcta2V5LWZvci10ZXN0cw==";\n};\n')
    key_file.chmod(0o600)
    config = load_config(write(tmp_path / "serverpki.toml", '[dns]\ntsig_key_file = "update.key"\n'))
    key = read_tsig_key(config)
    assert key.name.to_text() == "serverpki-update." and key.algorithm.to_text() == "hmac-sha256."
    assert key.secret == b"secret-tsig-key-for-tests"
    key_file.write_text("this is not a key file\n")
    with pytest.raises(ConfigError, match=r"\[dns\] tsig_key_file .*update.key is not a BIND key file"):
        read_tsig_key(config)
    key_file.unlink()
    with pytest.raises(ConfigError, match=r"DNS updates needs \[dns\] tsig_key_file, but .* does not exist"):
        read_tsig_key(config)
    with pytest.raises(ConfigError, match=r"needs \[dns\] tsig_key_file in "):
        read_tsig_key(Config())


def test_operate_reports_a_bad_key_in_one_line_with_status_2(tmp_path):
    from serverpki.operate import app

    path = write(tmp_path / "serverpki.toml", '[x509]\ncontry = "DE"\n')
    result = CliRunner().invoke(app, ["-n", "-f", str(path)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"operate_serverPKI: configuration file {path}: "
                                     "[x509] contry: unknown key (did you mean country?)")


# --- logging ----------------------------------------------------------------------------------------------------

@pytest.fixture
def logs():
    """Undo setup_logging after the test: our handlers off the root logger, levels back."""
    root, ours = logging.getLogger(), logging.getLogger("serverpki")
    levels = root.level, ours.level
    yield
    for handler in [h for h in root.handlers if getattr(h, "_serverpki", False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


def no_syslog(**settings) -> Config:
    return Config(logging=config_module.LoggingConfig(syslog_address="", **settings))


def emit_all(logger: logging.Logger) -> None:
    logger.debug("a debug line")
    logger.log(VERBOSE, "a verbose line")
    logger.info("an info line")
    logger.warning("a warning line")
    logger.error("an error line")


@pytest.mark.parametrize("flags, shown", [
    ({}, ["an info line", "warning: a warning line", "error: an error line"]),
    ({"verbose": True}, ["a verbose line", "an info line", "warning: a warning line", "error: an error line"]),
    ({"quiet": True}, ["error: an error line"]),
    ({"quiet": True, "verbose": True}, ["error: an error line"]),
])
def test_terminal_levels_follow_q_v(logs, capsys, flags, shown):
    emit_all(setup_logging(no_syslog(), **flags))
    assert capsys.readouterr().err.splitlines() == shown


def test_debug_shows_everything_with_time_and_logger(logs, capsys):
    emit_all(setup_logging(no_syslog(), debug=True))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ serverpki DEBUG: a debug line", lines[0])
    assert logging.getLogger().level == logging.INFO  # the libraries' info too


def test_setup_twice_replaces_its_handlers(logs, capsys):
    setup_logging(no_syslog())
    logger = setup_logging(no_syslog())
    logger.info("once")
    assert capsys.readouterr().err == "once\n"
    assert len([h for h in logging.getLogger().handlers if getattr(h, "_serverpki", False)]) == 1


def test_empty_syslog_address_means_no_syslog_and_no_warning(logs, capsys):
    setup_logging(no_syslog())
    assert not any(isinstance(h, logging.handlers.SysLogHandler) for h in logging.getLogger().handlers)
    assert capsys.readouterr().err == ""


def test_missing_syslog_socket_is_skipped_with_one_warning(logs, capsys, tmp_path):
    config = Config(logging=config_module.LoggingConfig(syslog_address=str(tmp_path / "no-log-socket")))
    logger = setup_logging(config)
    logger.info("still logging")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"warning: syslog disabled: socket {tmp_path / 'no-log-socket'} does not exist")
    assert err[1:] == ["still logging"]
    assert not any(isinstance(h, logging.handlers.SysLogHandler) for h in logging.getLogger().handlers)


@pytest.fixture
def syslog_server():
    """A UDP socket on loopback playing syslog daemon."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        yield server


def test_syslog_gets_the_configured_facility_and_level_even_with_q(logs, capsys, syslog_server):
    port = syslog_server.getsockname()[1]
    config = Config(logging=config_module.LoggingConfig(syslog_address=f"127.0.0.1:{port}", syslog_facility="local4"))
    logger = setup_logging(config, quiet=True, program="operate_serverPKI")
    logger.log(VERBOSE, "not at level info")
    logger.info("scheduled 3 jobs")
    logger.log(VERBOSE, "not at level info either")
    datagram = syslog_server.recv(4096).decode()
    # <PRI> = facility local4 (20) * 8 + severity info (6)
    assert re.fullmatch(r"<166>operate_serverPKI\[\d+\]: INFO serverpki: scheduled 3 jobs\x00", datagram)
    assert capsys.readouterr().err == ""  # -q: nothing on the terminal
    setup_logging(config, quiet=True, verbose=True).log(VERBOSE, "details")
    assert syslog_server.recv(4096).decode().startswith("<166>")  # -v sends VERBOSE to syslog as info


def _pem_keys() -> list[str]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return [
        rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode(),
        rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()).decode(),
        ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.BestAvailableEncryption(b"pw")).decode(),
        ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode(),
    ]


def test_log_filter_removes_private_keys_from_messages_args_and_tracebacks(logs, capsys, syslog_server):
    port = syslog_server.getsockname()[1]
    config = Config(logging=config_module.LoggingConfig(syslog_address=f"127.0.0.1:{port}"))
    logger = setup_logging(config)
    for pem in _pem_keys():
        body = pem.splitlines()[1]
        logger.info("stored key\n%s for www.example.org", pem)
        logger.info(f"bytes too: {pem.encode()!r}")
        try:
            raise ValueError(f"cannot load {pem}")
        except ValueError:
            logger.exception("handler failed")
        err = capsys.readouterr().err
        sent = "".join(syslog_server.recv(65536).decode() for _ in range(3))
        for text in (err, sent):
            assert body not in text and "PRIVATE KEY-----" not in text.replace("(private key removed)", "")
            assert "stored key\n(private key removed)\n for www.example.org" in text
            assert "bytes too: b'(private key removed)\\n'" in text
            assert "ValueError: cannot load (private key removed)" in text


def test_a_cut_off_key_is_removed_to_the_end_and_certificates_stay():
    cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    assert remove_private_keys(f"{cert} and -----BEGIN PRIVATE KEY-----\nMIIEv") == f"{cert} and (private key removed)"
    assert remove_private_keys("a -----BEGIN RSA PRIVATE KEY-----x-----END RSA PRIVATE KEY----- b -----BEGIN "
                               "EC PRIVATE KEY-----y-----END EC PRIVATE KEY----- c") == \
        "a (private key removed) b (private key removed) c"

