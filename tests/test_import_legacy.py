"""serverpki db import-legacy: a serverPKI 0.9.x database, made from the ORIGINAL's own SQL files (taken
from the serverPKI 0.9.11 wheel, downloaded from PyPI once per session) and filled with rows in the
original's own shape (traditional PEM keys, DEK-Info encrypted under the whole content of a passphrase
file), is imported into ours: ids, states, CA links, keys, the account; refusals; one transaction;
idempotency; and the seed's command line on the result (-n -v -a, -E).
tests/legacy.py (another harness) runs the original program itself; this one needs only its schema."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

import certfactory
from commands import OPERATE, SERVERPKI, environment, run
from helpers import snapshot
from lab import roles
from legacy import legacy_db, listing_tables  # noqa: F401  (legacy_db: the session fixture; the real original made the data)

PASSPHRASE = b"the original's db_encryption_key, a line of ssh-keygen output\n"   # whole content, newline too
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
SQL_FILES = ("create_schema_dd.sql", "create_extension_citext.sql", "create_schema_pki.sql", "create_triggers_pki.sql")


@pytest.fixture(scope="session")
def legacy_sql(tmp_path_factory) -> dict[str, str]:
    """The original's schema files, from the serverPKI 0.9.11 wheel on PyPI."""
    folder = tmp_path_factory.mktemp("serverpki-0.9.11")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
                    "-d", str(folder), "serverPKI==0.9.11"], check=True, timeout=300)
    wheel = next(folder.glob("serverPKI-0.9.11-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        return {Path(n).name: zf.read(n).decode() for n in zf.namelist()
                if n.startswith("serverPKI-0.9.11.data/data/share/serverPKI/db/") and n.endswith(".sql")}


def secret(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def traditional(key, passphrase: bytes | None) -> bytes:
    """A key as the original stored it: traditional OpenSSL PEM, DEK-Info encrypted when a passphrase is given."""
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, enc)


def ca_pair(name: str) -> tuple:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - dt.timedelta(days=400))
            .not_valid_after(NOW + dt.timedelta(days=3000))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(key, hashes.SHA256()))
    return key, cert


def leaf(name: str, sans: list[str], algo: str, start: dt.datetime, days: int, ca) -> tuple:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if algo == "rsa" else ec.generate_private_key(ec.SECP256R1())
    made = certfactory.make_leaf(name, sans, algo, start, days, ca[0], ca[1].subject, key=key)
    return key, made["cert"].encode()


