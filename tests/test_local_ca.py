"""The local CA (-I), local certificates (-C) and the encryption of stored keys (-X, -Y).

Each test does what the agent loop does: a request function enqueues, the job is
claimed with pki.claim_jobs, the handler runs with a Context, and its outcome goes
to the kind's completion, pki.complete_issue or pki.complete_reencrypt_keys (or
pki.fail_job when it gives up). openssl checks the results from outside: chains
verify, keys match certificates, encrypted keys open with `openssl pkey -passin`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from psycopg.rows import dict_row

from helpers import assert_refused, complete, completion_call, lease_of, owner_conn, remember_leases, snapshot
from serverpki import keystore, x509util
from serverpki.errors import GiveUp
from serverpki.handlers import HANDLERS, Completion, Context, Job, StoredKey
from serverpki.handlers import issue_local as _issue_local  # noqa: F401  (registers issue_local, issue_local_ca)
from serverpki.handlers import keys as _keys  # noqa: F401  (registers encrypt_keys, decrypt_keys)

AGENT = "test-agent"
CA_PASS = "ca passphrase \u00e4"
DB_PASS = "db passphrase"


# --------------------------------------------------------------------------- fixtures and helpers

def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


@pytest.fixture
def config(tmp_path: Path) -> SimpleNamespace:
    """A stand-in for the agent's Config: the attributes the handlers read."""
    return SimpleNamespace(
        x509=SimpleNamespace(country="DE", state="Hessen", locality="Frankfurt", organization="Example e.V.",
                             organizational_unit="PKI", server_lifetime_days=90, client_lifetime_days=365,
                             rsa_key_size=2048, ec_curve="secp384r1"),
        local_ca=SimpleNamespace(name="Local CA", key_type="rsa", key_size=2048, lifetime_days=3650,
                                 passphrase_file=str(secret_file(tmp_path / "ca.pass", CA_PASS))),
        paths=SimpleNamespace(work_dir=str(tmp_path),
                              db_encryption_key=str(secret_file(tmp_path / "db.pass", DB_PASS))),
    )


def run_job(conn: psycopg.Connection, job_id: int, config) -> dict | GiveUp:
    """Claim the job, run its handler, complete it (or fail it without retry when the handler gives up)."""
    row = conn.cursor(row_factory=dict_row).execute(
        "SELECT * FROM claim_jobs(%s, ARRAY[(SELECT kind FROM jobs WHERE id = %s)], 1)", (AGENT, job_id)).fetchone()
    assert row is not None and row["id"] == job_id, f"job {job_id} was not claimable"
    remember_leases(conn, [row])
    job = Job(id=row["id"], kind=row["kind"], certificate=row["certificate"], instance=row["instance"],
              disthost=row["disthost"], zone=row["zone"], args=row["args"], attempts=row["attempts"],
              max_attempts=row["max_attempts"], lease=str(row["lease_token"]))
    ctx = Context(config=config, conn=conn, agent_name=AGENT)
    try:
        result = HANDLERS[job.kind](job, ctx)
    except GiveUp as exc:
        conn.execute("SELECT fail_job(%s, %s, %s, false)", (job_id, lease_of(conn, job_id, AGENT), str(exc)))
        return exc
    complete(conn, job_id, lease_of(conn, job_id, AGENT), result)
    return result


def job_row(conn, job_id: int) -> dict:
    return conn.cursor(row_factory=dict_row).execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()


def issue_ca(conn, config, algo: str = "rsa", name: str = "Local CA") -> int:
    """-I: returns the issued CA instance."""
    job_id = conn.execute("SELECT request_local_ca(%s, %s)", (name, algo)).fetchone()[0]
    result = run_job(conn, job_id, config)
    assert not isinstance(result, GiveUp), result
    return job_row(conn, job_id)["instance"]


def add_local_cert(conn, name: str, algo: str = "rsa", subject_type: str = "server", must_staple: bool = False,
                   altname: str | None = None) -> None:
    conn.execute("SELECT * FROM add_cert(%s, %s, 'local', %s, %s, %s, NULL, NULL, NULL, NULL, NULL)",
                 (name, subject_type, algo, must_staple, altname))


def create(conn, config, name: str) -> tuple[int, dict | GiveUp]:
    """-C for one certificate: returns the job and the handler's outcome."""
    job_id, = conn.execute("SELECT job FROM request_create(selection(only_certs => ARRAY[%s]))", (name,)).fetchone()
    return job_id, run_job(conn, job_id, config)


def stored_pairs(conn, instance: int) -> dict[str, dict]:
    rows = conn.cursor(row_factory=dict_row).execute(
        "SELECT id, encryption_algo::text AS algo, convert_from(cert, 'UTF8') AS cert, convert_from(key, 'UTF8') AS key "
        "FROM certkeydata WHERE certinstance = %s", (instance,)).fetchall()
    return {r["algo"]: r for r in rows}


