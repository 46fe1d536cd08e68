"""Hostile input on every way into the configuration: the management functions of
040_manage and plain INSERT/UPDATE on the configuration tables, driven by
hypothesis with malformed and hostile values (tests/strategies.py).

The properties, for every example:
- refused: the SQLSTATE is ours (SPnnn), with a message and a hint, and the
  database is exactly as before (helpers.snapshot);
- accepted: the value obeys the documented rule (restated in strategies.py)
  and reads back identical from its table or view;
- a value that obeys every rule and names nothing twice is accepted.

Each example runs as its own transaction; the deferred checks run at its end
(SET CONSTRAINTS ALL IMMEDIATE, as the commit of autocommit would run them) and
the transaction is rolled back after the round trip, so one database per
module serves every example. Most records are drawn wholly good or with one
hostile field (strategies.one_hostile), so acceptance is exercised as well.

PostgreSQL itself refuses some wrong-typed values before any of our code runs
(a text for an integer column or parameter, a boolean for an integer, a call
whose argument types match no function); those refusals carry PostgreSQL's
codes listed in PG_TYPE_ERRORS and are accepted as such, as long as nothing
changed.
"""

from __future__ import annotations

import datetime
import shlex
import subprocess
from collections import Counter
from dataclasses import dataclass, field

import psycopg
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from helpers import add_small_world, snapshot
from strategies import (HOSTILE, SHELL_INERT, abs_paths, ca_names, free_text, good_tlsa_fields, host_names, hostile,
                        huge, ints, is_abs_path, is_host_name, is_key_mode, is_printable, is_simple_name, is_subject_name,
                        is_tlsa_prefix, one_hostile, reload_commands, simple_names, splice, splice_at, tlsa_fields,
                        tlsa_prefix, tlsa_prefixes, unprintable)

# PostgreSQL's refusals of a wrong-typed value, raised while the value is converted, before our
# triggers or function bodies run (so no trigger can speak first); each must still change nothing
PG_TYPE_ERRORS = {
    "22P02",  # invalid_text_representation: 'abc' for an integer, enum or boolean
    "22003",  # numeric_value_out_of_range: 2**31 for an int4 column or parameter
    "42804",  # datatype_mismatch: true for an integer column, a list for a text column
    "42883",  # undefined_function: a call whose argument types match no function (int for text, bigint for int)
    "23502",  # not_null_violation: NULL for the dd.created / dd.updated domains (checked as the value is cast)
    "22007",  # invalid_datetime_format: '1' for a timestamptz column
    "22008",  # datetime_field_overflow: '99999-01-01' for a timestamptz column
}

CERT_TYPES = ["LE", "local"]
SUBJECT_TYPES = ["CA", "client", "server", "reserved"]
ALGOS = ["rsa", "ec", "rsa_plus_ec"]
FILE_TYPES = ["cert only", "separate", "combine key", "combine cacert", "combine both"]

# examples per test: together with tests/test_hostile_cli.py the suite stays well under 90 s on 2 cores
FEW, SOME, MANY = 50, 120, 200

COUNTS: dict[str, Counter] = {}


@dataclass(repr=False)
class World:
    """The module's database: a small configuration, its ids and names, and its snapshot."""

    conn: psycopg.Connection
    ids: dict[str, int] = field(default_factory=dict)
    base: dict = field(default_factory=dict)

    def __repr__(self) -> str:  # hypothesis prints the fixtures of a failing example
        return "World(...)"

    def names(self, sql: str) -> set[str]:
        return {r[0].lower() for r in self.conn.execute(sql)}

    @property
    def certs(self) -> set[str]:
        return self.names("SELECT name::text FROM subjects WHERE NOT isaltname")

    @property
    def subjects(self) -> set[str]:
        return self.names("SELECT name::text FROM subjects")

    @property
    def disthosts(self) -> set[str]:
        return self.names("SELECT fqdn::text FROM disthosts")

    @property
    def jails(self) -> set[str]:
        return self.names("SELECT name::text FROM jails")

    @property
    def places(self) -> set[str]:
        return self.names("SELECT name::text FROM places")

    @property
    def services(self) -> set[tuple[str, int]]:
        return {(n.lower(), p) for n, p in self.conn.execute("SELECT name::text, port FROM services")}


@pytest.fixture(scope="module")
def world(pg_server, template_db):
    """One database for the module: two disthosts (one with jails), the jail 'mail', the place 'nginx',
    the server certificate www.example.org (alt name example.org, https/443, target web1/nginx) and the
    client certificate client1 (target jailhost/mail/nginx)."""
    name = pg_server.new_database(template_db, "h_")
    try:
        with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
            add_small_world(conn)
            conn.execute("SELECT * FROM add_cert('client1', 'client', 'local', 'rsa', false, NULL, NULL, NULL, "
                         "'jailhost.example.org', 'mail', 'nginx')")
            w = World(conn)

            def one(sql):
                return conn.execute(sql).fetchone()[0]

            w.ids = {
                "web1": one("SELECT id FROM disthosts WHERE fqdn = 'web1.example.org'"),
                "jailhost": one("SELECT id FROM disthosts WHERE fqdn = 'jailhost.example.org'"),
                "mail": one("SELECT id FROM jails WHERE name = 'mail'"),
                "nginx": one("SELECT id FROM places WHERE name = 'nginx'"),
                "www": one("SELECT certificate FROM subjects WHERE name = 'www.example.org'"),
                "client1": one("SELECT certificate FROM subjects WHERE name = 'client1'"),
                "alt": one("SELECT id FROM subjects WHERE name = 'example.org'"),
                "https": one("SELECT id FROM services WHERE name = 'https' AND port = 443"),
                "smtp": one("SELECT id FROM services WHERE name = 'smtp' AND port = 25"),
            }
            w.base = snapshot(conn)
            yield w
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="module", autouse=True)
def example_counts():
    """How many examples ran, refused and accepted: printed at the end of the module (pytest -rA or -s)."""
    yield
    total = sum(sum(c.values()) for c in COUNTS.values())
    lines = [f"{test}: {sum(c.values())} examples ({c['refused']} refused, {c['accepted']} accepted)"
             for test, c in sorted(COUNTS.items())]
    print(f"\nhostile SQL examples: {total} in all\n" + "\n".join(lines))


def assert_ours(err: psycopg.Error, pg_type_errors: bool = False) -> None:
    """Our SQLSTATE with a message and a hint (or, where allowed, PostgreSQL's refusal of a wrong type)."""
    diag = err.diag
    if pg_type_errors and diag.sqlstate in PG_TYPE_ERRORS:
        return
    assert diag.sqlstate and diag.sqlstate.startswith("SP"), \
        f"refused with {diag.sqlstate}, not our SQLSTATE: {diag.message_primary}"
    assert diag.message_primary, f"{diag.sqlstate} without a message"
    assert diag.message_hint, f"{diag.sqlstate} without a hint: {diag.message_primary}"


