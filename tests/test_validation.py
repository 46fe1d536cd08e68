"""The validation rules of the configuration, one by one.

Each rule is proved on every way in: the management function, a plain INSERT
and a plain UPDATE (and DELETE where it matters). Every refusal goes through
assert_refused, which checks our SQLSTATE, a message naming the offending
value, a HINT, and that the database is exactly as it was before.
"""

from __future__ import annotations

import psycopg
import pytest

from helpers import add_small_world, assert_refused, owner_conn, snapshot

# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def world(conn):
    """A small configuration: two disthosts (one with jails), a jail, a place, a certificate."""
    add_small_world(conn)

    def one(sql, *params):
        return conn.execute(sql, params).fetchone()[0]

    return {
        "web1": one("SELECT id FROM disthosts WHERE fqdn = 'web1.example.org'"),
        "jailhost": one("SELECT id FROM disthosts WHERE fqdn = 'jailhost.example.org'"),
        "mail": one("SELECT id FROM jails WHERE name = 'mail'"),
        "nginx": one("SELECT id FROM places WHERE name = 'nginx'"),
        "cert": one("SELECT certificate FROM subjects WHERE name = 'www.example.org'"),
        "https": one("SELECT id FROM services WHERE name = 'https' AND port = 443"),
        "smtp": one("SELECT id FROM services WHERE name = 'smtp' AND port = 25"),
    }


def count(conn, sql, *params) -> int:
    return conn.execute(sql, params).fetchone()[0]


# --------------------------------------------------------------------------- the SQLSTATE registry


def test_registry_holds_sp001_to_sp012(conn):
    codes = {r[0] for r in conn.execute("SELECT code FROM dd.sqlstates")}
    assert {f"SP{n:03d}" for n in range(1, 13)} <= codes
    for code, name, meaning in conn.execute("SELECT code, name, meaning FROM dd.sqlstates"):
        assert name and meaning, code


@pytest.mark.parametrize("code", [f"SP{n:03d}" for n in range(1, 13)])
def test_raise_error_raises_each_registered_code(conn, code):
    err = assert_refused(conn, "SELECT raise_error(%s, %s, %s)", (code, f"the value 'x{code}' is bad", "do better"),
                         sqlstate=code, match=f"'x{code}'")
    assert err.diag.message_hint == "do better"


def test_raise_error_refuses_an_unregistered_code(conn):
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT raise_error('SP999', 'boom', 'none')")
    assert info.value.diag.sqlstate == "P0001"
    assert "unregistered SQLSTATE SP999" in info.value.diag.message_primary


# --------------------------------------------------------------------------- host names (disthosts)

LABEL63 = "a" * 63
NAME253 = ".".join([LABEL63] * 3) + "." + "b" * 61          # 63*3 + 3 dots + 61 = 253
NAME254 = ".".join([LABEL63] * 3) + "." + "b" * 62          # one more: 254

GOOD_HOSTS = [
    "example.org",
    "web1.example.org",
    "web-1.in.example.org",
    "WEB1.Example.ORG",
    "localhost",
    "1and1.example",
    "xn--bcher-kva.example",
    LABEL63 + ".example.org",
    NAME253,
]

BAD_HOSTS = [
    # (value, message fragment that names it)
    ("www.*.example.org", '"www.*.example.org"'),
    ("w*.example.org", '"w*.example.org"'),
    ("*w.example.org", '"*w.example.org"'),
    ("*.example.org", '"*.example.org"'),          # no wildcard for a host we connect to
    ("*.org", '"*.org"'),
    ("*", '"*"'),
    ("-web.example.org", '"-web.example.org"'),
    ("web-.example.org", '"web-.example.org"'),
    ("web_1.example.org", '"web_1.example.org"'),
    ("web 1.example.org", '"web 1.example.org"'),
    ("web1.example.org.", '"web1.example.org."'),
    (".example.org", '".example.org"'),
    ("web1..example.org", '"web1..example.org"'),
    ("ex!ample.org", '"ex!ample.org"'),
    ("exämple.org", '"exämple.org"'),
    ("host/etc.example.org", '"host/etc.example.org"'),
    ("a;reboot.example.org", '"a;reboot.example.org"'),
    ("b" * 64 + ".example.org", "b" * 64),              # label of 64
    (NAME254, NAME254[:40]),                            # 254 in all
    ("web1\n.example.org", "web1\n.example.org"),       # control character
    ("web1\t.example.org", "web1\t.example.org"),
]


@pytest.mark.parametrize("fqdn", GOOD_HOSTS)
def test_good_host_names_accepted(conn, fqdn):
    conn.execute("SELECT add_disthost(%s)", (fqdn,))
    conn.execute("INSERT INTO disthosts (fqdn) VALUES (%s)", ("x." + fqdn if len(fqdn) < 250 else "a.b",))
    assert count(conn, "SELECT count(*) FROM disthosts WHERE fqdn = %s", fqdn) == 1


@pytest.mark.parametrize("fqdn,named", BAD_HOSTS)
def test_bad_host_name_refused(conn, world, fqdn, named):
    assert_refused(conn, "SELECT add_disthost(%s)", (fqdn,), sqlstate="SP001", match=named)
    assert_refused(conn, "SELECT add_disthost(%s, '/usr/jails')", (fqdn,), sqlstate="SP001", match=named)
    assert_refused(conn, "INSERT INTO disthosts (fqdn, jailroot) VALUES (%s, '/usr/jails')", (fqdn,),
                   sqlstate="SP001", match=named)
    assert_refused(conn, "UPDATE disthosts SET fqdn = %s WHERE fqdn = 'web1.example.org'", (fqdn,),
                   sqlstate="SP001", match=named)


@pytest.mark.parametrize("fqdn", [None, "", "   "])
def test_missing_host_name_refused(conn, world, fqdn):
    assert_refused(conn, "SELECT add_disthost(%s)", (fqdn,), sqlstate="SP009", match="disthost FQDN")
    assert_refused(conn, "INSERT INTO disthosts (fqdn) VALUES (%s)", (fqdn,), sqlstate="SP009", match="disthost FQDN")
    assert_refused(conn, "UPDATE disthosts SET fqdn = %s WHERE fqdn = 'web1.example.org'", (fqdn,),
                   sqlstate="SP009", match="disthost FQDN")


# --------------------------------------------------------------------------- subject names (server, reserved)

GOOD_SERVER_NAMES = [
    "mail.example.org",
    "*.example.org",
    "*.in.example.org",
    "example.org",
    LABEL63 + ".example.org",
    NAME253,
]

BAD_SERVER_NAMES = [
    ("www.*.example.org", '"www.*.example.org"'),
    ("w*.example.org", '"w*.example.org"'),
    ("*w.example.org", '"*w.example.org"'),
    ("**.example.org", '"**.example.org"'),
    ("*.*.example.org", '"*.*.example.org"'),
    ("*.org", '"*.org"'),
    ("*", '"*"'),
    ("example.*", '"example.*"'),
    ("-a.example.org", '"-a.example.org"'),
    ("a_b.example.org", '"a_b.example.org"'),
    ("a b.example.org", '"a b.example.org"'),
    ("example.org.", '"example.org."'),
    ("a..example.org", '"a..example.org"'),
    ("../etc/passwd", '"../etc/passwd"'),
    ("c" * 64 + ".example.org", "c" * 64),
    (NAME254, NAME254[:40]),
    ("a\nb.example.org", "a\nb.example.org"),
]