def openssl(*args: str, input: str | None = None) -> str:
    done = subprocess.run(["openssl", *args], input=input, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"
    return done.stdout


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def key_public(tmp_path: Path, key_pem: str, passfile: str | None = None) -> str:
    """`openssl pkey -pubout` of a stored key (opened with -passin when given)."""
    args = ["pkey", "-in", write(tmp_path / "key.pem", key_pem), "-pubout"]
    if passfile:
        args += ["-passin", "pass:" + Path(passfile).read_text()]  # the whole file (file: reads its first line)
    return openssl(*args)


def cert_public(tmp_path: Path, cert_pem: str) -> str:
    return openssl("x509", "-in", write(tmp_path / "cert.pem", cert_pem), "-noout", "-pubkey")


def cert_text(tmp_path: Path, cert_pem: str) -> str:
    return openssl("x509", "-in", write(tmp_path / "cert.pem", cert_pem), "-noout", "-text")


def ca_pem(conn, instance: int) -> str:
    return conn.execute("SELECT convert_from(cert, 'UTF8') FROM certkeydata WHERE certinstance = %s",
                        (instance,)).fetchone()[0]


def assert_no_key_in_jobs(conn) -> None:
    leaks = conn.execute(
        "SELECT id, kind FROM jobs WHERE concat(args::text, result::text, last_error) LIKE '%PRIVATE KEY%' "
        "UNION ALL SELECT job, 'event' FROM events WHERE reason LIKE '%PRIVATE KEY%'").fetchall()
    assert leaks == [], f"key material in the queue: {leaks}"


def keys_encrypted(conn) -> bool:
    return conn.execute("SELECT keysencrypted FROM revision ORDER BY id DESC LIMIT 1").fetchone()[0]


# --------------------------------------------------------------------------- -I: the local CA

@pytest.mark.parametrize("algo", ["rsa", "ec"])
def test_issue_local_ca_stores_an_issued_instance_with_an_encrypted_key(conn, config, tmp_path, algo):
    instance = issue_ca(conn, config, algo)
    state, cacert = conn.execute("SELECT state::text, cacert FROM certinstances WHERE id = %s", (instance,)).fetchone()
    assert (state, cacert) == ("issued", None)
    assert conn.execute("SELECT \"Subject\", \"Type\" FROM certs WHERE \"Cert Name\" = 'Local CA'").fetchone() == ("CA", "local")
    pair = stored_pairs(conn, instance)[algo]
    assert pair["key"].startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    # openssl opens it with the local CA passphrase file, and it is the certificate's key
    assert key_public(tmp_path, pair["key"], config.local_ca.passphrase_file) == cert_public(tmp_path, pair["cert"])
    text = cert_text(tmp_path, pair["cert"])
    assert "CA:TRUE, pathlen:0" in text
    assert "Certificate Sign, CRL Sign" in text
    assert "Subject Key Identifier" in text
    assert "CN=Local CA" in text.replace(" = ", "=") and "O=Example e.V." in text.replace(" = ", "=")
    openssl("verify", "-CAfile", write(tmp_path / "ca.pem", pair["cert"]), str(tmp_path / "ca.pem"))
    assert_no_key_in_jobs(conn)


def test_issue_local_ca_twice_gives_a_second_instance_of_the_same_certificate(conn, config):
    first = issue_ca(conn, config)
    second = issue_ca(conn, config, "ec")
    assert second != first
    assert conn.execute("SELECT count(DISTINCT certificate), count(*) FROM certinstances").fetchone() == (1, 2)
    # the changed algorithm applies from the new instance on
    assert conn.execute("SELECT encryption_algo::text FROM certificates").fetchone()[0] == "ec"


def test_request_local_ca_returns_the_pending_job_when_asked_twice(conn):
    first = conn.execute("SELECT request_local_ca('Local CA', 'rsa')").fetchone()[0]
    again = conn.execute("SELECT request_local_ca('Local CA', 'rsa')").fetchone()[0]
    assert again == first
    assert conn.execute("SELECT kind, reason FROM jobs").fetchall() == [("issue_local_ca", "requested (-I)")]


def test_request_local_ca_refusals(conn):
    add_local_cert(conn, "www.example.org")
    assert_refused(conn, "SELECT request_local_ca('Local CA', 'rsa_plus_ec')", sqlstate="SP011", match="one key")
    assert_refused(conn, "SELECT request_local_ca('Local CA', 'dsa')", sqlstate="SP011")
    assert_refused(conn, "SELECT request_local_ca('www.example.org', 'rsa')", sqlstate="SP003", match="not as the name of a local CA")
    assert_refused(conn, "SELECT request_local_ca(NULL, 'rsa')", sqlstate="SP009")
    assert_refused(conn, "SELECT enqueue_local_ca(cert_id('www.example.org'))", sqlstate="SP002")


def test_local_ca_with_a_wrong_passphrase_file_mode_gives_up(conn, config, tmp_path):
    config.local_ca.passphrase_file = str(secret_file(tmp_path / "open.pass", CA_PASS, 0o644))
    job_id = conn.execute("SELECT request_local_ca('Local CA', 'rsa')").fetchone()[0]
    outcome = run_job(conn, job_id, config)
    assert isinstance(outcome, GiveUp) and "chmod 600" in str(outcome)
    row = job_row(conn, job_id)
    assert row["state"] == "dead" and "group or others" in row["last_error"]
    assert conn.execute("SELECT count(*) FROM certinstances").fetchone()[0] == 0


# --------------------------------------------------------------------------- -C: local certificates

def test_without_a_local_ca_issue_local_gives_up(conn, config):
    add_local_cert(conn, "www.example.org")
    job_id, outcome = create(conn, config, "www.example.org")
    assert isinstance(outcome, GiveUp) and str(outcome) == "no local CA: issue one with operate_serverPKI -I"
    assert job_row(conn, job_id)["state"] == "dead"
    assert conn.execute("SELECT count(*) FROM certinstances").fetchone()[0] == 0


@pytest.mark.parametrize("algo, pairs", [("rsa", ["rsa"]), ("ec", ["ec"]), ("rsa_plus_ec", ["ec", "rsa"])])
def test_local_server_certificate_verifies_against_the_ca(conn, config, tmp_path, algo, pairs):
    ca_instance = issue_ca(conn, config)
    add_local_cert(conn, "www.example.org", algo, altname="example.org")
    job_id, result = create(conn, config, "www.example.org")
    assert not isinstance(result, GiveUp), result
    assert result.args["cacert"] == ca_instance
    instance = job_row(conn, job_id)["instance"]
    assert conn.execute("SELECT state::text, cacert FROM certinstances WHERE id = %s", (instance,)).fetchone() == (
        "issued", ca_instance)
    stored = stored_pairs(conn, instance)
    assert sorted(stored) == pairs
    ca_file = write(tmp_path / "ca.pem", ca_pem(conn, ca_instance))
    for algo_of_pair, pair in stored.items():
        leaf = write(tmp_path / f"leaf-{algo_of_pair}.pem", pair["cert"])
        assert openssl("verify", "-CAfile", ca_file, leaf).strip() == f"{leaf}: OK"
        assert pair["key"].startswith("-----BEGIN PRIVATE KEY-----")  # keys are not encrypted in this database
        assert key_public(tmp_path, pair["key"]) == cert_public(tmp_path, pair["cert"])
        text = cert_text(tmp_path, pair["cert"])
        assert "DNS:www.example.org, DNS:example.org" in text
        assert "TLS Web Server Authentication" in text and "TLS Web Client Authentication" not in text
        assert "TLS Feature" not in text
        assert ("Key Encipherment" in text) == (algo_of_pair == "rsa")
        assert ("Public Key Algorithm: rsaEncryption" in text) == (algo_of_pair == "rsa")
        assert "Authority Key Identifier" in text and "CA:FALSE" in text
    assert_no_key_in_jobs(conn)


def test_local_client_certificate_with_must_staple(conn, config, tmp_path):
    ca_instance = issue_ca(conn, config, "ec")
    add_local_cert(conn, "backup_op", "ec", subject_type="client", must_staple=True)
    job_id, result = create(conn, config, "backup_op")
    assert not isinstance(result, GiveUp), result
    pair = stored_pairs(conn, job_row(conn, job_id)["instance"])["ec"]
    leaf = write(tmp_path / "leaf.pem", pair["cert"])
    openssl("verify", "-CAfile", write(tmp_path / "ca.pem", ca_pem(conn, ca_instance)), leaf)
    text = cert_text(tmp_path, pair["cert"])
    assert "TLS Web Client Authentication" in text and "TLS Web Server Authentication" not in text
    assert "Subject Alternative Name" not in text  # a client is its CN only
    assert "CN=backup_op" in text.replace(" = ", "=")
    assert "TLS Feature" in text and "status_request" in text
    assert conn.execute("SELECT ocsp_must_staple FROM certinstances WHERE id = %s",
                        (job_row(conn, job_id)["instance"],)).fetchone()[0] is True


def test_local_certificate_never_outlives_its_ca(conn, config, tmp_path):
    config.local_ca.lifetime_days = 30
    issue_ca(conn, config)
    add_local_cert(conn, "www.example.org")
    job_id, result = create(conn, config, "www.example.org")
    ca_after, leaf_after = conn.execute(
        "SELECT (SELECT not_after FROM certinstances WHERE id = i.cacert), i.not_after FROM certinstances i WHERE i.id = %s",
        (job_row(conn, job_id)["instance"],)).fetchone()
    assert leaf_after == ca_after


def test_issue_local_with_a_wrong_ca_passphrase_gives_up(conn, config, tmp_path):
    issue_ca(conn, config)
    config.local_ca.passphrase_file = str(secret_file(tmp_path / "other.pass", "not the CA passphrase"))
    add_local_cert(conn, "www.example.org")
    job_id, outcome = create(conn, config, "www.example.org")
    assert isinstance(outcome, GiveUp) and "wrong passphrase" in str(outcome)
    assert "not the CA passphrase" not in job_row(conn, job_id)["last_error"]


# --------------------------------------------------------------------------- -X / -Y: encrypting the stored keys

def fill(conn, config) -> tuple[int, dict[int, str]]:
    """A CA and two local certificates (three leaf keys); returns the CA instance and the clear keys by id."""
    ca_instance = issue_ca(conn, config)
    for name, algo in (("www.example.org", "rsa_plus_ec"), ("mail.example.org", "ec")):
        add_local_cert(conn, name, algo)
        create(conn, config, name)
    clear = dict(conn.execute("SELECT id, key FROM keys_under_db_passphrase()").fetchall())
    assert len(clear) == 3
    return ca_instance, clear


def request_keys(conn, encrypt: bool) -> int:
    return conn.execute("SELECT request_key_encryption(%s)", (encrypt,)).fetchone()[0]


def test_encrypt_and_decrypt_round_trip_every_key_but_the_cas(conn, config, tmp_path):
    ca_instance, clear = fill(conn, config)
    ca_key = stored_pairs(conn, ca_instance)["rsa"]["key"]

    job_id = request_keys(conn, True)
    result = run_job(conn, job_id, config)
    assert not isinstance(result, GiveUp), result
    assert keys_encrypted(conn) is True
    encrypted = dict(conn.execute("SELECT id, key FROM keys_under_db_passphrase()").fetchall())
    assert sorted(encrypted) == sorted(clear)
    for key_id, pem in encrypted.items():
        assert pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        cert = conn.execute("SELECT convert_from(cert, 'UTF8') FROM certkeydata WHERE id = %s", (key_id,)).fetchone()[0]
        assert key_public(tmp_path, pem, config.paths.db_encryption_key) == cert_public(tmp_path, cert)
    # the CA's key keeps its own passphrase
    assert stored_pairs(conn, ca_instance)["rsa"]["key"] == ca_key
    assert job_row(conn, job_id)["result"] == {"keys": [{"id": i} for i in sorted(clear)], "accounts": [], "job_keys": [], "encrypted": True}

    # while encrypted, a new local key is stored encrypted with the database passphrase
    add_local_cert(conn, "imap.example.org", "rsa")
    new_job, _ = create(conn, config, "imap.example.org")
    new_key = stored_pairs(conn, job_row(conn, new_job)["instance"])["rsa"]["key"]
    assert new_key.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    key_public(tmp_path, new_key, config.paths.db_encryption_key)

    assert_refused(conn, "SELECT request_key_encryption(true)", sqlstate="SP012", match="encrypted already")

    job_id = request_keys(conn, False)
    result = run_job(conn, job_id, config)
    assert not isinstance(result, GiveUp), result
    assert keys_encrypted(conn) is False
    decrypted = dict(conn.execute("SELECT id, key FROM keys_under_db_passphrase()").fetchall())
    # the same keys as before, byte for byte (PKCS#8 of a key is deterministic)
    assert {k: v for k, v in decrypted.items() if k in clear} == clear
    assert all(pem.startswith("-----BEGIN PRIVATE KEY-----") for pem in decrypted.values())
    assert stored_pairs(conn, ca_instance)["rsa"]["key"] == ca_key
    assert_refused(conn, "SELECT request_key_encryption(false)", sqlstate="SP012", match="in clear already")
    assert_no_key_in_jobs(conn)


def test_a_key_issued_in_clear_before_x_is_refused_after_it_and_the_job_retried(conn, config, tmp_path):
    """The agent reads whether the keys are encrypted once for its claimed batch: a -X applied between that
    read and an issue job's completion must not store a key in clear among encrypted ones. The completion
    refuses the key's form (SP028, nothing stored), the job is retried, and its next attempt stores it encrypted."""
    issue_ca(conn, config)
    add_local_cert(conn, "www.example.org", "ec")
    job_id, = conn.execute("SELECT job FROM request_create(selection(only_certs => ARRAY['www.example.org']))").fetchone()
    row = conn.cursor(row_factory=dict_row).execute("SELECT * FROM claim_jobs(%s, ARRAY['issue_local'], 1)", (AGENT,)).fetchone()
    remember_leases(conn, [row])
    job = Job(id=job_id, kind="issue_local", certificate=row["certificate"], instance=row["instance"], disthost=None,
              zone=None, args=row["args"], attempts=row["attempts"], max_attempts=row["max_attempts"],
              lease=str(row["lease_token"]))
    in_clear = HANDLERS["issue_local"](job, Context(config=config, conn=conn, agent_name=AGENT))
    assert in_clear.args["pairs"][0].key.startswith("-----BEGIN PRIVATE KEY-----")
    assert not isinstance(run_job(conn, request_keys(conn, True), config), GiveUp)   # -X meanwhile
    assert keys_encrypted(conn) is True

    call = completion_call(conn, job_id, lease_of(conn, job_id, AGENT), in_clear)
    assert_refused(conn, *call, sqlstate="SP028", match="-X/-Y applied while it ran")
    assert conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (job.instance,)).fetchone()[0] == "reserved"
    # the agent fails a refusal other than SP023 with a retry: the job is not dead
    assert conn.execute("SELECT fail_job(%s, %s, 'SP028: refused', true)",
                        (job_id, lease_of(conn, job_id, AGENT))).fetchone()[0] == "failed"
    owner_conn(conn).execute("UPDATE jobs SET run_after = pki.now() WHERE id = %s", (job_id,))
    assert not isinstance(run_job(conn, job_id, config), GiveUp)
    key = stored_pairs(conn, job.instance)["ec"]["key"]
    assert key.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    key_public(tmp_path, key, config.paths.db_encryption_key)
    assert job_row(conn, job_id)["state"] == "done"