def trial(w: World, test: str, sql: str, params=(), accepted=None, pg_type_errors: bool = False):
    """Run one statement as its own transaction. Refused: our SQLSTATE and the database exactly as
    before; returns the error. Accepted: accepted(conn) checks the rules and reads the values back
    inside the transaction, which is then rolled back; returns None."""
    conn = w.conn
    done = False
    counts = COUNTS.setdefault(test, Counter())
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql, params)
            conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the deferred checks now, as a commit would run them
            done = True
            if accepted is not None:
                accepted(conn)
    except psycopg.Error as err:
        if done:
            raise
        assert_ours(err, pg_type_errors)
        assert snapshot(conn) == w.base, f"refused ({err.diag.sqlstate}) but the database changed"
        counts["refused"] += 1
        return err
    assert snapshot(conn) == w.base
    counts["accepted"] += 1
    return None


def good_but_refused(err, what: str):
    if err is not None:
        pytest.fail(f"{what} obeys every rule but was refused: {err.diag.sqlstate} {err.diag.message_primary}")


def mostly(good, bad):
    """Three good values to one hostile one: most examples have one or two hostile fields, some none."""
    return st.one_of(good, good, good, bad)


def fetch(conn, sql, *params):
    return conn.execute(sql, params).fetchall()


paths = hostile(abs_paths)
remarks = st.one_of(st.none(), free_text, hostile(free_text))


# --------------------------------------------------------------------------- disthosts


HOSTS = (host_names(), hostile(host_names()))
JAILROOTS = (st.one_of(st.none(), abs_paths), paths)
REMARKS = (st.one_of(st.none(), free_text), hostile(free_text))


@settings(HOSTILE, max_examples=MANY)
@given(rec=one_hostile({"fqdn": HOSTS, "jailroot": JAILROOTS}))
def test_add_disthost(world, rec):
    fqdn, jailroot = rec["fqdn"], rec["jailroot"]

    def accepted(conn):
        assert is_host_name(fqdn) and is_abs_path(jailroot), f"accepted {fqdn!r} / {jailroot!r}"
        assert fetch(conn, "SELECT fqdn::text, jailroot FROM disthosts WHERE fqdn = %s::citext", fqdn) == [(fqdn, jailroot)]

    err = trial(world, "add_disthost", "SELECT add_disthost(%s, %s)", (fqdn, jailroot), accepted)
    if is_host_name(fqdn) and is_abs_path(jailroot) and fqdn.lower() not in world.disthosts:
        good_but_refused(err, f"disthost {fqdn!r} with jailroot {jailroot!r}")


@settings(HOSTILE, max_examples=SOME)
@given(how=st.sampled_from(["insert", "update web1", "update jailhost"]),
       rec=one_hostile({"fqdn": HOSTS, "jailroot": JAILROOTS, "remark": REMARKS}))
def test_disthost_dml(world, how, rec):
    fqdn, jailroot, remark = rec["fqdn"], rec["jailroot"], rec["remark"]
    ids = world.ids
    if how == "insert":
        sql, params = "INSERT INTO disthosts (fqdn, jailroot, remarks) VALUES (%s, %s, %s) RETURNING id", (fqdn, jailroot, remark)
    else:
        target = ids["web1"] if how == "update web1" else ids["jailhost"]
        sql, params = "UPDATE disthosts SET fqdn = %s, jailroot = %s, remarks = %s WHERE id = %s", (fqdn, jailroot, remark, target)

    def accepted(conn):
        assert is_host_name(fqdn) and is_abs_path(jailroot) and is_printable(remark, 10000)
        assert not (how == "update jailhost" and jailroot is None), "the disthost with jails lost its jailroot"
        assert fetch(conn, "SELECT fqdn::text, jailroot, remarks FROM disthosts WHERE fqdn = %s::citext", fqdn) == [(fqdn, jailroot, remark)]

    err = trial(world, "disthost_dml", sql, params, accepted)
    others = world.disthosts - ({"web1.example.org"} if how == "update web1" else {"jailhost.example.org"} if how == "update jailhost" else set())
    if (is_host_name(fqdn) and is_abs_path(jailroot) and is_printable(remark, 10000) and fqdn.lower() not in others
            and not (how == "update jailhost" and jailroot is None)):
        good_but_refused(err, f"{how} disthost {fqdn!r}")


# --------------------------------------------------------------------------- jails


def shell_safe(name: str) -> bool:
    """Inert in a POSIX shell in any quoting context of the reload command, and shlex.quote leaves it alone."""
    return set(name) <= SHELL_INERT and shlex.quote(name) == name


SIMPLE = (simple_names, hostile(simple_names))


@settings(HOSTILE, max_examples=MANY)
@given(rec=one_hostile({"name": SIMPLE, "host": (st.sampled_from(["jailhost.example.org", "JailHost.Example.org"]),
                                                 st.one_of(st.just("web1.example.org"), hostile(host_names())))}))
def test_add_jail(world, rec):
    name, host = rec["name"], rec["host"]

    def accepted(conn):
        assert is_simple_name(name) and shell_safe(name), f"accepted the jail name {name!r}"
        assert host.lower() == "jailhost.example.org"
        assert fetch(conn, "SELECT j.name::text, d.fqdn::text FROM jails j JOIN disthosts d ON d.id = j.disthost "
                           "WHERE j.name = %s::citext", name) == [(name, "jailhost.example.org")]

    err = trial(world, "add_jail", "SELECT add_jail(%s, %s)", (name, host), accepted)
    if is_simple_name(name) and name.lower() != "mail" and host.lower() == "jailhost.example.org":
        good_but_refused(err, f"jail {name!r}")


@settings(HOSTILE, max_examples=SOME)
@given(how=st.sampled_from(["insert", "update"]),
       rec=one_hostile({"name": SIMPLE, "host": (st.just("jailhost"), st.one_of(st.just("web1"), st.none(), ints)),
                        "remark": REMARKS}))