class Legacy:
    """A serverPKI 0.9.x database in our test cluster, with what the tests expect of it."""

    def __init__(self, pg_server, sql: dict[str, str], encrypted: bool = True, passphrase: bytes = PASSPHRASE):
        self.pg_server, self.name = pg_server, f"legacy_{uuid.uuid4().hex[:10]}"
        self.passphrase = passphrase if encrypted else None
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.name}")
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'serverPKI'").fetchone() is None:
                try:   # the original's GRANTs name it; LOGIN: tests/legacy.py runs the original as it
                    conn.execute('CREATE ROLE "serverPKI" LOGIN')
                except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                    pass    # another xdist worker made it in the meantime: it is cluster-wide
        self.dsn = pg_server.dsn(self.name)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for name in SQL_FILES:
                conn.execute(sql[name])
            # the original's fresh install says 5 where 0.9.11 expects 6 (the issue); its placeholder
            # certificate 1 "No cert" with instance 1 is there, as in every 0.9.x database
            conn.execute("UPDATE pki.revision SET schemaversion = 6, keysencrypted = %s", (encrypted,))
            self.fill(conn)

    def fill(self, conn) -> None:
        """Rows in the original's own shape: ids with gaps, a local CA, Let's Encrypt's intermediate, an
        rsa_plus_ec certificate, jails, a place our validation refuses, a reserved instance without keys."""
        x = conn.execute
        x("INSERT INTO pki.disthosts (id, fqdn, jailroot) VALUES (1, 'web.example.org', '/usr/jails'), (2, 'mail.example.org', NULL)")
        x("INSERT INTO pki.jails (id, name, disthost) VALUES (1, 'www', 1)")
        x("INSERT INTO pki.places (id, name, cert_file_type, cert_path, key_path, mode) VALUES "
          "(1, 'nginx', 'separate', '/usr/local/etc/nginx/ssl', NULL, NULL), "
          "(2, 'postfix', 'combine both', '/usr/local/etc/postfix/ssl', NULL, 288), "
          "(3, 'world-readable', 'separate', '/etc/ssl', NULL, 420)")   # 0644: ours refuses a key others can read
        x("INSERT INTO pki.services (id, name, port, tlsaprefix) VALUES (1, 'https', 443, '_443._tcp.{}. 3600 IN TLSA 3 0 1'), "
          "(2, 'xmpp', 5222, '_5222._tcp.{}. 3600 IN TLSA 3 0 1')")
        x("INSERT INTO pki.certificates (id, type, disabled, authorized_until, encryption_algo) VALUES "
          "(3, 'local', false, NULL, 'rsa'), (4, 'LE', false, NULL, 'rsa'), (5, 'local', false, NULL, 'rsa'), "
          "(6, 'LE', true, '2031-01-02 03:04:05', 'rsa_plus_ec')")
        x("INSERT INTO pki.subjects (type, name, isaltname, certificate) VALUES ('CA', 'Local CA', false, 3), "
          "('CA', 'Let''s Encrypt CA', false, 4), ('server', 'www.example.org', false, 5), ('server', 'example.org', true, 5), "
          "('server', 'mail.example.org', false, 6)")
        x("INSERT INTO pki.certificates_services VALUES (5, 1), (6, 2)")
        x("INSERT INTO pki.targets (disthost, jail, place, certificate) VALUES (1, 1, 1, 5), (2, NULL, 2, 6), (2, NULL, 3, 6)")
        self.local_ca, self.le_ca = ca_pair("Local CA"), ca_pair("Let's Encrypt CA")
        pem = lambda c: c.public_bytes(serialization.Encoding.PEM)
        self.keys: dict[tuple[int, str], object] = {}
        instances = [  # id, certificate, state, cacert, pairs [(algo, key, cert)]
            (3, 3, "issued", 3, [("rsa", self.local_ca[0], pem(self.local_ca[1]))]),
            (4, 4, "issued", 4, [("rsa", None, pem(self.le_ca[1]))]),
            (5, 5, "expired", 3, [("rsa", *leaf("www.example.org", ["www.example.org", "example.org"], "rsa",
                                                 NOW - dt.timedelta(days=500), 365, self.local_ca))]),
            (7, 5, "deployed", 3, [("rsa", *leaf("www.example.org", ["www.example.org", "example.org"], "rsa",
                                                 NOW - dt.timedelta(days=10), 365, self.local_ca))]),
            (9, 6, "deployed", 4, [(a, *leaf("mail.example.org", ["mail.example.org"], a, NOW - dt.timedelta(days=5), 90,
                                              self.le_ca)) for a in ("rsa", "ec")]),
            (10, 6, "reserved", 4, []),
        ]
        self.instances = {}
        for iid, cert, state, cacert, pairs in instances:
            x("INSERT INTO pki.certinstances (id, certificate, state, cacert) VALUES (%s, %s, %s, %s)", (iid, cert, state, cacert))
            self.instances[iid] = (cert, state, cacert)
            for algo, key, cert_pem in pairs:
                self.keys[(iid, algo)] = key
                x("INSERT INTO pki.certkeydata (certinstance, encryption_algo, cert, key, hash) VALUES (%s, %s, %s, %s, %s)",
                  (iid, algo, cert_pem, traditional(key, self.passphrase) if key else b"",
                   hashlib.sha256(x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)).hexdigest()))
        x("SELECT setval('pki.certinstances_id_seq', 10)")

    def drop(self) -> None:
        self.pg_server.drop_database(self.name)


@pytest.fixture
def legacy(pg_server, legacy_sql):
    db = Legacy(pg_server, legacy_sql)
    yield db
    db.drop()


def import_legacy(pg_server, dbname, legacy_db, tmp_path, *extra: str, role: str | None = None) -> subprocess.CompletedProcess:
    """serverpki db import-legacy as the schema owner (the installer's role), the passphrase file given."""
    env = environment(pg_server, dbname, role)
    args = ["db", "import-legacy", "--from", legacy_db.dsn, *extra]
    if legacy_db.passphrase and "--passphrase-file" not in extra:
        args += ["--passphrase-file", str(secret(tmp_path / "db_encryption_key", legacy_db.passphrase))]
    return run(SERVERPKI, *args, env=env)


