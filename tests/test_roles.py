"""The three group roles of db/schema/0002_roles.sql and their privileges
(db/privileges/010_grants.sql), exercised through real LOGIN roles that are
members of the groups, as an operator would set them up:

    CREATE ROLE alice LOGIN IN ROLE pki_admin;

pki_report reads the report views and nothing else; pki_agent reads the
configuration but cannot change it; pki_admin changes the configuration
(functions and plain DML) but never reads a private key.
"""

from __future__ import annotations

import datetime
import uuid

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from psycopg.conninfo import make_conninfo

from helpers import snapshot

INSUFFICIENT_PRIVILEGE = "42501"

# the tables an operator configures (the agent and the reports must not change them)
CONFIG_TABLES = (
    "certificates", "subjects", "disthosts", "jails", "places", "targets",
    "services", "certificates_services", "settings",
)
REPORT_VIEWS = ("certs", "certs_ids", "inst")



@pytest.fixture
def conn(owner):
    """This module proves the privileges through login roles of its own; its conn is the owner, who
    sets the fleet up and inspects what the roles did."""
    return owner

@pytest.fixture
def login_as(pg_server, dbname):
    """login_as('pki_admin'): a connection of a new LOGIN role that is a member of that group."""
    made: list[tuple[str, psycopg.Connection]] = []

    def connect(group: str) -> psycopg.Connection:
        role = f"t_{group}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_server.dsn(dbname), autocommit=True) as su:
            su.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE {group}')
        c = psycopg.connect(make_conninfo(pg_server.dsn(dbname), user=role), autocommit=True)
        made.append((role, c))
        assert c.execute("SELECT current_user, pg_has_role(current_user, %s, 'USAGE')", (group,)).fetchone() == (role, True)
        assert c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0] is False
        return c

    yield connect
    for role, c in made:
        c.close()
        with psycopg.connect(pg_server.dsn(dbname), autocommit=True) as su:
            su.execute(f'DROP ROLE "{role}"')


def assert_denied(conn: psycopg.Connection, sql: str, params=None) -> None:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    assert info.value.diag.sqlstate == INSUFFICIENT_PRIVILEGE, (
        f"{sql!r}: expected 42501, got {info.value.diag.sqlstate}: {info.value.diag.message_primary}")


def assert_refused_as(actor: psycopg.Connection, su: psycopg.Connection, sql: str, sqlstate: str, match: str = "") -> None:
    """Like helpers.assert_refused, for a role that may not read every table: the superuser takes the snapshots."""
    before = snapshot(su)
    with pytest.raises(psycopg.Error) as info:
        actor.execute(sql)
    diag = info.value.diag
    assert diag.sqlstate == sqlstate, f"expected {sqlstate}, got {diag.sqlstate}: {diag.message_primary}"
    assert match in (diag.message_primary or ""), diag.message_primary
    assert diag.message_hint, f"refusal without a hint: {diag.message_primary}"
    assert snapshot(su) == before, "a refused statement changed the database"