def test_jail_dml(world, how, rec):
    name, host, remark = rec["name"], rec["host"], rec["remark"]
    host_id = world.ids[host] if isinstance(host, str) else host
    if how == "insert":
        sql, params = "INSERT INTO jails (name, disthost, remarks) VALUES (%s, %s, %s)", (name, host_id, remark)
    else:
        sql, params = "UPDATE jails SET name = %s, disthost = %s, remarks = %s WHERE id = %s", (name, host_id, remark, world.ids["mail"])

    def accepted(conn):
        assert is_simple_name(name) and shell_safe(name) and is_printable(remark, 10000)
        assert host_id == world.ids["jailhost"], f"jail on disthost id {host_id}"
        assert fetch(conn, "SELECT name::text, disthost, remarks FROM jails WHERE name = %s::citext", name) == [(name, host_id, remark)]

    err = trial(world, "jail_dml", sql, params, accepted)
    if (is_simple_name(name) and is_printable(remark, 10000) and host_id == world.ids["jailhost"]
            and (how == "update" or name.lower() != "mail")):
        good_but_refused(err, f"{how} jail {name!r}")


# --------------------------------------------------------------------------- places


IDS = (st.one_of(st.none(), st.integers(0, 65534)), st.one_of(ints, st.integers(-65536, -1)))
PLACE = {
    "name": SIMPLE,
    "file_type": (st.one_of(st.none(), st.sampled_from(FILE_TYPES)), hostile(st.sampled_from(FILE_TYPES))),
    "cert_path": (abs_paths, st.one_of(st.none(), paths)),
    "key_path": JAILROOTS,
    "uid": IDS, "gid": IDS,
    "mode": (st.one_of(st.none(), st.sampled_from([0o400, 0o440, 0o600, 0o640, 0o644, 0o777, 0])), ints),
    "chownboth": (st.one_of(st.none(), st.booleans()), st.one_of(st.none(), st.booleans())),
    "pglink": (st.one_of(st.none(), st.booleans()), st.one_of(st.none(), st.booleans())),
    "reload": (st.one_of(st.none(), reload_commands), hostile(reload_commands, huge([999, 1000, 1001, 10_000, 1_000_000]))),
}


@settings(HOSTILE, max_examples=MANY)
@given(rec=one_hostile(PLACE))
def test_add_place(world, rec):
    values = tuple(rec.values())
    name, file_type, cert_path, key_path, uid, gid, mode, chownboth, pglink, reload = values
    good = (is_simple_name(name) and (file_type is None or file_type in FILE_TYPES) and cert_path is not None
            and is_abs_path(cert_path) and is_abs_path(key_path) and is_key_mode(mode)
            and (uid is None or uid >= 0) and (gid is None or gid >= 0) and is_printable(reload, 1000))

    def accepted(conn):
        assert good, f"accepted the place {values!r}"
        assert fetch(conn, "SELECT name::text, cert_file_type::text, cert_path, key_path, uid, gid, mode, chownboth, pglink, "
                           "reload_command FROM places WHERE name = %s::citext", name) == \
            [(name, file_type or "separate", cert_path, key_path, uid, gid, mode, bool(chownboth), bool(pglink), reload)]

    err = trial(world, "add_place", "SELECT add_place(%s, %s, %s, %s, %s::int, %s::int, %s::int, %s, %s, %s)", values, accepted)
    if good and name.lower() != "nginx":
        good_but_refused(err, f"place {values!r}")


PLACE_COLUMNS = {
    "name": mostly(simple_names, hostile(simple_names)),
    "cert_path": mostly(abs_paths, paths),
    "key_path": st.one_of(st.none(), mostly(abs_paths, paths)),
    "uid": st.one_of(st.none(), ints), "gid": st.one_of(st.none(), ints), "mode": st.one_of(st.none(), ints),
    "reload_command": st.one_of(st.none(), mostly(reload_commands, hostile(reload_commands, huge([999, 1000, 1001, 10_000])))),
    "remarks": remarks,
}
PLACE_RULES = {
    "name": lambda v: is_simple_name(v), "cert_path": lambda v: v is not None and is_abs_path(v), "key_path": is_abs_path,
    "uid": lambda v: v is None or v >= 0, "gid": lambda v: v is None or v >= 0, "mode": is_key_mode,
    "reload_command": lambda v: is_printable(v, 1000), "remarks": lambda v: is_printable(v, 10000),
}


@settings(HOSTILE, max_examples=MANY)
@given(data=st.data(), how=st.sampled_from(["insert", "update"]),
       columns=st.lists(st.sampled_from(sorted(PLACE_COLUMNS)), min_size=1, max_size=4, unique=True))
def test_place_dml(world, data, how, columns):
    if how == "insert":  # a place needs a name and a cert_path
        columns = sorted(set(columns) | {"name", "cert_path"})
    values = {c: data.draw(PLACE_COLUMNS[c], label=c) for c in columns}
    casts = {c: "::int" if c in ("uid", "gid", "mode") else "" for c in columns}
    if how == "insert":
        sql = (f"INSERT INTO places ({', '.join(columns)}) VALUES ({', '.join('%s' + casts[c] for c in columns)}) RETURNING id")
    else:
        sql = f"UPDATE places SET {', '.join(f'{c} = %s{casts[c]}' for c in columns)} WHERE id = {world.ids['nginx']}"
    good = all(PLACE_RULES[c](v) for c, v in values.items())
    name = values.get("name", "nginx")

    def accepted(conn):
        assert good, f"accepted {values!r}"
        row = conn.execute(f"SELECT {', '.join(c + ('::text' if c == 'name' else '') for c in columns)} FROM places "
                           "WHERE name = %s::citext", (name,)).fetchone()
        assert row == tuple(values[c] for c in columns)

    err = trial(world, "place_dml", sql, list(values.values()), accepted)
    if good and (how == "update" or name.lower() != "nginx") and not (how == "update" and name.lower() in world.places - {"nginx"}):
        good_but_refused(err, f"{how} place {values!r}")


# --------------------------------------------------------------------------- TLSA services


# strategies are built once: building them inside a draw costs hypothesis more than the database does
PORTS = st.one_of(st.sampled_from([25, 443, 465, 8443, 65535]), ints)
PREFIX_KINDS = st.sampled_from(["none", "own", "own", "other", "spliced", "hostile"])
HOSTILE_PREFIXES = hostile(tlsa_prefixes)
SERVICE_NAMES = mostly(simple_names, hostile(simple_names))


GOOD_PORTS = st.one_of(st.sampled_from([1, 25, 443, 465, 8443, 65535]), st.integers(1, 65535))
SERVICE_MODES = st.sampled_from(["good", "name", "port", "prefix", "mixed"])
GOOD_PREFIX_KINDS = st.sampled_from(["none", "own"])


