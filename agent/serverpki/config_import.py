"""`serverpki config import`: the configuration file of serverPKI 0.9.x (configobj: [Pathes], [X509atts]
with [[names]], [DBAccount], [Misc], $var interpolation) as our TOML (config.py), plus the two days it
kept that live in our database's settings (pre_publish_days, local_issue_mail_days).

Every key of the old file is either carried over or listed with why not and what to do: the listing is
complete by construction (every key read is marked taken; whatever is left is listed). Each carried value
is checked with our own parse_config before it is written, so a value we would refuse (bits below 2048,
a country that is not two letters) is listed instead of written. No password is written or printed: the
original kept none in its file (libpq's ~/.pgpass or trust did it), and one in --dsn is used to connect
only.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import configobj
import tomli_w
import typer
from prettytable import PrettyTable
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .config import parse_config
from .errors import ConfigError, ServerPKIError, UsageError
from .export import write_atomic
from .queries import q

# the 0600 of a key file: the TOML names the key files, and a --dsn may have held a password
OUTPUT_MODE = 0o600
# values of keys whose name says secret are never shown (an old file may carry keys of its own)
SECRET_KEY = re.compile(r"pass|secret|token|pwd", re.I)
# what 0.9.11 did with its DNS updates: TCP to 127.0.0.1 (certdist.distribute_tlsa_rrs, utils.ddns_update)
LEGACY_DNS_PRIMARY = "127.0.0.1:53"


@dataclass(frozen=True)
class Unmapped:
    key: str      # [Section] key, [X509atts][names] key
    value: str    # as found, "(hidden)" for a secret
    why: str
    todo: str


@dataclass
class Converted:
    toml: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, int] = field(default_factory=dict)   # pki.settings name -> days
    unmapped: list[Unmapped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- reading the old file -----------------------------------------------------------------------------------

def read_legacy(path: Path) -> configobj.ConfigObj:
    """The old file, parsed with $var interpolation as 0.9.11 read it; UsageError (exit 2) naming the line."""
    try:
        return configobj.ConfigObj(str(path), encoding="UTF8", interpolation="Template", file_error=True)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start}): not a serverPKI 0.9 configuration file") from None
    except configobj.ConfigObjError as exc:
        errors = getattr(exc, "errors", None) or [exc]
        first = errors[0]
        line = getattr(first, "line_number", "?")
        raise UsageError(f"{path} is not a configobj file (serverPKI 0.9's serverpki.conf): line {line}: "
                         f"{getattr(first, 'msg', str(first)).split(' at line')[0]}") from None


def _flat(section: configobj.Section, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Every (section path, key) of the file, sub-sections included, in file order."""
    found = [(path, key) for key in section.scalars]
    for name in section.sections:
        found += _flat(section[name], path + (name,))
    return found


def _label(path: tuple[str, ...], key: str) -> str:
    return "".join(f"[{p}]" for p in path) + (" " if path else "") + key


# --- converting values --------------------------------------------------------------------------------------

def _text(value: Any) -> str:
    # configobj makes a list of an unquoted value with a comma; 0.9.11 joined such lists with ", "
    return ", ".join(value) if isinstance(value, list) else str(value).strip()


def _int(value: Any) -> int:
    try:
        return int(_text(value))
    except ValueError:
        raise ValueError(f"{_text(value)!r} is not a whole number") from None


def _bool(value: Any) -> bool:
    # validate.Validator's boolean(): what 0.9.11 accepted for dbSslRequired
    text = _text(value).lower()
    if text in ("yes", "true", "on", "1"):
        return True
    if text in ("no", "false", "off", "0", ""):
        return False
    raise ValueError(f"{text!r} is not yes or no")


def _list(value: Any) -> list[str]:
    items = value if isinstance(value, list) else _text(value).split(",")
    return [item.strip() for item in items if item.strip()]


def _facility(value: Any) -> str:
    # 0.9.11 wrote it as Python: syslog.LOG_LOCAL6; ours is syslog's own name, local6
    return re.sub(r"^(syslog\.)?LOG_", "", _text(value), flags=re.I).lower()


def _directory_url(value: Any) -> str:
    # 0.9.11 gave the server's base URL; its ACME library (automatoes) asked BASE/directory
    text = _text(value).rstrip("/")
    return text if text.endswith("/directory") else text + "/directory"


