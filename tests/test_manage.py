"""The management functions of 040_manage: what they do, and how they refuse.

Happy paths check the rows they write; every refusal goes through
assert_refused (our SQLSTATE, a message naming the value, a HINT, and the
database exactly as before).
"""

from __future__ import annotations

import pytest

from helpers import assert_refused, owner_conn, snapshot

CERTS_COLUMNS = ["Subject", "Cert Name", "Type", "Algo", "OCSP m st", "authorized",
                 "Alt Name", "TLSA", "Port", "Dist Host", "Jail", "Place"]

ADD_CERT = "SELECT * FROM add_cert(%s, %s, %s, %s, %s, %s, %s, %s::int, %s, %s, %s)"


def add_cert(conn, name, subject_type="server", cert_type="LE", algo=None, must_staple=None, altname=None,
             tlsa=None, port=None, disthost=None, jail=None, place=None) -> dict:
    cur = conn.execute(ADD_CERT, (name, subject_type, cert_type, algo, must_staple, altname, tlsa, port,
                                  disthost, jail, place))
    assert [d.name for d in cur.description] == CERTS_COLUMNS
    rows = cur.fetchall()
    assert len(rows) == 1
    return dict(zip(CERTS_COLUMNS, rows[0]))


def count(conn, sql, *params) -> int:
    return conn.execute(sql, params).fetchone()[0]


def notices_of(conn, sql, params=None) -> list[tuple[str, str]]:
    """Run sql; return the (severity, message) of the notices it raised."""
    seen = []

    def handler(diag):
        seen.append((diag.severity_nonlocalized, diag.message_primary))

    conn.add_notice_handler(handler)
    try:
        conn.execute(sql, params)
    finally:
        conn.remove_notice_handler(handler)
    return seen


@pytest.fixture
def world(conn):
    """Two disthosts (one with a jailroot and the jail 'mail'), the place 'nginx', the certificate www.example.org."""
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_disthost('jailhost.example.org', '/usr/jails')")
    conn.execute("SELECT add_jail('mail', 'jailhost.example.org')")
    conn.execute("SELECT add_place('nginx', 'combine cacert', '/usr/local/etc/nginx/ssl', NULL, "
                 "0, 80, 416, false, false, 'service nginx reload')")
    add_cert(conn, "www.example.org", "server", "LE", "rsa_plus_ec", False, "example.org", "https", 443,
             "web1.example.org", None, "nginx")
    return {"cert": count(conn, "SELECT certificate FROM subjects WHERE name = 'www.example.org'")}


# --------------------------------------------------------------------------- add_cert


def test_add_cert_returns_the_certs_row(conn):
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_place('nginx', 'combine cacert', '/usr/local/etc/nginx/ssl', NULL, "
                 "0, 80, 416, false, false, 'service nginx reload')")
    row = add_cert(conn, "www.example.org", "server", "LE", "rsa_plus_ec", False, "example.org", "https", 443,
                   "web1.example.org", None, "nginx")
    assert row == {
        "Subject": "server", "Cert Name": "www.example.org", "Type": "LE", "Algo": "rsa_plus_ec",
        "OCSP m st": False, "authorized": None, "Alt Name": "example.org", "TLSA": "https", "Port": 443,
        "Dist Host": "web1.example.org", "Jail": None, "Place": "nginx",
    }
    cert = conn.execute("SELECT id, type::text, disabled, encryption_algo::text, ocsp_must_staple, authorized_until "
                        "FROM certificates").fetchall()
    assert len(cert) == 1
    cid = cert[0][0]
    assert cert[0][1:] == ("LE", False, "rsa_plus_ec", False, None)
    subjects = conn.execute("SELECT type::text, name::text, isaltname, certificate FROM subjects ORDER BY isaltname").fetchall()
    assert subjects == [("server", "www.example.org", False, cid), ("server", "example.org", True, cid)]
    assert conn.execute("SELECT s.name::text, s.port FROM certificates_services cs JOIN services s ON s.id = cs.service "
                        "WHERE cs.certificate = %s", (cid,)).fetchall() == [("https", 443)]
    assert conn.execute("SELECT d.fqdn::text, t.jail, p.name::text FROM targets t JOIN disthosts d ON d.id = t.disthost "
                        "JOIN places p ON p.id = t.place WHERE t.certificate = %s", (cid,)).fetchall() == \
        [("web1.example.org", None, "nginx")]


def test_add_cert_with_jail_target(conn, world):
    row = add_cert(conn, "mx.example.org", "server", "local", "ec", True, None, "smtp", 25,
                   "jailhost.example.org", "mail", "nginx")
    assert row == {
        "Subject": "server", "Cert Name": "mx.example.org", "Type": "local", "Algo": "ec",
        "OCSP m st": True, "authorized": None, "Alt Name": None, "TLSA": "smtp", "Port": 25,
        "Dist Host": "jailhost.example.org", "Jail": "mail", "Place": "nginx",
    }


def test_add_cert_minimal_takes_defaults(conn):
    row = add_cert(conn, "alice", "client", "local")
    assert row == {
        "Subject": "client", "Cert Name": "alice", "Type": "local", "Algo": "rsa", "OCSP m st": False,
        "authorized": None, "Alt Name": None, "TLSA": None, "Port": None, "Dist Host": None, "Jail": None,
        "Place": None,
    }
    assert count(conn, "SELECT count(*) FROM targets") == 0
    assert count(conn, "SELECT count(*) FROM certificates_services") == 0


@pytest.mark.parametrize("subject_type,cert_type,name", [
    ("server", "LE", "*.example.org"),
    ("client", "local", "backup_agent"),
    ("CA", "local", "Local CA"),
    ("CA", "LE", "R10"),
    ("reserved", "LE", "held.example.org"),
])
def test_add_cert_each_subject_type(conn, subject_type, cert_type, name):
    row = add_cert(conn, name, subject_type, cert_type)
    assert (row["Subject"], row["Type"], row["Cert Name"]) == (subject_type, cert_type, name)


def test_add_cert_with_readme_arguments_by_psql_literals(conn):
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_place('nginx', 'combine cacert', '/usr/local/etc/nginx/ssl', NULL, "
                 "0, 80, 416, false, false, 'service nginx reload')")
    row = conn.execute("SELECT * FROM add_cert('www.example.org', 'server', 'LE', 'rsa_plus_ec', false, "
                       "'example.org', 'https', 443, 'web1.example.org', NULL, 'nginx')").fetchone()
    assert row[1] == "www.example.org" and row[9] == "web1.example.org"