@st.composite
def services(draw):
    """(name, port, TLSA prefix): all good, or the name, the port or the prefix hostile (the prefix for
    the service's port, another port's, a near miss or hostile text), or each either way."""
    mode = draw(SERVICE_MODES)
    port = draw(PORTS if mode in ("port", "mixed") else GOOD_PORTS)
    kind = draw(PREFIX_KINDS if mode in ("prefix", "mixed") else GOOD_PREFIX_KINDS)
    own = tlsa_prefix(port, draw(tlsa_fields if mode in ("prefix", "mixed") else good_tlsa_fields))
    prefix = {"none": lambda: None, "own": lambda: own, "other": lambda: draw(tlsa_prefixes),
              "spliced": lambda: splice(own, *draw(splice_at)), "hostile": lambda: draw(HOSTILE_PREFIXES)}[kind]()
    return draw(SERVICE_NAMES if mode in ("name", "mixed") else simple_names), port, prefix


@settings(HOSTILE, max_examples=MANY)
@given(service=services())
def test_add_tlsa_service(world, service):
    name, port, prefix = service
    good = is_simple_name(name) and 1 <= port <= 65535 and (prefix is None or is_tlsa_prefix(prefix, port))
    stored = prefix if prefix is not None else f"_{port}._tcp.{{}}. 3600 IN TLSA 3 0 1"

    def accepted(conn):
        assert good, f"accepted the service {service!r}"
        assert fetch(conn, "SELECT name::text, port, tlsaprefix FROM services WHERE name = %s::citext AND port = %s",
                     name, port) == [(name, port, stored)]

    err = trial(world, "add_tlsa_service", "SELECT add_tlsa_service(%s, %s::int, %s)", (name, port, prefix), accepted)
    if good and (name.lower(), port) not in world.services:
        good_but_refused(err, f"service {service!r}")


@settings(HOSTILE, max_examples=SOME)
@given(how=st.sampled_from(["insert", "update smtp", "update https"]), service=services(), remark=remarks)
def test_service_dml(world, how, service, remark):
    name, port, prefix = service
    if how == "insert":
        sql, params = "INSERT INTO services (name, port, tlsaprefix, remarks) VALUES (%s, %s::int, %s, %s)", (name, port, prefix, remark)
    else:
        sid = world.ids["smtp"] if how == "update smtp" else world.ids["https"]
        sql, params = ("UPDATE services SET name = %s, port = %s::int, tlsaprefix = %s, remarks = %s WHERE id = %s",
                       (name, port, prefix, remark, sid))
    good = is_simple_name(name) and 1 <= port <= 65535 and is_tlsa_prefix(prefix, port) and is_printable(remark, 10000)

    def accepted(conn):
        assert good, f"accepted the service {service!r}"
        assert fetch(conn, "SELECT name::text, port, tlsaprefix, remarks FROM services WHERE name = %s::citext AND port = %s",
                     name, port) == [(name, port, prefix, remark)]

    err = trial(world, "service_dml", sql, params, accepted)
    own = {"update smtp": ("smtp", 25), "update https": ("https", 443)}.get(how)
    if good and (name.lower(), port) not in world.services - {own}:
        good_but_refused(err, f"{how} service {service!r}")


# --------------------------------------------------------------------------- certificates and their names


def _subject_names(subject_type):
    good = {"client": simple_names, "CA": ca_names}.get(subject_type, host_names(wildcard=True))
    return mostly(good, hostile(st.one_of(good, host_names(), simple_names)))


SUBJECT_NAMES = {t: _subject_names(t) for t in SUBJECT_TYPES}
SUBJECT_NAMES_ANY = _subject_names("server")  # for a hostile subject type: its name does not matter
CERT_PARTS = {
    "type": st.one_of(st.sampled_from(SUBJECT_TYPES), st.sampled_from(SUBJECT_TYPES), hostile(st.sampled_from(SUBJECT_TYPES))),
    "cert_type": st.one_of(st.sampled_from(CERT_TYPES), st.sampled_from(CERT_TYPES), hostile(st.sampled_from(CERT_TYPES))),
    "algo": st.one_of(st.none(), st.sampled_from(ALGOS), hostile(st.sampled_from(ALGOS))),
    "staple": st.one_of(st.none(), st.booleans()),
    "has_altname": st.booleans(),
    "tlsa": st.one_of(st.just((None, None)), st.sampled_from([("https", 443), ("imap", 587), ("https", 25)]),
                      st.tuples(st.one_of(st.none(), hostile(simple_names)), st.one_of(st.none(), ints))),
    "target": st.one_of(st.just((None, None, None)),
                        st.sampled_from([("web1.example.org", None, "nginx"), ("jailhost.example.org", "mail", "nginx"),
                                         ("web1.example.org", "mail", "nginx"), (None, None, "nginx"),
                                         ("web1.example.org", None, None), ("JAILHOST.example.org", "MAIL", "NginX")]),
                        st.tuples(st.one_of(st.none(), hostile(host_names())), st.one_of(st.none(), hostile(simple_names)),
                                  st.one_of(st.none(), hostile(simple_names)))),
}


GOOD_NAMES = {"client": simple_names, "CA": ca_names, "server": host_names(wildcard=True), "reserved": host_names(wildcard=True)}
GOOD_CERT_PARTS = {
    "type": st.sampled_from(SUBJECT_TYPES), "cert_type": st.sampled_from(CERT_TYPES),
    "algo": st.one_of(st.none(), st.sampled_from(ALGOS)),
    "tlsa": st.one_of(st.just((None, None)), st.sampled_from([("https", 443), ("imap", 587), ("SMTP", 25)])),
    "target": st.sampled_from([(None, None, None), ("web1.example.org", None, "nginx"), ("jailhost.example.org", "mail", "nginx"),
                               ("JAILHOST.example.org", "MAIL", "NginX")]),
}
CERT_MODES = st.sampled_from(["good", "mixed", "type", "name", "cert_type", "algo", "altname", "tlsa", "target"])


@st.composite
def certs(draw):
    """The eleven arguments of add_cert: all good, one hostile, or each either way."""
    mode = draw(CERT_MODES)

    def part(key):
        if mode == key or (mode == "mixed" and draw(st.booleans())):
            return draw(CERT_PARTS[key])
        return draw(GOOD_CERT_PARTS[key])

    subject_type = part("type")
    hostile_names = SUBJECT_NAMES.get(subject_type, SUBJECT_NAMES_ANY)
    good_names = GOOD_NAMES.get(subject_type, GOOD_NAMES["server"])
    name = draw(hostile_names if mode in ("name", "mixed") else good_names)
    altname = (draw(hostile_names if mode in ("altname", "mixed") else good_names)
               if mode == "altname" or draw(CERT_PARTS["has_altname"]) else None)
    cert_type, algo, staple = part("cert_type"), part("algo"), draw(CERT_PARTS["staple"])
    return name, subject_type, cert_type, algo, staple, altname, *part("tlsa"), *part("target")


GOOD_TARGETS = {(None, None, None), ("web1.example.org", None, "nginx"), ("jailhost.example.org", None, "nginx"),
                ("jailhost.example.org", "mail", "nginx")}