def test_the_key_of_an_acme_order_in_flight_is_re_encrypted_with_the_others(conn, config, tmp_path):
    """An order's key waits in pki.job_keys while its job retries (maybe for hours): -X/-Y
    re-encrypt it too; the key of an order whose job ended meanwhile is not required."""
    fill(conn, config)
    order_key = keystore.dump_key(x509util.new_key("ec"))
    order_job = owner_conn(conn).execute("SELECT enqueue('issue_acme', 'test:order', 'an order in flight')").fetchone()[0]
    gone_job = owner_conn(conn).execute("SELECT enqueue('issue_acme', 'test:gone', 'an order that ends')").fetchone()[0]
    claimed = remember_leases(conn, conn.cursor(row_factory=dict_row).execute(
        "SELECT * FROM claim_jobs('orders', ARRAY['issue_acme'], 2)").fetchall())
    assert sorted(r["id"] for r in claimed) == sorted([order_job, gone_job])
    for job in (order_job, gone_job):
        conn.execute("SELECT save_job_key(%s, %s, 'ec', %s)", (job, lease_of(conn, job, "orders"), order_key))
    gone_id = owner_conn(conn).execute("SELECT id FROM job_keys WHERE job = %s", (gone_job,)).fetchone()[0]

    job_id = request_keys(conn, True)
    row = conn.cursor(row_factory=dict_row).execute("SELECT * FROM claim_jobs(%s, ARRAY['encrypt_keys'], 1)",
                                                    (AGENT,)).fetchone()
    remember_leases(conn, [row])
    job = Job(row["id"], row["kind"], None, None, None, None, row["args"], row["attempts"], row["max_attempts"],
              str(row["lease_token"]))
    result = HANDLERS["encrypt_keys"](job, Context(config=config, conn=conn, agent_name=AGENT))
    assert sorted(k.id for k in result.args["job_keys"]) == sorted(
        r[0] for r in owner_conn(conn).execute("SELECT id FROM job_keys"))
    conn.execute("SELECT fail_job(%s, %s, 'the order failed for good', false)", (gone_job, lease_of(conn, gone_job, "orders")))  # its key goes
    assert owner_conn(conn).execute("SELECT count(*) FROM job_keys WHERE id = %s", (gone_id,)).fetchone()[0] == 0
    complete(conn, job_id, lease_of(conn, job_id, AGENT), result)

    stored = owner_conn(conn).execute("SELECT key FROM job_keys WHERE job = %s", (order_job,)).fetchone()[0]
    assert stored.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert keystore.dump_key(keystore.load_key(stored, keystore.read_passphrase(config.paths.db_encryption_key))) \
        == order_key
    assert "job_keys" in job_row(conn, job_id)["result"] and "key" not in json.dumps(
        job_row(conn, job_id)["result"]["job_keys"])

    run_job(conn, request_keys(conn, False), config)
    assert owner_conn(conn).execute("SELECT key FROM job_keys WHERE job = %s", (order_job,)).fetchone()[0] == order_key
    # a result that gives an order key in the wrong form changes nothing
    job_id = request_keys(conn, True)
    remember_leases(conn, conn.cursor(row_factory=dict_row).execute("SELECT * FROM claim_jobs(%s, ARRAY['encrypt_keys'], 1)",
                                                                    (AGENT,)).fetchall())
    order_key_id = owner_conn(conn).execute("SELECT id FROM job_keys WHERE job = %s", (order_job,)).fetchone()[0]
    keys = [{"id": i, "key": keystore.encrypt_pem(k, b"x" * 8)} for i, k in
            conn.execute("SELECT id, key FROM keys_under_db_passphrase()").fetchall()]
    bad = {"encrypted": True, "keys": keys, "accounts": [], "job_keys": [{"id": order_key_id, "key": order_key}]}
    before = snapshot(conn)
    with pytest.raises(psycopg.Error) as info:
        complete(conn, job_id, lease_of(conn, job_id, AGENT), bad)
    assert info.value.diag.sqlstate == "SP023" and '"job_keys"' in info.value.diag.message_primary
    assert snapshot(conn) == before


def test_decrypt_with_a_wrong_passphrase_changes_nothing(conn, config, tmp_path):
    fill(conn, config)
    run_job(conn, request_keys(conn, True), config)
    before = snapshot(conn)
    config.paths.db_encryption_key = str(secret_file(tmp_path / "wrong.pass", "wrong passphrase text"))
    job_id = request_keys(conn, False)
    outcome = run_job(conn, job_id, config)
    assert isinstance(outcome, GiveUp) and "wrong passphrase" in str(outcome)
    assert snapshot(conn) == before
    row = job_row(conn, job_id)
    assert row["state"] == "dead" and "wrong passphrase" in row["last_error"]
    assert "wrong passphrase text" not in row["last_error"]
    assert_no_key_in_jobs(conn)