@pytest.mark.parametrize("name", GOOD_SERVER_NAMES)
def test_good_server_names_accepted_as_subject_and_alt_name(conn, name):
    conn.execute("SELECT * FROM add_cert(%s, 'server', 'LE', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)", (name,))
    conn.execute("SELECT * FROM add_cert('host.example.net', 'server', 'local', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
    conn.execute("SELECT remove_cert(%s)", (name,))
    conn.execute("SELECT add_altname('host.example.net', %s)", (name,))
    assert count(conn, "SELECT count(*) FROM subjects WHERE name = %s AND isaltname", name) == 1


@pytest.mark.parametrize("name,named", BAD_SERVER_NAMES)
def test_bad_server_name_refused(conn, world, name, named):
    for subject_type in ("server", "reserved"):
        assert_refused(conn, "SELECT * FROM add_cert(%s, %s, 'LE', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
                       (name, subject_type), sqlstate="SP001", match=named)
    # as an alt name
    assert_refused(conn, "SELECT add_altname('www.example.org', %s)", (name,), sqlstate="SP001", match=named)
    assert_refused(conn, "SELECT * FROM add_cert('ok.example.org', 'server', 'LE', NULL, NULL, %s, "
                         "NULL, NULL, NULL, NULL, NULL)", (name,), sqlstate="SP001", match=named)
    # by plain SQL
    assert_refused(conn, "INSERT INTO subjects (type, name, isaltname, certificate) VALUES ('server', %s, true, %s)",
                   (name, world["cert"]), sqlstate="SP001", match=named)
    assert_refused(conn, "UPDATE subjects SET name = %s WHERE name = 'example.org'", (name,),
                   sqlstate="SP001", match=named)
    assert_refused(conn, "UPDATE subjects SET name = %s WHERE name = 'www.example.org'", (name,),
                   sqlstate="SP001", match=named)


def test_wildcard_message_explains_the_rule(conn):
    err = assert_refused(conn, "SELECT * FROM add_cert('www.*.example.org', 'server', 'LE', NULL, NULL, NULL, "
                               "NULL, NULL, NULL, NULL, NULL)", sqlstate="SP001", match="www.*.example.org")
    assert "leftmost label" in err.diag.message_primary
    assert "*.example.org" in err.diag.message_hint


# --------------------------------------------------------------------------- client names

GOOD_CLIENT_NAMES = ["alice", "gal1_op", "client1", "svc.backup", "user@example.org", "A-1", "x" * 64]

BAD_CLIENT_NAMES = [
    "a/b", "../etc", "..", ".", ".hidden", "-rf", "_x", "a b", "a;b", "a|b", "a&b", "$(reboot)", "`id`",
    "a'b", 'a"b', "a*", "a\\b", "a>b", "x" * 65, "a\tb", "a\nb",
]


@pytest.mark.parametrize("name", GOOD_CLIENT_NAMES)
def test_good_client_names_accepted(conn, name):
    row = conn.execute("SELECT * FROM add_cert(%s, 'client', 'local', 'rsa', false, NULL, NULL, NULL, NULL, NULL, NULL)",
                       (name,)).fetchone()
    assert row[0] == "client" and row[1] == name


@pytest.mark.parametrize("name", BAD_CLIENT_NAMES)
def test_bad_client_name_refused(conn, name):
    named = name[:40]
    assert_refused(conn, "SELECT * FROM add_cert(%s, 'client', 'local', 'rsa', false, NULL, NULL, NULL, NULL, NULL, NULL)",
                   (name,), sqlstate="SP001", match=named)
    conn.execute("SELECT * FROM add_cert('alice', 'client', 'local', 'rsa', false, NULL, NULL, NULL, NULL, NULL, NULL)")
    assert_refused(conn, "SELECT add_altname('alice', %s)", (name,), sqlstate="SP001", match=named)
    assert_refused(conn, "UPDATE subjects SET name = %s WHERE name = 'alice'", (name,), sqlstate="SP001", match=named)


def test_client_name_cannot_be_a_wildcard_host(conn):
    assert_refused(conn, "SELECT * FROM add_cert('*.example.org', 'client', 'local', NULL, NULL, NULL, NULL, NULL, "
                         "NULL, NULL, NULL)", sqlstate="SP001", match="*.example.org")


# --------------------------------------------------------------------------- CA names

GOOD_CA_NAMES = ["Local CA", "R3", "Let's Encrypt R10", "CA-2024 (rsa)", "x" * 64]

BAD_CA_NAMES = ["a/b", "a\\b", " Local CA", ".CA", "..", "Local\tCA", "Local\nCA", "x" * 65]


@pytest.mark.parametrize("name", GOOD_CA_NAMES)
def test_good_ca_names_accepted(conn, name):
    row = conn.execute("SELECT * FROM add_cert(%s, 'CA', 'local', 'rsa', false, NULL, NULL, NULL, NULL, NULL, NULL)",
                       (name,)).fetchone()
    assert row[0] == "CA" and row[1] == name


@pytest.mark.parametrize("name", BAD_CA_NAMES)
def test_bad_ca_name_refused(conn, name):
    named = name[:40]
    assert_refused(conn, "SELECT * FROM add_cert(%s, 'CA', 'local', 'rsa', false, NULL, NULL, NULL, NULL, NULL, NULL)",
                   (name,), sqlstate="SP001", match=named)
    conn.execute("SELECT * FROM add_cert('Local CA', 'CA', 'local', 'rsa', false, NULL, NULL, NULL, NULL, NULL, NULL)")
    assert_refused(conn, "UPDATE subjects SET name = %s WHERE name = 'Local CA'", (name,), sqlstate="SP001", match=named)
    assert_refused(conn, "SELECT add_altname('Local CA', %s)", (name,), sqlstate="SP001", match=named)


@pytest.mark.parametrize("subject_type", ["server", "client", "CA", "reserved"])
@pytest.mark.parametrize("name", [None, "", "  "])
def test_missing_subject_name_refused(conn, subject_type, name):
    assert_refused(conn, "SELECT * FROM add_cert(%s, %s, 'local', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
                   (name, subject_type), sqlstate="SP009", match="certificate name")


# --------------------------------------------------------------------------- duplicates (SP003, case-insensitive)


@pytest.mark.parametrize("fqdn", ["web1.example.org", "WEB1.EXAMPLE.ORG", "Web1.Example.Org"])
def test_duplicate_disthost_refused(conn, world, fqdn):
    assert_refused(conn, "SELECT add_disthost(%s)", (fqdn,), sqlstate="SP003", match=fqdn)
    assert_refused(conn, "INSERT INTO disthosts (fqdn) VALUES (%s)", (fqdn,), sqlstate="SP003", match=fqdn)
    assert_refused(conn, "UPDATE disthosts SET fqdn = %s WHERE fqdn = 'jailhost.example.org'", (fqdn,),
                   sqlstate="SP003", match=fqdn)


def test_disthost_may_keep_its_own_name_on_update(conn, world):
    conn.execute("UPDATE disthosts SET fqdn = 'WEB1.example.org' WHERE fqdn = 'web1.example.org'")
    assert count(conn, "SELECT count(*) FROM disthosts WHERE fqdn = 'web1.example.org'") == 1


@pytest.mark.parametrize("name", ["mail", "MAIL", "Mail"])
def test_duplicate_jail_refused(conn, world, name):
    conn.execute("SELECT add_jail('www', 'jailhost.example.org')")
    assert_refused(conn, "SELECT add_jail(%s, 'jailhost.example.org')", (name,), sqlstate="SP003", match=name)
    assert_refused(conn, "INSERT INTO jails (name, disthost) VALUES (%s, %s)", (name, world["jailhost"]),
                   sqlstate="SP003", match=name)
    assert_refused(conn, "UPDATE jails SET name = %s WHERE name = 'www'", (name,), sqlstate="SP003", match=name)


@pytest.mark.parametrize("name", ["nginx", "NGINX"])
def test_duplicate_place_refused(conn, world, name):
    conn.execute("SELECT add_place('postfix', 'separate', '/usr/local/etc/postfix/ssl')")
    assert_refused(conn, "SELECT add_place(%s, 'separate', '/etc/ssl')", (name,), sqlstate="SP003", match=name)
    assert_refused(conn, "INSERT INTO places (name, cert_path) VALUES (%s, '/etc/ssl')", (name,),
                   sqlstate="SP003", match=name)
    assert_refused(conn, "UPDATE places SET name = %s WHERE name = 'postfix'", (name,), sqlstate="SP003", match=name)


@pytest.mark.parametrize("name", ["https", "HTTPS"])
def test_duplicate_service_refused(conn, name):
    assert_refused(conn, "SELECT add_tlsa_service(%s, 443)", (name,), sqlstate="SP003", match=f"{name}/443")
    assert_refused(conn, "INSERT INTO services (name, port, tlsaprefix) VALUES (%s, 443, '_443._tcp.{}. 3600 IN TLSA 3 0 1')",
                   (name,), sqlstate="SP003", match=f"{name}/443")
    assert_refused(conn, "UPDATE services SET name = %s, port = 443, tlsaprefix = '_443._tcp.{}. 3600 IN TLSA 3 0 1' "
                         "WHERE name = 'caldav'", (name,), sqlstate="SP003", match=f"{name}/443")


def test_same_service_name_on_another_port_is_fine(conn):
    conn.execute("SELECT add_tlsa_service('https', 8444)")
    assert count(conn, "SELECT count(*) FROM services WHERE name = 'https'") == 2


@pytest.mark.parametrize("name", ["www.example.org", "WWW.Example.ORG", "example.org", "EXAMPLE.ORG"])
def test_duplicate_subject_name_refused(conn, world, name):
    assert_refused(conn, "SELECT * FROM add_cert(%s, 'server', 'LE', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
                   (name,), sqlstate="SP003", match=name)
    conn.execute("SELECT * FROM add_cert('other.example.org', 'server', 'LE', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
    assert_refused(conn, "SELECT add_altname('other.example.org', %s)", (name,), sqlstate="SP003", match=name)
    assert_refused(conn, "SELECT * FROM add_cert('new.example.org', 'server', 'LE', NULL, NULL, %s, NULL, NULL, NULL, NULL, NULL)",
                   (name,), sqlstate="SP003", match=name)
    assert_refused(conn, "UPDATE subjects SET name = %s WHERE name = 'other.example.org'", (name,),
                   sqlstate="SP003", match=name)
    other = count(conn, "SELECT certificate FROM subjects WHERE name = 'other.example.org'")
    assert_refused(conn, "INSERT INTO subjects (type, name, isaltname, certificate) VALUES ('server', %s, true, %s)",
                   (name, other), sqlstate="SP003", match=name)


def test_alt_name_equal_to_its_own_subject_refused(conn):
    assert_refused(conn, "SELECT * FROM add_cert('a.example.org', 'server', 'LE', NULL, NULL, 'A.example.org', "
                         "NULL, NULL, NULL, NULL, NULL)", sqlstate="SP003", match="A.example.org")


def test_duplicate_target_refused_by_insert_and_update(conn, world):
    err = assert_refused(conn, "INSERT INTO targets (disthost, jail, place, certificate) VALUES (%s, NULL, %s, %s)",
                         (world["web1"], world["nginx"], world["cert"]), sqlstate="SP003", match="web1.example.org/-/nginx")
    assert "www.example.org" in err.diag.message_primary
    conn.execute("SELECT add_target('www.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    err = assert_refused(conn, "UPDATE targets SET disthost = %s, jail = NULL WHERE jail = %s",
                         (world["web1"], world["mail"]), sqlstate="SP003", match="web1.example.org/-/nginx")
    assert "www.example.org" in err.diag.message_primary
    conn.execute("SELECT add_target('www.example.org', 'jailhost.example.org', NULL, 'nginx')")
    assert_refused(conn, "UPDATE targets SET jail = %s WHERE jail IS NULL AND disthost = %s",
                   (world["mail"], world["jailhost"]), sqlstate="SP003", match="jailhost.example.org/mail/nginx")


def test_duplicate_certificate_service_refused_by_insert_and_update(conn, world):
    err = assert_refused(conn, "INSERT INTO certificates_services (certificate, service) VALUES (%s, %s)",
                         (world["cert"], world["https"]), sqlstate="SP003", match="https/443")
    assert "www.example.org" in err.diag.message_primary
    conn.execute("SELECT add_service('www.example.org', 'smtp', 25)")
    assert_refused(conn, "UPDATE certificates_services SET service = %s WHERE service = %s",
                   (world["https"], world["smtp"]), sqlstate="SP003", match="https/443")


# --------------------------------------------------------------------------- subjects: structure


def test_second_subject_name_per_certificate_refused(conn, world):
    assert_refused(conn, "INSERT INTO subjects (type, name, isaltname, certificate) VALUES ('server', 'two.example.org', false, %s)",
                   (world["cert"],), sqlstate="SP007", match="two.example.org")


def test_alt_name_becoming_subject_name_refused(conn, world):
    assert_refused(conn, "UPDATE subjects SET isaltname = false WHERE name = 'example.org'",
                   sqlstate="SP012", match="example.org")


def test_subject_moving_to_another_certificate_refused(conn, world):
    conn.execute("SELECT * FROM add_cert('other.example.org', 'server', 'LE', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
    other = count(conn, "SELECT certificate FROM subjects WHERE name = 'other.example.org'")
    assert_refused(conn, "UPDATE subjects SET certificate = %s WHERE name = 'example.org'", (other,),
                   sqlstate="SP012", match="example.org")
    assert_refused(conn, "UPDATE subjects SET certificate = NULL WHERE name = 'example.org'",
                   sqlstate="SP012", match="example.org")


@pytest.mark.parametrize("alt_type", ["client", "CA", "reserved"])
def test_alt_name_of_another_type_refused(conn, world, alt_type):
    name = "other.example.org"
    assert_refused(conn, "INSERT INTO subjects (type, name, isaltname, certificate) VALUES (%s, %s, true, %s)",
                   (alt_type, name, world["cert"]), sqlstate="SP007", match=name)
    assert_refused(conn, "UPDATE subjects SET type = %s WHERE name = 'example.org'", (alt_type,),
                   sqlstate="SP007", match="example.org")


@pytest.mark.parametrize("new_type", ["client", "reserved"])
def test_subject_type_change_leaving_alt_names_of_another_type_refused(conn, world, new_type):
    # www.example.org is a server certificate with the server alt name example.org;
    # turning only the subject into another type would break "alt name type = subject type"
    assert_refused(conn, "UPDATE subjects SET type = %s WHERE name = 'www.example.org'", (new_type,),
                   sqlstate="SP007", match="www.example.org")


def test_subject_type_change_without_alt_names_accepted(conn):
    conn.execute("SELECT * FROM add_cert('svc.example.org', 'server', 'LE', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
    conn.execute("UPDATE subjects SET type = 'reserved' WHERE name = 'svc.example.org'")
    assert conn.execute("SELECT type::text FROM subjects WHERE name = 'svc.example.org'").fetchone()[0] == "reserved"


def test_alt_name_of_same_type_by_insert_accepted(conn, world):
    conn.execute("INSERT INTO subjects (type, name, isaltname, certificate) VALUES ('server', 'www2.example.org', true, %s)",
                 (world["cert"],))
    assert count(conn, "SELECT count(*) FROM subjects WHERE certificate = %s", world["cert"]) == 3


def test_subject_of_unknown_certificate_refused(conn):
    assert_refused(conn, "INSERT INTO subjects (type, name, isaltname, certificate) VALUES ('server', 'x.example.org', true, 999999)",
                   sqlstate="SP002", match="x.example.org")


def test_deleting_a_subject_name_alone_refused(conn, world):
    assert_refused(conn, "DELETE FROM subjects WHERE name = 'www.example.org'", sqlstate="SP007", match="www.example.org")
    assert_refused(conn, "DELETE FROM subjects WHERE certificate = %s", (world["cert"],),
                   sqlstate="SP007", match="www.example.org")


def test_deleting_an_alt_name_by_plain_sql_accepted(conn, world):
    conn.execute("DELETE FROM subjects WHERE name = 'example.org'")
    assert count(conn, "SELECT count(*) FROM subjects WHERE certificate = %s", world["cert"]) == 1


def test_certificate_without_subject_refused_at_commit(conn):
    err = assert_refused(conn, "INSERT INTO certificates (type) VALUES ('LE')", sqlstate="SP007", match="has no subject name")
    assert "add_cert" in err.diag.message_hint
    assert count(conn, "SELECT count(*) FROM certificates") == 0


def test_certificate_without_subject_refused_in_explicit_transaction(conn):
    before = snapshot(conn)
    with pytest.raises(psycopg.Error) as info:
        with conn.transaction():
            conn.execute("INSERT INTO certificates (type) VALUES ('local')")
            conn.execute("INSERT INTO certificates (type) VALUES ('local')")
    assert info.value.diag.sqlstate == "SP007"
    assert info.value.diag.message_hint
    assert snapshot(conn) == before


def test_certificate_with_subject_in_same_transaction_accepted(conn):
    with conn.transaction():
        cid = conn.execute("INSERT INTO certificates (type) VALUES ('local') RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO subjects (type, name, isaltname, certificate) VALUES ('client', 'bob', false, %s)", (cid,))
    assert count(conn, "SELECT count(*) FROM certs WHERE \"Cert Name\" = 'bob'") == 1


def test_certificate_with_only_an_alt_name_refused_at_commit(conn):
    before = snapshot(conn)
    with pytest.raises(psycopg.Error) as info:
        with conn.transaction():
            cid = conn.execute("INSERT INTO certificates (type) VALUES ('local') RETURNING id").fetchone()[0]
            conn.execute("INSERT INTO subjects (type, name, isaltname, certificate) VALUES ('client', 'bob', true, %s)", (cid,))
    assert info.value.diag.sqlstate == "SP007"
    assert snapshot(conn) == before


# --------------------------------------------------------------------------- jails and jailroots

GOOD_JAIL_NAMES = ["mail2", "my_service_jail", "db.1", "Web-Jail", "x" * 64]

BAD_JAIL_NAMES = [
    "a/b", "/mail", "mail/", "../etc", "..", ".", ".hidden", "-x", "_x", "a b", " mail", "mail ",
    "a;b", "a|b", "a&b", "a>b", "a<b", "$(reboot)", "$HOME", "`id`", "a'b", 'a"b', "a*", "a?", "a\\b",
    "a~", "a#b", "a!b", "a%b", "a^b", "a(b)", "a{b}", "a[b]", "a=b", "a+b", "a,b", "a:b",
    "a\tb", "a\nb", "a\rb", "x" * 65,
]


@pytest.mark.parametrize("name", GOOD_JAIL_NAMES)
def test_good_jail_names_accepted(conn, world, name):
    conn.execute("SELECT add_jail(%s, 'jailhost.example.org')", (name,))
    conn.execute("INSERT INTO jails (name, disthost) VALUES (%s, %s)", ("i" + name[:63], world["jailhost"]))
    assert count(conn, "SELECT count(*) FROM jails") == 3


@pytest.mark.parametrize("name", BAD_JAIL_NAMES)
def test_bad_jail_and_place_name_refused(conn, world, name):
    named = name[:40]
    assert_refused(conn, "SELECT add_jail(%s, 'jailhost.example.org')", (name,), sqlstate="SP001", match=named)
    assert_refused(conn, "INSERT INTO jails (name, disthost) VALUES (%s, %s)", (name, world["jailhost"]),
                   sqlstate="SP001", match=named)
    assert_refused(conn, "UPDATE jails SET name = %s WHERE name = 'mail'", (name,), sqlstate="SP001", match=named)
    # place names follow the same rule: they become file and folder names on the target too
    assert_refused(conn, "SELECT add_place(%s, 'separate', '/etc/ssl')", (name,), sqlstate="SP001", match=named)
    assert_refused(conn, "INSERT INTO places (name, cert_path) VALUES (%s, '/etc/ssl')", (name,), sqlstate="SP001", match=named)
    assert_refused(conn, "UPDATE places SET name = %s WHERE name = 'nginx'", (name,), sqlstate="SP001", match=named)


@pytest.mark.parametrize("name", [None, "", "  "])
def test_missing_jail_name_refused(conn, world, name):
    assert_refused(conn, "SELECT add_jail(%s, 'jailhost.example.org')", (name,), sqlstate="SP009", match="jail name")
    assert_refused(conn, "INSERT INTO jails (name, disthost) VALUES (%s, %s)", (name, world["jailhost"]),
                   sqlstate="SP009", match="jail name")


def test_jail_needs_a_disthost(conn, world):
    assert_refused(conn, "INSERT INTO jails (name) VALUES ('lost')", sqlstate="SP009", match="lost")
    assert_refused(conn, "UPDATE jails SET disthost = NULL WHERE name = 'mail'", sqlstate="SP009", match="mail")


def test_jail_on_unknown_disthost_refused(conn, world):
    assert_refused(conn, "INSERT INTO jails (name, disthost) VALUES ('lost', 999999)", sqlstate="SP002", match="999999")
    assert_refused(conn, "UPDATE jails SET disthost = 999999 WHERE name = 'mail'", sqlstate="SP002", match="999999")


def test_jail_on_disthost_without_jailroot_refused(conn, world):
    assert_refused(conn, "SELECT add_jail('www', 'web1.example.org')", sqlstate="SP007", match="web1.example.org")
    assert_refused(conn, "INSERT INTO jails (name, disthost) VALUES ('www', %s)", (world["web1"],),
                   sqlstate="SP007", match="web1.example.org")
    assert_refused(conn, "UPDATE jails SET disthost = %s WHERE name = 'mail'", (world["web1"],),
                   sqlstate="SP007", match="web1.example.org")


def test_jail_moves_to_another_disthost_with_jailroot(conn, world):
    conn.execute("SELECT add_disthost('jailhost2.example.org', '/jails')")
    conn.execute("UPDATE jails SET disthost = (SELECT id FROM disthosts WHERE fqdn = 'jailhost2.example.org') WHERE name = 'mail'")
    assert conn.execute("SELECT d.fqdn::text FROM jails j JOIN disthosts d ON d.id = j.disthost").fetchone()[0] == \
        "jailhost2.example.org"


def test_jail_with_targets_cannot_move(conn, world):
    conn.execute("SELECT add_target('www.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    conn.execute("SELECT add_disthost('jailhost2.example.org', '/jails')")
    assert_refused(conn, "UPDATE jails SET disthost = (SELECT id FROM disthosts WHERE fqdn = 'jailhost2.example.org') "
                         "WHERE name = 'mail'", sqlstate="SP007", match="mail")


def test_removing_jailroot_while_jails_exist_refused(conn, world):
    err = assert_refused(conn, "UPDATE disthosts SET jailroot = NULL WHERE fqdn = 'jailhost.example.org'",
                         sqlstate="SP007", match="jailhost.example.org")
    assert "jails" in err.diag.message_primary


def test_removing_jailroot_without_jails_accepted(conn, world):
    conn.execute("DELETE FROM jails WHERE name = 'mail'")
    conn.execute("UPDATE disthosts SET jailroot = NULL WHERE fqdn = 'jailhost.example.org'")
    assert conn.execute("SELECT jailroot FROM disthosts WHERE fqdn = 'jailhost.example.org'").fetchone()[0] is None


def test_changing_jailroot_while_jails_exist_accepted(conn, world):
    conn.execute("UPDATE disthosts SET jailroot = '/jails' WHERE fqdn = 'jailhost.example.org'")
    assert conn.execute("SELECT jailroot FROM disthosts WHERE fqdn = 'jailhost.example.org'").fetchone()[0] == "/jails"


# --------------------------------------------------------------------------- targets: structure


def test_target_jail_on_other_disthost_refused(conn, world):
    assert_refused(conn, "SELECT add_target('www.example.org', 'web1.example.org', 'mail', 'nginx')",
                   sqlstate="SP007", match="mail")
    assert_refused(conn, "INSERT INTO targets (disthost, jail, place, certificate) VALUES (%s, %s, %s, %s)",
                   (world["web1"], world["mail"], world["nginx"], world["cert"]), sqlstate="SP007", match="mail")


def test_target_update_separating_jail_and_disthost_refused(conn, world):
    conn.execute("SELECT add_target('www.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    assert_refused(conn, "UPDATE targets SET disthost = %s WHERE jail = %s", (world["web1"], world["mail"]),
                   sqlstate="SP007", match="mail")
    assert_refused(conn, "UPDATE targets SET jail = %s WHERE jail IS NULL", (world["mail"],),
                   sqlstate="SP007", match="mail")


@pytest.mark.parametrize("column,value,sqlstate,named", [
    ("certificate", 999999, "SP002", "999999"),
    ("disthost", 999999, "SP002", "999999"),
    ("place", 999999, "SP002", "999999"),
    ("jail", 999999, "SP002", "999999"),
    ("place", None, "SP009", "place"),
    ("disthost", None, "SP002", "NULL"),
    ("certificate", None, "SP002", "NULL"),
])
def test_target_with_bad_reference_refused(conn, world, column, value, sqlstate, named):
    row = {"disthost": world["jailhost"], "jail": None, "place": world["nginx"], "certificate": world["cert"], column: value}
    assert_refused(conn, "INSERT INTO targets (disthost, jail, place, certificate) VALUES (%(disthost)s, %(jail)s, %(place)s, %(certificate)s)",
                   row, sqlstate=sqlstate, match=named)
    assert_refused(conn, f"UPDATE targets SET {column} = %s", (value,), sqlstate=sqlstate, match=named)


@pytest.mark.parametrize("column,value", [("certificate", 999999), ("service", 999999), ("certificate", None), ("service", None)])
def test_certificate_service_with_bad_reference_refused(conn, world, column, value):
    row = {"certificate": world["cert"], "service": world["smtp"], column: value}
    named = "NULL" if value is None else str(value)
    assert_refused(conn, "INSERT INTO certificates_services (certificate, service) VALUES (%(certificate)s, %(service)s)",
                   row, sqlstate="SP002", match=named)
    assert_refused(conn, f"UPDATE certificates_services SET {column} = %s", (value,), sqlstate="SP002", match=named)


# --------------------------------------------------------------------------- places: paths, modes, owners

GOOD_PATHS = ["/", "/usr/local/etc/nginx/ssl", "/etc/ssl/{}", "/a/.hidden", "/a/..b", "/a/b./c", "/a/b/",
              "/with space/ok", "/" + "p" * 1023]

BAD_PATHS = [
    "relative/path", "usr/local", "ssl", "~/ssl", "./ssl", "../ssl", " /ssl",
    "/a/../b", "/a/./b", "/..", "/.", "/a/..", "/a/.", "/a/../../etc",
    "/a//b", "//a", "/a/b//",
    "/a\tb", "/a\nb", "/a\rb", "/a\x01b", "/a\x7fb",
    "/" + "p" * 1024,
]


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_good_paths_accepted(conn, path):
    conn.execute("SELECT add_place('p1', 'separate', %s, %s)", (path, path))
    conn.execute("INSERT INTO places (name, cert_path, key_path) VALUES ('p2', %s, %s)", (path, path))
    conn.execute("SELECT add_disthost('h.example.org', %s)", (path,))
    assert count(conn, "SELECT count(*) FROM places WHERE cert_path = %s AND key_path = %s", path, path) == 2


@pytest.mark.parametrize("path", BAD_PATHS + [""])
def test_bad_path_refused(conn, world, path):
    named = path[:40]
    if path:    # an empty cert_path is a missing value, see below
        assert_refused(conn, "SELECT add_place('p1', 'separate', %s)", (path,), sqlstate="SP004", match=named)
        assert_refused(conn, "INSERT INTO places (name, cert_path) VALUES ('p1', %s)", (path,), sqlstate="SP004", match=named)
        assert_refused(conn, "UPDATE places SET cert_path = %s WHERE name = 'nginx'", (path,), sqlstate="SP004", match=named)
    # key_path
    assert_refused(conn, "SELECT add_place('p1', 'separate', '/etc/ssl', %s)", (path,), sqlstate="SP004", match=named)
    assert_refused(conn, "INSERT INTO places (name, cert_path, key_path) VALUES ('p1', '/etc/ssl', %s)", (path,),
                   sqlstate="SP004", match=named)
    assert_refused(conn, "UPDATE places SET key_path = %s WHERE name = 'nginx'", (path,), sqlstate="SP004", match=named)
    # jailroot
    assert_refused(conn, "SELECT add_disthost('h.example.org', %s)", (path,), sqlstate="SP004", match=named)
    assert_refused(conn, "INSERT INTO disthosts (fqdn, jailroot) VALUES ('h.example.org', %s)", (path,),
                   sqlstate="SP004", match=named)
    assert_refused(conn, "UPDATE disthosts SET jailroot = %s WHERE fqdn = 'jailhost.example.org'", (path,),
                   sqlstate="SP004", match=named)


@pytest.mark.parametrize("path", [None, "", "   "])
def test_missing_cert_path_refused(conn, world, path):
    assert_refused(conn, "SELECT add_place('p1', 'separate', %s)", (path,), sqlstate="SP009", match="cert_path")
    assert_refused(conn, "INSERT INTO places (name, cert_path) VALUES ('p1', %s)", (path,), sqlstate="SP009", match="cert_path")
    assert_refused(conn, "UPDATE places SET cert_path = %s WHERE name = 'nginx'", (path,), sqlstate="SP009", match="cert_path")


@pytest.mark.parametrize("mode", [0, 256, 288, 384, 416, 432, 504])
def test_good_modes_accepted(conn, mode):
    conn.execute("SELECT add_place('p1', 'separate', '/etc/ssl', NULL, NULL, NULL, %s::int)", (mode,))
    conn.execute("INSERT INTO places (name, cert_path, mode) VALUES ('p2', '/etc/ssl', %s)", (mode,))
    assert count(conn, "SELECT count(*) FROM places WHERE mode = %s", mode) == 2


@pytest.mark.parametrize("mode", [-1, 512, 640, 4095, 2147483647, -2147483648])
def test_bad_mode_refused(conn, world, mode):
    named = f"{mode} is out of range 0..511"
    assert_refused(conn, "SELECT add_place('p1', 'separate', '/etc/ssl', NULL, NULL, NULL, %s::int)", (mode,),
                   sqlstate="SP005", match=named)
    assert_refused(conn, "INSERT INTO places (name, cert_path, mode) VALUES ('p1', '/etc/ssl', %s)", (mode,),
                   sqlstate="SP005", match=named)
    err = assert_refused(conn, "UPDATE places SET mode = %s WHERE name = 'nginx'", (mode,), sqlstate="SP005", match=named)
    assert "octal" in err.diag.message_hint


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o444, 0o777, 0o401, 0o642])
def test_key_modes_for_others_refused(conn, world, mode):
    named = f"mode {mode} (0{mode:o}) of place \"%s\" lets others than owner and group read the private key"
    hint = "without permissions for others"
    err = assert_refused(conn, "SELECT add_place('p1', 'separate', '/etc/ssl', NULL, NULL, NULL, %s::int)", (mode,),
                         sqlstate="SP011", match=named % "p1")
    assert hint in err.diag.message_hint
    assert_refused(conn, "INSERT INTO places (name, cert_path, mode) VALUES ('p1', '/etc/ssl', %s)", (mode,),
                   sqlstate="SP011", match=named % "p1")
    assert_refused(conn, "UPDATE places SET mode = %s WHERE name = 'nginx'", (mode,), sqlstate="SP011",
                   match=named % "nginx")


@pytest.mark.parametrize("column", ["uid", "gid"])
@pytest.mark.parametrize("value", [-1, -65534, -2147483648])
def test_negative_uid_gid_refused(conn, world, column, value):
    named = f"{column} of place \"p1\" {value}"
    fn_args = "%s::int, NULL" if column == "uid" else "NULL, %s::int"
    assert_refused(conn, f"SELECT add_place('p1', 'separate', '/etc/ssl', NULL, {fn_args})", (value,),
                   sqlstate="SP005", match=named)
    assert_refused(conn, f"INSERT INTO places (name, cert_path, {column}) VALUES ('p1', '/etc/ssl', %s)", (value,),
                   sqlstate="SP005", match=named)
    assert_refused(conn, f"UPDATE places SET {column} = %s WHERE name = 'nginx'", (value,),
                   sqlstate="SP005", match=f"{column} of place \"nginx\" {value}")


@pytest.mark.parametrize("value", [0, 80, 65534, 2147483647])
def test_good_uid_gid_accepted(conn, value):
    conn.execute("SELECT add_place('p1', 'separate', '/etc/ssl', NULL, %s::int, %s::int)", (value, value))
    assert count(conn, "SELECT count(*) FROM places WHERE uid = %s AND gid = %s", value, value) == 1


def test_reload_command_with_control_character_refused(conn, world):
    assert_refused(conn, "SELECT add_place('p1', 'separate', '/etc/ssl', NULL, NULL, NULL, NULL, false, false, %s)",
                   ("service nginx reload\nrm -rf /",), sqlstate="SP001", match="service nginx reload")
    assert_refused(conn, "UPDATE places SET reload_command = %s WHERE name = 'nginx'", ("a\x1bb",),
                   sqlstate="SP001", match="reload_command")


# --------------------------------------------------------------------------- services: ports and TLSA prefixes


@pytest.mark.parametrize("port", [1, 443, 65535])
def test_good_ports_accepted(conn, port):
    conn.execute("SELECT add_tlsa_service('svc', %s::int)", (port,))
    conn.execute("INSERT INTO services (name, port, tlsaprefix) VALUES ('svc2', %s, %s)",
                 (port, f"_{port}._tcp.{{}}. 3600 IN TLSA 3 0 1"))
    assert count(conn, "SELECT count(*) FROM services WHERE port = %s AND name IN ('svc', 'svc2')", port) == 2


@pytest.mark.parametrize("port", [0, -1, 65536, 100000, -2147483648])
def test_bad_port_refused(conn, world, port):
    named = f"port of service \"svc\" {port} is out of range 1..65535"
    prefix = f"_{port}._tcp.{{}}. 3600 IN TLSA 3 0 1"
    assert_refused(conn, "SELECT add_tlsa_service('svc', %s::int)", (port,), sqlstate="SP005", match=named)
    assert_refused(conn, "SELECT add_tlsa_service('svc', %s::int, %s)", (port, prefix), sqlstate="SP005", match=named)
    assert_refused(conn, "INSERT INTO services (name, port, tlsaprefix) VALUES ('svc', %s, %s)", (port, prefix),
                   sqlstate="SP005", match=named)
    assert_refused(conn, "UPDATE services SET port = %s, tlsaprefix = %s WHERE name = 'smtp'", (port, prefix),
                   sqlstate="SP005", match=f"{port} is out of range")


def test_missing_port_refused(conn, world):
    assert_refused(conn, "SELECT add_tlsa_service('svc', NULL)", sqlstate="SP009", match="svc")
    assert_refused(conn, "INSERT INTO services (name, port, tlsaprefix) VALUES ('svc', NULL, '_443._tcp.{}. 3600 IN TLSA 3 0 1')",
                   sqlstate="SP009", match="svc")
    assert_refused(conn, "UPDATE services SET port = NULL WHERE name = 'smtp'", sqlstate="SP009", match="smtp")


@pytest.mark.parametrize("name", BAD_CLIENT_NAMES)
def test_bad_service_name_refused(conn, name):
    named = name[:40]
    assert_refused(conn, "SELECT add_tlsa_service(%s, 4443)", (name,), sqlstate="SP001", match=named)
    assert_refused(conn, "INSERT INTO services (name, port, tlsaprefix) VALUES (%s, 4443, '_4443._tcp.{}. 3600 IN TLSA 3 0 1')",
                   (name,), sqlstate="SP001", match=named)
    assert_refused(conn, "UPDATE services SET name = %s WHERE name = 'smtp'", (name,), sqlstate="SP001", match=named)


@pytest.mark.parametrize("name", [None, "", " "])
def test_missing_service_name_refused(conn, name):
    assert_refused(conn, "SELECT add_tlsa_service(%s, 4443)", (name,), sqlstate="SP009", match="service name")
    assert_refused(conn, "INSERT INTO services (name, port, tlsaprefix) VALUES (%s, 4443, '_4443._tcp.{}. 3600 IN TLSA 3 0 1')",
                   (name,), sqlstate="SP009", match="service name")


GOOD_PREFIXES = [
    "_443._tcp.{}. 3600 IN TLSA 3 0 1",
    "_443._tcp.{}. 300 IN TLSA 3 1 1",
    "_443._udp.{}. 0 IN TLSA 0 0 0",
    "_443._sctp.{}. 86400 IN TLSA 2 1 2",
    "_443._tcp.{}.   3600   IN   TLSA   1 0 2",
    "_443._TCP.{}. 3600 in tlsa 3 0 1",
    "_443._tcp.{}. 2147483647 IN TLSA 3 0 1",
]

BAD_PREFIXES = [
    "_443._tcp.example.org. 3600 IN TLSA 3 0 1",     # no {} placeholder
    "_443._tcp.{} 3600 IN TLSA 3 0 1",               # {} not followed by the root dot
    "_443._tcp.. 3600 IN TLSA 3 0 1",
    "_443._tcp.{}.{}. 3600 IN TLSA 3 0 1",
    "_444._tcp.{}. 3600 IN TLSA 3 0 1",              # another port than the service's
    "_4430._tcp.{}. 3600 IN TLSA 3 0 1",
    "_0443._tcp.{}. 3600 IN TLSA 3 0 1",             # DNS would look for _443, not _0443
    "_00443._tcp.{}. 3600 IN TLSA 3 0 1",
    "_443._tcp.{}. 3600 IN TLSA 4 0 1",              # usage 0-3
    "_443._tcp.{}. 3600 IN TLSA 255 0 1",
    "_443._tcp.{}. 3600 IN TLSA 3 2 1",              # selector 0-1
    "_443._tcp.{}. 3600 IN TLSA 3 0 3",              # matching 0-2
    "_443._tcp.{}. 3600 IN TLSA 3 0",
    "_443._tcp.{}. 3600 IN TLSA 3 0 1 1",
    "_443._tcp.{}. 3600 IN TLSA -1 0 1",
    "_443._xyz.{}. 3600 IN TLSA 3 0 1",
    "443._tcp.{}. 3600 IN TLSA 3 0 1",
    "_443.tcp.{}. 3600 IN TLSA 3 0 1",
    "_443._tcp.{}. IN TLSA 3 0 1",                   # no TTL
    "_443._tcp.{}. 9999999999 IN TLSA 3 0 1",        # TTL above 2^31-1
    "_443._tcp.{}. 3600 IN A 3 0 1",
    "_443._tcp.{}. 3600 CH TLSA 3 0 1",
    "_443._tcp.{}. 3600 IN TLSA 3 0 1; rm -rf /",
    " _443._tcp.{}. 3600 IN TLSA 3 0 1",
    "garbage",
]


@pytest.mark.parametrize("prefix", GOOD_PREFIXES)
def test_good_tlsa_prefixes_accepted(conn, prefix):
    conn.execute("SELECT add_tlsa_service('svc', 443, %s)", (prefix,))
    conn.execute("UPDATE services SET tlsaprefix = %s WHERE name = 'https' AND port = 443", (prefix,))
    assert count(conn, "SELECT count(*) FROM services WHERE tlsaprefix = %s", prefix) == 2


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_bad_tlsa_prefix_refused(conn, world, prefix):
    assert_refused(conn, "SELECT add_tlsa_service('svc', 443, %s)", (prefix,), sqlstate="SP006", match=prefix)
    assert_refused(conn, "INSERT INTO services (name, port, tlsaprefix) VALUES ('svc', 443, %s)", (prefix,),
                   sqlstate="SP006", match=prefix)
    # the service https/443 is in use by www.example.org: the rule applies all the same
    assert_refused(conn, "UPDATE services SET tlsaprefix = %s WHERE name = 'https' AND port = 443", (prefix,),
                   sqlstate="SP006", match=prefix)


def test_tlsa_prefix_must_follow_a_port_change(conn):
    err = assert_refused(conn, "UPDATE services SET port = 465 WHERE name = 'smtp'", sqlstate="SP006", match="_25._tcp")
    assert "465" in err.diag.message_primary and "_465._tcp" in err.diag.message_hint
    conn.execute("UPDATE services SET port = 465, tlsaprefix = '_465._tcp.{}. 3600 IN TLSA 3 0 1' WHERE name = 'smtp'")


@pytest.mark.parametrize("prefix", [None, "", "  "])
def test_missing_tlsa_prefix_refused(conn, prefix):
    # add_tlsa_service fills in a default for NULL, so only plain SQL can give none
    assert_refused(conn, "INSERT INTO services (name, port, tlsaprefix) VALUES ('svc', 443, %s)", (prefix,),
                   sqlstate="SP009", match="TLSA prefix")
    assert_refused(conn, "UPDATE services SET tlsaprefix = %s WHERE name = 'smtp'", (prefix,),
                   sqlstate="SP009", match="TLSA prefix")
    if prefix is not None:
        assert_refused(conn, "SELECT add_tlsa_service('svc', 443, %s)", (prefix,), sqlstate="SP009", match="TLSA prefix")


def test_tlsa_prefix_with_control_character_refused(conn):
    prefix = "_443._tcp.{}.\t3600 IN TLSA 3 0 1"
    assert_refused(conn, "SELECT add_tlsa_service('svc', 443, %s)", (prefix,), sqlstate="SP001", match="TLSA prefix")


def test_tlsa_prefix_parts(conn):
    row = conn.execute("SELECT * FROM tlsa_prefix_parts('_8443._udp.{}. 300 IN TLSA 2 1 2')").fetchone()
    assert row == (8443, "udp", 300, 2, 1, 2)
    row = conn.execute("SELECT * FROM tlsa_prefix_parts('nonsense')").fetchone()
    assert row == (None,) * 6



def test_tlsa_owner_name(conn):
    """The one spelling of an owner name: reports are checked against it and owners looked up by it."""
    names = ["_443._tcp.www.example.org.", "_25._TCP.Mail.Example.ORG.", "_853._udp._dns.x-1.example.",
             "_443._tcp.www.example.org", "_0443._tcp.www.example.org.", "_443._icmp.www.example.org.",
             "_443._tcp..example.org.", "_443._tcp.-bad.example.org.", "_443._tcp.a b.example.", "www.example.org."]
    got = [conn.execute("SELECT tlsa_owner_name(%s)", (n,)).fetchone()[0] for n in names]
    assert got == ["www.example.org", "Mail.Example.ORG", "_dns.x-1.example"] + [None] * 7

# --------------------------------------------------------------------------- in-use deletions by plain SQL


def test_delete_disthost_with_targets_refused(conn, world):
    err = assert_refused(conn, "DELETE FROM disthosts WHERE fqdn = 'web1.example.org'", sqlstate="SP010",
                         match="web1.example.org")
    assert "www.example.org" in err.diag.message_primary
    assert "remove_target" in err.diag.message_hint


def test_delete_disthost_with_jail_targets_refused(conn, world):
    conn.execute("SELECT add_target('www.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    assert_refused(conn, "DELETE FROM disthosts WHERE fqdn = 'jailhost.example.org'", sqlstate="SP010",
                   match="jailhost.example.org")


def test_delete_disthost_without_targets_takes_its_jails(conn, world):
    conn.execute("DELETE FROM disthosts WHERE fqdn = 'jailhost.example.org'")
    assert count(conn, "SELECT count(*) FROM jails") == 0


def test_delete_jail_with_targets_refused(conn, world):
    conn.execute("SELECT add_target('www.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    err = assert_refused(conn, "DELETE FROM jails WHERE name = 'mail'", sqlstate="SP010", match="mail")
    assert "www.example.org" in err.diag.message_primary


def test_delete_place_with_targets_refused(conn, world):
    err = assert_refused(conn, "DELETE FROM places WHERE name = 'nginx'", sqlstate="SP010", match="nginx")
    assert "www.example.org" in err.diag.message_primary


def test_delete_service_in_use_refused(conn, world):
    err = assert_refused(conn, "DELETE FROM services WHERE name = 'https' AND port = 443", sqlstate="SP010",
                         match="https/443")
    assert "www.example.org" in err.diag.message_primary
    assert "remove_service" in err.diag.message_hint


TARGETS_HINT = "remove those targets first: SELECT remove_target(cert, disthost, jail, place)"


@pytest.mark.parametrize("sql, message, hint", [
    ("DELETE FROM disthosts WHERE fqdn = 'web1.example.org'",
     'disthost "web1.example.org" is a target of certificate(s) two.example.org, www.example.org', TARGETS_HINT),
    ("DELETE FROM jails WHERE name = 'mail'", 'jail "mail" is a target of certificate(s) two.example.org', TARGETS_HINT),
    ("DELETE FROM places WHERE name = 'nginx'",
     'place "nginx" is used by targets of certificate(s) two.example.org, www.example.org', TARGETS_HINT),
    ("DELETE FROM services WHERE name = 'https' AND port = 443",
     "service https/443 is used by certificate(s) two.example.org, www.example.org",
     "detach it first: SELECT remove_service(cert, service, port)"),
])
def test_in_use_refusals_name_each_certificate_once_in_order(conn, world, sql, message, hint):
    """refuse_in_use: the same words for each kind of object, the main subject names sorted, each once."""
    conn.execute("SELECT * FROM add_cert('two.example.org', 'server', 'LE', 'ec', false, "
                 "'alt.two.example.org', 'https', 443, 'web1.example.org', NULL, 'nginx')")
    conn.execute("SELECT add_target('two.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    err = assert_refused(conn, sql, sqlstate="SP010")
    assert (err.diag.message_primary, err.diag.message_hint) == (message, hint)


def test_refuse_in_use_without_certificates_passes(conn):
    conn.execute("SELECT refuse_in_use('disthost \"x\" is a target of', '{}', 'never shown')")


def test_readme_plain_sql_for_disthosts_and_jails(conn):
    conn.execute("INSERT INTO disthosts (fqdn, jailroot) VALUES ('host-with-jails.on.domain', '/usr/jails')")
    conn.execute("INSERT INTO disthosts (fqdn) VALUES ('host-without-jails.on.domain')")
    host = count(conn, "SELECT id FROM disthosts WHERE fqdn = 'host-with-jails.on.domain'")
    conn.execute("INSERT INTO jails (name, disthost) VALUES ('my_service_jail', %s)", (host,))
    assert conn.execute("DELETE FROM jails WHERE name = 'my_service_jail'").rowcount == 1
    assert conn.execute("DELETE FROM disthosts WHERE fqdn IN ('host-with-jails.on.domain', "
                        "'host-without-jails.on.domain')").rowcount == 2


# --------------------------------------------------------------------------- required columns by plain SQL


@pytest.mark.parametrize("table,column,where,sqlstate,named", [
    ("certificates", "type", "true", "SP009", "type"),
    ("certificates", "encryption_algo", "true", "SP009", "encryption_algo"),
    ("certificates", "disabled", "true", "SP009", "disabled"),
    ("certificates", "ocsp_must_staple", "true", "SP009", "ocsp_must_staple"),
    ("subjects", "type", "name = 'example.org'", "SP009", "example.org"),
    ("subjects", "isaltname", "name = 'example.org'", "SP009", "example.org"),
    ("subjects", "name", "name = 'example.org'", "SP009", "alt name"),
    ("services", "name", "name = 'smtp'", "SP009", "service name"),
    ("services", "port", "name = 'smtp'", "SP009", "smtp"),
    ("services", "tlsaprefix", "name = 'smtp'", "SP009", "TLSA prefix"),
    ("disthosts", "fqdn", "fqdn = 'web1.example.org'", "SP009", "disthost FQDN"),
    ("jails", "name", "name = 'mail'", "SP009", "jail name"),
    ("jails", "disthost", "name = 'mail'", "SP009", "mail"),
    ("places", "name", "name = 'nginx'", "SP009", "place name"),
    ("places", "cert_file_type", "name = 'nginx'", "SP009", "nginx"),
    ("places", "cert_path", "name = 'nginx'", "SP009", "nginx"),
    ("places", "chownboth", "name = 'nginx'", "SP009", "nginx"),
    ("places", "pglink", "name = 'nginx'", "SP009", "nginx"),
    ("targets", "place", "true", "SP009", "place"),
    ("settings", "value", "name = 'expire_grace'", "SP009", "expire_grace"),
])
def test_null_in_required_column_refused(conn, world, table, column, where, sqlstate, named):
    err = assert_refused(conn, f"UPDATE {table} SET {column} = NULL WHERE {where}", sqlstate=sqlstate, match=named)
    # the message names the column that may not be empty
    squeezed = err.diag.message_primary.replace(" ", "").replace("_", "").lower()
    assert column.replace("_", "") in squeezed, err.diag.message_primary


@pytest.mark.parametrize("sql,named", [
    ("INSERT INTO certificates (type) VALUES (NULL)", "type"),
    ("INSERT INTO certificates (type, encryption_algo) VALUES ('LE', NULL)", "encryption_algo"),
    ("INSERT INTO subjects (type, name, isaltname) VALUES (NULL, 'held.example.org', false)", "held.example.org"),
    ("INSERT INTO subjects (type, name, isaltname) VALUES ('reserved', 'held.example.org', NULL)", "held.example.org"),
    ("INSERT INTO places (name, cert_file_type, cert_path) VALUES ('p1', NULL, '/etc/ssl')", "p1"),
    ("INSERT INTO places (name, cert_path, chownboth) VALUES ('p1', '/etc/ssl', NULL)", "p1"),
    ("INSERT INTO places (name, cert_path, pglink) VALUES ('p1', '/etc/ssl', NULL)", "p1"),
])
def test_null_in_required_column_refused_on_insert(conn, sql, named):
    assert_refused(conn, sql, sqlstate="SP009", match=named)


# --------------------------------------------------------------------------- remarks


@pytest.mark.parametrize("table,where", [
    ("certificates", "true"),
    ("subjects", "name = 'www.example.org'"),
    ("services", "name = 'smtp'"),
    ("disthosts", "fqdn = 'web1.example.org'"),
    ("jails", "name = 'mail'"),
    ("places", "name = 'nginx'"),
    ("targets", "true"),
])
def test_remarks_with_control_character_refused(conn, world, table, where):
    assert_refused(conn, f"UPDATE {table} SET remarks = %s WHERE {where}", ("bad\x07x",),
                   sqlstate="SP001", match="remarks")
    conn.execute(f"UPDATE {table} SET remarks = 'a fine remark' WHERE {where}")


@pytest.mark.parametrize("char, code", [("\x85", "U+0085"), ("\u2028", "U+2028"), ("\u202e", "U+202E"),
                                        ("\u200b", "U+200B"), ("\ufeff", "U+FEFF"), ("\U000e0041", "U+E0041")])
def test_invisible_characters_refused_whatever_the_locale(conn, world, char, code):
    """Line separators, bidi overrides, zero-width and tag characters (Unicode Cc, Cf, Zl, Zp) are named by code point."""
    assert conn.execute("SELECT char_name(unprintable_char(%s))", (f"ok{char}x",)).fetchone()[0] == code
    err = assert_refused(conn, "UPDATE places SET reload_command = %s WHERE name = 'nginx'", (f"service nginx{char} reload",),
                         sqlstate="SP001", match=code)
    assert code in err.diag.message_hint
    assert_refused(conn, "UPDATE places SET cert_path = %s WHERE name = 'nginx'", (f"/etc/ss{char}l",), sqlstate="SP004", match=code)
    conn.execute("UPDATE places SET reload_command = %s WHERE name = 'nginx'", ("service nginx reload # Grüße, 日本, 🎉",))
    assert conn.execute("SELECT unprintable_char('Grüße 日本 🎉 ok')").fetchone()[0] is None


# --------------------------------------------------------------------------- settings


def test_settings_update_accepted(conn):
    conn.execute("UPDATE settings SET value = '21' WHERE name = 'pre_publish_days'")
    conn.execute("UPDATE settings SET value = '0' WHERE name = 'local_issue_mail_days'")
    conn.execute("UPDATE settings SET value = '6 hours' WHERE name = 'expire_grace'")
    conn.execute("UPDATE settings SET remarks = 'shorter' WHERE name = 'expire_grace'")
    rows = dict(conn.execute("SELECT name, value FROM settings WHERE name IN "
                             "('pre_publish_days', 'local_issue_mail_days', 'expire_grace')"))
    assert rows == {"pre_publish_days": "21", "local_issue_mail_days": "0", "expire_grace": "6 hours"}


@pytest.mark.parametrize("value", ["0", "1", "3650"])
def test_integer_setting_in_range_accepted(conn, value):
    conn.execute("UPDATE settings SET value = %s WHERE name = 'pre_publish_days'", (value,))


@pytest.mark.parametrize("value,sqlstate", [
    ("abc", "SP011"),
    ("-1", "SP011"),
    ("1.5", "SP011"),
    ("30 days", "SP011"),
    ("1e3", "SP011"),
    (" 30", "SP011"),
    ("99999999", "SP011"),
    ("3651", "SP005"),
    ("9999999", "SP005"),
    ("", "SP009"),
    ("   ", "SP009"),
])
def test_integer_setting_bad_value_refused(conn, value, sqlstate):
    match = value if value.strip() else "pre_publish_days"
    assert_refused(conn, "UPDATE settings SET value = %s WHERE name = 'pre_publish_days'", (value,),
                   sqlstate=sqlstate, match=match)


def test_integer_setting_null_refused(conn):
    assert_refused(conn, "UPDATE settings SET value = NULL WHERE name = 'pre_publish_days'",
                   sqlstate="SP009", match="pre_publish_days")


@pytest.mark.parametrize("value", ["0", "1 day", "6 hours", "P2D", "3650 days", "00:30:00"])
def test_interval_setting_in_range_accepted(conn, value):
    conn.execute("UPDATE settings SET value = %s WHERE name = 'expire_grace'", (value,))


@pytest.mark.parametrize("value,sqlstate", [
    ("abc", "SP011"),
    ("1 fortnight", "SP011"),
    ("-1 day", "SP005"),
    ("3651 days", "SP005"),
    ("20 years", "SP005"),
    ("", "SP009"),
])
def test_interval_setting_bad_value_refused(conn, value, sqlstate):
    match = value if value.strip() else "expire_grace"
    assert_refused(conn, "UPDATE settings SET value = %s WHERE name = 'expire_grace'", (value,),
                   sqlstate=sqlstate, match=match)


@pytest.mark.parametrize("name", ["pre_publish_days", "local_issue_mail_days", "expire_grace"])
def test_settings_cannot_be_deleted(conn, name):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):   # the roles may only change values
        conn.execute("DELETE FROM settings WHERE name = %s", (name,))
    conn = owner_conn(conn)                                     # and the trigger stops even the owner
    err = assert_refused(conn, "DELETE FROM settings WHERE name = %s", (name,), sqlstate="SP012", match=name)
    assert "UPDATE settings" in err.diag.message_hint


def test_settings_name_and_kind_cannot_change(conn):
    conn = owner_conn(conn)   # the roles may not write these columns at all; the trigger stops the owner
    assert_refused(conn, "UPDATE settings SET name = 'pre_publish_dayz' WHERE name = 'pre_publish_days'",
                   sqlstate="SP012", match="pre_publish_days")
    assert_refused(conn, "UPDATE settings SET kind = 'text' WHERE name = 'pre_publish_days'",
                   sqlstate="SP012", match="pre_publish_days")


@pytest.mark.parametrize("name,kind,value,sqlstate", [
    ("new_days", "integer", "abc", "SP011"),
    ("new_days", "integer", "4000", "SP005"),
    ("new_grace", "interval", "soon", "SP011"),
    ("new_flag", "boolean", "maybe", "SP011"),
    ("new_days", "integer", "", "SP009"),
    ("new_ratio", "float", "1.5", "SP011"),
])
def test_new_setting_with_bad_value_refused(conn, name, kind, value, sqlstate):
    conn = owner_conn(conn)   # new settings come with releases (the owner); values are still checked
    assert_refused(conn, "INSERT INTO settings (name, kind, value, description) VALUES (%s, %s, %s, 'test')",
                   (name, kind, value), sqlstate=sqlstate, match=name)


@pytest.mark.parametrize("name,kind,value", [
    ("new_days", "integer", "12"),
    ("new_grace", "interval", "2 hours"),
    ("new_flag", "boolean", "TRUE"),
    ("new_text", "text", "anything goes"),
])
def test_new_setting_with_good_value_accepted(conn, name, kind, value):
    conn = owner_conn(conn)
    conn.execute("INSERT INTO settings (name, kind, value, description) VALUES (%s, %s, %s, 'test')", (name, kind, value))
    assert conn.execute("SELECT value FROM settings WHERE name = %s", (name,)).fetchone()[0] == value


# --------------------------------------------------------------------------- the check functions, called directly


@pytest.mark.parametrize("sql,params,sqlstate,named", [
    ("SELECT check_required(%s, 'thing')", (None,), "SP009", "thing"),
    ("SELECT check_required(%s, 'thing')", ("  ",), "SP009", "thing"),
    ("SELECT check_printable(%s, 'thing', 10)", ("a\tb",), "SP001", "a\tb"),
    ("SELECT check_printable(%s, 'thing', 3)", ("abcd",), "SP001", "abcd"),
    ("SELECT check_host_name(%s, 'host')", ("*.example.org",), "SP001", "*.example.org"),
    ("SELECT check_host_name(%s, 'host', true)", ("*.org",), "SP001", "*.org"),
    ("SELECT check_host_name(%s, 'host', true)", ("www.*.example.org",), "SP001", "www.*.example.org"),
    ("SELECT check_simple_name(%s, 'jail name')", ("a/b",), "SP001", "a/b"),
    ("SELECT check_simple_name(%s, 'jail name', 3)", ("abcd",), "SP001", "abcd"),
    ("SELECT check_subject_name(%s, 'client', false)", ("a b",), "SP001", "a b"),
    ("SELECT check_subject_name(%s, 'CA', true)", ("a/b",), "SP001", "a/b"),
    ("SELECT check_subject_name(%s, 'server', false)", ("a_b.example",), "SP001", "a_b.example"),
    ("SELECT check_abs_path(%s, 'path')", ("a/b",), "SP004", "a/b"),
    ("SELECT check_abs_path(%s, 'path')", ("/a/../b",), "SP004", "/a/../b"),
    ("SELECT check_range(%s, 1, 10, 'the count')", (11,), "SP005", "the count 11"),
    ("SELECT check_range(%s, 1, 10, 'the count', 'count less')", (0,), "SP005", "the count 0"),
    ("SELECT check_tlsa_prefix(%s, 443)", ("_25._tcp.{}. 3600 IN TLSA 3 0 1",), "SP006", "_25._tcp"),
    ("SELECT check_tlsa_prefix(%s, 443)", ("",), "SP009", "TLSA prefix"),
])
def test_check_functions_refuse(conn, sql, params, sqlstate, named):
    assert_refused(conn, sql, params, sqlstate=sqlstate, match=named)


@pytest.mark.parametrize("sql,params", [
    ("SELECT check_required(%s, 'thing')", ("x",)),
    ("SELECT check_printable(%s, 'thing', 3)", (None,)),
    ("SELECT check_printable(%s, 'thing', 3)", ("abc",)),
    ("SELECT check_host_name(%s, 'host', true)", ("*.example.org",)),
    ("SELECT check_simple_name(%s, 'jail name')", ("mail",)),
    ("SELECT check_subject_name(%s, 'CA', false)", ("Local CA",)),
    ("SELECT check_abs_path(%s, 'path')", (None,)),
    ("SELECT check_abs_path(%s, 'path')", ("/usr/jails",)),
    ("SELECT check_range(%s, 1, 10, 'the count')", (None,)),
    ("SELECT check_range(%s, 1, 10, 'the count')", (10,)),
    ("SELECT check_tlsa_prefix(%s, 443)", ("_443._tcp.{}. 3600 IN TLSA 3 0 1",)),
])
def test_check_functions_accept(conn, sql, params):
    conn.execute(sql, params)


def test_range_hint_is_the_given_one(conn):
    err = assert_refused(conn, "SELECT check_range(0, 1, 10, 'n', 'count less')", sqlstate="SP005", match="n 0")
    assert err.diag.message_hint == "count less"
