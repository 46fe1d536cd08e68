"""The agent's configuration: one TOML file, read once, checked completely, frozen.

Where it is found, first hit wins: the path given with -f, then
$SERVERPKI_CONFIG, then SEARCH_PATH (./serverpki.toml,
~/.config/serverpki/serverpki.toml, /usr/local/etc/serverpki/serverpki.toml,
/etc/serverpki/serverpki.toml). With no file at all every default applies
and the database is found from libpq's variables (PGHOST, PGDATABASE, ...).

Each [section] is a frozen dataclass; its fields, their types and defaults
are the documentation of the keys (examples/serverpki.toml shows them all).
Unknown sections and keys, wrong types and impossible values are a
ConfigError that names the key and the file. Values that only some actions
need are optional here and asked for with Config.require(), which names the
action, the key and the file. Relative paths are taken from the directory of
the configuration file, and ~ is expanded.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import os
import socket
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from email.utils import parseaddr
from logging.handlers import SysLogHandler
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConfigError
from .secretfile import SecretFileError, read_inspected

ENV_VAR = "SERVERPKI_CONFIG"
FILE_NAME = "serverpki.toml"

# the usual places, in the order they are tried (tests replace this tuple)
SEARCH_PATH: tuple[Path, ...] = (
    Path(FILE_NAME),
    Path("~/.config/serverpki") / FILE_NAME,
    Path("/usr/local/etc/serverpki") / FILE_NAME,
    Path("/etc/serverpki") / FILE_NAME,
)

LOG_LEVELS = ("debug", "verbose", "info", "warning", "error", "critical")


# --- checks of single values: each returns the problem, or None -------------------------------------------

def _positive(value: int) -> str | None:
    return None if value > 0 else "must be a positive number"


def _port(value: int) -> str | None:
    return None if 0 < value < 65536 else "must be a port number (1-65535)"


def _rsa_bits(value: int) -> str | None:
    return None if value >= 2048 and value % 8 == 0 else "must be at least 2048 bits and a multiple of 8"


def _country(value: str | None) -> str | None:
    if value is None or (len(value) == 2 and value.isascii() and value.isalpha()):
        return None
    return "must be a two-letter country code (ISO 3166), e.g. \"DE\""


def _curve(value: str) -> str | None:
    from .x509util import CURVES  # the curves keys are made on, so the configuration and they agree

    return None if value.strip().lower() in CURVES else \
        f"unknown curve: give one of secp256r1 (P-256), secp384r1 (P-384), secp521r1 (P-521)"


def _curve_name(value: str) -> str:
    from .x509util import CURVES

    return CURVES[value.strip().lower()].name


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value.lower() in choices else f"must be one of {', '.join(choices)}"
    return check


def _facility(value: str) -> str | None:
    names = SysLogHandler.facility_names
    return None if value.lower() in names else f"unknown syslog facility; one of {', '.join(sorted(names))}"


def _https_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    return None if parts.scheme == "https" and parts.netloc else "must be an https:// URL"


def _email(value: str | None) -> str | None:
    if value is None:
        return None
    local, _, domain = value.rpartition("@")
    plain = local and "." in domain and " " not in value and "@" in parseaddr(value)[1]
    return None if plain else "must be a mail address, e.g. pki@example.org"


def _emails(values: tuple[str, ...]) -> str | None:
    return next((f"{v!r} {problem}" for v in values if (problem := _email(v))), None)


def _dsn(value: str) -> str | None:
    try:
        conninfo_to_dict(value)
    except Exception as exc:  # psycopg.ProgrammingError: the conninfo does not parse
        return f"not a libpq connection string or URI ({' '.join(str(exc).split())})"
    return None


def split_host_port(value: str, default_port: int) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port' or a bare IPv6 address -> (host, port); ValueError if malformed."""
    host, port = value, default_port
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(value)
        if rest:
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, text = value.split(":")
        port = int(text)
    if not host or not 0 < port < 65536:
        raise ValueError(value)
    return host, port