@pytest.mark.parametrize("args,sqlstate,named", [
    # required arguments
    ((None, "server", "LE"), "SP009", "certificate name"),
    (("", "server", "LE"), "SP009", "certificate name"),
    (("  ", "server", "LE"), "SP009", "certificate name"),
    (("a.example.org", None, "LE"), "SP009", "subject type"),
    (("a.example.org", "", "LE"), "SP009", "subject type"),
    (("a.example.org", "server", None), "SP009", "cert type"),
    (("a.example.org", "server", ""), "SP009", "cert type"),
    # enum values
    (("a.example.org", "host", "LE"), "SP011", "'host'"),
    (("a.example.org", "Server", "LE"), "SP011", "'Server'"),
    (("a.example.org", "server ", "LE"), "SP011", "'server '"),
    (("a.example.org", "server", "acme"), "SP011", "'acme'"),
    (("a.example.org", "server", "le"), "SP011", "'le'"),
    (("a.example.org", "server", "LE", "dsa"), "SP011", "'dsa'"),
    (("a.example.org", "server", "LE", "RSA"), "SP011", "'RSA'"),
    (("a.example.org", "server", "LE", ""), "SP011", "''"),
    # names
    (("a..example.org", "server", "LE"), "SP001", "a..example.org"),
    (("a.example.org", "server", "LE", None, None, "b_c.example.org"), "SP001", "b_c.example.org"),
    (("www.example.org", "server", "LE"), "SP003", "www.example.org"),
    (("WWW.EXAMPLE.ORG", "server", "LE"), "SP003", "WWW.EXAMPLE.ORG"),
    (("Example.Org", "server", "LE"), "SP003", "Example.Org"),
    (("a.example.org", "server", "LE", None, None, "example.org"), "SP003", "example.org"),
    # TLSA service
    (("a.example.org", "server", "LE", None, None, None, None, 443), "SP009", "443"),
    (("a.example.org", "server", "LE", None, None, None, "https", None), "SP009", "https"),
    (("a.example.org", "server", "LE", None, None, None, "gopher", 70), "SP002", "gopher"),
    (("a.example.org", "server", "LE", None, None, None, "https", 444), "SP002", "444"),
    # target
    (("a.example.org", "server", "LE", None, None, None, None, None, None, None, "nginx"), "SP009", "disthost"),
    (("a.example.org", "server", "LE", None, None, None, None, None, None, "mail", None), "SP009", "disthost"),
    (("a.example.org", "server", "LE", None, None, None, None, None, "web1.example.org", None, None), "SP009", "web1.example.org"),
    (("a.example.org", "server", "LE", None, None, None, None, None, "web9.example.org", None, "nginx"), "SP002", "web9.example.org"),
    (("a.example.org", "server", "LE", None, None, None, None, None, "jailhost.example.org", "nojail", "nginx"), "SP002", "nojail"),
    (("a.example.org", "server", "LE", None, None, None, None, None, "web1.example.org", None, "apache"), "SP002", "apache"),
    (("a.example.org", "server", "LE", None, None, None, None, None, "web1.example.org", "mail", "nginx"), "SP007", "mail"),
])
def test_add_cert_refused(conn, world, args, sqlstate, named):
    params = list(args) + [None] * (11 - len(args))
    assert_refused(conn, ADD_CERT, params, sqlstate=sqlstate, match=named)


def test_add_cert_refused_late_leaves_no_certificate(conn, world):
    # everything up to the target is written, then the unknown place refuses the whole call
    before = count(conn, "SELECT count(*) FROM certificates")
    assert_refused(conn, ADD_CERT, ("new.example.org", "server", "LE", "ec", True, "alt.example.org", "smtp", 25,
                                    "web1.example.org", None, "no-such-place"), sqlstate="SP002", match="no-such-place")
    assert count(conn, "SELECT count(*) FROM certificates") == before
    assert count(conn, "SELECT count(*) FROM subjects WHERE name IN ('new.example.org', 'alt.example.org')") == 0


def test_enum_error_lists_the_labels(conn):
    err = assert_refused(conn, ADD_CERT, ("a.example.org", "host", "LE") + (None,) * 8, sqlstate="SP011", match="'host'")
    for label in ("'CA'", "'client'", "'server'", "'reserved'"):
        assert label in err.diag.message_hint


# --------------------------------------------------------------------------- remove_cert, disable_cert, enable_cert


def test_remove_cert_cascades(conn, world):
    conn.execute("SELECT add_altname('www.example.org', 'www2.example.org')")
    conn.execute("SELECT add_service('www.example.org', 'smtp', 25)")
    conn.execute("SELECT add_target('www.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    add_cert(conn, "other.example.org", "server", "LE", None, None, "alt.other.example.org", "https", 443,
             "web1.example.org", None, "nginx")
    cid = world["cert"]
    assert count(conn, "SELECT count(*) FROM subjects WHERE certificate = %s", cid) == 3
    conn.execute("SELECT remove_cert('www.example.org')")
    for table in ("subjects", "targets", "certificates_services"):
        assert count(conn, f"SELECT count(*) FROM {table} WHERE certificate = %s", cid) == 0, table
    assert count(conn, "SELECT count(*) FROM certificates WHERE id = %s", cid) == 0
    # the other certificate and the shared configuration stay
    assert count(conn, "SELECT count(*) FROM subjects") == 2
    assert count(conn, "SELECT count(*) FROM targets") == 1
    assert count(conn, "SELECT count(*) FROM certificates_services") == 1
    assert count(conn, "SELECT count(*) FROM disthosts") == 2
    assert count(conn, "SELECT count(*) FROM jails") == 1
    assert count(conn, "SELECT count(*) FROM places") == 1
    assert count(conn, "SELECT count(*) FROM services") == 5


def test_remove_cert_case_insensitive(conn, world):
    conn.execute("SELECT remove_cert('WWW.Example.ORG')")
    assert count(conn, "SELECT count(*) FROM certificates") == 0


def test_disable_and_enable_cert(conn, world):
    def disabled():
        return conn.execute("SELECT disabled FROM certificates WHERE id = %s", (world["cert"],)).fetchone()[0]

    assert disabled() is False
    conn.execute("SELECT disable_cert('www.example.org')")
    assert disabled() is True
    conn.execute("SELECT disable_cert('WWW.EXAMPLE.ORG')")      # again, and by another spelling
    assert disabled() is True
    conn.execute("SELECT enable_cert('Www.Example.Org')")
    assert disabled() is False
    conn.execute("SELECT enable_cert('www.example.org')")
    assert disabled() is False