# (section path, key) -> [(toml section, toml key, converter)]: the keys carried one to one
DIRECT: dict[tuple[tuple[str, ...], str], list[tuple[str, str, Callable[[Any], Any]]]] = {
    (("Pathes",), "db_encryption_key"): [("paths", "db_encryption_key", _text)],
    (("Pathes",), "work"): [("paths", "work_dir", _text)],
    (("Pathes",), "ddns_key_file"): [("dns", "tsig_key_file", _text)],
    (("X509atts",), "lifetime"): [("x509", "server_lifetime_days", _int), ("x509", "client_lifetime_days", _int)],
    (("X509atts",), "bits"): [("x509", "rsa_key_size", _int)],
    (("X509atts", "names"), "C"): [("x509", "country", _text)],
    (("X509atts", "names"), "ST"): [("x509", "state", _text)],
    (("X509atts", "names"), "L"): [("x509", "locality", _text)],
    (("X509atts", "names"), "O"): [("x509", "organization", _text)],
    (("X509atts", "names"), "OU"): [("x509", "organizational_unit", _text)],
    (("Misc",), "SSH_CLIENT_USER_NAME"): [("ssh", "user", _text)],
    (("Misc",), "LE_SERVER"): [("acme", "directory_url", _directory_url)],
    (("Misc",), "LE_EMAIL"): [("acme", "contact_email", _text)],
    (("Misc",), "LOCAL_CA_BITS"): [("local_ca", "key_size", _int)],
    (("Misc",), "LOCAL_CA_LIFETIME"): [("local_ca", "lifetime_days", _int)],
    (("Misc",), "SUBJECT_LOCAL_CA"): [("local_ca", "name", _text)],
    (("Misc",), "MAIL_SENDER"): [("mail", "sender", _text)],
    (("Misc",), "MAIL_RECIPIENT"): [("mail", "recipients", _list)],
    (("Misc",), "SYSLOG_FACILITY"): [("logging", "syslog_facility", _facility)],
}

# (section path, key) -> pki.settings name (days)
SETTINGS = {
    (("Misc",), "PRE_PUBLISH_TIMEDELTA"): "pre_publish_days",
    (("Misc",), "LOCAL_ISSUE_MAIL_TIMEDELTA"): "local_issue_mail_days",
}

ZONE_FILE = ("serverPKI 1.0 changes DNS records (ACME challenges, TLSA) only by dynamic update (RFC 2136, TSIG); "
             "it edits no zone files")
# what to do about a zone-file key (the "what to do" column of the listing)
ZONE_FILE_FIX = "nothing if LE_ZONE_UPDATE_METHOD was ddns; else allow dynamic updates with the TSIG key ([dns] tsig_key_file)"

# (section path, key) -> (why, what to do): keys of 0.9.11 that have no place in ours
NOT_CARRIED: dict[tuple[tuple[str, ...], str], tuple[str, str]] = {
    (("Pathes",), "home"): ("only a base for $home in other values; those are carried resolved", "nothing"),
    (("Pathes",), "db"): ("only a base for $db in other values; those are carried resolved", "nothing"),
    (("Pathes",), "ca_cert"): ("the local CA lives in the database (its certificate and key); 0.9.11 "
                               "keeps it there too, only older versions used these files",
                               "nothing: serverpki db import-legacy carries the CA's instances; a CA kept "
                               "only in these files: give them to it as --ca-cert-file and --ca-key-file"),
    (("Pathes",), "ca_key"): ("the local CA lives in the database (its certificate and key)",
                              "as for ca_cert"),
    (("Pathes",), "le_account"): ("the ACME account is stored in the database, not in a file",
                                  "give it to serverpki db import-legacy: --account-file FILE --acme-directory "
                                  "URL ([acme] directory_url); keep the file until it was imported"),
    (("Pathes",), "work_tlsa"): (ZONE_FILE, ZONE_FILE_FIX),
    (("Pathes",), "tlsa_dns_master"): ("0.9.11 refused a remote DNS master (it updated 127.0.0.1); ours sends "
                                       "updates to [dns] primary", "set [dns] primary = \"HOST:53\" if not 127.0.0.1"),
    (("Pathes",), "zone_file_root"): (ZONE_FILE, ZONE_FILE_FIX),
    (("Pathes",), "dns_key"): ("the rndc key of the zone-file variant: " + ZONE_FILE, ZONE_FILE_FIX),
    (("Pathes",), "zone_tlsa_inc_mode"): (ZONE_FILE, ZONE_FILE_FIX),
    (("Pathes",), "zone_tlsa_inc_uid"): (ZONE_FILE, ZONE_FILE_FIX),
    (("Pathes",), "zone_tlsa_inc_gid"): (ZONE_FILE, ZONE_FILE_FIX),
    (("Pathes",), "zone_file_include_name"): (ZONE_FILE, ZONE_FILE_FIX),
    (("X509atts", "names"), "CN"): ("the CN of 0.9.11's local CA certificate; ours names a new CA (-I) with "
                                    "[local_ca] name; an imported CA keeps its certificate and CN",
                                    "nothing, unless a new CA should get this CN: then set [local_ca] name"),
    (("DBAccount",), "dbDbaUser"): ("ours has no DBA switch: who may do what is a role (README: pki_operator, "
                                    "pki_cron, pki_worker, pki_reader)", "grant the person the pki_admin role"),
    (("DBAccount",), "dbSearchPath"): ("serverpki db init sets search_path = pki, dd, public on the database "
                                       "itself", "nothing"),
    (("Misc",), "SUBJECT_LE_CA"): ("ours names no subject for the ACME CA: its chain is kept with each "
                                   "certificate instance", "nothing (lead to check with db import-legacy)"),
    (("Misc",), "MAIL_SUBJECT"): ("the subject of the reminder mail is fixed: it names the certificates",
                                  "nothing (filter mails on the sender instead)"),
}