def _host_port(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        split_host_port(value, 53)
    except ValueError:
        return "must be host or host:port, e.g. \"ns1.example.org:53\""
    return None


def _syslog_address(value: str) -> str | None:
    if value == "" or value.startswith("/"):
        return None
    try:
        split_host_port(value, 514)
    except ValueError:
        return "must be a socket path (/dev/log), host[:port] for UDP, or \"\" for no syslog"
    return None


def _zones(value: dict[str, str]) -> str | None:
    import dns.name

    for suffix, zone in value.items():
        for text in (suffix, zone):
            try:
                dns.name.from_text(text)
            except Exception:
                return f"{text!r} is not a DNS name"
    return None


def _base64url(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return "must be base64url, as the ACME CA hands it out"
    return None


def _setting(default: Any = MISSING, *, check: Callable[[Any], str | None] | None = None,
             normalize: Callable[[Any], Any] | None = None, secret: bool = False,
             factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its check and normalization; a secret is masked in repr()."""
    meta = {"check": check, "normalize": normalize, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --- the sections -------------------------------------------------------------------------------------------

class _Section:
    """Common behaviour of the sections: a repr without secrets, and cross-key checks."""

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                # a DSN keeps host and database, loses its password
                value = _mask_dsn(value) if f.name == "dsn" else "***"
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def _check(self) -> tuple[str, str] | None:
        """(key, problem) when keys contradict each other; None when they agree."""
        return None


def _mask_dsn(dsn: str) -> str:
    info = conninfo_to_dict(dsn)
    if "password" not in info:
        return dsn
    info["password"] = "***"
    return make_conninfo(**info)


@dataclass(frozen=True, repr=False)
class DatabaseConfig(_Section):
    # libpq connection string or URI; empty: PGHOST, PGPORT, PGDATABASE, PGUSER ... apply
    dsn: str = _setting("", check=_dsn, secret=True)


@dataclass(frozen=True, repr=False)
class PathsConfig(_Section):
    # where -E exports a certificate and its key
    work_dir: Path | None = _setting(None)
    # file whose whole content is the passphrase that encrypts private keys at rest (-X, -Y); private (secretfile)
    db_encryption_key: Path | None = _setting(None)


@dataclass(frozen=True, repr=False)
class X509Config(_Section):
    country: str | None = _setting(None, check=_country)
    state: str | None = _setting(None)
    locality: str | None = _setting(None)
    organization: str | None = _setting(None)
    organizational_unit: str | None = _setting(None)
    server_lifetime_days: int = _setting(375, check=_positive)
    client_lifetime_days: int = _setting(375, check=_positive)
    rsa_key_size: int = _setting(2048, check=_rsa_bits)
    ec_curve: str = _setting("secp384r1", check=_curve, normalize=_curve_name)


@dataclass(frozen=True, repr=False)
class LocalCAConfig(_Section):
    name: str = _setting("Local CA")
    key_type: str = _setting("rsa", check=_one_of("rsa", "ec"), normalize=str.lower)
    # bits of the CA key: the RSA modulus; for an ec key 256, 384 or 521 name the curve, else [x509] ec_curve
    key_size: int = _setting(4096, check=_positive)
    lifetime_days: int = _setting(3650, check=_positive)
    # file whose whole content is the CA key's passphrase; without it the passphrase is asked on a terminal
    passphrase_file: Path | None = _setting(None)

    def _check(self) -> tuple[str, str] | None:
        if self.key_type == "rsa" and (problem := _rsa_bits(self.key_size)):
            return "key_size", f"{problem} for an rsa CA key"
        if self.key_type == "ec" and self.key_size not in (256, 384, 521) and _rsa_bits(self.key_size):
            return "key_size", "must be 256, 384 or 521 for an ec CA key (or leave it out: [x509] ec_curve applies)"
        return None


@dataclass(frozen=True, repr=False)
class AcmeConfig(_Section):
    directory_url: str = _setting("https://acme-v02.api.letsencrypt.org/directory", check=_https_url)
    contact_email: str | None = _setting(None, check=_email)
    agree_tos: bool = _setting(False)
    # CA bundle to trust for the directory (Pebble's own CA); none: the system's trust store
    ca_bundle: Path | None = _setting(None)
    # external account binding, if the CA asks for one
    eab_kid: str | None = _setting(None)
    eab_hmac_key: str | None = _setting(None, check=_base64url, secret=True)

    def _check(self) -> tuple[str, str] | None:
        if (self.eab_kid is None) != (self.eab_hmac_key is None):
            missing = "eab_hmac_key" if self.eab_hmac_key is None else "eab_kid"
            return missing, "eab_kid and eab_hmac_key go together (external account binding)"
        return None


@dataclass(frozen=True, repr=False)
class DnsConfig(_Section):
    # BIND key file, as written by tsig-keygen
    tsig_key_file: Path | None = _setting(None)
    # host[:port] that receives the updates; none: the primary named in the zone's SOA
    primary: str | None = _setting(None, check=_host_port)
    # name suffix -> zone to update, for names whose zone is not found from DNS
    zones: dict[str, str] = _setting(factory=dict, check=_zones)
    propagation_timeout_seconds: int = _setting(60, check=_positive)

    @property
    def primary_address(self) -> tuple[str, int] | None:
        return None if self.primary is None else split_host_port(self.primary, 53)


@dataclass(frozen=True, repr=False)
class SshConfig(_Section):
    known_hosts: Path = _setting(factory=lambda: Path("~/.ssh/known_hosts").expanduser())
    # an OpenSSH client configuration (Host, HostName, Port, User, IdentityFile ...)
    config_file: Path | None = _setting(None)
    user: str = _setting("root")
    identity_file: Path | None = _setting(None)
    connect_timeout_seconds: int = _setting(10, check=_positive)
    command_timeout_seconds: int = _setting(60, check=_positive)
    max_parallel_hosts: int = _setting(4, check=_positive)


@dataclass(frozen=True, repr=False)
class MailConfig(_Section):
    relay_host: str = _setting("localhost")
    relay_port: int = _setting(25, check=_port)
    sender: str | None = _setting(None, check=_email)
    recipients: tuple[str, ...] = _setting((), check=_emails)
    starttls: bool = _setting(False)
    username: str | None = _setting(None)
    password_file: Path | None = _setting(None)

    def _check(self) -> tuple[str, str] | None:
        if (self.username is None) != (self.password_file is None):
            missing = "password_file" if self.password_file is None else "username"
            return missing, "username and password_file go together (SMTP AUTH)"
        return None

    def unusable(self) -> str | None:
        """Why no mail can be sent with this section, naming the key; None when it can. Asked when mail
        is sent: the keys only mail needs (sender, recipients), and a login that would cross the network
        in clear (username without starttls, to a relay that is not on this host)."""
        if not self.sender:
            return ("mail.sender is not set: set sender in the [mail] section of the configuration "
                    "(e.g. serverpki@example.org)")
        if not self.recipients:
            return ("mail.recipients is empty: list who gets the reminders in the [mail] section "
                    "of the configuration (e.g. recipients = [\"hostmaster@example.org\"])")
        if self.username and not self.starttls and not _is_loopback(self.relay_host):
            return (f"mail.username is set but mail.starttls is false: the password would cross the network "
                    f"to {self.relay_host} in clear; set starttls = true")
        return None


def _webhook_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        return "must not hold a user or password (user:password@): put a bearer token into webhook_token_file"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return None   # a receiver on this host: nothing crosses the network
    return "must be an https:// URL (http:// only to a receiver on this host, e.g. http://127.0.0.1:8080/alerts)"


@dataclass(frozen=True, repr=False)
class AlertsConfig(_Section):
    # mail the digest of new alerts to the [mail] recipients (then [mail] needs sender and recipients)
    mail: bool = _setting(False)
    # POST the digest as JSON here (docs/alerts.md); none: no webhook
    webhook_url: str | None = _setting(None, check=_webhook_url, secret=True)   # its path is often the secret
    # file whose first line is a bearer token for the webhook (Authorization: Bearer ...; never logged)
    webhook_token_file: Path | None = _setting(None)
    webhook_timeout_seconds: int = _setting(10, check=_positive)

    def _check(self) -> tuple[str, str] | None:
        if self.webhook_token_file is not None and self.webhook_url is None:
            return "webhook_token_file", "goes with webhook_url (the token is sent to the webhook only)"
        return None

    @property
    def channels(self) -> list[str]:
        """Where alerts go: 'mail' (mail = true), 'webhook' (a URL is set); none: alerts are not told."""
        return (["mail"] if self.mail else []) + (["webhook"] if self.webhook_url else [])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, repr=False)
class LoggingConfig(_Section):
    # what goes to syslog: debug, verbose, info, warning, error or critical (-v and -d add detail)
    level: str = _setting("info", check=_one_of(*LOG_LEVELS), normalize=str.lower)
    syslog_facility: str = _setting("local4", check=_facility, normalize=str.lower)
    # a socket path, host[:port] for UDP, or "" for no syslog
    syslog_address: str = _setting("/dev/log", check=_syslog_address)


def default_agent_name() -> str:
    """The name an agent claims jobs under when [agent] name and --name give none: host-pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, repr=False)
class AgentConfig(_Section):
    name: str = _setting(factory=default_agent_name)
    lease_seconds: int = _setting(300, check=_positive)
    poll_seconds: int = _setting(30, check=_positive)
    batch: int = _setting(10, check=_positive)


SECTIONS: dict[str, type[_Section]] = {
    "database": DatabaseConfig, "paths": PathsConfig, "x509": X509Config, "local_ca": LocalCAConfig,
    "acme": AcmeConfig, "dns": DnsConfig, "ssh": SshConfig, "mail": MailConfig,
    "alerts": AlertsConfig, "logging": LoggingConfig, "agent": AgentConfig,
}


@dataclass(frozen=True)
class Config:
    """The whole configuration; `source` is the file it came from (None: no file, defaults)."""

    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    x509: X509Config = field(default_factory=X509Config)
    local_ca: LocalCAConfig = field(default_factory=LocalCAConfig)
    acme: AcmeConfig = field(default_factory=AcmeConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    ssh: SshConfig = field(default_factory=SshConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    source: Path | None = None

    def _where(self) -> str:
        if self.source is not None:
            return str(self.source)
        return "a configuration file (none was found: " + ", ".join(str(p) for p in _candidates()) + ")"

    def require(self, section: str, key: str, needed_for: str = "this action") -> Any:
        """The value of [section] key, which `needed_for` cannot do without; a named file must exist."""
        if section not in SECTIONS or key not in {f.name for f in fields(SECTIONS[section])}:
            raise KeyError(f"[{section}] {key} is no configuration key")
        value = getattr(getattr(self, section), key)
        if value is None or value == "" or value == () or value == {}:
            raise ConfigError(f"{needed_for} needs [{section}] {key} in {self._where()}")
        if isinstance(value, Path) and not value.exists():
            raise ConfigError(f"{needed_for} needs [{section}] {key}, but {value} does not exist "
                              f"(configuration file {self.source})")
        return value

    def secrets_held(self) -> list[str]:
        """The secrets written in the configuration itself (not in files it names)."""
        held = []
        if self.database.dsn and conninfo_to_dict(self.database.dsn).get("password"):
            held.append("[database] dsn's password")
        if self.acme.eab_hmac_key:
            held.append("[acme] eab_hmac_key")
        return held


# --- finding and reading ------------------------------------------------------------------------------------

def _candidates() -> list[Path]:
    return [p.expanduser() for p in SEARCH_PATH]


def find_config(path: Path | None = None) -> Path | None:
    """The file to read: -f, else $SERVERPKI_CONFIG, else the first of SEARCH_PATH that exists."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return next((p for p in _candidates() if p.is_file()), None)


def load_config(path: Path | None = None) -> Config:
    """Find, read and check the configuration; every problem is a ConfigError naming key and file."""
    found = find_config(path)
    if found is None:
        return Config()
    try:
        raw, not_private = read_inspected(found, "configuration file")
        data = tomllib.loads(raw.decode("utf-8"))
    except SecretFileError as exc:
        origin = "" if path is not None or not os.environ.get(ENV_VAR) else f" (from ${ENV_VAR})"
        raise ConfigError(f"{exc}{origin}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {found} is not UTF-8 text: {exc.reason}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {found} is not valid TOML: {exc}") from exc
    config = parse_config(data, found)
    held = config.secrets_held()
    if held and not_private:
        # a file without secrets may be shared; one with a password must be as private as a key file
        raise ConfigError(f"{not_private} (it holds {' and '.join(held)})")
    return config


def parse_config(data: dict[str, Any], source: Path) -> Config:
    """Build the Config from parsed TOML; source names the file in messages and anchors relative paths."""
    def fail(where: str, problem: str) -> ConfigError:
        return ConfigError(f"configuration file {source}: {where}: {problem}")

    sections: dict[str, _Section] = {}
    for name, table in data.items():
        if name not in SECTIONS:
            raise fail(f"[{name}]", "unknown section" + _suggest(name, SECTIONS))
        if not isinstance(table, dict):
            raise fail(f"[{name}]", "must be a table ([" + name + "] followed by key = value lines)")
        sections[name] = _build(SECTIONS[name], name, table, source.absolute().parent, fail)
    config = Config(**sections, source=source)
    # alerts by mail are sent by every run: a [mail] section that cannot send is a mistake of the file
    if config.alerts.mail and (problem := config.mail.unusable()):
        raise fail("[alerts] mail", f"alerts cannot be mailed: {problem}")
    return config


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"


def _build(cls: type[_Section], section: str, table: dict[str, Any], base: Path,
           fail: Callable[[str, str], ConfigError]) -> _Section:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        where = f"[{section}] {key}"
        if key not in known:
            raise fail(where, "unknown key" + _suggest(key, known))
        try:
            value = _convert(hints[key], raw, base)
        except TypeError as exc:
            raise fail(where, str(exc)) from None
        check = known[key].metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise fail(where, problem)
        normalize = known[key].metadata.get("normalize")
        values[key] = normalize(value) if normalize else value
    built = cls(**values)
    contradiction = built._check()
    if contradiction:
        raise fail(f"[{section}] {contradiction[0]}", contradiction[1])
    return built


_TOML_NAMES = {str: "a string", int: "an integer", bool: "true or false", Path: "a path (a string)"}


def _convert(hint: Any, raw: Any, base: Path) -> Any:
    """raw (as tomllib returns it) as the field's type, or TypeError saying what was expected."""
    if isinstance(hint, types.UnionType):  # X | None: TOML has no null, a present key is an X
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise TypeError(f"must be a list of strings, not {_toml_type(raw)}")
        return tuple(raw)
    if origin is dict:
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise TypeError(f"must be a table of strings, not {_toml_type(raw)}")
        return dict(raw)
    if hint is int and (isinstance(raw, bool) or not isinstance(raw, int)):
        raise TypeError(f"must be {_TOML_NAMES[int]}, not {_toml_type(raw)}")
    if hint in (str, bool, Path) and not isinstance(raw, str if hint is Path else hint):
        raise TypeError(f"must be {_TOML_NAMES[hint]}, not {_toml_type(raw)}")
    if hint is Path:
        if not raw:
            raise TypeError("must be a path, not an empty string (leave the key out instead)")
        return base / Path(raw).expanduser()
    return raw


def _toml_type(raw: Any) -> str:
    kinds = {bool: "true/false", int: "an integer", float: "a float", str: "a string",
             list: "a list", dict: "a table"}
    return next((name for kind, name in kinds.items() if isinstance(raw, kind)), type(raw).__name__)