def test_import_keeps_ids_states_ca_links_and_keys(pg_server, dbname, owner, legacy, tmp_path):
    account = {"key": traditional(ec.generate_private_key(ec.SECP256R1()), None).decode(),
               "uri": "https://acme-v02.api.letsencrypt.org/acme/acct/12345"}
    result = import_legacy(pg_server, dbname, legacy, tmp_path,
                           "--account-file", str(secret(tmp_path / "account.json", json.dumps(account).encode())))
    assert result.returncode == 0, result.stderr
    rows = {r[0]: r[1:] for r in owner.execute(
        "SELECT id, certificate, state::text, cacert FROM pki.certinstances ORDER BY id").fetchall()}
    # the reserved instance without a certificate is left behind (reported); the self-signed CAs link to none
    assert rows == {3: (3, "issued", None), 4: (4, "issued", None), 5: (5, "expired", 3), 7: (5, "deployed", 3),
                    9: (6, "deployed", 4)}
    assert "instance 10 of certificate 6: reserved without a stored certificate" in result.stdout
    assert "certificate 1 (No cert): the original's placeholder" in result.stdout
    assert "place world-readable: SP011" in result.stdout
    counts = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:12]}
    assert counts["certinstances"] == ["7", "5"] and counts["certkeydata"] == ["6", "6"] and counts["places"] == ["3", "2"]
    dates = owner.execute("SELECT not_after FROM pki.certinstances WHERE id = 7").fetchone()[0]
    assert abs(dates - (NOW - dt.timedelta(days=10) + dt.timedelta(days=365))) < dt.timedelta(seconds=1)
    assert owner.execute("SELECT disabled, authorized_until, encryption_algo::text FROM pki.certificates WHERE id = 6").fetchone() == \
        (True, dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "rsa_plus_ec")
    assert owner.execute("SELECT count(*) FROM pki.targets").fetchone()[0] == 2
    assert owner.execute("SELECT s.name::text FROM pki.certificates_services cs JOIN pki.services s ON s.id = cs.service "
                         "WHERE cs.certificate = 6").fetchone() == ("xmpp",)
    # ours keeps keys encrypted now, as the original did; every key opens with the same passphrase and matches
    assert owner.execute("SELECT keysencrypted FROM pki.revision").fetchone() == (True,)
    for iid, algo, key in owner.execute("SELECT certinstance, encryption_algo::text, key FROM pki.certkeydata").fetchall():
        expected = legacy.keys[(iid, algo)]
        if expected is None:
            assert key is None
            continue
        assert bytes(key).startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        opened = serialization.load_pem_private_key(bytes(key), PASSPHRASE)
        assert opened.private_numbers() == expected.private_numbers()
    assert owner.execute("SELECT uri FROM pki.acme_accounts").fetchone() == (account["uri"],)
    # new rows get ids past the kept ones
    assert owner.execute("SELECT nextval('pki.certinstances_id_seq')").fetchone()[0] > 10
    events = owner.execute("SELECT DISTINCT reason FROM pki.events WHERE instance = 9").fetchall()
    assert events == [("imported from serverPKI 0.9.x (serverpki db import-legacy)",)]


