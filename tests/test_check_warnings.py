"""-n's warnings (pki.check_warnings): what does not stop serverPKI but will hurt. Current ACME practice
(issue 15, item 7): OCSP Must-Staple on an LE certificate, a prepublish window that does not fit the
ACME CA's certificate lifetime (Let's Encrypt moves to 45 days) or its TLSA rollover, and a local CA
that ends before the certificates it signs. Each hint is SQL that, run as the cron role, ends its warning."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from certfactory import LOCAL_CA_NAME, local_ca_instance, pem, shared_ca
from helpers import owner_conn
from serverpki.operate import app

WARNINGS = "SELECT certificate, warning, hint FROM check_warnings(%s)"


def warnings(conn, only: list[str] | None = None) -> list[tuple[str, str, str]]:
    sel = conn.execute("SELECT selection(false, '{}', '{}', %s)", (only or [],)).fetchone()[0] if only else None
    return conn.execute(WARNINGS, (sel,)).fetchall()


def add_le(conn, name: str, must_staple: bool = False, service: tuple[str, int] | None = ("https", 443)) -> None:
    conn.execute("SELECT * FROM add_cert(%s, 'server', 'LE', 'ec', %s, NULL, %s, %s::int, NULL, NULL, NULL)",
                 (name, must_staple, *(service or (None, None))))


def stored_instance(conn, name: str, not_before: dt.datetime, lifetime: dt.timedelta) -> int:
    """An issued instance of the certificate name, valid from not_before for lifetime to the second
    (a self-signed certificate: only its validity matters here)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before)
            .not_valid_after(not_before + lifetime).sign(key, hashes.SHA256()))
    owner = owner_conn(conn)   # instances and their certificates are the owner's functions' to write
    inst = owner.execute("INSERT INTO certinstances (certificate, state) VALUES (cert_id(%s), 'reserved') RETURNING id",
                         (name,)).fetchone()[0]
    owner.execute("INSERT INTO certkeydata (certinstance, encryption_algo, cert) VALUES (%s, 'ec', %s)",
                  (inst, pem(cert).encode()))
    owner.execute("UPDATE certinstances SET state = 'issued' WHERE id = %s", (inst,))
    return inst


def set_setting(conn, name: str, value: str) -> None:
    conn.execute("UPDATE settings SET value = %s WHERE name = %s", (value, name))


def test_a_sound_configuration_has_no_warnings(conn):
    add_le(conn, "www.example.org")
    # Must-Staple on a local certificate: the local CA issues it, no ACME CA refuses it
    conn.execute("SELECT * FROM add_cert('c1', 'client', 'local', 'ec', true, NULL, NULL, NULL, NULL, NULL, NULL)")
    stored_instance(conn, "www.example.org", dt.datetime.now(dt.timezone.utc), dt.timedelta(days=90, seconds=-1))
    assert warnings(conn) == []


def test_must_staple_on_an_le_certificate_is_a_warning_whose_hint_ends_it(conn):
    add_le(conn, "staple.example.org", must_staple=True)
    add_le(conn, "plain.example.org")
    [(obj, warning, hint)] = warnings(conn)
    assert obj == "staple.example.org"
    assert "OCSP Must-Staple" in warning
    assert "refuses since May 2025" in warning
    assert hint == "UPDATE certificates SET ocsp_must_staple = false WHERE id = cert_id('staple.example.org')"
    assert warnings(conn, only=["plain.example.org"]) == [], "the selection limits the warnings"
    conn.execute(hint)   # as pki_cron (pki_admin): the fix works with the operator's rights
    assert warnings(conn) == []


def test_45_day_certificates_cap_pre_publish_days_say_to_how_many(conn):
    add_le(conn, "www.example.org")
    set_setting(conn, "acme_lifetime_days", "45")   # no instance yet: the setting is the CA's lifetime
    [(obj, warning, hint)] = warnings(conn)
    assert obj == "pre_publish_days"
    assert warning.startswith("30 days are more than a third of the 45-day lifetime of the ACME CA's certificates "
                              "(acme_lifetime_days): the scheduler caps the window to 15 days")
    assert hint.startswith("UPDATE settings SET value = '15' WHERE name = 'pre_publish_days'")
    conn.execute(hint.split(" (")[0])
    assert warnings(conn) == []


def test_the_lifetime_is_the_latest_le_instances(conn):
    """What the CA issued last wins over the setting: a 45-day instance after 90-day ones; Let's
    Encrypt's 90 days less a second are 90 days."""
    add_le(conn, "www.example.org")
    now = dt.datetime.now(dt.timezone.utc)
    stored_instance(conn, "www.example.org", now - dt.timedelta(days=60), dt.timedelta(days=90, seconds=-1))
    assert warnings(conn) == []
    stored_instance(conn, "www.example.org", now - dt.timedelta(days=1), dt.timedelta(days=45, seconds=-1))
    [(obj, warning, _)] = warnings(conn)
    assert obj == "pre_publish_days"
    assert "45-day lifetime of the ACME CA's certificates (of the LE certificate it issued last)" in warning