def convert(conf: configobj.ConfigObj, dsn: str | None, target: Path) -> Converted:
    """The old file as our TOML sections, settings, and the keys left over (UsageError: a value that is
    no number where 0.9.11 wanted one, or a $var that names nothing)."""
    out = Converted()
    keys = _flat(conf)
    taken: set[tuple[tuple[str, ...], str]] = set()

    def value(path: tuple[str, ...], key: str) -> Any:
        section = conf
        for name in path:
            section = section[name]
        try:
            return section[key]
        except configobj.MissingInterpolationOption as exc:
            raise UsageError(f"{_label(path, key)}: {exc} (a $name that no key of the file defines)") from None

    def unmapped(path, key, why, todo):
        shown = "(hidden)" if SECRET_KEY.search(key) else _text(value(path, key))
        out.unmapped.append(Unmapped(_label(path, key), shown, why, todo))
        taken.add((path, key))

    def put(path, key, section, name, converted):
        """Carry one value, if our configuration takes it; else list it with our reason."""
        try:
            parse_config({section: {name: converted}}, target)
        except ConfigError as exc:
            reason = str(exc).split(": ", 2)[-1]
            unmapped(path, key, f"[{section}] {name} refuses {converted!r}: {reason}", f"set [{section}] {name} by hand")
            return
        out.toml.setdefault(section, {})[name] = converted
        taken.add((path, key))

    for path, key in keys:
        raw = value(path, key)
        if (path, key) in DIRECT:
            if _text(raw) == "" and raw != []:
                taken.add((path, key))   # empty in the old file: our default applies
                continue
            for section, name, conv in DIRECT[(path, key)]:
                try:
                    converted = conv(raw)
                except ValueError as exc:
                    raise UsageError(f"{_label(path, key)}: {exc}") from None
                put(path, key, section, name, converted)
        elif (path, key) in SETTINGS:
            try:
                days = _int(raw)
            except ValueError as exc:
                raise UsageError(f"{_label(path, key)}: {exc}") from None
            if not 0 <= days <= 3650:   # the range pki.settings takes (its trigger would refuse it)
                raise UsageError(f"{_label(path, key)}: {days} is not a number of days from 0 to 3650 "
                                 f"(our setting {SETTINGS[(path, key)]})")
            out.settings[SETTINGS[(path, key)]] = days
            taken.add((path, key))
        elif (path, key) in NOT_CARRIED:
            if _text(raw) == "":
                taken.add((path, key))   # nothing was set: nothing is lost
            else:
                unmapped(path, key, *NOT_CARRIED[(path, key)])

    if "db_encryption_key" in out.toml.get("paths", {}):
        # 0.9.11 encrypted the local CA's key in the database with this passphrase too; db import-legacy
        # keeps it so (its --ca-passphrase-file defaults to --passphrase-file)
        out.toml.setdefault("local_ca", {})["passphrase_file"] = out.toml["paths"]["db_encryption_key"]
    _convert_mail_relay(conf, value, put, unmapped, taken)
    _convert_dns_method(conf, value, put, unmapped, taken, out)
    _convert_database(conf, dsn, value, put, unmapped, taken, out)

    for path, key in keys:
        if (path, key) not in taken:
            unmapped(path, key, "not a key of serverPKI 0.9.11 (its configspec has none of that name)",
                     "nothing, unless it was meant for another key")
    if set(out.toml.get("x509", {})) & {"country", "state", "locality", "organization", "organizational_unit"}:
        out.notes.append("[x509] country, state, locality, organization, organizational_unit now go into the "
                         "subject of every local certificate; serverPKI 0.9.11 put them only into its CA's")
    return out