def test_second_run_changes_nothing_and_reports_the_same(pg_server, dbname, owner, legacy, tmp_path):
    first = import_legacy(pg_server, dbname, legacy, tmp_path)
    assert first.returncode == 0, first.stderr
    before = snapshot(owner)
    events = owner.execute("SELECT count(*) FROM pki.events").fetchone()
    second = import_legacy(pg_server, dbname, legacy, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert snapshot(owner) == before
    assert owner.execute("SELECT count(*) FROM pki.events").fetchone() == events


def test_unknown_schema_version_is_refused_by_name(pg_server, dbname, owner, legacy, tmp_path):
    with psycopg.connect(legacy.dsn, autocommit=True) as conn:
        conn.execute("UPDATE pki.revision SET schemaversion = 9")
    result = import_legacy(pg_server, dbname, legacy, tmp_path)
    assert result.returncode == 3
    assert "schema version 9 is not one this importer knows" in result.stderr
    assert owner.execute("SELECT count(*) FROM pki.certificates").fetchone() == (0,)


def test_a_target_with_certificates_is_refused_unless_forced(pg_server, dbname, owner, legacy, tmp_path):
    owner.execute("UPDATE pki.revision SET keysencrypted = true")   # as the encrypted legacy keys need (-X, no keys yet)
    for name in ("own1.example.net", "own2.example.net", "own3.example.net"):   # ids 1 to 3: 3 is a legacy id
        owner.execute("SELECT pki.add_cert(%s, 'server', 'local', 'rsa', false, NULL, NULL, NULL, NULL, NULL, NULL)", (name,))
    before = snapshot(owner)
    result = import_legacy(pg_server, dbname, legacy, tmp_path)
    assert result.returncode == 1
    assert "holds certificates of its own" in result.stderr and "own1.example.net" in result.stderr
    assert snapshot(owner) == before
    clash = import_legacy(pg_server, dbname, legacy, tmp_path, "--force")
    assert clash.returncode == 1 and "certificate 3 (Local CA): the target holds certificate 3" in clash.stderr
    assert snapshot(owner) == before
    owner.execute("SELECT pki.remove_cert('own3.example.net')")
    forced = import_legacy(pg_server, dbname, legacy, tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    names = [r[0] for r in owner.execute("SELECT name::text FROM pki.subjects WHERE NOT isaltname ORDER BY certificate")]
    assert names == ["own1.example.net", "own2.example.net", "Local CA", "Let's Encrypt CA", "www.example.org", "mail.example.org"]


def test_a_key_that_does_not_open_leaves_the_target_unchanged(pg_server, dbname, owner, legacy, tmp_path):
    with psycopg.connect(legacy.dsn, autocommit=True) as conn:
        conn.execute("UPDATE pki.certkeydata SET key = %s WHERE certinstance = 9 AND encryption_algo = 'ec'",
                     (traditional(legacy.keys[(9, "ec")], b"another passphrase"),))
    before = snapshot(owner)
    result = import_legacy(pg_server, dbname, legacy, tmp_path)
    assert result.returncode == 1
    assert "the ec key of instance 9: wrong passphrase" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert PASSPHRASE.decode().strip() not in result.stderr + result.stdout
    assert snapshot(owner) == before


def test_only_the_schema_owner_may_import(pg_server, dbname, owner, legacy, tmp_path):
    before = snapshot(owner)
    result = import_legacy(pg_server, dbname, legacy, tmp_path, role=roles.CRON)
    assert result.returncode == 1
    assert "run it as the schema owner" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(owner) == before


def test_clear_keys_stay_clear_in_a_clear_target(pg_server, dbname, owner, legacy_sql, tmp_path):
    clear = Legacy(pg_server, legacy_sql, encrypted=False)
    try:
        with psycopg.connect(clear.dsn, autocommit=True) as conn:   # what upgrade_to_5.sql did to a database it upgraded
            conn.execute("ALTER TYPE dd.cert_encryption_algo RENAME VALUE 'rsa_plus_ec' TO 'rsa plus ec'")
        result = import_legacy(pg_server, dbname, clear, tmp_path)
        assert result.returncode == 0, result.stderr
        assert owner.execute("SELECT encryption_algo::text FROM pki.certificates WHERE id = 6").fetchone() == ("rsa_plus_ec",)
        key = owner.execute("SELECT key FROM pki.certkeydata WHERE certinstance = 7").fetchone()[0]
        assert bytes(key).startswith(b"-----BEGIN PRIVATE KEY-----")
        assert owner.execute("SELECT keysencrypted FROM pki.revision").fetchone() == (False,)
        assert "the local CA's key (instance 3) is stored in clear" in result.stdout
    finally:
        clear.drop()


def test_the_seed_lists_exports_and_signs_with_the_imported_ca(pg_server, dbname, owner, legacy, tmp_path):
    assert import_legacy(pg_server, dbname, legacy, tmp_path).returncode == 0
    env = environment(pg_server, dbname, roles.CRON, seed_config(tmp_path))
    listing = run(OPERATE, "-n", "-v", "-a", env=env)
    assert listing.returncode in (0, 4), listing.stderr
    for name in ("Local CA", "www.example.org", "mail.example.org"):
        assert name in listing.stdout
    for serial in (3, 4, 5, 7, 9):
        assert any(line.split() and str(serial) in line.split() for line in listing.stdout.splitlines()), serial
    export = run(OPERATE, "-E", "7", env=env)
    assert export.returncode == 0, export.stderr
    exported = (tmp_path / "work" / "key-7-rsa.pem").read_bytes()
    assert serialization.load_pem_private_key(exported, None).private_numbers() == legacy.keys[(7, "rsa")].private_numbers()
    # -C signs with the original's local CA, whose key was stored under the local CA passphrase
    issued = run(OPERATE, "-C", "-o", "www.example.org", env=env)
    assert issued.returncode == 0, issued.stderr
    new, cacert, cert = owner.execute(
        "SELECT i.id, i.cacert, k.cert FROM pki.certinstances i JOIN pki.certkeydata k ON k.certinstance = i.id "
        "WHERE i.certificate = 5 AND i.id > 10").fetchone()
    assert cacert == 3
    legacy.local_ca[1].public_key().verify(
        x509.load_pem_x509_certificate(bytes(cert)).signature, x509.load_pem_x509_certificate(bytes(cert)).tbs_certificate_bytes,
        padding.PKCS1v15(), x509.load_pem_x509_certificate(bytes(cert)).signature_hash_algorithm)


def test_encrypted_legacy_keys_are_not_stored_in_clear_beside_certificates(pg_server, dbname, owner, legacy, tmp_path):
    for name in ("own1.example.net", "own2.example.net"):   # keys in clear, certificates of its own: --force
        owner.execute("SELECT pki.add_cert(%s, 'server', 'local', 'rsa', false, NULL, NULL, NULL, NULL, NULL, NULL)", (name,))
    before = snapshot(owner)
    result = import_legacy(pg_server, dbname, legacy, tmp_path, "--force")
    assert result.returncode == 1, result.stdout
    assert "operate_serverPKI -X" in result.stderr and "empty database" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(owner) == before


def test_our_passphrase_is_proven_on_the_targets_keys_before_a_key_is_written(pg_server, dbname, owner, legacy,
                                                                                  legacy_sql, tmp_path):
    assert import_legacy(pg_server, dbname, legacy, tmp_path).returncode == 0   # ours: encrypted under PASSPHRASE
    other = Legacy(pg_server, legacy_sql, passphrase=b"another installation's db_encryption_key\n")
    try:
        before = snapshot(owner)
        (tmp_path / "other").mkdir()
        result = import_legacy(pg_server, dbname, other, tmp_path / "other")
        assert result.returncode == 1, result.stdout
        assert "--passphrase-file" in result.stderr and "wrong passphrase, it does not open the target's stored key" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert snapshot(owner) == before
    finally:
        other.drop()


def seed_config(tmp_path: Path) -> Path:
    """Our configuration for the imported data: the original's passphrase file for the keys and the local CA."""
    (tmp_path / "work").mkdir(exist_ok=True)
    config = tmp_path / "serverpki.toml"
    config.write_text(f'[paths]\nwork_dir = "{tmp_path / "work"}"\n'
                      f'db_encryption_key = "{tmp_path / "db_encryption_key"}"\n'
                      f'[local_ca]\nname = "Local CA"\npassphrase_file = "{tmp_path / "db_encryption_key"}"\n')
    return config


def test_the_first_cron_run_distributes_nothing_the_original_had_deployed(pg_server, dbname, owner, legacy, tmp_path):
    with psycopg.connect(legacy.dsn, autocommit=True) as conn:   # the local CA's certificate on the mail host
        conn.execute("INSERT INTO pki.targets (disthost, jail, place, certificate) VALUES (2, NULL, 2, 3)")
    result = import_legacy(pg_server, dbname, legacy, tmp_path)
    assert result.returncode == 0, result.stderr
    deployed = owner.execute("SELECT d.instance, t.certificate FROM pki.deployments d JOIN pki.targets t ON t.id = d.target "
                             "WHERE d.job IS NULL ORDER BY 1").fetchall()
    assert deployed == [(3, 3), (7, 5), (9, 6)]
    plan = run(OPERATE, "-S", "-n", "-a", env=environment(pg_server, dbname, roles.CRON, seed_config(tmp_path)))
    assert plan.returncode in (0, 4), plan.stderr
    planned = [line for line in plan.stdout.splitlines() if "distribute" in line]
    assert not [line for line in planned if any(name in line for name in ("Local CA", "www.example.org", "mail.example.org"))], \
        plan.stdout


def test_an_older_instance_left_deployed_is_imported_as_expired(pg_server, dbname, owner, legacy, tmp_path):
    with psycopg.connect(legacy.dsn, autocommit=True) as conn:   # 0.9.11 expires it on its next run only
        conn.execute("UPDATE pki.certinstances SET state = 'deployed' WHERE id = 5")
    result = import_legacy(pg_server, dbname, legacy, tmp_path)
    assert result.returncode == 0, result.stderr
    assert owner.execute("SELECT id, state::text FROM pki.certinstances WHERE certificate = 5 ORDER BY id").fetchall() == \
        [(5, "expired"), (7, "deployed")]
    assert "instance 5 of certificate 5: deployed beside the newer instance 7; imported as expired" in result.stdout
    again = import_legacy(pg_server, dbname, legacy, tmp_path)
    assert again.returncode == 0 and again.stdout == result.stdout


def test_the_account_is_stored_for_the_directory_its_uri_names(pg_server, dbname, owner, legacy, tmp_path):
    staging = "https://acme-staging-v02.api.letsencrypt.org"
    account = {"key": traditional(ec.generate_private_key(ec.SECP256R1()), None).decode(), "uri": f"{staging}/acme/acct/67890"}
    account_file = str(secret(tmp_path / "account.json", json.dumps(account).encode()))
    before = snapshot(owner)
    refused = import_legacy(pg_server, dbname, legacy, tmp_path, "--account-file", account_file,
                            "--acme-directory", "https://acme-v02.api.letsencrypt.org/directory")
    assert refused.returncode == 2 and "acme-staging-v02.api.letsencrypt.org" in refused.stderr, refused.stderr
    assert snapshot(owner) == before
    result = import_legacy(pg_server, dbname, legacy, tmp_path, "--account-file", account_file)
    assert result.returncode == 0, result.stderr
    assert owner.execute("SELECT directory_url, uri FROM pki.acme_accounts").fetchall() == \
        [(f"{staging}/directory", account["uri"])]


def test_a_damaged_certificate_stops_the_import_naming_its_instance(pg_server, dbname, owner, legacy, tmp_path):
    with psycopg.connect(legacy.dsn, autocommit=True) as conn:
        conn.execute("UPDATE pki.certkeydata SET cert = %s WHERE certinstance = 7",
                     (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",))
    before = snapshot(owner)
    result = import_legacy(pg_server, dbname, legacy, tmp_path)
    assert result.returncode == 1
    assert "instance 7 (rsa): its stored certificate is damaged" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert snapshot(owner) == before


def test_key_encryption_is_not_switched_on_over_a_stored_account_key(pg_server, dbname, owner, legacy, tmp_path):
    account_key = traditional(ec.generate_private_key(ec.SECP256R1()), None).decode()   # in clear, no certificates
    owner.execute("INSERT INTO pki.acme_accounts (directory_url, key, uri) VALUES (%s, %s, %s)",
                  ("https://acme.example.net/directory", account_key, "https://acme.example.net/acct/1"))
    before = snapshot(owner)
    result = import_legacy(pg_server, dbname, legacy, tmp_path)
    assert result.returncode == 1, result.stdout
    assert "stored keys" in result.stderr and "operate_serverPKI -X" in result.stderr
    assert snapshot(owner) == before
    assert owner.execute("SELECT keysencrypted FROM pki.revision").fetchone() == (False,)


def test_a_place_or_jail_of_the_same_name_with_other_content_is_a_conflict(pg_server, dbname, owner, legacy, tmp_path):
    owner.execute("INSERT INTO pki.places (name, cert_file_type, cert_path) VALUES ('nginx', 'separate', '/etc/nginx/tls')")
    before = snapshot(owner)
    result = import_legacy(pg_server, dbname, legacy, tmp_path)
    assert result.returncode == 1, result.stdout
    assert "place nginx (cert_path='/usr/local/etc/nginx/ssl')" in result.stderr and "'/etc/nginx/tls'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(owner) == before
    owner.execute("DELETE FROM pki.places WHERE name = 'nginx'")
    owner.execute("INSERT INTO pki.disthosts (fqdn, jailroot) VALUES ('other.example.org', '/jails')")
    owner.execute("INSERT INTO pki.jails (name, disthost) SELECT 'www', id FROM pki.disthosts WHERE fqdn = 'other.example.org'")
    jail = import_legacy(pg_server, dbname, legacy, tmp_path)
    assert jail.returncode == 1 and "jail www (disthost=" in jail.stderr, jail.stderr


# ------------------------------------------------------------------ data the real original made (tests/legacy.py)

@pytest.mark.slow
def test_the_real_originals_database_imports_with_its_keys_and_account(pg_server, dbname, owner, legacy_db, tmp_path):
    install = legacy_db.install
    args = ["db", "import-legacy", "--from", legacy_db.dsn, "--passphrase-file", str(install.db_encryption_key)]
    env = environment(pg_server, dbname, None)
    if install.le_account.stat().st_mode & 0o077:   # the original's library wrote it 0644: a secret others read
        refused = run(SERVERPKI, *args, "--account-file", str(install.le_account), env=env)
        assert refused.returncode == 1 and f"chmod 600 {install.le_account}" in refused.stderr
    account_file = secret(tmp_path / "account.json", install.le_account.read_bytes())
    result = run(SERVERPKI, *args, "--account-file", str(account_file), env=env)
    assert result.returncode == 0, result.stderr
    # 0.9.11 issues local certificates with RSA keys only, an 'ec' one too: imported as what it is, and said so
    assert "the original labelled its rsa certificate and key 'ec'" in result.stdout
    passphrase = install.db_encryption_key.read_bytes()
    def algorithm(cert: bytes) -> str:   # what the pair is: 0.9.11 labels an RSA local pair 'ec' (relabelled, see above)
        key = x509.load_pem_x509_certificate(cert).public_key()
        return "ec" if isinstance(key, ec.EllipticCurvePublicKey) else "rsa"

    with psycopg.connect(legacy_db.dsn) as old:
        rows = old.execute("SELECT certinstance, encryption_algo::text, cert, key FROM pki.certkeydata").fetchall()
        states = dict(old.execute("SELECT id, state::text FROM pki.certinstances WHERE id <> 1").fetchall())
    theirs = {(i, algorithm(bytes(c))): (bytes(c), bytes(k)) for i, _, c, k in rows}
    assert len(theirs) == len(rows)   # no instance has two pairs of one real algorithm
    assert dict(owner.execute("SELECT id, state::text FROM pki.certinstances").fetchall()) == states
    ours = {(i, a): (bytes(c), bytes(k)) for i, a, c, k in owner.execute(
        "SELECT certinstance, encryption_algo::text, cert, key FROM pki.certkeydata")}
    assert ours.keys() == theirs.keys()   # every pair, the second of an instance too
    for pair, (cert, key) in theirs.items():
        assert ours[pair][0] == cert, pair
        original = serialization.load_pem_private_key(key, passphrase if b"ENCRYPTED" in key else None)
        imported = serialization.load_pem_private_key(ours[pair][1], passphrase)   # ours encrypted, the CA's too
        assert imported.private_numbers() == original.private_numbers(), pair
    account = json.loads(install.le_account.read_text())
    assert owner.execute("SELECT uri FROM pki.acme_accounts").fetchone() == (account["uri"],)


@pytest.mark.slow
def test_after_the_import_the_listing_is_the_originals(pg_server, dbname, owner, legacy_db, tmp_path):
    """Item 5: `operate_serverPKI -n -v -a` on the imported data prints what the original printed on its own
    (legacy_db.listing, its -n -v -a), row for row, but for what the import says it changes:
      - the original's placeholder certificate "No cert" (id 1, no instance) is not imported;
      - the original links its self-signed CA to itself (CI CA = its own serial); ours, as our -I, to none;
      - the original stores midnight dates; ours are the certificate's own times: the same days;
      - 0.9.11 labels an RSA local certificate 'ec' (its local CA issues RSA only): ours says rsa;
      - updated is the time of the import."""
    install = legacy_db.install
    account_file = secret(tmp_path / "account.json", install.le_account.read_bytes())
    imported = run(SERVERPKI, "db", "import-legacy", "--from", legacy_db.dsn, "--passphrase-file",
                   str(install.db_encryption_key), "--account-file", str(account_file),
                   env=environment(pg_server, dbname, None))
    assert imported.returncode == 0, imported.stderr
    ours = run(OPERATE, "-n", "-v", "-a", env=environment(pg_server, dbname, roles.CRON))
    assert ours.returncode == 0, ours.stderr
    their_certs, their_instances = listing_tables(legacy_db.listing)
    our_certs, our_instances = listing_tables(ours.stdout)

    def rows(table):   # the grid's rows in a stable order (the two sort rows of equal keys differently)
        return sorted(tuple(row.values()) for row in table)

    assert rows(our_certs) == rows([r for r in their_certs if r["Cert Name"] != "No cert"])
    relabelled = {r["Serial"] for r in their_instances if r["ALGO"] == "ec"}
    assert relabelled and all(f"instance {serial}" in imported.stdout for serial in relabelled), imported.stdout
    assert [r["Serial"] for r in our_instances] == [r["Serial"] for r in their_instances]
    for theirs, mine in zip(their_instances, our_instances):
        for column in ("Cert Name", "Type", "State", "OCSP m st", "Hash"):
            assert mine[column] == theirs[column], (theirs["Serial"], column)
        for column in ("not before", "not after"):
            assert mine[column][:10] == theirs[column][:10], (theirs["Serial"], column)
        self_signed = theirs["CI CA"] == theirs["Serial"]
        assert mine["CI CA"] == ("None" if self_signed else theirs["CI CA"]), theirs["Serial"]
        assert mine["ALGO"] == ("rsa" if theirs["Serial"] in relabelled else theirs["ALGO"]), theirs["Serial"]


def test_pairs_keep_the_originals_files_and_a_place_with_a_key_path_comes_as_written(pg_server, dbname, owner, legacy,
                                                                                     tmp_path):
    """0.9.x wrote traditional PEM keys and named files by its label; it wrote a place with a key_path as
    'separate' whatever its type (tests/test_legacy_deploy.py shows it on the real original's files)."""
    with psycopg.connect(legacy.dsn, autocommit=True) as conn:
        conn.execute("UPDATE pki.places SET key_path = '/usr/local/etc/postfix/private' WHERE name = 'postfix'")
        conn.execute("UPDATE pki.certkeydata SET encryption_algo = 'ec' WHERE certinstance = 7")   # as 0.9.11's -C labelled it
    result = import_legacy(pg_server, dbname, legacy, tmp_path)
    assert result.returncode == 0, result.stderr
    assert owner.execute("SELECT cert_file_type::text, key_path FROM pki.places WHERE name = 'postfix'").fetchone() == \
        ("separate", "/usr/local/etc/postfix/private")
    assert "place postfix: cert_file_type 'combine both' with a key_path, which 0.9.x wrote as 'separate'" in result.stdout
    # the LE certificate on that place (target 2 of certificate 6): no chain file there from 0.9.x
    assert "0.9.x wrote no chain file (NAME_cert_cacert_chain.pem) into place postfix" in result.stdout
    pairs = owner.execute("SELECT certinstance, encryption_algo::text, key_file_format, file_name_algo::text "
                          "FROM pki.certkeydata ORDER BY 1, 2").fetchall()
    assert {p[2] for p in pairs} == {"traditional"}
    assert [p for p in pairs if p[3] is not None] == [(7, "rsa", "traditional", "ec")]   # its files keep the ec_ names


# ------------------------------------------------------------------ the flat CA files of versions before 0.9

CA_PASSPHRASE = b"the local CA's passphrase"


def flat_ca_only(legacy: Legacy) -> None:
    """The 0.9 database of an installation upgraded from before 0.9 that never ran -C since: no instance of
    its local CA, whose certificates point to the placeholder instance 1."""
    with psycopg.connect(legacy.dsn, autocommit=True) as conn:
        conn.execute("UPDATE pki.certinstances SET cacert = 1 WHERE cacert = 3 AND id <> 3")
        conn.execute("DELETE FROM pki.certkeydata WHERE certinstance = 3")
        conn.execute("DELETE FROM pki.certinstances WHERE id = 3")


def flat_files(legacy: Legacy, tmp_path: Path, passphrase: bytes | None = CA_PASSPHRASE) -> list[str]:
    key, cert = legacy.local_ca
    cert_file = tmp_path / "ca_cert.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = secret(tmp_path / "ca_key.pem", traditional(key, passphrase))
    return ["--ca-cert-file", str(cert_file), "--ca-key-file", str(key_file)]


def test_a_flat_local_ca_comes_in_as_the_first_c_of_the_original_would_store_it(pg_server, dbname, owner, legacy, tmp_path):
    flat_ca_only(legacy)
    args = [*flat_files(legacy, tmp_path), "--ca-passphrase-file", str(secret(tmp_path / "ca.pass", CA_PASSPHRASE))]
    result = import_legacy(pg_server, dbname, legacy, tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "the local CA 'Local CA' of" in result.stdout and "certificate 3, instance 11; the CA of instances 5, 7" in result.stdout
    assert owner.execute("SELECT i.id, i.state::text, s.name::text FROM pki.certinstances i JOIN pki.subjects s "
                         "USING (certificate) WHERE s.type = 'CA' AND i.certificate = 3").fetchall() == [(11, "issued", "Local CA")]
    assert dict(owner.execute("SELECT id, cacert FROM pki.certinstances WHERE id IN (5, 7)").fetchall()) == {5: 11, 7: 11}
    stored = owner.execute("SELECT convert_from(key, 'UTF8') FROM pki.certkeydata WHERE certinstance = 11").fetchone()[0]
    assert serialization.load_pem_private_key(stored.encode(), CA_PASSPHRASE).private_numbers() == \
        legacy.local_ca[0].private_numbers()   # stored under the CA's passphrase, ours
    again = import_legacy(pg_server, dbname, legacy, tmp_path, *args)
    assert again.returncode == 0 and again.stdout == result.stdout, again.stderr


def test_flat_ca_files_that_do_not_fit_are_refused_naming_why(pg_server, dbname, owner, legacy, tmp_path):
    flat_ca_only(legacy)
    encrypted = import_legacy(pg_server, dbname, legacy, tmp_path, *flat_files(legacy, tmp_path))   # db_encryption_key tried
    assert encrypted.returncode == 1 and "wrong passphrase" in encrypted.stderr and \
        "give its passphrase with --ca-passphrase-file" in encrypted.stderr
    cert_file, key_file = flat_files(legacy, tmp_path, None)[1::2]
    secret(Path(key_file), traditional(rsa.generate_private_key(public_exponent=65537, key_size=2048), None))
    other = import_legacy(pg_server, dbname, legacy, tmp_path, "--ca-cert-file", cert_file, "--ca-key-file", key_file)
    assert other.returncode == 1 and "is not the key of --ca-cert-file" in other.stderr
    alone = import_legacy(pg_server, dbname, legacy, tmp_path, "--ca-cert-file", cert_file)
    assert alone.returncode == 2 and "--ca-cert-file and --ca-key-file go together" in alone.stderr
    assert owner.execute("SELECT count(*) FROM pki.certificates").fetchone() == (0,)   # nothing was imported


def test_flat_ca_files_beside_a_local_ca_in_the_database_are_left_alone(pg_server, dbname, owner, legacy, tmp_path):
    result = import_legacy(pg_server, dbname, legacy, tmp_path, *flat_files(legacy, tmp_path, None))
    assert result.returncode == 0, result.stderr
    assert "the database holds the local CA 'Local CA' (instance 3): --ca-cert-file and --ca-key-file are not imported" \
        in result.stdout
    assert owner.execute("SELECT count(*) FROM pki.certinstances WHERE certificate = 3").fetchone() == (1,)