def test_a_tlsa_ttl_too_long_for_the_window_is_a_warning_per_certificate(conn):
    """45-day certificates: the window is 15 days; 2 x a 10-day TTL plus a scheduler interval does not fit."""
    conn.execute("SELECT add_tlsa_service('slow', 8443, '_8443._tcp.{}. 864000 IN TLSA 3 0 1')")
    add_le(conn, "slow.example.org", service=("slow", 8443))
    add_le(conn, "fast.example.org")
    set_setting(conn, "acme_lifetime_days", "45")
    set_setting(conn, "pre_publish_days", "15")
    [(obj, warning, hint)] = warnings(conn)
    assert obj == "slow.example.org"
    assert warning.startswith("its TLSA rollover cannot complete before its active instance expires: the successor "
                              "is issued 15 days before (pre_publish_days)"), warning
    assert "2 x its TLSA TTL (10 days)" in warning and "(schedule_stale, 03:00:00) need 20 days 03:00:00" in warning
    # (15 days - 3 hours) / 2 in seconds: raising pre_publish_days cannot help, the cap is 15 days
    assert hint.startswith("lower the TTL of its TLSA services to 642600 seconds or less"), hint
    conn.execute("UPDATE services SET tlsaprefix = '_8443._tcp.{}. 642600 IN TLSA 3 0 1' WHERE name = 'slow'")
    assert warnings(conn) == []


def test_a_short_pre_publish_window_names_the_days_it_needs(conn):
    """A one-day TTL: 2 days and a scheduler interval; pre_publish_days 1 is too short, 3 fits."""
    conn.execute("SELECT add_tlsa_service('day', 8443, '_8443._tcp.{}. 86400 IN TLSA 3 0 1')")
    add_le(conn, "day.example.org", service=("day", 8443))
    set_setting(conn, "pre_publish_days", "1")
    [(obj, warning, hint)] = warnings(conn)
    assert obj == "day.example.org" and "the successor is issued 1 days before" in warning
    assert hint == "raise pre_publish_days: UPDATE settings SET value = '3' WHERE name = 'pre_publish_days'"
    conn.execute(hint.split(": ", 1)[1])
    assert warnings(conn) == []


def test_a_local_ca_ending_before_its_certificates_would_is_a_warning(conn):
    """The test local CA ends in December 2099: half a year before, a certificate issued now, which would live
    375 days as the last one did, ends with the CA."""
    local_ca_instance(conn)
    _, ca = shared_ca(LOCAL_CA_NAME)
    conn.execute("SELECT * FROM add_cert('c1', 'client', 'local', 'ec', false, NULL, NULL, NULL, NULL, NULL, NULL)")
    stored_instance(conn, "c1", dt.datetime(2098, 1, 1, tzinfo=dt.timezone.utc), dt.timedelta(days=375))
    assert warnings(conn) == []   # today the CA outlives anything it signs
    conn.execute("SET pki.now = '2099-06-08 00:00:00+00'")
    [(obj, warning, hint)] = warnings(conn)
    assert obj == "local CA"
    assert warning == (f"it expires {ca.not_valid_after_utc:%Y-%m-%d %H:%M:%S}+00: a local certificate issued now ends "
                       "with it, after 182 days, though the last one issued lives 375 days"), warning
    assert hint == "issue a new local CA with operate_serverPKI -I, then the local certificates with operate_serverPKI -C"
    assert warnings(conn, only=["c1"]) != [] and conn.execute(
        "SELECT count(*) FROM check_warnings(selection(false, '{}', ARRAY['c1']))").fetchone()[0] == 0, \
        "without a local certificate in the selection, the local CA is no warning"
    conn.execute("SET pki.now = '2100-01-01 00:00:00+00'")
    assert warnings(conn)[0][1].startswith("it expired ")


# ------------------------------------------------------------------------------ operate_serverPKI -n

@pytest.fixture
def env(pg_server, dbname, tmp_path):
    config = tmp_path / "serverpki.toml"
    config.write_text('[logging]\nsyslog_address = ""\n[paths]\nwork_dir = "work"\n')
    return {**pg_server.env(dbname), "SERVERPKI_CONFIG": str(config)}


def test_check_only_prints_warnings_and_exits_0(env, conn):
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_place('nginx', 'separate', '/etc/ssl')")
    conn.execute("SELECT * FROM add_cert('staple.example.org', 'server', 'LE', 'ec', true, NULL, 'https', 443, "
                 "'web1.example.org', NULL, 'nginx')")
    set_setting(conn, "acme_lifetime_days", "45")
    result = CliRunner().invoke(app, ["-n"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert ("warning: staple.example.org: asks for OCSP Must-Staple, which Let's Encrypt refuses since May 2025: its "
            "orders fail (unless another ACME CA still accepts it); fix: UPDATE certificates SET ocsp_must_staple = "
            "false WHERE id = cert_id('staple.example.org')") in lines, lines
    assert any(line.startswith("warning: pre_publish_days: 30 days are more than a third of the 45-day lifetime")
               and "caps the window to 15 days" in line for line in lines), lines