def test_issue_local_refuses_a_db_passphrase_that_does_not_open_the_stored_keys(conn, config, tmp_path):
    fill(conn, config)
    run_job(conn, request_keys(conn, True), config)
    config.paths.db_encryption_key = str(secret_file(tmp_path / "wrong.pass", "another passphrase"))
    add_local_cert(conn, "imap.example.org")
    job_id, outcome = create(conn, config, "imap.example.org")
    assert isinstance(outcome, GiveUp) and "wrong passphrase" in str(outcome)


def test_request_key_encryption_refuses_the_opposite_of_a_pending_job(conn):
    first = request_keys(conn, True)
    assert request_keys(conn, True) == first
    assert_refused(conn, "SELECT request_key_encryption(false)", sqlstate="SP012", match="pending")
    assert_refused(conn, "SELECT request_key_encryption(NULL)", sqlstate="SP009")


def test_encrypt_with_no_keys_only_flips_the_flag(conn, config):
    job_id = request_keys(conn, True)
    assert run_job(conn, job_id, config).args == {"keys": [], "accounts": [], "job_keys": []}
    assert job_row(conn, job_id)["result"] == {"keys": [], "accounts": [], "job_keys": [], "encrypted": True}
    assert keys_encrypted(conn) is True


@pytest.mark.parametrize("mangle, match", [
    (lambda r: {**r, "keys": None}, "missing"),
    (lambda r: {**r, "keys": r["keys"][1:]}, "missing"),
    (lambda r: {**r, "keys": r["keys"] + r["keys"][:1]}, "repeated"),
    (lambda r: {**r, "keys": r["keys"] + [StoredKey(999999, r["keys"][0].key)]}, "unknown"),
    (lambda r: {**r, "keys": [k._replace(key=CLEAR) for k in r["keys"]]}, "entry 1"),
    (lambda r: {**r, "keys": [k._replace(id=None) for k in r["keys"]]}, "entry 1"),
])
def test_complete_reencrypt_keys_refuses_an_incomplete_result(conn, config, mangle, match):
    fill(conn, config)
    job_id = request_keys(conn, True)
    row = conn.cursor(row_factory=dict_row).execute("SELECT * FROM claim_jobs(%s, ARRAY['encrypt_keys'], 1)", (AGENT,)).fetchone()
    remember_leases(conn, [row])
    job = Job(id=row["id"], kind=row["kind"], certificate=None, instance=None, disthost=None, zone=None,
              args=row["args"], attempts=row["attempts"], max_attempts=row["max_attempts"], lease=str(row["lease_token"]))
    result = HANDLERS["encrypt_keys"](job, Context(config=config, conn=conn, agent_name=AGENT))
    bad = Completion(args=mangle(result.args), report=result.report)
    assert_refused(conn, *completion_call(conn, job_id, lease_of(conn, job_id, AGENT), bad), sqlstate="SP023", match=match)
    assert keys_encrypted(conn) is False
    assert job_row(conn, job_id)["state"] == "running"


CLEAR = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"


# --------------------------------------------------------------------------- keystore and x509util

def test_keystore_round_trip_and_wrong_passphrase():
    key = x509util.new_key("ec", ec_curve="P-256")
    clear = keystore.dump_key(key)
    assert not keystore.is_encrypted(clear)
    enc = keystore.encrypt_pem(clear, b"s3cret")
    assert keystore.is_encrypted(enc) and enc.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert keystore.encrypt_pem(enc, b"s3cret") == enc  # already encrypted with it: unchanged
    assert keystore.decrypt_pem(enc, b"s3cret") == clear
    assert keystore.decrypt_pem(clear, b"anything") == clear
    with pytest.raises(keystore.WrongPassphrase) as info:
        keystore.decrypt_pem(enc, b"wrong")
    assert "wrong passphrase" in str(info.value) and "wrong" not in str(info.value).replace("wrong passphrase", "")
    assert isinstance(info.value, keystore.ServerPKIError)
    with pytest.raises(keystore.WrongPassphrase):
        keystore.encrypt_pem(enc, b"another")
    with pytest.raises(keystore.KeystoreError) as info:
        keystore.decrypt_pem(CLEAR, b"x")
    assert "AAAA" not in str(info.value)


def test_read_passphrase(tmp_path, monkeypatch):
    # the whole content is the passphrase, line ends and all (as the original serverPKI read it)
    assert keystore.read_passphrase(secret_file(tmp_path / "p", "first line")) == b"first line\n"
    (tmp_path / "two").write_bytes(b"one\r\ntwo\n")
    (tmp_path / "two").chmod(0o400)
    assert keystore.read_passphrase(tmp_path / "two") == b"one\r\ntwo\n"
    for mode in (0o640, 0o604):
        with pytest.raises(keystore.PassphraseUnavailable, match="group or others.*chmod 600"):
            keystore.read_passphrase(secret_file(tmp_path / f"open{mode:o}", "x", mode))
    with pytest.raises(keystore.PassphraseUnavailable, match="empty"):
        keystore.read_passphrase(secret_file(tmp_path / "empty", ""))
    (tmp_path / "long").write_bytes(b"x" * (keystore.MAX_PASSPHRASE + 1))
    (tmp_path / "long").chmod(0o600)
    with pytest.raises(keystore.PassphraseUnavailable, match="1024 bytes, more than the 1023"):
        keystore.read_passphrase(tmp_path / "long")
    with pytest.raises(keystore.PassphraseUnavailable, match="No such file"):
        keystore.read_passphrase(tmp_path / "missing")
    # no file configured: asked on the terminal, refused without one
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    with pytest.raises(keystore.PassphraseUnavailable, match="no terminal"):
        keystore.read_passphrase(None)
    monkeypatch.setattr("sys.stdin", SimpleNamespace(isatty=lambda: True))
    monkeypatch.setattr("getpass.getpass", lambda prompt: "typed")
    assert keystore.read_passphrase(None) == b"typed"


def test_leaf_validity_starts_an_hour_back():
    now = dt.datetime(2030, 5, 1, 12, tzinfo=dt.timezone.utc)
    ca_key = x509util.new_key("ec", ec_curve="secp256r1")
    ca = x509util.build_ca_certificate(ca_key, "Test CA", 10, now=now)
    leaf = x509util.issue_leaf(ca, ca_key, x509util.new_key("ec").public_key(), "www.example.org",
                               lifetime_days=90, now=now)
    assert leaf.not_valid_before_utc == now - dt.timedelta(hours=1)
    assert leaf.not_valid_after_utc == ca.not_valid_after_utc == now + dt.timedelta(days=10)
    with pytest.raises(x509util.ConfigError, match="expired"):
        x509util.issue_leaf(ca, ca_key, ca_key.public_key(), "www.example.org", now=now + dt.timedelta(days=11))
    with pytest.raises(x509util.ConfigError, match="curve"):
        x509util.new_key("ec", ec_curve="curve25519")
    with pytest.raises(x509util.ConfigError, match="2048"):
        x509util.new_key("rsa", 1024)


# --------------------------------------------------------------------------- roles

def test_roles_of_the_requests(conn, pg_server, dbname):
    """pki_admin asks for -I and -X (the queue is written by SECURITY DEFINER functions) but reads no key;
    pki_agent reads the keys it re-encrypts but cannot create the CA's certificate (configuration)."""
    import uuid

    from psycopg.conninfo import make_conninfo

    roles = {group: f"t_{group}_{uuid.uuid4().hex[:8]}" for group in ("pki_admin", "pki_agent")}
    for group, role in roles.items():
        owner_conn(conn).execute(f'CREATE ROLE "{role}" LOGIN IN ROLE {group}')
    try:
        with psycopg.connect(make_conninfo(pg_server.dsn(dbname), user=roles["pki_agent"]), autocommit=True) as agent:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                agent.execute("SELECT request_local_ca('Local CA', 'rsa')")
            assert agent.execute("SELECT count(*) FROM keys_under_db_passphrase()").fetchone()[0] == 0
        with psycopg.connect(make_conninfo(pg_server.dsn(dbname), user=roles["pki_admin"]), autocommit=True) as admin:
            job_id = admin.execute("SELECT request_local_ca('Local CA', 'ec')").fetchone()[0]
            assert admin.execute("SELECT kind FROM jobs WHERE id = %s", (job_id,)).fetchone()[0] == "issue_local_ca"
            assert admin.execute("SELECT request_key_encryption(true)").fetchone()[0] is not None
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                admin.execute("SELECT * FROM keys_under_db_passphrase()")
    finally:
        for role in roles.values():
            owner_conn(conn).execute(f'DROP OWNED BY "{role}"')
            owner_conn(conn).execute(f'DROP ROLE "{role}"')