@settings(HOSTILE, max_examples=MANY)
@given(cert=certs())
def test_add_cert(world, cert):
    name, subject_type, cert_type, algo, staple, altname, tlsa, port, host, jail, place = cert
    lower = lambda v: v.lower() if isinstance(v, str) else v  # noqa: E731
    good = (subject_type in SUBJECT_TYPES and is_subject_name(name, subject_type) and cert_type in CERT_TYPES
            and (algo is None or algo in ALGOS) and (altname is None or is_subject_name(altname, subject_type))
            and ((tlsa, port) == (None, None) or (lower(tlsa), port) in world.services)
            and (lower(host), lower(jail), lower(place)) in GOOD_TARGETS)
    fresh = name.lower() not in world.subjects and (altname is None or (altname.lower() not in world.subjects
                                                                        and altname.lower() != name.lower()))

    def accepted(conn):
        assert good and fresh, f"accepted the certificate {cert!r}"
        rows = fetch(conn, 'SELECT "Subject"::text, "Cert Name"::text, "Type"::text, "Algo"::text, "OCSP m st", '
                           '"Alt Name"::text, "TLSA"::text, "Port", "Dist Host"::text, "Jail"::text, "Place"::text '
                           'FROM certs WHERE "Cert Name" = %s::citext', name)
        assert rows == [(subject_type, name, cert_type, algo or "rsa", bool(staple), altname, tlsa and tlsa.lower(), port,
                         host and host.lower(), jail and jail.lower(), place and place.lower())]

    err = trial(world, "add_cert", "SELECT * FROM add_cert(%s, %s, %s, %s, %s, %s, %s, %s::int, %s, %s, %s)", cert, accepted)
    if good and fresh:
        good_but_refused(err, f"certificate {cert!r}")


@settings(HOSTILE, max_examples=SOME)
@given(rec=one_hostile({"cert": (st.sampled_from(["www.example.org", "client1", "WWW.example.org"]),
                                 st.one_of(st.just("example.org"), hostile(host_names()))),
                        "altname": (st.one_of(GOOD_NAMES["server"], simple_names),
                                    st.one_of(SUBJECT_NAMES["server"], SUBJECT_NAMES["client"]))}),
       remove=st.booleans())
def test_altnames(world, rec, remove):
    cert, altname = rec["cert"], rec["altname"]
    types = {"www.example.org": "server", "client1": "client"}
    subject_type = types.get(cert.lower())

    def added(conn):
        assert subject_type is not None and is_subject_name(altname, subject_type), f"accepted {altname!r} on {cert!r}"
        owner = world.ids["www"] if subject_type == "server" else world.ids["client1"]
        assert fetch(conn, "SELECT name::text, type::text, isaltname, certificate FROM subjects WHERE name = %s::citext",
                     altname) in ([(altname, subject_type, True, owner)], [("example.org", "server", True, owner)])

    def removed(conn):
        assert (cert.lower(), altname.lower()) == ("www.example.org", "example.org")
        assert fetch(conn, "SELECT 1 FROM subjects WHERE name = %s::citext", altname) == []

    if remove:
        trial(world, "remove_altname", "SELECT remove_altname(%s, %s)", (cert, altname), removed)
    else:
        err = trial(world, "add_altname", "SELECT add_altname(%s, %s)", (cert, altname), added)
        if subject_type and is_subject_name(altname, subject_type) and altname.lower() not in world.subjects:
            good_but_refused(err, f"alt name {altname!r} on {cert!r}")


@settings(HOSTILE, max_examples=SOME)
@given(how=st.sampled_from(["insert main", "insert alt", "insert bare", "update alt", "update main"]),
       subject_type=st.sampled_from(SUBJECT_TYPES), data=st.data(), remark=remarks,
       certificate=st.one_of(st.sampled_from(["www", "client1"]), st.none(), ints))
def test_subject_dml(world, how, subject_type, data, remark, certificate):
    name = data.draw(SUBJECT_NAMES[subject_type], label="name")
    cert_id = world.ids[certificate] if isinstance(certificate, str) else certificate
    if how.startswith("insert"):
        isalt = how == "insert alt"
        cert_id = None if how == "insert bare" else cert_id
        sql, params = ("INSERT INTO subjects (type, name, isaltname, certificate, remarks) VALUES (%s, %s, %s, %s, %s)",
                       (subject_type, name, isalt, cert_id, remark))
    else:
        isalt = how == "update alt"
        row = world.ids["alt"] if isalt else None
        where = f"id = {row}" if isalt else f"certificate = {world.ids['client1']} AND NOT isaltname"
        sql, params = f"UPDATE subjects SET type = %s, name = %s, remarks = %s WHERE {where}", (subject_type, name, remark)

    taken = world.subjects - ({"example.org"} if how == "update alt" else {"client1"} if how == "update main" else set())

    def accepted(conn):
        assert is_subject_name(name, subject_type) and is_printable(remark, 10000), f"accepted {subject_type} {name!r}"
        assert name.lower() not in taken
        rows = fetch(conn, "SELECT type::text, name::text, isaltname, remarks FROM subjects WHERE name = %s::citext", name)
        assert rows == [(subject_type, name, isalt, remark)]
        if isalt and cert_id is not None:  # an alt name has the type of its certificate's subject name
            assert fetch(conn, "SELECT s.type::text FROM subjects s JOIN subjects a ON a.certificate = s.certificate "
                               "WHERE a.name = %s::citext AND NOT s.isaltname", name) == [(subject_type,)]

    trial(world, "subject_dml", sql, params, accepted)


@settings(HOSTILE, max_examples=FEW)
@given(cert_type=st.sampled_from(CERT_TYPES), algo=st.sampled_from(ALGOS), flags=st.tuples(st.booleans(), st.booleans()),
       remark=remarks, how=st.sampled_from(["insert", "update"]))
def test_certificate_dml(world, cert_type, algo, flags, remark, how):
    if how == "insert":  # a certificate without its subject is always refused (SP007), whatever its values
        sql = "INSERT INTO certificates (type, encryption_algo, disabled, ocsp_must_staple, remarks) VALUES (%s, %s, %s, %s, %s)"
        params = (cert_type, algo, *flags, remark)
    else:
        sql = "UPDATE certificates SET type = %s, encryption_algo = %s, disabled = %s, ocsp_must_staple = %s, remarks = %s WHERE id = %s"
        params = (cert_type, algo, *flags, remark, world.ids["www"])

    def accepted(conn):
        assert how == "update" and is_printable(remark, 10000)
        assert fetch(conn, "SELECT type::text, encryption_algo::text, disabled, ocsp_must_staple, remarks FROM certificates "
                           "WHERE id = %s", world.ids["www"]) == [(cert_type, algo, *flags, remark)]

    err = trial(world, "certificate_dml", sql, params, accepted)
    if how == "insert":  # SP001 when the remarks speak first
        assert err is not None and err.diag.sqlstate in ("SP007", "SP001")
    elif is_printable(remark, 10000):
        good_but_refused(err, f"certificate update {params!r}")