def self_signed_pem(name: str) -> tuple[bytes, bytes]:
    """A self-signed RSA certificate and its clear PKCS#8 key, both PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=90))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture
def populated(conn):
    """A configuration with one certificate, one issued instance and its key pair (written by the superuser)."""
    conn.execute("SELECT add_disthost('web1.example.org', '/usr/jails')")
    conn.execute("SELECT add_jail('mail', 'web1.example.org')")
    conn.execute("SELECT add_place('nginx', 'combine cacert', '/usr/local/etc/nginx/ssl', NULL, 0, 80, 416, false, false, 'service nginx reload')")
    conn.execute("SELECT * FROM add_cert('www.example.org', 'server', 'local', 'rsa', false, "
                 "'example.org', 'https', 443, 'web1.example.org', 'mail', 'nginx')")
    cert_id = conn.execute("SELECT cert_id('www.example.org')").fetchone()[0]
    # as an issue job would: reserve, store the pair, mark issued (the state machine allows no shortcut)
    inst = conn.execute("INSERT INTO certinstances (certificate, state) VALUES (%s, 'reserved') RETURNING id",
                        (cert_id,)).fetchone()[0]
    cert_pem, key_pem = self_signed_pem("www.example.org")
    conn.execute("INSERT INTO certkeydata (certinstance, encryption_algo, cert, key) VALUES (%s, 'rsa', %s, %s)",
                 (inst, cert_pem, key_pem))
    conn.execute("UPDATE certinstances SET state = 'issued' WHERE id = %s", (inst,))
    return {"certificate": cert_id, "instance": inst, "key": key_pem}


def pki_tables(conn) -> list[str]:
    rows = conn.execute("SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'pki'::regnamespace "
                        "AND c.relkind IN ('r', 'p') ORDER BY 1").fetchall()
    return [r[0] for r in rows]


# --- pki_report ---------------------------------------------------------------

def test_report_reads_the_views(login_as, populated):
    report = login_as("pki_report")
    for view in REPORT_VIEWS:
        rows = report.execute(f"SELECT * FROM {view}").fetchall()   # unqualified: the database's search_path
        assert rows, f"{view} is empty for pki_report"
    inst = report.execute('SELECT "Serial", "State", "ALGO", "Hash" FROM inst').fetchall()
    assert inst == [(populated["instance"], "issued", "rsa", inst[0][3])]
    assert len(inst[0][3]) == 64
    # the registry of our SQLSTATEs is readable by everyone, so they can look codes up
    assert report.execute("SELECT count(*) FROM dd.sqlstates").fetchone()[0] > 0


def test_report_reads_no_table_and_no_key(conn, login_as, populated):
    report = login_as("pki_report")
    assert_denied(report, "SELECT key FROM pki.certkeydata")
    assert_denied(report, "SELECT cert, hash FROM pki.certkeydata")
    tables = pki_tables(conn)
    assert {"certkeydata", "certinstances", "disthosts", "settings", "schema_migrations"} <= set(tables)
    # but one: which migrations are applied (names and times), what every login checks first
    # (migrate.check_compatible), monitoring's `serverpki metrics --check` too
    assert report.execute("SELECT count(*) FROM pki.schema_migrations").fetchone()[0] > 0
    for table in set(tables) - {"schema_migrations"}:
        assert_denied(report, f"SELECT * FROM pki.{table} LIMIT 1")
        assert_denied(report, f"SELECT count(*) FROM pki.{table}")


def test_report_changes_nothing(conn, login_as, populated):
    report = login_as("pki_report")
    before = snapshot(conn)
    assert_denied(report, "INSERT INTO disthosts (fqdn) VALUES ('evil.example.org')")
    assert_denied(report, "UPDATE settings SET value = '21' WHERE name = 'pre_publish_days'")
    assert_denied(report, "DELETE FROM certificates")
    # the management functions are not granted to pki_report
    assert_denied(report, "SELECT add_disthost('evil.example.org')")
    assert_denied(report, "SELECT remove_cert('www.example.org')")
    assert snapshot(conn) == before


# --- pki_agent ----------------------------------------------------------------

def test_agent_reads_configuration_and_keys(login_as, populated):
    agent = login_as("pki_agent")
    for table in CONFIG_TABLES:
        agent.execute(f"SELECT * FROM pki.{table}").fetchall()
    for view in REPORT_VIEWS:
        agent.execute(f"SELECT * FROM {view}").fetchall()
    # the agent deploys keys, so it may read them
    assert agent.execute("SELECT key FROM certkeydata").fetchone()[0] == populated["key"]


@pytest.mark.parametrize("table", CONFIG_TABLES)
def test_agent_cannot_change_configuration(conn, login_as, populated, table):
    agent = login_as("pki_agent")
    before = snapshot(conn)
    assert_denied(agent, f"INSERT INTO pki.{table} DEFAULT VALUES")
    assert_denied(agent, f"UPDATE pki.{table} SET remarks = 'changed by the agent'")
    assert_denied(agent, f"DELETE FROM pki.{table}")
    assert_denied(agent, f"TRUNCATE pki.{table} CASCADE")
    assert snapshot(conn) == before


def test_agent_cannot_change_configuration_through_functions(conn, login_as, populated):
    """The management functions run with the caller's rights: the agent may call them, they still refuse."""
    agent = login_as("pki_agent")
    before = snapshot(conn)
    assert_denied(agent, "SELECT add_disthost('other.example.org')")
    assert_denied(agent, "SELECT add_tlsa_service('submissions', 465)")
    assert_denied(agent, "SELECT * FROM add_cert('new.example.org', 'server', 'LE', 'rsa', false, "
                         "NULL, NULL, NULL, NULL, NULL, NULL)")
    assert_denied(agent, "SELECT disable_cert('www.example.org')")
    assert_denied(agent, "SELECT remove_target('www.example.org', 'web1.example.org', 'mail', 'nginx')")
    assert_denied(agent, "SELECT remove_cert('www.example.org')")
    assert snapshot(conn) == before


# --- pki_admin ----------------------------------------------------------------