def test_encrypt_and_decrypt_cover_the_acme_account_key(conn, config, tmp_path):
    """-X/-Y treat the ACME account key like every other stored key."""
    account = x509util.new_key("ec", 2048, "secp256r1")
    clear = keystore.dump_key(account)
    owner_conn(conn).execute("INSERT INTO acme_accounts (directory_url, contact, key, uri) VALUES "
                 "('https://acme.example/dir', 'pki@example.org', %s, 'https://acme.example/acct/1')", (clear,))
    job_id = request_keys(conn, True)
    result = run_job(conn, job_id, config)
    assert [a.id for a in result.args["accounts"]] == [1]
    stored = conn.execute("SELECT key FROM acme_accounts").fetchone()[0]
    assert stored.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    out = subprocess.run(["openssl", "pkey", "-passin", "pass:" + Path(config.paths.db_encryption_key).read_text(), "-pubout"],
                         input=stored, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == x509util.public_pem(account)
    assert "PRIVATE KEY" not in json.dumps(job_row(conn, job_id)["result"])
    run_job(conn, request_keys(conn, False), config)
    assert conn.execute("SELECT key FROM acme_accounts").fetchone()[0] == clear


# --------------------------------------------------------------------------- the agent: a claimed batch

def test_an_agents_batch_of_issue_jobs_keeps_every_jobs_outcome(conn, dsn, config):
    """The agent reads the CA, the requests and the key form once for a claimed batch, sends an issue
    job's completion while the next jobs' handlers work, and the completions ready meanwhile together
    (agent._Completions, pki.complete_issue_batch). Each job still ends as it would alone: done,
    refused (SP023: dead, its instance gone), lease taken (SP022: lost, left to its new holder), handler
    crashed (failed, retried); every handler ran once."""
    import threading

    from serverpki.agent import Agent

    issue_ca(conn, config)
    names = ["a.example.org", "b.example.org", "c.example.org", "d.example.org", "e.example.org"]
    for name in names:
        add_local_cert(conn, name, "ec")
    jobs = dict(conn.execute("SELECT certificate, job FROM request_create(selection(only_certs => %s))", (names,)).fetchall())
    assert sorted(jobs) == names
    real, runs = HANDLERS["issue_local"], []

    def handler(job, ctx):
        runs.append(job.id)
        if job.id == jobs["b.example.org"]:
            a_taken.wait(30)   # the completer takes a's completion alone (it takes all that are there)
        if job.id == jobs["d.example.org"]:
            raise RuntimeError("the handler crashed")
        result = real(job, ctx)
        if job.id == jobs["b.example.org"]:   # a key that is not the certificate's
            other = keystore.dump_key(x509util.new_key("ec", 2048, "secp384r1"))
            return Completion(args={**result.args, "pairs": [result.args["pairs"][0]._replace(key=other)]})
        if job.id == jobs["c.example.org"]:   # another agent took the job over meanwhile
            owner_conn(conn).execute("UPDATE jobs SET lease_hash = lease_hash(gen_random_uuid()) WHERE id = %s", (job.id,))
        if job.id == jobs["e.example.org"]:
            all_started.set()
        return result

    config.alerts = SimpleNamespace(channels=[])
    agent = Agent(dsn, config, name=AGENT, batch=10, kinds=["issue_local"])
    agent.handlers = {"issue_local": handler}
    # a's completion is held until every handler ran: b to e wait for the database, and go together
    all_started, a_taken, batches = threading.Event(), threading.Event(), []
    finish_overlapped, finish_batch = agent._finish_overlapped, agent._finish_batch
    agent._finish_overlapped = lambda started: (a_taken.set(), all_started.wait(30))[1] and finish_overlapped(started)
    agent._finish_batch = lambda batch: batches.append([job.id for job, _ in batch]) or finish_batch(batch)
    try:
        stats = agent.drain()
        assert agent._reader is not None   # the batch went the overlapped way
    finally:
        agent.close()
    assert stats.outcomes == {"done": 2, "dead": 1, "lost": 1, "failed": 1}, stats.summary()
    assert batches == [[jobs[name] for name in ("b.example.org", "c.example.org", "e.example.org")]]
    assert sorted(runs) == sorted(jobs.values())
    state = {name: job_row(conn, job_id) for name, job_id in jobs.items()}
    for name in ("a.example.org", "e.example.org"):
        assert state[name]["state"] == "done"
        assert conn.execute("SELECT state::text FROM certinstances WHERE id = %s",
                            (state[name]["instance"],)).fetchone()[0] == "issued"
        assert list(stored_pairs(conn, state[name]["instance"])) == ["ec"]
    assert state["b.example.org"]["state"] == "dead" and "does not belong" in state["b.example.org"]["last_error"]
    assert "(hint: " in state["b.example.org"]["last_error"], "the refusal's hint, what says how to mend it, was dropped"
    assert conn.execute("SELECT count(*) FROM certinstances WHERE id = %s", (state["b.example.org"]["instance"],)).fetchone()[0] == 0
    assert state["c.example.org"]["state"] == "running"   # its new holder's
    assert stored_pairs(conn, state["c.example.org"]["instance"]) == {}
    assert state["d.example.org"]["state"] == "failed" and "the handler crashed" in state["d.example.org"]["last_error"]
    assert_no_key_in_jobs(conn)


# --------------------------------------------------------------------------- claims made ahead

def _agent_counting_runs(dsn, config, before_handler, **kw):
    """An agent of issue_local jobs whose handler calls before_handler(job, ctx, n) first (n: the how-manieth
    run), and that records its claims as (made ahead, on which thread, job ids); returns it, the claims and
    the jobs run."""
    from serverpki.agent import Agent
    agent = Agent(dsn, config, name=AGENT, kinds=["issue_local"], **kw)
    real, claims, runs = HANDLERS["issue_local"], [], []

    def handler(job, ctx):
        runs.append(job.id)
        before_handler(job, ctx, len(runs))
        return real(job, ctx)

    handler.read_ahead, handler.read_at_turn = real.read_ahead, real.read_at_turn
    agent.handlers = {"issue_local": handler}
    claim = agent.claim

    def recorded_claim(**kwargs):
        jobs = claim(**kwargs)
        claims.append((kwargs.get("ahead", False), threading.current_thread().name, [j.id for j in jobs]))
        return jobs

    agent.claim = recorded_claim
    return agent, claims, runs


def _local_issue_jobs(conn, config, n: int) -> list[int]:
    config.alerts = SimpleNamespace(channels=[])   # what an Agent reads of the configuration beside local_ca
    issue_ca(conn, config)
    names = [f"o{i}.example.org" for i in range(n)]
    for name in names:
        add_local_cert(conn, name, "ec")
    return [job for (job,) in conn.execute("SELECT job FROM request_create(selection(only_certs => %s))", (names,))]


def test_a_full_claim_of_issue_jobs_has_the_next_one_claimed_ahead_with_its_reads(conn, dsn, config):
    """The thread that signs does not wait for claims: while the handlers of a full claim of issue_local jobs
    work, the next claim is made on a connection of its own (Agent._claim_ahead), with what the handlers read
    once per claim (issue_local's read_ahead: the certificates, the clock; the local CA is read at the claim's
    first job); the first claim's reads are made on the agent's own connection, idle then. A claim that is not
    full has no claim ahead: little is left. Every job runs once and is done."""
    jobs = _local_issue_jobs(conn, config, 5)
    reads = []
    agent, claims, runs = _agent_counting_runs(
        dsn, config, lambda job, ctx, n: reads.append(sorted(k for k in ("issue_requests", "db_now") if k in ctx.batch)),
        batch=2)
    try:
        stats = agent.drain()
        assert agent._claimer is not None
    finally:
        agent.close()
    assert stats.outcomes == {"done": 5}, stats.summary()
    assert sorted(runs) == sorted(jobs), "a job ran twice, or not at all"
    ahead = [(thread, ids) for is_ahead, thread, ids in claims if is_ahead]
    assert [len(ids) for _, ids in ahead] == [2, 1], claims   # after each full claim, the next one ahead
    assert all(thread.startswith("claimer") for thread, _ in ahead), claims
    # every handler found the reads made: for the first claim on the agent's own connection (idle then), for
    # those claimed ahead by the claimer
    assert reads == [["db_now", "issue_requests"]] * 5, reads
    assert all(job_row(conn, job_id)["state"] == "done" for job_id in jobs)

    # reading ahead that fails (a certificate removed meanwhile: GiveUp) leaves the reads to the handlers
    names = [f"{c}2.example.org" for c in "abc"]
    for name in names:
        add_local_cert(conn, name, "ec")
    jobs = [job for (job,) in conn.execute("SELECT job FROM request_create(selection(only_certs => %s))", (names,))]
    failed = []

    def failing_read_ahead(jobs, ctx):
        failed.append(jobs[0].id)
        raise GiveUp("certificate gone")

    agent, _, _ = _agent_counting_runs(dsn, config, lambda job, ctx, n: None, batch=1)
    agent.handlers["issue_local"].read_ahead = failing_read_ahead
    try:
        stats = agent.drain()
    finally:
        agent.close()
    assert stats.outcomes == {"done": 3}, stats.summary()
    assert len(failed) == 3, failed   # the first claim's on the agent's connection, the next two ahead
    assert all(job_row(conn, job_id)["state"] == "done" for job_id in jobs)


def test_a_batch_of_issue_jobs_is_applied_together_and_each_ends_as_alone(conn, config):
    """complete_issue_batch applies the completions of a batch whose jobs are all right together
    (complete_issues_together: each step one statement for all the jobs, in one subtransaction: their pairs
    share one xmin), and each job ends as complete_issue ends it alone: its pairs stored (both of an
    rsa_plus_ec certificate), its instance issued with an event naming the job, the job done with its report
    without keys, what its args said follows enqueued. A batch with a refused job goes job by job: a
    subtransaction, so an xmin, each, the others done all the same."""
    from psycopg.types.json import Jsonb

    from serverpki.queries import q

    issue_ca(conn, config)
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_place('p', 'separate', '/etc/ssl')")
    conn.execute("SELECT * FROM add_cert('a.example.org', 'server', 'local', 'ec', false, NULL, NULL, NULL, "
                 "'web1.example.org', NULL, 'p')")
    for name, algo in [("b.example.org", "rsa_plus_ec"), ("c.example.org", "ec"), ("d.example.org", "ec"),
                       ("e.example.org", "ec"), ("f.example.org", "ec")]:
        add_local_cert(conn, name, algo)
    jobs = dict(conn.execute("SELECT certificate, job FROM request_create(selection())").fetchall())
    owner = owner_conn(conn)
    owner.execute("UPDATE jobs SET args = args || '{\"then\": \"distribute\"}' WHERE id = %s", (jobs["a.example.org"],))

    rows = {r["id"]: r for r in conn.cursor(row_factory=dict_row).execute(
        "SELECT * FROM claim_jobs(%s, ARRAY['issue_local'], 10)", (AGENT,)).fetchall()}
    assert sorted(rows) == sorted(jobs.values())
    ctx = Context(config=config, conn=conn, agent_name=AGENT)

    def started(names: list[str]) -> list[tuple[int, str, Completion]]:
        """The claimed jobs' handlers run: (job, lease token, completion) of each."""
        return [(r["id"], str(r["lease_token"]),
                 HANDLERS["issue_local"](Job(r["id"], r["kind"], r["certificate"], r["instance"], r["disthost"], r["zone"],
                                             r["args"], r["attempts"], r["max_attempts"], str(r["lease_token"])), ctx))
                for r in (rows[jobs[name]] for name in names)]

    def batch(done: list[tuple[int, str, Completion]]) -> list[str | None]:
        states, _ = conn.execute(q("complete_issue_batch"), {
            "jobs": [j for j, _, _ in done], "tokens": [t for _, t, _ in done],
            "pairs": Jsonb([[p._asdict() for p in c.args["pairs"]] for _, _, c in done]),
            "cacerts": [c.args["cacert"] for _, _, c in done], "reports": Jsonb([c.report for _, _, c in done])}).fetchone()
        return states

    def xmins(names: list[str]) -> int:
        return owner.execute("SELECT count(DISTINCT k.xmin::text) FROM certkeydata k JOIN jobs j ON j.instance = k.certinstance "
                             "WHERE j.id = ANY(%s)", ([jobs[n] for n in names],)).fetchone()[0]

    # d alone, through complete_issue: what each job of a batch must end like
    [(alone, token, completion)] = started(["d.example.org"])
    complete(conn, alone, token, completion)
    together = ["a.example.org", "b.example.org", "c.example.org"]
    assert batch(started(together)) == [None, None, None]
    assert xmins(together) == 1
    for name in [*together, "d.example.org"]:
        row = job_row(conn, jobs[name])
        assert row["state"] == "done" and row["locked_by"] is None and row["lease_hash"] is None
        assert sorted(row["result"]) == ["cacert", "pairs"]
        assert sorted(stored_pairs(conn, row["instance"])) == (["ec", "rsa"] if name == "b.example.org" else ["ec"])
        assert [sorted(p) for p in row["result"]["pairs"]] == [["algo", "cert"]] * len(stored_pairs(conn, row["instance"]))
        events = conn.execute("SELECT from_state::text, to_state::text, job_state::text, reason FROM events "
                              "WHERE job = %s ORDER BY id", (row["id"],)).fetchall()
        assert events == [("reserved", "issued", None, f"issue_local job {row['id']} done"),
                          (None, None, "done", f"issue_local job {row['id']}: done")], events
        assert conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (row["instance"],)).fetchone()[0] == "issued"
    distributed = conn.execute("SELECT j.instance, j.reason FROM jobs j WHERE j.kind = 'distribute'").fetchall()
    assert distributed == [(job_row(conn, jobs["a.example.org"])["instance"],
                            f"issued by job {jobs['a.example.org']}: distribute")], distributed

    # a refused job (its lease taken over meanwhile): each alone, the others done; given against the order of
    # their lock buckets (f's certificate after e's), each state comes back at its job's place
    refused = started(["f.example.org", "e.example.org"])
    owner.execute("UPDATE jobs SET lease_hash = lease_hash(gen_random_uuid()) WHERE id = %s", (jobs["e.example.org"],))
    assert batch(refused) == [None, "SP022"]
    assert job_row(conn, jobs["e.example.org"])["state"] == "running"
    assert job_row(conn, jobs["f.example.org"])["state"] == "done"
    assert stored_pairs(conn, job_row(conn, jobs["e.example.org"])["instance"]) == {}
    assert_no_key_in_jobs(conn)