ID_NAMES = ["web1", "jailhost", "mail", "nginx", "www", "client1", "https", "smtp"]
some_id = st.one_of(st.sampled_from(ID_NAMES), st.none(), ints)
TARGET_ID = {"disthost": (st.sampled_from(["web1", "jailhost"]), some_id), "jail": (st.none(), some_id),
             "place": (st.just("nginx"), some_id), "certificate": (st.sampled_from(["www", "client1"]), some_id)}


@settings(HOSTILE, max_examples=SOME)
@given(rec=one_hostile(TARGET_ID), how=st.sampled_from(["insert", "update"]))
def test_target_dml(world, rec, how):
    disthost, jail, place, certificate = rec["disthost"], rec["jail"], rec["place"], rec["certificate"]
    ids = [world.ids[v] if isinstance(v, str) else v for v in (disthost, jail, place, certificate)]
    if how == "insert":
        sql = "INSERT INTO targets (disthost, jail, place, certificate) VALUES (%s, %s, %s, %s)"
        params = ids
    else:
        sql = ("UPDATE targets SET disthost = %s, jail = %s, place = %s, certificate = %s "
               f"WHERE certificate = {world.ids['www']}")
        params = ids
    existing = set(fetch(world.conn, "SELECT disthost, jail, place, certificate FROM targets"))

    def accepted(conn):
        d, j, p, c = ids
        assert d in (world.ids["web1"], world.ids["jailhost"]) and p == world.ids["nginx"]
        assert c in (world.ids["www"], world.ids["client1"])
        assert j is None or (j == world.ids["mail"] and d == world.ids["jailhost"])
        assert fetch(conn, "SELECT count(*) FROM targets WHERE disthost = %s AND jail IS NOT DISTINCT FROM %s "
                           "AND place = %s AND certificate = %s", *ids) == [(1,)]

    err = trial(world, "target_dml", sql, params, accepted, pg_type_errors=any(v is not None and not -2**31 <= v < 2**31 for v in ids))
    d, j, p, c = ids
    good = (d in (world.ids["web1"], world.ids["jailhost"]) and p == world.ids["nginx"] and c in (world.ids["www"], world.ids["client1"])
            and (j is None or (j == world.ids["mail"] and d == world.ids["jailhost"])))
    if good and tuple(ids) not in existing:
        good_but_refused(err, f"{how} target {ids!r}")


@settings(HOSTILE, max_examples=FEW)
@given(certificate=some_id, service=some_id)
def test_certificate_service_dml(world, certificate, service):
    ids = [world.ids[v] if isinstance(v, str) else v for v in (certificate, service)]

    def accepted(conn):
        assert ids[0] in (world.ids["www"], world.ids["client1"])
        assert fetch(conn, "SELECT count(*) FROM services WHERE id = %s", ids[1]) == [(1,)]

    trial(world, "certificate_service_dml", "INSERT INTO certificates_services (certificate, service) VALUES (%s, %s)", ids,
          accepted, pg_type_errors=any(v is not None and not -2**31 <= v < 2**31 for v in ids))


# --------------------------------------------------------------------------- lookups by name, selections

known_names = st.sampled_from(["www.example.org", "client1", "example.org", "web1.example.org", "jailhost.example.org",
                               "mail", "nginx", "https", "WWW.EXAMPLE.ORG"])
name_args = st.one_of(known_names, st.none(), hostile(host_names()))
LOOKUPS = [
    ("remove_cert", "SELECT remove_cert(%s)", 1), ("disable_cert", "SELECT disable_cert(%s)", 1),
    ("enable_cert", "SELECT enable_cert(%s)", 1), ("remove_altname", "SELECT remove_altname(%s, %s)", 2),
    ("add_service", "SELECT add_service(%s, %s, 443)", 2), ("remove_service", "SELECT remove_service(%s, %s, 443)", 2),
    ("add_target", "SELECT add_target(%s, %s, %s, %s)", 4), ("remove_target", "SELECT remove_target(%s, %s, %s, %s)", 4),
    ("remove_disthost", "SELECT remove_disthost(%s)", 1), ("remove_jail", "SELECT remove_jail(%s)", 1),
    ("remove_place", "SELECT remove_place(%s)", 1), ("remove_tlsa_service", "SELECT remove_tlsa_service(%s, 443)", 1),
]


@settings(HOSTILE, max_examples=MANY)
@given(lookup=st.sampled_from(LOOKUPS), args=st.lists(name_args, min_size=4, max_size=4))
def test_lookups_by_name(world, lookup, args):
    """Every function that finds objects by name refuses unknown, hostile and NULL names with our SQLSTATE."""
    func, sql, arity = lookup
    args = args[:arity]
    known = world.subjects | world.disthosts | world.jails | world.places | {"https"}

    def accepted(conn):
        # only names of existing objects get anywhere (a NULL jail of a target is allowed)
        assert all(a.lower() in known for a in args if a is not None), f"{func}{tuple(args)!r} accepted"

    trial(world, f"lookup {func}", sql, args, accepted)


names_list = st.lists(st.one_of(known_names, hostile(host_names(), huge([254, 10_000]))), max_size=3)
CERT_LISTS = (st.lists(st.sampled_from(["www.example.org", "client1", "WWW.example.org"]), max_size=2), names_list)
HOST_LISTS = (st.lists(st.sampled_from(["web1.example.org", "jailhost.example.org"]), max_size=1), names_list)


@settings(HOSTILE, max_examples=SOME)
@given(rec=one_hostile({"include": CERT_LISTS, "exclude": CERT_LISTS, "only": CERT_LISTS, "skip": HOST_LISTS,
                        "limit": HOST_LISTS}),
       flags=st.tuples(st.one_of(st.none(), st.booleans()), st.one_of(st.none(), st.booleans())))