def _convert_mail_relay(conf, value, put, unmapped, taken) -> None:
    where = (("Misc",), "MAIL_RELAY")
    if "Misc" not in conf or "MAIL_RELAY" not in conf["Misc"]:
        return
    relay = _text(value(*where))
    if not relay:
        taken.add(where)
        return
    # smtplib.SMTP(MAIL_RELAY) took host or host:port
    host, sep, port = relay.rpartition(":") if relay.count(":") == 1 else (relay, "", "")
    if sep and not port.isdigit():
        unmapped(*where, "not host or host:port", "set [mail] relay_host and relay_port by hand")
        return
    put(*where, "mail", "relay_host", host if sep else relay)
    if sep:
        put(*where, "mail", "relay_port", int(port))


def _convert_dns_method(conf, value, put, unmapped, taken, out) -> None:
    where = (("Misc",), "LE_ZONE_UPDATE_METHOD")
    method = _text(value(*where)).lower() if "Misc" in conf and "LE_ZONE_UPDATE_METHOD" in conf["Misc"] else ""
    if method == "ddns":
        taken.add(where)
        master = _text(conf["Pathes"].get("tlsa_dns_master", "")) if "Pathes" in conf else ""
        if not master:
            # 0.9.11 sent every update to this host; ours would ask the zone's SOA for its primary
            put(*where, "dns", "primary", LEGACY_DNS_PRIMARY)
            out.notes.append(f"[dns] primary = {LEGACY_DNS_PRIMARY!r}: serverPKI 0.9.11 sent its updates there; "
                             "leave it out to use the primary named in each zone's SOA")
    elif method:
        unmapped(*where, ZONE_FILE, "allow dynamic updates with a TSIG key for the zones and set [dns] tsig_key_file")


def _convert_database(conf, dsn, value, put, unmapped, taken, out) -> None:
    """[database] dsn: --dsn without its password when given (the new database), else from [DBAccount]."""
    if "DBAccount" not in conf:
        if dsn:
            out.toml.setdefault("database", {})["dsn"] = _without_password(dsn)
        return
    account = conf["DBAccount"]
    libpq = {"dbHost": "host", "dbPort": "port", "dbUser": "user", "dbDatabase": "dbname"}
    if dsn:
        written = _without_password(dsn)
        for key in [*libpq, "dbSslRequired", "dbCert", "dbCertKey"]:
            if key in account and _text(value(("DBAccount",), key)):
                unmapped(("DBAccount",), key, "the database of serverPKI 0.9; --dsn named the new one",
                         "nothing (the old database stays as it is)")
        out.toml.setdefault("database", {})["dsn"] = written
        return
    parts: dict[str, str] = {}
    for key, name in libpq.items():
        if key in account:
            taken.add((("DBAccount",), key))
            if text := _text(value(("DBAccount",), key)):
                parts[name] = text
    if "dbSslRequired" in account:
        taken.add((("DBAccount",), "dbSslRequired"))
        try:
            if _bool(value(("DBAccount",), "dbSslRequired")):
                parts["sslmode"] = "require"
        except ValueError as exc:
            raise UsageError(f"[DBAccount] dbSslRequired: {exc}") from None
    for key, name in (("dbCert", "sslcert"), ("dbCertKey", "sslkey")):
        if key in account:
            taken.add((("DBAccount",), key))
            if text := _text(value(("DBAccount",), key)):
                parts[name] = text
    if parts:
        out.toml.setdefault("database", {})["dsn"] = make_conninfo(**parts)
        out.notes.append("[database] dsn names the database of serverPKI 0.9 ([DBAccount]); after "
                         "serverpki db import-legacy into a new database, give that one with --dsn "
                         "(or edit dsn), and a login role with pki_admin and pki_agent (README) as user")