def test_disable_cert_touches_only_its_certificate(conn, world):
    add_cert(conn, "other.example.org")
    conn.execute("SELECT disable_cert('other.example.org')")
    assert conn.execute("SELECT s.name::text, c.disabled FROM certificates c JOIN subjects s ON s.certificate = c.id "
                        "AND NOT s.isaltname ORDER BY 1").fetchall() == \
        [("other.example.org", True), ("www.example.org", False)]


@pytest.mark.parametrize("function", ["remove_cert", "disable_cert", "enable_cert"])
@pytest.mark.parametrize("name,sqlstate,named", [
    ("nope.example.org", "SP002", "nope.example.org"),
    ("example.org", "SP002", "example.org"),        # an alt name, not a certificate name
    (None, "SP009", "certificate name"),
    ("", "SP009", "certificate name"),
])
def test_cert_functions_refuse(conn, world, function, name, sqlstate, named):
    err = assert_refused(conn, f"SELECT {function}(%s)", (name,), sqlstate=sqlstate, match=named)
    if name == "example.org":
        assert "www.example.org" in err.diag.message_primary


@pytest.mark.parametrize("function", ["remove_cert", "disable_cert", "enable_cert"])
def test_cert_functions_refuse_unknown_names_on_an_empty_database(conn, function):
    assert_refused(conn, f"SELECT {function}(%s)", ("nope.example.org",), sqlstate="SP002", match="nope.example.org")
    assert_refused(conn, f"SELECT {function}(%s)", (None,), sqlstate="SP009", match="certificate name")


# --------------------------------------------------------------------------- add_altname, remove_altname


def test_add_and_remove_altname(conn, world):
    conn.execute("SELECT add_altname('www.example.org', 'www2.example.org')")
    conn.execute("SELECT add_altname('WWW.example.org', '*.example.org')")
    rows = conn.execute("SELECT name::text, type::text, isaltname FROM subjects WHERE certificate = %s ORDER BY name",
                        (world["cert"],)).fetchall()
    assert rows == [("*.example.org", "server", True), ("example.org", "server", True),
                    ("www.example.org", "server", False), ("www2.example.org", "server", True)]
    conn.execute("SELECT remove_altname('www.example.org', 'WWW2.EXAMPLE.ORG')")
    conn.execute("SELECT remove_altname('www.example.org', '*.example.org')")
    assert [r[0] for r in conn.execute("SELECT name::text FROM subjects ORDER BY name")] == ["example.org", "www.example.org"]


def test_add_altname_takes_the_subject_type(conn):
    add_cert(conn, "alice", "client", "local")
    conn.execute("SELECT add_altname('alice', 'alice2')")
    assert conn.execute("SELECT type::text FROM subjects WHERE name = 'alice2'").fetchone()[0] == "client"


@pytest.mark.parametrize("altname", ["example.org", "EXAMPLE.ORG"])
def test_add_altname_again_is_a_notice(conn, world, altname):
    before = snapshot(conn)
    notices = notices_of(conn, "SELECT add_altname('www.example.org', %s)", (altname,))
    assert len(notices) == 1 and notices[0][0] == "NOTICE"
    assert altname in notices[0][1]
    assert snapshot(conn) == before
    assert count(conn, "SELECT count(*) FROM subjects WHERE name = 'example.org'") == 1


@pytest.mark.parametrize("cert,altname,sqlstate,named", [
    ("nope.example.org", "x.example.org", "SP002", "nope.example.org"),
    ("example.org", "x.example.org", "SP002", "example.org"),
    (None, "x.example.org", "SP009", "certificate name"),
    ("www.example.org", None, "SP009", "alt name"),
    ("www.example.org", "", "SP009", "alt name"),
    ("www.example.org", "www.example.org", "SP003", "www.example.org"),
    ("www.example.org", "x_y.example.org", "SP001", "x_y.example.org"),
    ("www.example.org", "a.*.example.org", "SP001", "a.*.example.org"),
])
def test_add_altname_refused(conn, world, cert, altname, sqlstate, named):
    assert_refused(conn, "SELECT add_altname(%s, %s)", (cert, altname), sqlstate=sqlstate, match=named)


def test_add_altname_of_another_certificate_refused(conn, world):
    add_cert(conn, "other.example.org", altname="alt.example.org")
    assert_refused(conn, "SELECT add_altname('www.example.org', 'ALT.example.org')", sqlstate="SP003",
                   match="ALT.example.org")
    assert_refused(conn, "SELECT add_altname('www.example.org', 'other.example.org')", sqlstate="SP003",
                   match="other.example.org")


@pytest.mark.parametrize("cert,altname,sqlstate,named", [
    ("www.example.org", "www2.example.org", "SP002", "www2.example.org"),
    ("www.example.org", "www.example.org", "SP002", "www.example.org"),     # the subject name is no alt name
    ("www.example.org", "alt.example.org", "SP002", "alt.example.org"),     # another certificate's alt name
    ("nope.example.org", "example.org", "SP002", "nope.example.org"),
    ("example.org", "example.org", "SP002", "example.org"),
    (None, "example.org", "SP009", "certificate name"),
    ("www.example.org", None, "SP009", "alt name"),
    ("www.example.org", " ", "SP009", "alt name"),
])
def test_remove_altname_refused(conn, world, cert, altname, sqlstate, named):
    add_cert(conn, "other.example.org", altname="alt.example.org")
    assert_refused(conn, "SELECT remove_altname(%s, %s)", (cert, altname), sqlstate=sqlstate, match=named)


# --------------------------------------------------------------------------- add_service, remove_service


def test_add_and_remove_service(conn, world):
    conn.execute("SELECT add_service('www.example.org', 'smtp', 25)")
    conn.execute("SELECT add_service('WWW.EXAMPLE.ORG', 'IMAP', 587)")
    rows = conn.execute("SELECT s.name::text, s.port FROM certificates_services cs JOIN services s ON s.id = cs.service "
                        "WHERE cs.certificate = %s ORDER BY 2", (world["cert"],)).fetchall()
    assert rows == [("smtp", 25), ("https", 443), ("imap", 587)]
    conn.execute("SELECT remove_service('www.example.org', 'SMTP', 25)")
    conn.execute("SELECT remove_service('www.example.org', 'https', 443)")
    rows = conn.execute("SELECT service FROM certificates_services WHERE certificate = %s", (world["cert"],)).fetchall()
    assert len(rows) == 1
    assert count(conn, "SELECT count(*) FROM services") == 5      # the services themselves stay