def test_selection(world, rec, flags):
    include, exclude, only, skip, limit = rec["include"], rec["exclude"], rec["only"], rec["skip"], rec["limit"]
    """The selection behind -i -e -o -s -l: unknown or hostile names are SP024, never another code."""
    def accepted(conn):
        assert all(n.lower() in world.certs for n in include + exclude + only)
        assert all(n.lower() in world.disthosts for n in skip + limit)
        assert not {n.lower() for n in skip} & {n.lower() for n in limit}

    err = trial(world, "selection", "SELECT check_selection(selection(%s, %s, %s, %s, %s, %s, %s))",
                (flags[0], include, exclude, only, skip, limit, flags[1]), accepted)
    if err is not None:
        assert err.diag.sqlstate == "SP024"
    known = (all(n.lower() in world.certs for n in include + exclude + only)
             and all(n.lower() in world.disthosts for n in skip + limit))
    if known and not {n.lower() for n in skip} & {n.lower() for n in limit}:
        good_but_refused(err, f"selection {include, exclude, only, skip, limit}")


# --------------------------------------------------------------------------- settings, remarks


SETTING_VALUES = {
    "integer": st.one_of(st.integers(0, 3650).map(str), st.integers(-10, 10**8).map(str)),
    "interval": st.sampled_from(["1 day", "6 hours", "30 seconds", "0", "3650 days", "3651 days", "-1 day", "infinity",
                                 "1 fortnight", "P1D", "1e400 days", "99999999 years"]),
}
SETTING_VALUES = {kind: st.one_of(st.none(), mostly(good, hostile(good))) for kind, good in SETTING_VALUES.items()}


@settings(HOSTILE, max_examples=SOME)
@given(setting=st.sampled_from(["pre_publish_days", "local_issue_mail_days", "expire_grace", "job_max_attempts",
                                "job_backoff", "job_lease"]), data=st.data(), remark=remarks)
def test_setting_update(world, setting, data, remark):
    kind = world.conn.execute("SELECT kind FROM settings WHERE name = %s", (setting,)).fetchone()[0]
    value = data.draw(SETTING_VALUES[kind], label="value")

    def accepted(conn):
        assert value is not None and is_printable(value, 200) and is_printable(remark, 10000)
        if kind == "integer":
            assert value.isascii() and value.isdigit() and 0 <= int(value) <= 3650
        assert fetch(conn, "SELECT value, remarks FROM settings WHERE name = %s", setting) == [(value, remark)]

    err = trial(world, "setting_update", "UPDATE settings SET value = %s, remarks = %s WHERE name = %s", (value, remark, setting), accepted)
    if kind == "integer" and value is not None and value.isdigit() and int(value) <= 3650 and is_printable(remark, 10000):
        good_but_refused(err, f"setting {setting} = {value!r}")


@settings(HOSTILE, max_examples=FEW)
@given(rec=one_hostile({"name": SIMPLE, "kind": (st.sampled_from(["text", "integer", "boolean"]), hostile(st.just("text"))),
                        "value": (st.sampled_from(["true", "7", "false", "365"]), hostile(free_text)),
                        "description": (free_text.filter(lambda t: t.strip(" ")), st.one_of(st.none(), hostile(free_text)))}))
def test_setting_insert(world, rec):
    name, kind, value, description = rec["name"], rec["kind"], rec["value"], rec["description"]
    """A new setting (what a migration does): a plain name, a known kind, a printable value and description."""
    def accepted(conn):
        assert is_simple_name(name) and kind in ("text", "integer", "boolean")
        assert value and is_printable(value, 200) and description and is_printable(description, 1000)
        assert kind != "integer" or (value.isascii() and value.isdigit() and int(value) <= 3650)
        assert kind != "boolean" or value.lower() in ("true", "false")
        assert fetch(conn, "SELECT name, kind, value, description FROM settings WHERE name = %s", name) == [(name, kind, value, description)]

    trial(world, "setting_insert", "INSERT INTO settings (name, kind, value, description) VALUES (%s, %s, %s, %s)",
          (name, kind, value, description), accepted)


REMARK_ROWS = [("certificates", "id = {www}"), ("subjects", "name = 'www.example.org'"), ("services", "name = 'smtp'"),
               ("disthosts", "fqdn = 'web1.example.org'"), ("jails", "name = 'mail'"), ("places", "name = 'nginx'"),
               ("targets", "certificate = {www}"), ("certificates_services", "certificate = {www}"), ("settings", "name = 'job_lease'")]


@settings(HOSTILE, max_examples=SOME)
@given(row=st.sampled_from(REMARK_ROWS), remark=st.one_of(free_text, hostile(free_text, huge([9999, 10_000, 10_001, 1_000_000]))))
def test_remarks(world, row, remark):
    table, where = row
    where = where.format(**world.ids)

    def accepted(conn):
        assert is_printable(remark, 10000), f"{table}.remarks accepted {remark[:80]!r}"
        assert fetch(conn, f"SELECT DISTINCT remarks FROM {table} WHERE {where}") == [(remark,)]

    err = trial(world, "remarks", f"UPDATE {table} SET remarks = %s WHERE {where}", (remark,), accepted)
    if is_printable(remark, 10000):
        good_but_refused(err, f"{table}.remarks = {remark[:40]!r}")


# --------------------------------------------------------------------------- wrong types

wrong_values = st.one_of(
    hostile(st.sampled_from(["1", "0", "true", "separate", "LE", "rsa", "web1.example.org", "/etc/ssl"])),
    ints, st.integers(2**31, 2**70), st.integers(-2**70, -2**31 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.none(), st.lists(st.text(max_size=3).filter(lambda t: "\x00" not in t), max_size=2),
    st.binary(max_size=8), st.just(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)), st.just(datetime.date(2024, 1, 1)),
)
DML_COLUMNS = [
    ("disthosts", "fqdn", "id = {web1}"), ("disthosts", "jailroot", "id = {web1}"), ("disthosts", "created", "id = {web1}"),
    ("jails", "name", "id = {mail}"), ("jails", "disthost", "id = {mail}"),
    ("places", "cert_file_type", "id = {nginx}"), ("places", "mode", "id = {nginx}"), ("places", "uid", "id = {nginx}"),
    ("places", "chownboth", "id = {nginx}"), ("places", "pglink", "id = {nginx}"), ("places", "reload_command", "id = {nginx}"),
    ("services", "port", "id = {smtp}"), ("services", "tlsaprefix", "id = {smtp}"),
    ("certificates", "type", "id = {www}"), ("certificates", "encryption_algo", "id = {www}"),
    ("certificates", "disabled", "id = {www}"), ("certificates", "authorized_until", "id = {www}"),
    ("subjects", "type", "id = {alt}"), ("subjects", "isaltname", "id = {alt}"),
    ("targets", "place", "certificate = {www}"), ("targets", "jail", "certificate = {www}"),
    ("settings", "value", "name = 'pre_publish_days'"),
]