def test_the_follow_up_of_an_issue_completed_while_the_agent_claimed_runs_in_the_same_drain(conn, dsn, config):
    """The agent claims its next jobs while the last completions are on their way (agent._Completions): a claim
    that finds nothing then is no end of the drain, as the follow-ups of those completions (the distribution
    after an issue) are enqueued only when they are in. Here the issue job's completion is held until the next
    claim came back empty; its distribution job runs all the same (its handler gives up: no host here)."""
    import threading

    from serverpki.agent import Agent

    issue_ca(conn, config)
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_place('p', 'separate', '/etc/ssl')")
    conn.execute("SELECT * FROM add_cert('a.example.org', 'server', 'local', 'ec', false, NULL, NULL, NULL, "
                 "'web1.example.org', NULL, 'p')")
    [(job,)] = conn.execute("SELECT job FROM request_create(selection(only_certs => ARRAY['a.example.org']))").fetchall()
    owner_conn(conn).execute("UPDATE jobs SET args = args || '{\"then\": \"distribute\"}' WHERE id = %s", (job,))
    config.alerts = SimpleNamespace(channels=[])
    agent = Agent(dsn, config, name=AGENT, batch=10, kinds=["issue_local", "distribute"])

    def distribute(job, ctx):
        raise GiveUp("no host in this test")

    agent.handlers["distribute"] = distribute
    claims, second_claim = [], threading.Event()
    claim, finish_overlapped = agent.claim, agent._finish_overlapped

    def counted_claim(**kwargs):
        jobs = claim(**kwargs)
        claims.append([j.kind for j in jobs])
        if len(claims) == 2:
            second_claim.set()
        return jobs

    agent.claim = counted_claim
    agent._finish_overlapped = lambda started: second_claim.wait(30) and finish_overlapped(started)
    try:
        stats = agent.drain()
    finally:
        agent.close()
    assert claims[:2] == [["issue_local"], []], claims
    assert ["distribute"] in claims[2:], claims
    assert stats.outcomes == {"done": 1, "dead": 1}, stats.summary()
    assert job_row(conn, job)["state"] == "done"
    assert conn.execute("SELECT state::text, last_error FROM jobs WHERE kind = 'distribute'").fetchone() == \
        ("dead", "no host in this test")


