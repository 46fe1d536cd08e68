from helpers import assert_refused


def test_schema_installed_and_search_path(conn):
    assert conn.execute("SHOW search_path").fetchone()[0] == "pki, dd, public"
    assert conn.execute("SELECT count(*) FROM services").fetchone()[0] == 5


def test_bad_jail_refused(conn):
    conn.execute("INSERT INTO disthosts (fqdn, jailroot) VALUES ('h.example.org', '/usr/jails')")
    assert_refused(conn, "INSERT INTO jails (name, disthost) VALUES ('../etc', (SELECT id FROM disthosts))",
                   sqlstate="SP001", match="../etc")