@pytest.mark.parametrize("service", ["https", "HTTPS"])
def test_add_service_again_is_a_notice(conn, world, service):
    before = snapshot(conn)
    notices = notices_of(conn, "SELECT add_service('www.example.org', %s, 443)", (service,))
    assert len(notices) == 1 and notices[0][0] == "NOTICE"
    assert "www.example.org" in notices[0][1]
    assert snapshot(conn) == before
    assert count(conn, "SELECT count(*) FROM certificates_services") == 1


SERVICE_REFUSALS = [
    ("nope.example.org", "smtp", 25, "SP002", "nope.example.org"),
    ("example.org", "smtp", 25, "SP002", "example.org"),
    ("www.example.org", "gopher", 70, "SP002", "gopher"),
    ("www.example.org", "smtp", 26, "SP002", "26"),
    (None, "smtp", 25, "SP009", "certificate name"),
    ("", "smtp", 25, "SP009", "certificate name"),
    ("www.example.org", None, 25, "SP009", "TLSA service name"),
    ("www.example.org", "", 25, "SP009", "TLSA service name"),
    ("www.example.org", "smtp", None, "SP009", "smtp"),
]


@pytest.mark.parametrize("cert,service,port,sqlstate,named", SERVICE_REFUSALS)
def test_add_service_refused(conn, world, cert, service, port, sqlstate, named):
    assert_refused(conn, "SELECT add_service(%s, %s, %s::int)", (cert, service, port), sqlstate=sqlstate, match=named)


@pytest.mark.parametrize("cert,service,port,sqlstate,named", SERVICE_REFUSALS + [
    ("www.example.org", "imap", 143, "SP002", "imap"),       # a known service the certificate does not have
])
def test_remove_service_refused(conn, world, cert, service, port, sqlstate, named):
    assert_refused(conn, "SELECT remove_service(%s, %s, %s::int)", (cert, service, port), sqlstate=sqlstate, match=named)


@pytest.mark.parametrize("cert,service,port,sqlstate,named", SERVICE_REFUSALS)
def test_remove_service_refused_with_no_services_attached(conn, world, cert, service, port, sqlstate, named):
    conn.execute("SELECT remove_service('www.example.org', 'https', 443)")
    assert count(conn, "SELECT count(*) FROM certificates_services") == 0
    assert_refused(conn, "SELECT remove_service(%s, %s, %s::int)", (cert, service, port), sqlstate=sqlstate, match=named)


# --------------------------------------------------------------------------- add_target, remove_target


def test_add_and_remove_target(conn, world):
    conn.execute("SELECT add_place('postfix', 'combine both', '/usr/local/etc/postfix/ssl')")
    conn.execute("SELECT add_target('www.example.org', 'jailhost.example.org', 'mail', 'postfix')")
    conn.execute("SELECT add_target('WWW.example.org', 'JAILHOST.example.org', NULL, 'NGINX')")
    rows = conn.execute("SELECT \"Dist Host\"::text, \"Jail\"::text, \"Place\"::text FROM certs "
                        "WHERE \"Cert Name\" = 'www.example.org' AND \"Alt Name\" = 'example.org' ORDER BY 1, 2, 3").fetchall()
    assert rows == [("jailhost.example.org", "mail", "postfix"), ("jailhost.example.org", None, "nginx"),
                    ("web1.example.org", None, "nginx")]
    conn.execute("SELECT remove_target('www.example.org', 'jailhost.example.org', 'MAIL', 'postfix')")
    conn.execute("SELECT remove_target('www.example.org', 'jailhost.example.org', NULL, 'nginx')")
    conn.execute("SELECT remove_target('www.example.org', 'Web1.Example.Org', NULL, 'nginx')")
    assert count(conn, "SELECT count(*) FROM targets") == 0
    assert count(conn, "SELECT count(*) FROM places") == 2        # places, jails and disthosts stay
    assert count(conn, "SELECT count(*) FROM jails") == 1