def test_jobs_claimed_ahead_keep_their_leases_while_the_claim_before_them_runs(conn, dsn, config):
    """A claim whose handlers take longer in all than the lease (3 x 1.3 s, lease 3 s): the jobs claimed
    ahead wait for it with their leases extended, as running jobs', and none is lost."""
    jobs = _local_issue_jobs(conn, config, 9)
    agent, claims, _ = _agent_counting_runs(dsn, config, lambda job, ctx, n: time.sleep(1.3), batch=3, lease=3)
    try:
        stats = agent.drain()
    finally:
        agent.close()
    assert any(ahead for ahead, _, _ in claims), claims
    assert dict(stats.outcomes) == {"done": 9}, stats.summary()
    assert {job_row(conn, j)["attempts"] for j in jobs} == {1}


def _handed_back(conn) -> dict[int, str]:
    """The jobs handed back (release_jobs' events), with the state each went back to."""
    return dict(conn.execute("SELECT job, job_state::text FROM events WHERE reason LIKE '%handed back by agent%' "
                             "ORDER BY job").fetchall())


def _interrupted(agent) -> None:
    """Drain until a handler's KeyboardInterrupt (Ctrl-C), then close the agent."""
    try:
        with pytest.raises(KeyboardInterrupt):
            agent.drain()
    finally:
        agent.close()


def test_jobs_claimed_and_not_done_are_handed_back_when_the_drain_ends_abnormally(conn, dsn, config):
    """Ctrl-C in the first job's handler: every issue_local job of the drain is handed back at once (release_jobs:
    queued, due, their attempt not counted, with an event): the one interrupted and the one after it in the
    claim (nothing of an issue_local job acts outside the agent before its completion is stored), and the claim
    made ahead, not run, whose leases are no longer extended (the agent's heartbeats go on for other jobs). A
    job released twice, or under another lease token, is left alone."""
    jobs = _local_issue_jobs(conn, config, 6)

    def interrupt(job, ctx, n):
        if n == 1:
            time.sleep(0.5)         # the claim ahead is made by now
            raise KeyboardInterrupt

    agent, claims, runs = _agent_counting_runs(dsn, config, interrupt, batch=2, lease=3)
    try:
        with pytest.raises(KeyboardInterrupt):
            agent.drain()
        ahead = [j for is_ahead, _, ids in claims if is_ahead for j in ids]
        current = [j for is_ahead, _, ids in claims if not is_ahead for j in ids]
        assert ahead and len(current) == 2 and not set(ahead) & set(runs) and runs == current[:1], (claims, runs)
        for j in ahead + current:
            row = job_row(conn, j)
            assert (row["state"], row["attempts"], row["locked_by"], row["lease_hash"]) == ("queued", 0, None, None), row
        assert _handed_back(conn) == {j: "queued" for j in sorted(ahead + current)}
        time.sleep(4)               # the agent is alive: its heartbeat thread would extend what it watches
        assert owner_conn(conn).execute("SELECT pki.requeue_expired_leases()").fetchone()[0] == 0
        assert {job_row(conn, j)["state"] for j in ahead + current} == {"queued"}
    finally:
        agent.close()
    assert set(jobs) >= set(ahead)
    # a second claim of one of them, handed back with a wrong token, then twice with its own: once only
    [mine] = conn.execute("SELECT id, lease_token FROM claim_jobs('a2', ARRAY['issue_local'], 1)").fetchall()
    assert conn.execute("SELECT release_jobs(%s, ARRAY[gen_random_uuid()])", ([mine[0]],)).fetchone()[0] == 0
    assert conn.execute("SELECT release_jobs(%s, %s)", ([mine[0]], [mine[1]])).fetchone()[0] == 1
    assert conn.execute("SELECT release_jobs(%s, %s)", ([mine[0]], [mine[1]])).fetchone()[0] == 0


def test_a_job_whose_handler_began_keeps_its_lease_and_the_rest_of_its_claim_is_handed_back(conn, dsn, config):
    """Ctrl-C in the handler of a job of a kind that acts outside the agent (here issue_local, registered as
    serial):
    that job stays leased (what it began outside may have happened); the jobs after it in the claim go back at
    once. A job that had failed an attempt before goes back failed, its attempt not counted and its error
    kept, due at once."""
    owner_conn(conn).execute("UPDATE pki.job_kinds SET concurrency = 'serial' WHERE kind = 'issue_local'")
    jobs = _local_issue_jobs(conn, config, 3)

    def fail_all(job, ctx, n):
        raise RuntimeError(f"run {n} failed")

    agent, _, _ = _agent_counting_runs(dsn, config, fail_all, batch=3)
    try:
        assert dict(agent.drain().outcomes) == {"failed": 3}
    finally:
        agent.close()
    errors = {j: job_row(conn, j)["last_error"] for j in jobs}
    owner_conn(conn).execute("UPDATE pki.jobs SET run_after = now() WHERE id = ANY(%s)", (jobs,))

    def interrupt(job, ctx, n):
        raise KeyboardInterrupt

    agent, claims, runs = _agent_counting_runs(dsn, config, interrupt, batch=3, lease=300)
    _interrupted(agent)
    [(_, _, claimed)] = claims
    begun, rest = runs[0], [j for j in claimed if j not in runs]
    assert runs == claimed[:1] and sorted(claimed) == sorted(jobs) and len(rest) == 2, (claims, runs)
    row = job_row(conn, begun)
    assert (row["state"], row["attempts"], row["locked_by"]) == ("running", 2, AGENT), row
    due = conn.execute("SELECT array_agg(id ORDER BY id) FROM jobs WHERE id = ANY(%s) AND run_after <= now()",
                       (rest,)).fetchone()[0]
    assert due == sorted(rest)
    for j in rest:
        row = job_row(conn, j)
        assert (row["state"], row["attempts"], row["locked_by"], row["lease_hash"], row["last_error"]) == \
            ("failed", 1, None, None, errors[j]), row
    assert _handed_back(conn) == {j: "failed" for j in sorted(rest)}


@pytest.mark.parametrize("at, pause", [(3, 0.0), (5, 0.3)])
def test_a_drain_interrupted_while_completions_are_on_their_way_leaves_no_job_running(conn, dsn, config, at, pause):
    """Ctrl-C in a later job's handler, completions of those before on their way (sent, or waiting for the
    completer): each job is done (its completion was in) or handed back; none waits for its lease."""
    jobs = _local_issue_jobs(conn, config, 6)

    def interrupt(job, ctx, n):
        if n == at:
            time.sleep(pause)
            raise KeyboardInterrupt

    agent, _, runs = _agent_counting_runs(dsn, config, interrupt, batch=10, lease=300)
    _interrupted(agent)
    states = {j: job_row(conn, j)["state"] for j in jobs}
    assert set(states.values()) <= {"done", "queued"}, states
    assert sorted(j for j, state in states.items() if state == "queued") == list(_handed_back(conn)), states
    assert runs[-1] in _handed_back(conn) and len(runs) == at


def test_a_claim_ahead_still_under_way_at_the_interrupt_is_handed_back_in_full(conn, dsn, config):
    """Ctrl-C while the claim ahead is being made: the drain waits for it, and hands back its jobs too."""
    jobs = _local_issue_jobs(conn, config, 6)
    claiming = threading.Event()

    def interrupt(job, ctx, n):
        if n == 1:
            claiming.wait(5)
            raise KeyboardInterrupt

    agent, claims, _ = _agent_counting_runs(dsn, config, interrupt, batch=2, lease=300)
    claim_ahead = agent._claim_ahead

    def slow_claim_ahead():
        claiming.set()
        time.sleep(0.5)
        return claim_ahead()

    agent._claim_ahead = slow_claim_ahead
    _interrupted(agent)
    ahead = [j for is_ahead, _, ids in claims if is_ahead for j in ids]
    assert len(ahead) == 2 and set(ahead) <= set(_handed_back(conn)), claims
    assert {job_row(conn, j)["state"] for j in jobs} <= {"queued"}