def _without_password(dsn: str) -> str:
    try:
        info = conninfo_to_dict(dsn)
    except Exception:   # psycopg.ProgrammingError: libpq's message may quote the password
        raise UsageError("--dsn is not a libpq connection string or URI") from None
    info.pop("password", None)
    info.pop("sslpassword", None)   # the client key's passphrase: a secret as much as the password
    return make_conninfo(**info)


# --- writing and telling ------------------------------------------------------------------------------------

def render(converted: Converted, source: Path) -> str:
    """The TOML text: a header saying where it came from, then the sections in our order."""
    from .config import SECTIONS

    ordered = {name: converted.toml[name] for name in SECTIONS if name in converted.toml}
    header = (f"# serverpki.toml, converted by `serverpki config import` from {source}\n"
              f"# on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Every key, with its meaning and default:\n"
              f"# examples/serverpki.toml of the serverpki package. Keys of the old file not carried over\n"
              f"# were listed by the import (docs/migrating.md).\n\n")
    return header + tomli_w.dumps(ordered)


def unmapped_table(rows: list[Unmapped]) -> str:
    table = PrettyTable(["key", "value", "why not carried over", "what to do"], align="l")
    table.max_width = 48
    for row in rows:
        table.add_row([row.key, row.value, row.why, row.todo])
    return table.get_string()


def settings_script(settings: dict[str, int]) -> str:
    """psql input that sets the days in the new database (psql -f FILE, as a member of pki_admin)."""
    lines = []
    for name, days in settings.items():
        lines += [f"\\set name {name}", f"\\set value {days}", q("update_setting_psql")]
    return "\n".join(lines)


def apply_settings(dsn: str, settings: dict[str, int], source: Path) -> None:
    from .db import connect, refusals_as_errors

    with connect(dsn) as conn, refusals_as_errors(), conn.transaction():
        for name, days in settings.items():
            conn.execute(q("update_setting"), {"name": name, "value": str(days),
                                               "remarks": f"from {source.name} (serverpki config import)"})


def import_command(
    source: Annotated[Path, typer.Argument(metavar="SERVERPKI_CONF", help="serverPKI 0.9's configuration file (serverpki.conf)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="the TOML file to write")] = Path("serverpki.toml"),
    dsn: Annotated[Optional[str], typer.Option(
        "--dsn", help="the new database: written as [database] dsn (without a password) and given "
                      "pre_publish_days and local_issue_mail_days; without it the UPDATEs are printed")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing output file")] = False,
) -> None:
    """Convert serverPKI 0.9's serverpki.conf into serverpki.toml; list every key that is not carried over."""
    try:
        if output.exists() and not force:
            raise UsageError(f"{output} exists: give another -o, or --force to overwrite it")
        conf = read_legacy(source)
        converted = convert(conf, dsn, output)
        folder = output.parent if str(output.parent) else Path(".")
        if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            # before the settings change: a file that cannot be written must leave the database as it was
            raise UsageError(f"cannot write {output}: {folder} is not a folder this user may write to")
        if dsn and converted.settings:
            apply_settings(dsn, converted.settings, source)
        write_atomic(output, render(converted, source), OUTPUT_MODE)
    except ServerPKIError as exc:
        typer.echo(f"serverpki: {exc}", err=True)
        raise typer.Exit(exc.exit_code)
    carried = sum(len(v) for v in converted.toml.values())
    typer.echo(f"wrote {output} (mode 0600): {carried} key(s) in "
               f"{', '.join('[' + s + ']' for s in converted.toml) or 'no section'}")
    if dsn and "password" in conninfo_to_dict(dsn):
        typer.echo("the password of --dsn is not written: put it into ~/.pgpass of the user serverPKI runs as "
                   "(host:port:database:user:password, mode 0600)")
    for note in converted.notes:
        typer.echo(f"note: {note}")
    if converted.settings and dsn:
        typer.echo("settings applied: " + ", ".join(f"{k} = {v}" for k, v in converted.settings.items()))
    elif converted.settings:
        typer.echo("settings to apply in the new database (psql -f FILE as a member of pki_admin, or run "
                   "this command again with --dsn):")
        typer.echo(settings_script(converted.settings))
    if converted.unmapped:
        typer.echo(f"{len(converted.unmapped)} key(s) not carried over:")
        typer.echo(unmapped_table(converted.unmapped))
    else:
        typer.echo("every key was carried over")