def test_admin_manages_configuration_with_functions(conn, login_as):
    admin = login_as("pki_admin")
    admin.execute("SELECT add_disthost('web1.example.org')")
    admin.execute("SELECT add_disthost('jailhost.example.org', '/usr/jails')")
    admin.execute("SELECT add_jail('mail', 'jailhost.example.org')")
    admin.execute("SELECT add_place('nginx', 'combine cacert', '/usr/local/etc/nginx/ssl', NULL, "
                  "0, 80, 416, false, false, 'service nginx reload')")
    admin.execute("SELECT add_tlsa_service('submissions', 465)")
    row = admin.execute("SELECT * FROM add_cert('www.example.org', 'server', 'LE', 'rsa_plus_ec', false, "
                        "'example.org', 'https', 443, 'web1.example.org', NULL, 'nginx')").fetchone()
    assert row[1] == "www.example.org"
    admin.execute("SELECT add_altname('www.example.org', 'www2.example.org')")
    admin.execute("SELECT add_service('www.example.org', 'smtp', 25)")
    admin.execute("SELECT add_target('www.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    admin.execute("SELECT disable_cert('www.example.org')")
    assert conn.execute("SELECT disabled FROM certificates").fetchone()[0] is True
    admin.execute("SELECT enable_cert('www.example.org')")
    assert len(admin.execute("SELECT * FROM certs").fetchall()) == 2 * 2 * 2   # alt names × services × targets

    # the validation triggers run with the admin's rights and still answer with our SQLSTATE
    assert_refused_as(admin, conn, "SELECT add_jail('www', 'web1.example.org')", sqlstate="SP007", match="jailroot")
    assert_refused_as(admin, conn, "SELECT remove_place('nginx')", sqlstate="SP010")

    admin.execute("SELECT remove_target('www.example.org', 'jailhost.example.org', 'mail', 'nginx')")
    admin.execute("SELECT remove_service('www.example.org', 'smtp', 25)")
    admin.execute("SELECT remove_altname('www.example.org', 'www2.example.org')")
    admin.execute("SELECT remove_cert('www.example.org')")
    admin.execute("SELECT remove_place('nginx')")
    admin.execute("SELECT remove_jail('mail')")
    admin.execute("SELECT remove_disthost('web1.example.org')")
    admin.execute("SELECT remove_disthost('jailhost.example.org')")
    admin.execute("SELECT remove_tlsa_service('submissions', 465)")
    for table in ("certificates", "subjects", "disthosts", "jails", "places", "targets", "certificates_services"):
        assert conn.execute(f"SELECT count(*) FROM pki.{table}").fetchone()[0] == 0, table


def test_admin_manages_configuration_with_plain_sql(conn, login_as):
    admin = login_as("pki_admin")
    admin.execute("INSERT INTO disthosts (fqdn, jailroot) VALUES ('host-with-jails.on.domain', '/usr/jails')")
    host = admin.execute("SELECT id FROM disthosts WHERE fqdn = 'host-with-jails.on.domain'").fetchone()[0]
    admin.execute("INSERT INTO jails (name, disthost) VALUES ('my_service_jail', %s)", (host,))
    admin.execute("UPDATE disthosts SET remarks = 'rack 4' WHERE id = %s", (host,))
    assert admin.execute("DELETE FROM jails WHERE name = 'my_service_jail'").rowcount == 1
    assert admin.execute("DELETE FROM disthosts WHERE id = %s", (host,)).rowcount == 1

    assert admin.execute("UPDATE settings SET value = '21' WHERE name = 'pre_publish_days'").rowcount == 1
    assert conn.execute("SELECT value FROM settings WHERE name = 'pre_publish_days'").fetchone()[0] == "21"
    # a plain-SQL mistake by the admin is refused by the triggers with our SQLSTATE, not by privileges
    assert_refused_as(admin, conn, "UPDATE settings SET value = 'soon' WHERE name = 'pre_publish_days'", sqlstate="SP011")
    # a setting's name is not the admin's to change (column privileges: value and remarks only)
    assert_denied(admin, "UPDATE settings SET name = 'x' WHERE name = 'pre_publish_days'")
    assert_denied(admin, "INSERT INTO settings (name, kind, value, description) VALUES ('x', 'text', 'y', 'z')")


def test_admin_never_reads_a_key(conn, login_as, populated):
    admin = login_as("pki_admin")
    assert_denied(admin, "SELECT key FROM certkeydata")
    assert_denied(admin, "SELECT * FROM certkeydata")
    assert_denied(admin, "SELECT count(*) FROM certkeydata WHERE key IS NOT NULL")
    assert_denied(admin, "SELECT k FROM certkeydata k")   # the whole row, key included
    # everything else of the pair is the admin's to see
    row = admin.execute("SELECT certinstance, encryption_algo, hash, not_before < not_after FROM certkeydata").fetchone()
    assert row[:2] == (populated["instance"], "rsa") and len(row[2]) == 64 and row[3] is True
    for view in REPORT_VIEWS:
        admin.execute(f"SELECT * FROM {view}").fetchall()
    # nor may the admin write key material
    before = snapshot(conn)
    assert_denied(admin, "UPDATE certkeydata SET key = NULL")
    assert_denied(admin, "DELETE FROM certkeydata")
    assert snapshot(conn) == before


def test_admin_removes_a_certificate_with_instances(conn, login_as, populated):
    """remove_cert cascades to instances and key pairs the admin cannot touch itself."""
    admin = login_as("pki_admin")
    admin.execute("SELECT remove_cert('www.example.org')")
    for table in ("certificates", "subjects", "targets", "certinstances", "certkeydata"):
        assert conn.execute(f"SELECT count(*) FROM pki.{table}").fetchone()[0] == 0, table