@settings(HOSTILE, max_examples=MANY)
@given(column=st.sampled_from(DML_COLUMNS), value=wrong_values)
def test_wrong_types_in_dml(world, column, value):
    """Any Python value for any column: our refusal, PostgreSQL's refusal of the type, or stored as cast."""
    table, col, where = column
    where = where.format_map(world.ids)
    if isinstance(value, str):
        assume("\x00" not in value)
    col_type = world.conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                                  "WHERE attrelid = %s::regclass AND attname = %s", (f"pki.{table}", col)).fetchone()[0]

    def accepted(conn):
        # what is stored is the value as PostgreSQL casts it (1.5 for an integer column is stored as 2)
        assert fetch(conn, f"SELECT DISTINCT {col} IS NOT DISTINCT FROM CAST(%s AS {col_type}) FROM {table} WHERE {where}",
                     value) == [(True,)]
        if isinstance(value, str) and col_type in ("text", "citext", "dd.citext"):
            assert not unprintable(value)

    trial(world, "wrong_types_dml", f"UPDATE {table} SET {col} = %s WHERE {where}", (value,), accepted, pg_type_errors=True)


CALLS = [
    ("SELECT add_disthost(%s, %s)", 2), ("SELECT add_jail(%s, %s)", 2),
    ("SELECT add_place(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", 10), ("SELECT add_tlsa_service(%s, %s, %s)", 3),
    ("SELECT * FROM add_cert(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", 11), ("SELECT add_service(%s, %s, %s)", 3),
    ("SELECT add_target(%s, %s, %s, %s)", 4), ("SELECT remove_cert(%s)", 1), ("SELECT remove_tlsa_service(%s, %s)", 2),
]
GOOD_ARGS = {
    "SELECT add_disthost(%s, %s)": ["new.example.org", "/usr/jails"],
    "SELECT add_jail(%s, %s)": ["newjail", "jailhost.example.org"],
    "SELECT add_place(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)": ["newplace", "separate", "/etc/ssl", None, 0, 0, 416, False, False, "true"],
    "SELECT add_tlsa_service(%s, %s, %s)": ["newsvc", 4443, None],
    "SELECT * FROM add_cert(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)": ["new.example.org", "server", "LE", "ec", False, None, "https", 443, "web1.example.org", None, "nginx"],
    "SELECT add_service(%s, %s, %s)": ["client1", "https", 443],
    "SELECT add_target(%s, %s, %s, %s)": ["client1", "web1.example.org", None, "nginx"],
    "SELECT remove_cert(%s)": ["client1"],
    "SELECT remove_tlsa_service(%s, %s)": ["smtp", 25],
}


@settings(HOSTILE, max_examples=SOME)
@given(call=st.sampled_from(CALLS), position=st.integers(0, 10), value=wrong_values)
def test_wrong_types_in_calls(world, call, position, value):
    """One argument of a good call replaced by any Python value: our refusal or PostgreSQL's refusal of the
    call's types (the function is never entered with a value of the wrong type)."""
    sql, arity = call
    if isinstance(value, str):
        assume("\x00" not in value)
    args = list(GOOD_ARGS[sql])
    args[position % arity] = value
    trial(world, "wrong_types_calls", sql, args, None, pg_type_errors=True)


@pytest.mark.parametrize("sql, params", [
    ("SELECT add_disthost(%s)", ("web\x00.example.org",)),
    ("SELECT add_jail(%s, 'jailhost.example.org')", ("ma\x00il",)),
    ("SELECT add_place('p', 'separate', %s)", ("/etc/\x00ssl",)),
    ("UPDATE places SET reload_command = %s WHERE name = 'nginx'", ("service nginx reload\x00; reboot",)),
    ("SELECT check_selection(selection(false, %s))", (["www.example.org\x00"],)),
])
def test_nul_is_refused_by_the_client(world, sql, params):
    """PostgreSQL text cannot hold NUL: psycopg refuses it before sending anything (no SQLSTATE)."""
    with pytest.raises(psycopg.DataError) as info:
        world.conn.execute(sql, params)
    assert info.value.diag.sqlstate is None and "NUL" in str(info.value)
    assert snapshot(world.conn) == world.base


# --------------------------------------------------------------------------- the reload command's placeholder


def plan_row(jail: str | None, reload_command: str) -> dict:
    return {"fqdn": "jailhost.example.org", "instance": 1, "target": 1, "place": "nginx", "jail": jail,
            "jailroot": "/usr/jails", "cert_path": "/etc/ssl/{}", "key_path": None, "subject": "www.example.org",
            "subject_type": "server", "algo": "rsa", "file_name_algo": "rsa", "key_file_format": "pkcs8", "cert_type": "local", "cert_file_type": "separate",
            "cert": "-----BEGIN CERTIFICATE-----\n", "cacert": None, "chain": None, "key": None,
            "mode": None, "uid": None, "gid": None, "chownboth": False, "pglink": False,
            "reload_command": reload_command}


@settings(HOSTILE, max_examples=SOME)
@given(jail=st.one_of(hostile(simple_names, huge([64, 1000, 10_000])),
                     st.sampled_from(["$(touch /tmp/pwned)", "`reboot`", "a; reboot", "a' ; reboot; '", "\n", "-rf /"])))
def test_reload_placeholder_cannot_inject(jail):
    """The agent fills '{}' with the jail name shell-quoted: whatever the name, the shell sees one word.
    (The database refuses every jail name that is not shell-inert, so even a '{}' an operator wrote inside
    quotes of the reload command cannot be escaped from; test_add_jail checks that side.)"""
    from serverpki.handlers.distribute import build_plan

    assume(jail != "")
    plan = build_plan([plan_row(jail, "printf '%s\\n' {}")], lambda pem: pem)
    (command,) = plan.reloads
    assert shlex.split(command) == ["printf", "%s\\n", jail]
    out = subprocess.run(["sh", "-c", command], capture_output=True, check=True).stdout
    assert out == (jail + "\n").encode()
    COUNTS.setdefault("reload_placeholder", Counter())["accepted"] += 1


@pytest.mark.parametrize("name", ["$(reboot)", "`reboot`", "a;reboot", "a|b", "a&b", "a b", "a'b", 'a"b', "a\nb",
                                  "-rf", "..", ".", "a/b", "../etc", "{}", "a$IFS", "*", "\u0435xample"])
def test_hostile_jail_names_refused(world, name):
    err = trial(world, "hostile_jail_names", "SELECT add_jail(%s, 'jailhost.example.org')", (name,))
    assert err is not None and err.diag.sqlstate == "SP001"


@pytest.mark.parametrize("name", ["expire_grace", "job_lease"])
def test_setting_insert_of_an_existing_name(world, name):
    err = trial(world, "setting_duplicate", "INSERT INTO settings (name, kind, value, description) VALUES (%s, 'text', 'x', 'y')", (name,))
    assert err is not None and err.diag.sqlstate == "SP003"