def test_after_an_error_of_the_agent_the_jobs_whose_handlers_ran_keep_their_leases(conn, dsn, config, monkeypatch):
    """Not Ctrl-C but an error outside the handlers (here the completions refused by a fault of the agent):
    the jobs not begun go back, those whose handlers ran keep their leases and their attempts (the error may
    be theirs: a job that makes every drain fail goes dead in the end, not round at once forever)."""
    from serverpki.agent import Agent
    jobs = _local_issue_jobs(conn, config, 6)

    faulted = threading.Event()

    def agent_fault(self, started):
        faulted.set()
        raise RuntimeError("a fault of the agent")

    def after_the_fault(job, ctx, n):
        if n >= 3:   # the first completions have met the fault: the drain ends with jobs not begun
            faulted.wait(5)

    monkeypatch.setattr(Agent, "_finish_overlapped", agent_fault)
    agent, claims, runs = _agent_counting_runs(dsn, config, after_the_fault, batch=2, lease=300)
    try:
        with pytest.raises(RuntimeError, match="a fault of the agent"):
            agent.drain()
    finally:
        agent.close()
    states = {j: job_row(conn, j)["state"] for j in jobs}
    claimed = {j for _, _, ids in claims for j in ids}
    assert runs and {states[j] for j in runs} == {"running"}, (runs, states)
    assert sorted(claimed - set(runs)) == list(_handed_back(conn)) != [], (claims, runs)
    assert {states[j] for j in claimed - set(runs)} == {"queued"}


def test_a_database_that_does_not_answer_does_not_hold_the_end_of_a_drain(conn, dsn, config, monkeypatch, caplog):
    """Ctrl-C with the database gone silent (a host lost, its packets dropped): the hand back waits
    HAND_BACK_SECONDS at most, and the jobs come back with their leases. (A listener that accepts and never
    answers: the error path a real PostgreSQL cannot produce.)"""
    import socket

    from serverpki import agent as agent_module
    monkeypatch.setattr(agent_module, "HAND_BACK_SECONDS", 2)
    jobs = _local_issue_jobs(conn, config, 3)
    silent, accepted = socket.create_server(("127.0.0.1", 0)), []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()   # kept open, silent

    interrupted = []

    def interrupt(job, ctx, n):
        agent.dsn = f"host=127.0.0.1 port={silent.getsockname()[1]} dbname=pki user=pki_worker"
        interrupted.append(time.monotonic())
        raise KeyboardInterrupt

    agent, _, _ = _agent_counting_runs(dsn, config, interrupt, batch=10, lease=300)
    try:
        with caplog.at_level("WARNING", logger="serverpki.agent"), pytest.raises(KeyboardInterrupt):
            try:
                agent.drain()
            finally:
                took = time.monotonic() - interrupted[0]
    finally:
        agent.close()
        silent.close()
    assert took < 2 + 1.5, took
    # (no answer within 2 s, or the connection's own timeout of as long: whichever comes first)
    assert "3 jobs not handed back (" in caplog.text and "they are claimed again when their lease runs out, in 300 s at most: run again then (" in caplog.text
    assert {job_row(conn, j)["state"] for j in jobs} == {"running"} and accepted


def test_a_CA_replaced_during_a_drain_signs_the_claims_made_after(conn, dsn, config):
    """-I while the first claim's first job signs: the claims after it, made ahead too, are signed by the new
    CA (the claim ahead does not read the CA before its turn)."""
    jobs = _local_issue_jobs(conn, config, 6)
    replaced = {}

    def replace_ca(job, ctx, n):
        if n == 1:
            time.sleep(0.5)         # the claim ahead is made by now
            with psycopg.connect(dsn, autocommit=True) as other:
                replaced["ca"] = issue_ca(other, config)

    agent, claims, _ = _agent_counting_runs(dsn, config, replace_ca, batch=2, lease=300)
    try:
        stats = agent.drain()
    finally:
        agent.close()
    assert dict(stats.outcomes) == {"done": 6}, stats.summary()
    signed_by = dict(conn.execute("SELECT j.id, i.cacert FROM jobs j JOIN certinstances i ON i.id = j.instance "
                                  "WHERE j.id = ANY(%s)", (jobs,)).fetchall())
    later = [j for _, _, ids in claims[1:] for j in ids]
    assert later and all(signed_by[j] == replaced["ca"] for j in later), (claims, signed_by, replaced)


def _signed_by(conn, jobs: list[int]) -> dict[int, int]:
    """Each issue job's CA instance (the cacert of the instance it issued)."""
    return dict(conn.execute("SELECT j.id, i.cacert FROM jobs j JOIN certinstances i ON i.id = j.instance "
                             "WHERE j.id = ANY(%s)", (jobs,)).fetchall())


def _drained(dsn, config, kinds: list[str]):
    from serverpki.agent import Agent
    agent = Agent(dsn, config, name=AGENT, kinds=kinds, batch=10)
    try:
        return agent.drain()
    finally:
        agent.close()


def test_issue_jobs_claimed_after_a_CA_job_are_signed_by_the_new_CA(conn, dsn, config):
    """One claim: the issue_local_ca job of a -I (it goes first) and issue_local jobs: these read the CA when
    their turn comes, after the CA job is in, and are signed by the new CA, not the one it replaces."""
    jobs = _local_issue_jobs(conn, config, 4)
    ca_job = conn.execute("SELECT request_local_ca('Local CA', 'rsa')").fetchone()[0]
    stats = _drained(dsn, config, ["issue_local", "issue_local_ca"])
    assert dict(stats.outcomes) == {"done": 5}, stats.summary()
    assert set(_signed_by(conn, jobs).values()) == {job_row(conn, ca_job)["instance"]}


def test_issue_jobs_claimed_with_the_first_CA_job_are_issued(conn, dsn, config):
    """No CA yet: the -I and the local certificates in one claim: the issue jobs run after the CA is in, and
    are issued (not given up: no local CA)."""
    config.alerts = SimpleNamespace(channels=[])
    names = [f"n{i}.example.org" for i in range(4)]
    for name in names:
        add_local_cert(conn, name, "ec")
    jobs = [job for (job,) in conn.execute("SELECT job FROM request_create(selection(only_certs => %s))", (names,))]
    conn.execute("SELECT request_local_ca('Local CA', 'rsa')")
    stats = _drained(dsn, config, ["issue_local", "issue_local_ca"])
    assert dict(stats.outcomes) == {"done": 5}, stats.summary()
    assert {job_row(conn, j)["state"] for j in jobs} == {"done"}


def test_issue_jobs_claimed_after_a_key_encryption_job_store_encrypted_keys_at_once(conn, dsn, config):
    """One claim: the encrypt_keys job of a -X (it goes first) and issue_local jobs: these read the keys' form
    when their turn comes, after the keys are encrypted: none is refused (SP028) and retried."""
    jobs = _local_issue_jobs(conn, config, 4)
    request_keys(conn, True)
    stats = _drained(dsn, config, ["issue_local", "encrypt_keys"])
    assert dict(stats.outcomes) == {"done": 5}, stats.summary()
    assert {job_row(conn, j)["attempts"] for j in jobs} == {1}


def test_keys_encrypted_in_another_session_during_a_drain_fail_no_more_than_the_claim_it_hit(conn, dsn, config):
    """-X completed in another session while the first claim's second job signs: that claim's jobs after it are
    refused (SP028: the key's form changed) and retried; the claim made ahead reads the keys' form at its turn,
    not when it was claimed, and is not refused."""
    jobs = _local_issue_jobs(conn, config, 15)

    def encrypt_keys(job, ctx, n):
        if n == 2:
            time.sleep(0.5)   # the claim ahead is made by now
            with psycopg.connect(dsn, autocommit=True) as other:
                run_job(other, other.execute("SELECT request_key_encryption(true)").fetchone()[0], config)

    agent, _, runs = _agent_counting_runs(dsn, config, encrypt_keys, batch=5, lease=300)
    try:
        agent.drain()
    finally:
        agent.close()
    refused = [runs.index(j) for j in jobs if "SP028" in (job_row(conn, j)["last_error"] or "")]
    assert all(n < 5 for n in refused), refused