@pytest.mark.parametrize("disthost,jail", [
    ("web1.example.org", None),
    ("WEB1.EXAMPLE.ORG", None),
    ("jailhost.example.org", "mail"),
    ("jailhost.example.org", "MAIL"),
])
def test_add_target_again_is_a_notice(conn, world, disthost, jail):
    conn.execute("SELECT add_target('www.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    before = snapshot(conn)
    notices = notices_of(conn, "SELECT add_target('www.example.org', %s, %s, 'nginx')", (disthost, jail))
    assert len(notices) == 1 and notices[0][0] == "NOTICE"
    assert "www.example.org" in notices[0][1]
    assert snapshot(conn) == before
    assert count(conn, "SELECT count(*) FROM targets") == 2


TARGET_REFUSALS = [
    ("nope.example.org", "web1.example.org", None, "nginx", "SP002", "nope.example.org"),
    ("example.org", "web1.example.org", None, "nginx", "SP002", "example.org"),
    ("www.example.org", "web9.example.org", None, "nginx", "SP002", "web9.example.org"),
    ("www.example.org", "jailhost.example.org", "nojail", "nginx", "SP002", "nojail"),
    ("www.example.org", "web1.example.org", None, "apache", "SP002", "apache"),
    ("www.example.org", "web1.example.org", "mail", "nginx", "SP007", "mail"),
    (None, "web1.example.org", None, "nginx", "SP009", "certificate name"),
    ("www.example.org", None, None, "nginx", "SP009", "disthost"),
    ("www.example.org", "", None, "nginx", "SP009", "disthost"),
    ("www.example.org", None, "mail", "nginx", "SP009", "disthost"),
    ("www.example.org", "web1.example.org", None, None, "SP009", "place"),
    ("www.example.org", "web1.example.org", None, "", "SP009", "place"),
    ("www.example.org", "jailhost.example.org", "", "nginx", "SP009", "jail"),
]


@pytest.mark.parametrize("cert,disthost,jail,place,sqlstate,named", TARGET_REFUSALS)
def test_add_target_refused(conn, world, cert, disthost, jail, place, sqlstate, named):
    assert_refused(conn, "SELECT add_target(%s, %s, %s, %s)", (cert, disthost, jail, place), sqlstate=sqlstate, match=named)


@pytest.mark.parametrize("cert,disthost,jail,place,sqlstate,named", TARGET_REFUSALS + [
    ("www.example.org", "jailhost.example.org", None, "nginx", "SP002", "jailhost.example.org"),   # no such target
    ("www.example.org", "jailhost.example.org", "mail", "nginx", "SP002", "mail"),
])
def test_remove_target_refused(conn, world, cert, disthost, jail, place, sqlstate, named):
    assert_refused(conn, "SELECT remove_target(%s, %s, %s, %s)", (cert, disthost, jail, place), sqlstate=sqlstate, match=named)


@pytest.mark.parametrize("cert,disthost,jail,place,sqlstate,named", TARGET_REFUSALS)
def test_remove_target_refused_with_no_targets(conn, world, cert, disthost, jail, place, sqlstate, named):
    conn.execute("SELECT remove_target('www.example.org', 'web1.example.org', NULL, 'nginx')")
    assert count(conn, "SELECT count(*) FROM targets") == 0
    assert_refused(conn, "SELECT remove_target(%s, %s, %s, %s)", (cert, disthost, jail, place), sqlstate=sqlstate, match=named)


# --------------------------------------------------------------------------- add_disthost, remove_disthost


def test_add_disthost(conn):
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_disthost('jailhost.example.org', '/usr/jails')")
    rows = conn.execute("SELECT fqdn::text, jailroot FROM disthosts ORDER BY fqdn").fetchall()
    assert rows == [("jailhost.example.org", "/usr/jails"), ("web1.example.org", None)]


def test_remove_disthost_takes_its_jails(conn, world):
    conn.execute("SELECT add_jail('www', 'jailhost.example.org')")
    conn.execute("SELECT remove_disthost('JailHost.Example.Org')")
    assert [r[0] for r in conn.execute("SELECT fqdn::text FROM disthosts")] == ["web1.example.org"]
    assert count(conn, "SELECT count(*) FROM jails") == 0


def test_remove_disthost_after_its_targets(conn, world):
    conn.execute("SELECT remove_target('www.example.org', 'web1.example.org', NULL, 'nginx')")
    conn.execute("SELECT remove_disthost('web1.example.org')")
    assert count(conn, "SELECT count(*) FROM disthosts WHERE fqdn = 'web1.example.org'") == 0


@pytest.mark.parametrize("fqdn,jailroot,sqlstate,named", [
    ("web1.example.org", None, "SP003", "web1.example.org"),
    ("WEB1.example.org", "/usr/jails", "SP003", "WEB1.example.org"),
    ("bad_host.example.org", None, "SP001", "bad_host.example.org"),
    ("*.example.org", None, "SP001", "*.example.org"),
    (None, None, "SP009", "disthost FQDN"),
    ("", "/usr/jails", "SP009", "disthost FQDN"),
    ("new.example.org", "usr/jails", "SP004", "usr/jails"),
    ("new.example.org", "/usr/../jails", "SP004", "/usr/../jails"),
])
def test_add_disthost_refused(conn, world, fqdn, jailroot, sqlstate, named):
    assert_refused(conn, "SELECT add_disthost(%s, %s)", (fqdn, jailroot), sqlstate=sqlstate, match=named)


@pytest.mark.parametrize("fqdn,sqlstate,named", [
    ("web1.example.org", "SP010", "web1.example.org"),
    ("web9.example.org", "SP002", "web9.example.org"),
    (None, "SP009", "disthost"),
    ("", "SP009", "disthost"),
])
def test_remove_disthost_refused(conn, world, fqdn, sqlstate, named):
    assert_refused(conn, "SELECT remove_disthost(%s)", (fqdn,), sqlstate=sqlstate, match=named)


def test_remove_disthost_with_jail_targets_refused(conn, world):
    conn.execute("SELECT add_target('www.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    err = assert_refused(conn, "SELECT remove_disthost('jailhost.example.org')", sqlstate="SP010",
                         match="jailhost.example.org")
    assert "www.example.org" in err.diag.message_primary


def test_remove_disthost_refused_on_an_empty_database(conn):
    assert_refused(conn, "SELECT remove_disthost('web9.example.org')", sqlstate="SP002", match="web9.example.org")


# --------------------------------------------------------------------------- add_jail, remove_jail


def test_add_and_remove_jail(conn, world):
    conn.execute("SELECT add_jail('www', 'JAILHOST.EXAMPLE.ORG')")
    rows = conn.execute("SELECT j.name::text, d.fqdn::text FROM jails j JOIN disthosts d ON d.id = j.disthost "
                        "ORDER BY 1").fetchall()
    assert rows == [("mail", "jailhost.example.org"), ("www", "jailhost.example.org")]
    conn.execute("SELECT remove_jail('WWW')")
    assert [r[0] for r in conn.execute("SELECT name::text FROM jails")] == ["mail"]


@pytest.mark.parametrize("name,disthost,sqlstate,named", [
    ("www", "web1.example.org", "SP007", "web1.example.org"),
    ("www", "web9.example.org", "SP002", "web9.example.org"),
    ("www", None, "SP009", "disthost"),
    ("www", "", "SP009", "disthost"),
    (None, "jailhost.example.org", "SP009", "jail name"),
    ("", "jailhost.example.org", "SP009", "jail name"),
    ("mail", "jailhost.example.org", "SP003", "mail"),
    ("Mail", "jailhost.example.org", "SP003", "Mail"),
    ("../www", "jailhost.example.org", "SP001", "../www"),
    ("w w", "jailhost.example.org", "SP001", "w w"),
])
def test_add_jail_refused(conn, world, name, disthost, sqlstate, named):
    assert_refused(conn, "SELECT add_jail(%s, %s)", (name, disthost), sqlstate=sqlstate, match=named)


@pytest.mark.parametrize("name,sqlstate,named", [
    ("nojail", "SP002", "nojail"),
    (None, "SP009", "jail"),
    ("", "SP009", "jail"),
])
def test_remove_jail_refused(conn, world, name, sqlstate, named):
    assert_refused(conn, "SELECT remove_jail(%s)", (name,), sqlstate=sqlstate, match=named)


def test_remove_jail_in_use_refused(conn, world):
    conn.execute("SELECT add_target('www.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    err = assert_refused(conn, "SELECT remove_jail('mail')", sqlstate="SP010", match="mail")
    assert "www.example.org" in err.diag.message_primary


def test_remove_jail_refused_on_an_empty_database(conn):
    assert_refused(conn, "SELECT remove_jail('nojail')", sqlstate="SP002", match="nojail")


# --------------------------------------------------------------------------- add_place, remove_place


def test_add_place_stores_every_column(conn):
    conn.execute("SELECT add_place('nginx', 'combine cacert', '/usr/local/etc/nginx/ssl', '/usr/local/etc/nginx/keys', "
                 "0, 80, 416, true, true, 'service nginx reload')")
    row = conn.execute("SELECT name::text, cert_file_type::text, cert_path, key_path, uid, gid, mode, chownboth, pglink, "
                       "reload_command FROM places").fetchone()
    assert row == ("nginx", "combine cacert", "/usr/local/etc/nginx/ssl", "/usr/local/etc/nginx/keys", 0, 80, 416,
                   True, True, "service nginx reload")


def test_add_place_defaults(conn):
    conn.execute("SELECT add_place('plain', NULL, '/etc/ssl/{}')")
    row = conn.execute("SELECT cert_file_type::text, key_path, uid, gid, mode, chownboth, pglink, reload_command "
                       "FROM places").fetchone()
    assert row == ("separate", None, None, None, None, False, False, None)


@pytest.mark.parametrize("file_type", ["cert only", "separate", "combine key", "combine cacert", "combine both"])
def test_add_place_each_file_type(conn, file_type):
    conn.execute("SELECT add_place('p', %s, '/etc/ssl')", (file_type,))
    assert conn.execute("SELECT cert_file_type::text FROM places").fetchone()[0] == file_type


@pytest.mark.parametrize("args,sqlstate,named", [
    (("p", "combined", "/etc/ssl"), "SP011", "'combined'"),
    (("p", "Separate", "/etc/ssl"), "SP011", "'Separate'"),
    (("p", "", "/etc/ssl"), "SP011", "''"),
    ((None, "separate", "/etc/ssl"), "SP009", "place name"),
    (("p", "separate", None), "SP009", "cert_path"),
    (("p", "separate", "etc/ssl"), "SP004", "etc/ssl"),
    (("p", "separate", "/etc/ssl", "/etc/../keys"), "SP004", "/etc/../keys"),
    (("p", "separate", "/etc/ssl", None, -1), "SP005", "-1"),
    (("p", "separate", "/etc/ssl", None, None, -5), "SP005", "-5"),
    (("p", "separate", "/etc/ssl", None, None, None, 512), "SP005", "512"),
    (("nginx", "separate", "/etc/ssl"), "SP003", "nginx"),
    (("NGINX", "separate", "/etc/ssl"), "SP003", "NGINX"),
    (("a/b", "separate", "/etc/ssl"), "SP001", "a/b"),
])
def test_add_place_refused(conn, world, args, sqlstate, named):
    params = list(args) + [None] * (10 - len(args))
    assert_refused(conn, "SELECT add_place(%s, %s, %s, %s, %s::int, %s::int, %s::int, %s, %s, %s)", params,
                   sqlstate=sqlstate, match=named)


def test_remove_place(conn, world):
    conn.execute("SELECT add_place('postfix', 'separate', '/usr/local/etc/postfix')")
    conn.execute("SELECT remove_place('POSTFIX')")
    assert [r[0] for r in conn.execute("SELECT name::text FROM places")] == ["nginx"]


@pytest.mark.parametrize("name,sqlstate,named", [
    ("nginx", "SP010", "nginx"),
    ("apache", "SP002", "apache"),
    (None, "SP009", "place"),
    ("", "SP009", "place"),
])
def test_remove_place_refused(conn, world, name, sqlstate, named):
    assert_refused(conn, "SELECT remove_place(%s)", (name,), sqlstate=sqlstate, match=named)


def test_remove_place_refused_on_an_empty_database(conn):
    assert_refused(conn, "SELECT remove_place('apache')", sqlstate="SP002", match="apache")


# --------------------------------------------------------------------------- add_tlsa_service, remove_tlsa_service


def test_add_tlsa_service_default_prefix(conn):
    conn.execute("SELECT add_tlsa_service('submissions', 465)")
    assert conn.execute("SELECT tlsaprefix FROM services WHERE name = 'submissions'").fetchone()[0] == \
        "_465._tcp.{}. 3600 IN TLSA 3 0 1"


def test_add_tlsa_service_own_prefix(conn):
    conn.execute("SELECT add_tlsa_service('dot', 853, '_853._tcp.{}. 300 IN TLSA 3 1 1')")
    conn.execute("SELECT add_tlsa_service('quic', 853, '_853._udp.{}. 300 IN TLSA 3 1 1')")
    rows = conn.execute("SELECT name::text, tlsaprefix FROM services WHERE port = 853 ORDER BY 1").fetchall()
    assert rows == [("dot", "_853._tcp.{}. 300 IN TLSA 3 1 1"), ("quic", "_853._udp.{}. 300 IN TLSA 3 1 1")]


def test_remove_tlsa_service(conn):
    conn.execute("SELECT add_tlsa_service('submissions', 465)")
    conn.execute("SELECT remove_tlsa_service('SUBMISSIONS', 465)")
    conn.execute("SELECT remove_tlsa_service('imap', 587)")
    assert count(conn, "SELECT count(*) FROM services") == 4


@pytest.mark.parametrize("args,sqlstate,named", [
    (("https", 443), "SP003", "https/443"),
    (("HTTPS", 443), "SP003", "HTTPS/443"),
    (("svc", 0), "SP005", "0"),
    (("svc", 65536), "SP005", "65536"),
    (("svc", None), "SP009", "svc"),
    ((None, 443), "SP009", "service name"),
    (("", 443), "SP009", "service name"),
    (("my svc", 443), "SP001", "my svc"),
    (("svc", 443, "_444._tcp.{}. 3600 IN TLSA 3 0 1"), "SP006", "_444._tcp"),
    (("svc", 443, "_443._tcp.{}. 3600 IN TLSA 5 0 1"), "SP006", "TLSA 5 0 1"),
    (("svc", 443, "_443._tcp.example.org. 3600 IN TLSA 3 0 1"), "SP006", "example.org"),
    (("svc", 443, ""), "SP009", "TLSA prefix"),
])
def test_add_tlsa_service_refused(conn, args, sqlstate, named):
    params = list(args) + [None] * (3 - len(args))
    assert_refused(conn, "SELECT add_tlsa_service(%s, %s::int, %s)", params, sqlstate=sqlstate, match=named)


@pytest.mark.parametrize("name,port,sqlstate,named", [
    ("https", 443, "SP010", "https/443"),
    ("https", 444, "SP002", "444"),
    ("gopher", 70, "SP002", "gopher"),
    (None, 443, "SP009", "TLSA service name"),
    ("", 443, "SP009", "TLSA service name"),
    ("https", None, "SP009", "https"),
])
def test_remove_tlsa_service_refused(conn, world, name, port, sqlstate, named):
    err = assert_refused(conn, "SELECT remove_tlsa_service(%s, %s::int)", (name, port), sqlstate=sqlstate, match=named)
    if sqlstate == "SP010":
        assert "www.example.org" in err.diag.message_primary


# --------------------------------------------------------------------------- lookups


def test_lookups_are_case_insensitive(conn, world):
    one = lambda sql: conn.execute(sql).fetchone()[0]   # noqa: E731
    assert one("SELECT cert_id('WWW.EXAMPLE.ORG')") == world["cert"]
    assert one("SELECT disthost_id('Web1.Example.Org')") == one("SELECT id FROM disthosts WHERE fqdn = 'web1.example.org'")
    assert one("SELECT jail_id('MAIL')") == one("SELECT id FROM jails WHERE name = 'mail'")
    assert one("SELECT jail_id('Mail', (SELECT id FROM disthosts WHERE fqdn = 'jailhost.example.org'))") == \
        one("SELECT id FROM jails WHERE name = 'mail'")
    assert one("SELECT place_id('NGINX')") == one("SELECT id FROM places WHERE name = 'nginx'")
    assert one("SELECT service_id('HTTPS', 443)") == one("SELECT id FROM services WHERE name = 'https' AND port = 443")
    assert one("SELECT enum_label('combine key', 'dd.place_cert_file_type', 'x')") == "combine key"


@pytest.mark.parametrize("sql,sqlstate,named", [
    ("SELECT cert_id('nope.example.org')", "SP002", "nope.example.org"),
    ("SELECT cert_id('example.org')", "SP002", "example.org"),
    ("SELECT cert_id(NULL)", "SP009", "certificate name"),
    ("SELECT disthost_id('web9.example.org')", "SP002", "web9.example.org"),
    ("SELECT disthost_id('')", "SP009", "disthost"),
    ("SELECT jail_id('nojail')", "SP002", "nojail"),
    ("SELECT jail_id(NULL)", "SP009", "jail"),
    ("SELECT jail_id('mail', (SELECT id FROM disthosts WHERE fqdn = 'web1.example.org'))", "SP007", "mail"),
    ("SELECT place_id('apache')", "SP002", "apache"),
    ("SELECT place_id(NULL)", "SP009", "place"),
    ("SELECT service_id('https', 444)", "SP002", "444"),
    ("SELECT service_id('https', NULL)", "SP009", "https"),
    ("SELECT service_id(NULL, 443)", "SP009", "TLSA service name"),
    ("SELECT enum_label('bogus', 'dd.cert_type', 'cert type')", "SP011", "'bogus'"),
    ("SELECT enum_label(NULL, 'dd.cert_type', 'cert type')", "SP011", "NULL"),
])
def test_lookups_refuse(conn, world, sql, sqlstate, named):
    assert_refused(conn, sql, sqlstate=sqlstate, match=named)


# --------------------------------------------------------------------------- the "updated" column


@pytest.mark.parametrize("table,where", [
    ("certificates", "true"),
    ("subjects", "name = 'www.example.org'"),
    ("services", "name = 'https' AND port = 443"),
    ("certificates_services", "true"),
    ("disthosts", "fqdn = 'web1.example.org'"),
    ("jails", "name = 'mail'"),
    ("places", "name = 'nginx'"),
    ("targets", "true"),
    ("settings", "name = 'expire_grace'"),
    ("revision", "true"),
])
def test_update_stamps_updated(conn, world, table, where):
    # revision is the installer's (and -X/-Y's, through the queue): the owner touches it here
    conn = owner_conn(conn) if table == "revision" else conn
    before = conn.execute(f"SELECT id, created, updated FROM {table} WHERE {where} ORDER BY id").fetchall()
    assert before
    conn.execute(f"UPDATE {table} SET remarks = 'touched' WHERE {where}")
    after = conn.execute(f"SELECT id, created, updated FROM {table} WHERE {where} ORDER BY id").fetchall()
    assert [(i, c) for i, c, _ in after] == [(i, c) for i, c, _ in before], "created must not change"
    for (_, _, old), (_, _, new) in zip(before, after):
        assert new > old


def test_update_does_not_accept_a_hand_made_updated(conn, world):
    conn.execute("UPDATE disthosts SET updated = '2000-01-01' WHERE fqdn = 'web1.example.org'")
    assert conn.execute("SELECT updated > '2001-01-01' FROM disthosts WHERE fqdn = 'web1.example.org'").fetchone()[0]


def test_disable_cert_stamps_updated(conn, world):
    old = conn.execute("SELECT updated FROM certificates").fetchone()[0]
    conn.execute("SELECT disable_cert('www.example.org')")
    assert conn.execute("SELECT updated FROM certificates").fetchone()[0] > old


# --------------------------------------------------------------------------- the README walk-through


def test_readme_management_session(conn):
    conn.execute("INSERT INTO disthosts (fqdn, jailroot) VALUES ('host-with-jails.on.domain', '/usr/jails')")
    conn.execute("INSERT INTO disthosts (fqdn) VALUES ('host-without-jails.on.domain')")
    host = count(conn, "SELECT id FROM disthosts WHERE fqdn = 'host-with-jails.on.domain'")
    conn.execute("INSERT INTO jails (name, disthost) VALUES ('my_service_jail', %s)", (host,))

    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_disthost('jailhost.example.org', '/usr/jails')")
    conn.execute("SELECT add_jail('mail', 'jailhost.example.org')")
    conn.execute("SELECT add_place('nginx', 'combine cacert', '/usr/local/etc/nginx/ssl', NULL, "
                 "0, 80, 416, false, false, 'service nginx reload')")
    conn.execute("SELECT add_tlsa_service('submissions', 465)")
    conn.execute("SELECT * FROM add_cert('www.example.org', 'server', 'LE', 'rsa_plus_ec', false, "
                 "'example.org', 'https', 443, 'web1.example.org', NULL, 'nginx')")
    conn.execute("SELECT add_altname('www.example.org', 'www2.example.org')")
    conn.execute("SELECT add_service('www.example.org', 'smtp', 25)")
    conn.execute("SELECT add_target('www.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    conn.execute("SELECT disable_cert('www.example.org')")
    conn.execute("SELECT enable_cert('www.example.org')")
    # 2 alt names x 2 services x 2 targets
    assert count(conn, "SELECT count(*) FROM certs WHERE \"Cert Name\" = 'www.example.org'") == 8

    conn.execute("SELECT remove_target('www.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    conn.execute("SELECT remove_service('www.example.org', 'smtp', 25)")
    conn.execute("SELECT remove_altname('www.example.org', 'www2.example.org')")
    conn.execute("SELECT remove_cert('www.example.org')")
    conn.execute("SELECT remove_place('nginx')")
    conn.execute("SELECT remove_jail('mail')")
    conn.execute("SELECT remove_disthost('web1.example.org')")
    conn.execute("SELECT remove_tlsa_service('submissions', 465)")
    assert count(conn, "SELECT count(*) FROM certificates") == 0
    assert count(conn, "SELECT count(*) FROM places") == 0
    assert [r[0] for r in conn.execute("SELECT fqdn::text FROM disthosts ORDER BY 1")] == \
        ["host-with-jails.on.domain", "host-without-jails.on.domain", "jailhost.example.org"]
    conn.execute("UPDATE settings SET value = '21' WHERE name = 'pre_publish_days'")
    assert conn.execute("SELECT value FROM settings WHERE name = 'pre_publish_days'").fetchone()[0] == "21"


# --------------------------------------------------------------------------- refusals do not depend on the query plan

PLAN_INDEPENDENT = [
    ("SELECT remove_cert(%s)", ("nope.example.org",), "SP002", "nope.example.org"),
    ("SELECT remove_cert(%s)", (None,), "SP009", "certificate name"),
    ("SELECT * FROM forget_tlsa_owners(%s)", ("nope.example.org",), "SP002", "nope.example.org"),
    ("SELECT disable_cert(%s)", ("nope.example.org",), "SP002", "nope.example.org"),
    ("SELECT enable_cert(%s)", ("nope.example.org",), "SP002", "nope.example.org"),
    ("SELECT remove_disthost(%s)", ("web9.example.org",), "SP002", "web9.example.org"),
    ("SELECT remove_disthost(%s)", (None,), "SP009", "disthost"),
    ("SELECT remove_jail(%s)", ("nojail",), "SP002", "nojail"),
    ("SELECT remove_place(%s)", ("apache",), "SP002", "apache"),
    ("SELECT remove_place(%s)", ("",), "SP009", "place"),
    ("SELECT remove_tlsa_service(%s, %s::int)", ("gopher", 70), "SP002", "gopher"),
    ("SELECT remove_tlsa_service(%s, %s::int)", ("https", None), "SP009", "https"),
    ("SELECT remove_service(%s, %s, %s::int)", ("www.example.org", "gopher", 70), "SP002", "gopher"),
    ("SELECT remove_service(%s, %s, %s::int)", ("www.example.org", "smtp", None), "SP009", "smtp"),
    ("SELECT remove_service(%s, %s, %s::int)", ("www.example.org", None, 25), "SP009", "TLSA service name"),
    ("SELECT remove_target(%s, %s, %s, %s)", ("www.example.org", "web1.example.org", None, None), "SP009", "place"),
    ("SELECT remove_target(%s, %s, %s, %s)", ("www.example.org", "web1.example.org", None, "apache"), "SP002", "apache"),
]


@pytest.mark.parametrize("populated", [False, True], ids=["empty", "populated"])
@pytest.mark.parametrize("sql,params,sqlstate,named", PLAN_INDEPENDENT)
def test_refusals_do_not_depend_on_the_query_plan(conn, sql, params, sqlstate, named, populated):
    # a lookup in a WHERE clause is only evaluated when the scan reaches a row; with
    # sequential scans over tables without a matching row the refusal must still come
    if populated or "www.example.org" in params:
        conn.execute("SELECT add_disthost('web1.example.org')")
        conn.execute("SELECT add_place('nginx', 'separate', '/etc/ssl')")
        add_cert(conn, "www.example.org")
    if not populated:
        conn.execute("DELETE FROM certificates_services")
        conn.execute("DELETE FROM services WHERE id NOT IN (SELECT service FROM certificates_services)")
    for setting in ("enable_indexscan", "enable_bitmapscan", "enable_indexonlyscan"):
        conn.execute(f"SET {setting} = off")
    assert_refused(conn, sql, params, sqlstate=sqlstate, match=named)


def test_removals_work_with_sequential_scans(conn, world):
    for setting in ("enable_indexscan", "enable_bitmapscan", "enable_indexonlyscan"):
        conn.execute(f"SET {setting} = off")
    conn.execute("SELECT remove_target('www.example.org', 'web1.example.org', NULL, 'nginx')")
    conn.execute("SELECT remove_service('www.example.org', 'https', 443)")
    conn.execute("SELECT disable_cert('www.example.org')")
    conn.execute("SELECT enable_cert('www.example.org')")
    conn.execute("SELECT remove_cert('www.example.org')")
    conn.execute("SELECT remove_place('nginx')")
    conn.execute("SELECT remove_jail('mail')")
    conn.execute("SELECT remove_disthost('web1.example.org')")
    conn.execute("SELECT remove_tlsa_service('smtp', 25)")
    assert count(conn, "SELECT count(*) FROM certificates") == 0
    assert count(conn, "SELECT count(*) FROM places") == 0
    assert count(conn, "SELECT count(*) FROM jails") == 0
    assert [r[0] for r in conn.execute("SELECT fqdn::text FROM disthosts")] == ["jailhost.example.org"]


# --------------------------------------------------------------------------- coverage of the functions


def test_every_validation_and_management_function_is_tested(repo_root):
    """Each function of 020_validation and 040_manage is called by these tests (which assert its SQLSTATE);
    set_key_reuse by tests/test_key_reuse.py."""
    import re

    sources = "".join((repo_root / "tests" / name).read_text() for name in ("test_validation.py", "test_manage.py", "test_key_reuse.py"))
    for sql_file in ("db/functions/020_validation.sql", "db/functions/040_manage.sql"):
        names = re.findall(r"CREATE OR REPLACE FUNCTION pki\.(\w+)\(", (repo_root / sql_file).read_text())
        assert names, sql_file
        untested = [n for n in names if not re.search(rf"\b{n}\(", sources.replace("pki." + n, n))]
        assert not untested, f"{sql_file}: no test calls {untested}"
