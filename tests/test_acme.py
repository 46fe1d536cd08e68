"""ACME certificates with dns-01 over RFC 2136, and DANE TLSA records — against a
real Pebble (the ACME test server of Let's Encrypt) and a real BIND 9.

BIND and the default Pebble start once for this module; tests that need Pebble
with other knobs (PEBBLE_WFE_NONCEREJECT, PEBBLE_AUTHZREUSE, external account
binding) start their own, resolving at the same BIND. Each test has a fresh
database and runs the real agent (serverpki.agent.Agent) under a login role of
pki_agent, so the grants are part of what is tested. Results are checked from
outside: openssl verifies chains and computes the TLSA hashes; dnspython asks
BIND what it serves.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import psycopg
import pytest
from acme import challenges, messages
from cryptography.hazmat.primitives import serialization
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from typer.testing import CliRunner

from helpers import owner_conn
from serverpki import acmeclient, dnsupdate, operate
from serverpki.agent import Agent
from serverpki.config import parse_config
from serverpki.errors import GiveUp, RetryLater
from serverpki.handlers import acme_issue
from lab.bind import BindLab
from lab.pebble import PebbleLab

ZONE = "demo.serverpki.test"
OTHER = "other.serverpki.test"
CONTACT = "pki@example.org"
DB_PASS = "db passphrase"


# --------------------------------------------------------------------------- the peers

@pytest.fixture(scope="module")
def bind():
    with BindLab(zones=(ZONE, OTHER)) as lab:
        yield lab


@pytest.fixture(scope="module")
def pebble(bind):
    # steady: no nonce rejected, no authorization handed out again (the tests with those knobs start their own)
    with PebbleLab(dns_port=bind.port, nonce_reject=0, authz_reuse=0) as lab:
        yield lab


@pytest.fixture
def agent_dsn(pg_server, dbname):
    """A login role in pki_agent: the agent runs with the privileges it has in production."""
    role = f"t_agent_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(dbname), autocommit=True) as su:
        su.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE pki_agent')
    yield make_conninfo(pg_server.dsn(dbname), user=role)
    with psycopg.connect(pg_server.dsn(dbname), autocommit=True) as su:
        su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        su.execute(f'DROP ROLE "{role}"')


def make_config(tmp_path: Path, dsn: str, pebble: PebbleLab, bind: BindLab, key_file: Path | None = None,
                acme: dict | None = None, dns: dict | None = None):
    passfile = tmp_path / "db.pass"
    passfile.write_text(DB_PASS + "\n")
    passfile.chmod(0o600)
    data = {
        "database": {"dsn": dsn},
        "paths": {"db_encryption_key": str(passfile), "work_dir": str(tmp_path)},
        "x509": {"rsa_key_size": 2048, "ec_curve": "secp384r1"},
        "acme": {"directory_url": pebble.directory_url, "contact_email": CONTACT, "agree_tos": True,
                 "ca_bundle": str(pebble.ca_bundle), **(acme or {})},
        "dns": {"tsig_key_file": str(key_file or bind.key_file), "primary": bind.primary,
                "propagation_timeout_seconds": 10, **(dns or {})},
        "logging": {"syslog_address": ""},
        "agent": {"name": "test-agent", "lease_seconds": 60},
    }
    return parse_config(data, tmp_path / "serverpki.toml")


@pytest.fixture
def config(tmp_path, agent_dsn, pebble, bind):
    return make_config(tmp_path, agent_dsn, pebble, bind)


# --------------------------------------------------------------------------- helpers

def drain(config) -> None:
    """Run what is due with the real agent (a cron run's drain)."""
    agent = Agent(config.database.dsn, config, name="test-agent", lease=60)
    try:
        agent.drain()
    finally:
        agent.close()


def due_now(conn) -> None:
    """Retries are due at once (instead of after their back-off)."""
    owner_conn(conn).execute("UPDATE jobs SET run_after = now() WHERE state IN ('queued', 'failed')")


def job(conn, job_id: int) -> dict:
    return conn.cursor(row_factory=dict_row).execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()


def register(conn, config) -> dict:
    job_id = conn.execute("SELECT request_acme_account(%s, %s)",
                          (config.acme.directory_url, config.acme.contact_email)).fetchone()[0]
    drain(config)
    row = job(conn, job_id)
    assert row["state"] == "done", row["last_error"]
    return row


def add_le_cert(conn, name: str, algo: str = "rsa", must_staple: bool = False, altnames: tuple[str, ...] = (),
                services: tuple[tuple[str, int], ...] = (("https", 443),)) -> None:
    conn.execute("SELECT * FROM add_cert(%s, 'server', 'LE', %s, %s, NULL, NULL, NULL, NULL, NULL, NULL)",
                 (name, algo, must_staple))
    for alt in altnames:
        conn.execute("SELECT add_altname(%s, %s)", (name, alt))
    for service, port in services:
        conn.execute("SELECT add_service(%s, %s, %s)", (name, service, port))


def create(conn, config, name: str) -> dict:
    """-C for one certificate, drained; returns the issue job's row."""
    job_id, = conn.execute("SELECT job FROM request_create(selection(only_certs => ARRAY[%s]))", (name,)).fetchone()
    drain(config)
    return job(conn, job_id)


def issued(conn, config, name: str) -> tuple[int, dict]:
    row = create(conn, config, name)
    assert row["state"] == "done", row["last_error"]
    return row["instance"], row["result"]


def pairs(conn, instance: int) -> dict[str, dict]:
    rows = conn.cursor(row_factory=dict_row).execute(
        "SELECT encryption_algo::text AS algo, convert_from(cert, 'UTF8') AS cert, convert_from(key, 'UTF8') AS key "
        "FROM certkeydata WHERE certinstance = %s", (instance,)).fetchall()
    return {r["algo"]: r for r in rows}


def openssl(*args: str, input: bytes | None = None) -> bytes:
    done = subprocess.run(["openssl", *args], input=input, capture_output=True)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr.decode()}"
    return done.stdout


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def openssl_tlsa(cert_pem: str, selector: int, matching: int) -> str:
    """The TLSA data computed with openssl alone: DER of the certificate or of its public key, hashed."""
    der = openssl("x509", "-outform", "DER", input=cert_pem.encode())
    if selector == 1:
        pub = openssl("x509", "-noout", "-pubkey", input=cert_pem.encode())
        der = openssl("pkey", "-pubin", "-outform", "DER", input=pub)
    if matching == 0:
        return der.hex().upper()
    digest = openssl("dgst", "-sha256" if matching == 1 else "-sha512", "-r", input=der)
    return digest.split()[0].decode().upper()


def served(bind: BindLab, owner: str, rdtype: str = "TLSA") -> set[str]:
    """What BIND answers for owner/type, asked directly: TLSA as 'U S M HEX' (upper case), TXT as the string."""
    query = dns.message.make_query(owner, rdtype)
    reply = dns.query.tcp(query, "127.0.0.1", port=bind.port, timeout=5)
    out = set()
    for rrset in reply.answer:
        for rd in rrset:
            if rd.rdtype == dns.rdatatype.TLSA:
                out.add(f"{rd.usage} {rd.selector} {rd.mtype} {rd.cert.hex().upper()}")
            elif rd.rdtype == dns.rdatatype.TXT:
                out.add(b"".join(rd.strings).decode())
    return out


def served_once_removed(bind: BindLab, owner: str, timeout: float = 10.0) -> set[str]:
    """The TXT records BIND serves at owner once a removal has had time to reach the signed zone.
    Inline signing answers an UPDATE and applies it to the signed copy a moment later (longer under
    load), and the agent does not wait for a challenge record's removal (nothing depends on it)."""
    deadline = time.monotonic() + timeout
    while (seen := served(bind, owner, "TXT")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def challenge_owners(names) -> list[str]:
    return [f"_acme-challenge.{n.removeprefix('*.')}." for n in names]


def assert_no_key_in_jobs(conn) -> None:
    leaks = conn.execute("SELECT id, kind FROM jobs WHERE concat(args::text, result::text, last_error) LIKE '%PRIVATE KEY%'").fetchall()
    assert leaks == []


# --------------------------------------------------------------------------- registration (-Z)

def test_register_stores_the_account_with_its_key(conn, config):
    row = register(conn, config)
    account = conn.cursor(row_factory=dict_row).execute("SELECT * FROM acme_accounts").fetchone()
    assert account["directory_url"] == config.acme.directory_url and account["contact"] == CONTACT
    assert account["uri"].startswith(config.acme.directory_url.rsplit("/", 1)[0] + "/my-account/")
    assert account["key"].startswith("-----BEGIN PRIVATE KEY-----")   # the stored keys are in clear here
    assert row["result"]["uri"] == account["uri"] and row["result"]["new"] is True
    assert "key" not in row["result"]
    assert_no_key_in_jobs(conn)
    # again: the same key finds the same account at the CA
    again = register(conn, config)
    assert again["result"]["new"] is False and again["result"]["uri"] == account["uri"]
    assert conn.execute("SELECT count(*), min(key) = %s FROM acme_accounts", (account["key"],)).fetchone() == (1, True)


def test_register_encrypts_the_account_key_when_keys_are_encrypted(conn, config, tmp_path):
    owner_conn(conn).execute("UPDATE revision SET keysencrypted = true")   # as -X leaves it
    register(conn, config)
    key = conn.execute("SELECT key FROM acme_accounts").fetchone()[0]
    assert key.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    openssl("pkey", "-in", write(tmp_path / "k.pem", key), "-passin", "pass:" + config.paths.db_encryption_key.read_text(), "-noout")
    # and the encrypted key signs an order
    add_le_cert(conn, f"enc.{ZONE}")
    instance, result = issued(conn, config, f"enc.{ZONE}")
    assert pairs(conn, instance)["rsa"]["key"].startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")


def test_register_without_agreeing_to_the_terms_is_refused_with_the_cas_detail(conn, tmp_path, agent_dsn, pebble, bind):
    config = make_config(tmp_path, agent_dsn, pebble, bind, acme={"agree_tos": False})
    job_id = conn.execute("SELECT request_acme_account()").fetchone()[0]
    drain(config)
    row = job(conn, job_id)
    assert row["state"] == "dead"
    assert "urn:ietf:params:acme:error:" in row["last_error"] and "agree_tos" in row["last_error"]
    assert conn.execute("SELECT count(*) FROM acme_accounts").fetchone()[0] == 0


def test_register_with_external_account_binding(conn, tmp_path, agent_dsn, bind):
    hmac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    with PebbleLab(dns_port=bind.port, eab_keys={"kid-1": hmac}) as eab_pebble:
        without = make_config(tmp_path, agent_dsn, eab_pebble, bind)
        job_id = conn.execute("SELECT request_acme_account()").fetchone()[0]
        drain(without)
        assert job(conn, job_id)["state"] == "dead"
        assert "eab_kid" in job(conn, job_id)["last_error"]
        wrong = make_config(tmp_path, agent_dsn, eab_pebble, bind, acme={"eab_kid": "kid-1", "eab_hmac_key": "c2VjcmV0"})
        job_id = conn.execute("SELECT request_acme_account()").fetchone()[0]
        drain(wrong)
        assert job(conn, job_id)["state"] == "dead" and "urn:ietf:params:acme:error:" in job(conn, job_id)["last_error"]
        good = make_config(tmp_path, agent_dsn, eab_pebble, bind, acme={"eab_kid": "kid-1", "eab_hmac_key": hmac})
        row = register(conn, good)
        assert row["result"]["external_account_binding"] is True
        assert "hmac" not in str(row["result"]).lower()


def test_operate_Z_registers(conn, config, tmp_path, pg_server, dsn):
    path = tmp_path / "serverpki.toml"
    path.write_text(f"""[database]
dsn = "{dsn}"
[acme]
directory_url = "{config.acme.directory_url}"
contact_email = "{CONTACT}"
agree_tos = true
ca_bundle = "{config.acme.ca_bundle}"
[logging]
syslog_address = ""
""")
    outcome = CliRunner().invoke(operate.app, ["-Z", "-f", str(path)])
    assert outcome.exit_code == 0, outcome.output
    assert conn.execute("SELECT contact FROM acme_accounts").fetchall() == [(CONTACT,)]


def test_issue_without_an_account_gives_up_saying_so(conn, config):
    add_le_cert(conn, f"noacct.{ZONE}")
    row = create(conn, config, f"noacct.{ZONE}")
    assert row["state"] == "dead" and "operate_serverPKI -Z" in row["last_error"]
    assert conn.execute("SELECT count(*) FROM certinstances").fetchone()[0] == 0


# --------------------------------------------------------------------------- issuing (-C)

@pytest.mark.parametrize("algo, algos", [("rsa", ["rsa"]), ("ec", ["ec"]), ("rsa_plus_ec", ["ec", "rsa"])])
def test_issue_with_alt_names_and_must_staple_verifies_against_pebbles_root(conn, config, pebble, bind, tmp_path,
                                                                           monkeypatch, algo, algos):
    register(conn, config)
    csrs: list[bytes] = []
    real_build_csr = acme_issue.x509util.build_csr

    def keep_csr(*args, **kwargs):   # a spy: the CSR goes to Pebble unchanged
        csrs.append(real_build_csr(*args, **kwargs))
        return csrs[-1]

    monkeypatch.setattr(acme_issue.x509util, "build_csr", keep_csr)
    name = f"www-{algo.replace('_', '-')}.{ZONE}"
    alts = (f"{algo.replace('_', '-')}.{ZONE}", f"mail-{algo.replace('_', '-')}.{OTHER}")
    add_le_cert(conn, name, algo, must_staple=True, altnames=alts)
    instance, result = issued(conn, config, name)

    stored = pairs(conn, instance)
    assert sorted(stored) == algos
    cacert = conn.execute("SELECT cacert FROM certinstances WHERE id = %s", (instance,)).fetchone()[0]
    ca = conn.cursor(row_factory=dict_row).execute(
        """SELECT s.name::text AS name, s.type::text AS subject_type, c.type::text AS cert_type, i.state::text AS state,
                  convert_from(k.cert, 'UTF8') AS cert, k.key
             FROM certinstances i JOIN certificates c ON c.id = i.certificate
             JOIN subjects s ON s.certificate = c.id AND NOT s.isaltname JOIN certkeydata k ON k.certinstance = i.id
            WHERE i.id = %s""", (cacert,)).fetchone()
    assert (ca["subject_type"], ca["cert_type"], ca["state"], ca["key"]) == ("CA", "LE", "issued", None)
    assert ca["name"].startswith("Pebble Intermediate CA")
    root = write(tmp_path / "root.pem", pebble.root_pem())
    chain = write(tmp_path / "chain.pem", ca["cert"])
    for algo_of_pair, pair in stored.items():
        leaf = write(tmp_path / f"leaf-{algo_of_pair}.pem", pair["cert"])
        assert openssl("verify", "-CAfile", root, "-untrusted", chain, leaf).decode().strip() == f"{leaf}: OK"
        text = openssl("x509", "-in", leaf, "-noout", "-text").decode()
        for n in (name, *alts):
            assert f"DNS:{n}" in text
        # Pebble 2.4.0 does not copy the TLS Feature into its certificates; the CSR asks for it
        assert ("TLS Feature" in text) == ("TLS Feature" in text and "status_request" in text)
        assert ("Public Key Algorithm: rsaEncryption" in text) == (algo_of_pair == "rsa")
        # the stored key is the certificate's
        key_pub = openssl("pkey", "-in", write(tmp_path / "key.pem", pair["key"]), "-pubout")
        assert key_pub == openssl("x509", "-in", leaf, "-noout", "-pubkey")
    assert len(csrs) == len(algos)
    for csr in csrs:
        text = openssl("req", "-noout", "-text", input=csr.public_bytes(serialization.Encoding.PEM)).decode()
        assert "TLS Feature" in text and "status_request" in text
        for n in (name, *alts):
            assert f"DNS:{n}" in text
    assert conn.execute("SELECT ocsp_must_staple FROM certinstances WHERE id = %s", (instance,)).fetchone()[0] is True
    # names in two zones: the TXT records went out in one UPDATE per zone, and are gone again
    assert result["dns_updates"] == {f"{ZONE}.": 2, f"{OTHER}.": 2}
    assert result["challenges"] == result["authorizations"] == 3 * len(algos)
    for owner in challenge_owners((name, *alts)):
        assert served_once_removed(bind, owner) == set()
    until = conn.execute("SELECT authorized_until FROM certificates c JOIN subjects s ON s.certificate = c.id "
                         "WHERE s.name = %s", (name,)).fetchone()[0]
    assert until is not None and until.isoformat() == result["authorized_until"]
    assert_no_key_in_jobs(conn)


def test_the_issuer_is_stored_once(conn, config):
    register(conn, config)
    add_le_cert(conn, f"one.{ZONE}")
    add_le_cert(conn, f"two.{ZONE}", "ec")
    first, _ = issued(conn, config, f"one.{ZONE}")
    second, _ = issued(conn, config, f"two.{ZONE}")
    cas = conn.execute("SELECT DISTINCT cacert FROM certinstances WHERE id IN (%s, %s)", (first, second)).fetchall()
    assert len(cas) == 1
    assert conn.execute("SELECT count(*) FROM subjects WHERE type = 'CA'").fetchone()[0] == 1


def test_wildcard_name_is_validated_at_its_base_name(conn, config, bind):
    register(conn, config)
    add_le_cert(conn, f"wild.{ZONE}", altnames=(f"*.wild.{ZONE}",))
    instance, result = issued(conn, config, f"wild.{ZONE}")
    # *.wild and wild share _acme-challenge.wild: two values, one RRset, one UPDATE
    assert result["challenges"] == 2 and result["dns_updates"] == {f"{ZONE}.": 2}
    assert served_once_removed(bind, f"_acme-challenge.wild.{ZONE}.") == set()


def test_an_invalid_challenge_fails_with_the_cas_problem_and_removes_the_records(conn, config, bind, monkeypatch):
    register(conn, config)
    add_le_cert(conn, f"bad.{ZONE}")
    monkeypatch.setattr(challenges.DNS01, "validation", lambda self, key, **kw: "not-the-key-authorization")
    row = create(conn, config, f"bad.{ZONE}")
    assert row["state"] == "dead"
    assert "urn:ietf:params:acme:error:unauthorized" in row["last_error"] and f"bad.{ZONE}" in row["last_error"]
    assert served_once_removed(bind, f"_acme-challenge.bad.{ZONE}.") == set()
    assert conn.execute("SELECT count(*) FROM certinstances").fetchone()[0] == 0   # the reserved instance went


# --------------------------------------------------------------------------- resumable, safe to repeat

def test_a_crash_after_ordering_resumes_the_order(conn, config, monkeypatch):
    register(conn, config)
    add_le_cert(conn, f"resume.{ZONE}", "rsa_plus_ec")
    real = acme_issue.Issuance.authorize
    crashes = []

    def crash_once(self):
        if not crashes:
            crashes.append(1)
            raise RuntimeError("agent crashed")
        return real(self)

    monkeypatch.setattr(acme_issue.Issuance, "authorize", crash_once)
    row = create(conn, config, f"resume.{ZONE}")
    assert row["state"] == "failed" and "agent crashed" in row["last_error"]
    orders = row["result"]["orders"]
    assert sorted(orders) == ["ec", "rsa"] and row["result"]["step"] == "ordered"
    due_now(conn)
    drain(config)
    done = job(conn, row["id"])
    assert done["state"] == "done", done["last_error"]
    assert done["result"]["orders"] == orders                      # the same orders, finished
    assert (done["result"]["orders_resumed"], done["result"]["orders_placed"]) == (2, 0)


def test_a_retry_removes_the_challenge_records_a_failed_attempt_left(conn, config, bind, monkeypatch):
    register(conn, config)
    name = f"leftover.{ZONE}"
    add_le_cert(conn, name)
    real_delete = dnsupdate.DnsUpdater.delete_records
    real_answer = acmeclient.acme_client.ClientV2.answer_challenge

    def delete_fails(self, *args, **kwargs):
        raise dnsupdate.DnsUnavailable("update of the zone: server unreachable (simulated)")

    def answer_crashes(self, *args, **kwargs):
        raise RuntimeError("agent crashed before answering")

    monkeypatch.setattr(dnsupdate.DnsUpdater, "delete_records", delete_fails)
    monkeypatch.setattr(acmeclient.acme_client.ClientV2, "answer_challenge", answer_crashes)
    row = create(conn, config, name)
    assert row["state"] == "failed"
    left = served(bind, f"_acme-challenge.{name}.", "TXT")
    assert len(left) == 1 and row["result"]["txt"] == [[f"{ZONE}.", f"_acme-challenge.{name}.", next(iter(left))]]
    monkeypatch.setattr(dnsupdate.DnsUpdater, "delete_records", real_delete)
    monkeypatch.setattr(acmeclient.acme_client.ClientV2, "answer_challenge", real_answer)
    due_now(conn)
    drain(config)
    assert job(conn, row["id"])["state"] == "done"
    assert served_once_removed(bind, f"_acme-challenge.{name}.") == set()


def test_bind_stopped_the_job_retries_and_succeeds_when_it_is_back(conn, config, bind):
    register(conn, config)
    name = f"outage.{ZONE}"
    add_le_cert(conn, name)
    bind.stop()
    try:
        row = create(conn, config, name)
    finally:
        bind.start()
    assert row["state"] == "failed"
    assert "unreachable" in row["last_error"] and bind.primary in row["last_error"]
    assert conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (row["instance"],)).fetchone()[0] == "reserved"
    due_now(conn)
    drain(config)
    done = job(conn, row["id"])
    assert done["state"] == "done", done["last_error"]
    assert done["result"]["orders_resumed"] == 1 and done["result"]["orders_placed"] == 0
    assert conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (row["instance"],)).fetchone()[0] == "issued"


# --------------------------------------------------------------------------- Pebble's fault knobs

def test_nonce_rejection_30_percent_still_issues_every_certificate(conn, tmp_path, agent_dsn, bind):
    with PebbleLab(dns_port=bind.port, nonce_reject=30, authz_reuse=0) as noisy:
        config = make_config(tmp_path, agent_dsn, noisy, bind)
        register(conn, config)
        names = [f"nonce{i}.{ZONE}" for i in range(4)]
        for i, name in enumerate(names):
            add_le_cert(conn, name, ["rsa", "ec", "rsa_plus_ec", "ec"][i], altnames=(f"alt-nonce{i}.{OTHER}",))
        conn.execute("SELECT * FROM request_create(selection(only_certs => %s))", (names,))
        for _ in range(10):
            drain(config)
            if not conn.execute("SELECT count(*) FROM jobs WHERE state IN ('queued', 'failed')").fetchone()[0]:
                break
            due_now(conn)
        rows = conn.execute("SELECT state::text, result FROM jobs WHERE kind = 'issue_acme'").fetchall()
        assert [state for state, _ in rows] == ["done"] * 4
        assert sum(result["bad_nonces"] for _, result in rows) > 0
        assert conn.execute("SELECT count(*) FROM certinstances WHERE state = 'issued' AND cacert IS NOT NULL").fetchone()[0] == 4


def test_authz_reuse_100_skips_the_valid_authorizations(conn, tmp_path, agent_dsn, bind):
    with PebbleLab(dns_port=bind.port, nonce_reject=0, authz_reuse=100) as reusing:
        config = make_config(tmp_path, agent_dsn, reusing, bind)
        register(conn, config)
        name = f"reuse.{ZONE}"
        add_le_cert(conn, name, "rsa_plus_ec", altnames=(f"reuse.{OTHER}",))
        _, first = issued(conn, config, name)
        assert first["challenges"] >= 2
        _, second = issued(conn, config, name)
        # every authorization of both orders (rsa and ec) came back valid, and was skipped
        assert second["skipped_valid"] == second["authorizations"] >= 2
        assert second["challenges"] == 0 and second["dns_updates"] == {}


# --------------------------------------------------------------------------- errors sorted

def test_rate_limited_retries_after_the_servers_retry_after():
    response = _problem_response(429, "urn:ietf:params:acme:error:rateLimited", "too many certificates", {"Retry-After": "120"})
    with pytest.raises(messages.Error) as info:
        acmeclient.Network._check_response(response)
    verdict = acmeclient.sort(info.value)
    assert isinstance(verdict, RetryLater) and verdict.retry_after == 120.0 and "too many certificates" in str(verdict)
    bad_nonce = _problem_response(400, "urn:ietf:params:acme:error:badNonce", "stale")
    with pytest.raises(messages.Error) as info:
        acmeclient.Network._check_response(bad_nonce)
    assert isinstance(acmeclient.sort(info.value), RetryLater)
    unauthorized = _problem_response(403, "urn:ietf:params:acme:error:unauthorized", "no such name")
    with pytest.raises(messages.Error) as info:
        acmeclient.Network._check_response(unauthorized)
    verdict = acmeclient.sort(info.value)
    assert isinstance(verdict, GiveUp) and "no such name" in str(verdict)


def _problem_response(status: int, typ: str, detail: str, headers: dict | None = None):
    import json

    import requests

    response = requests.Response()
    response.status_code = status
    response.headers.update({"Content-Type": "application/problem+json", **(headers or {})})
    response._content = json.dumps({"type": typ, "detail": detail}).encode()
    return response


# --------------------------------------------------------------------------- TLSA records

SERVICES = [  # name, port, prefix: every usage/selector/matching the prefix may ask for
    ("https", 443, None),
    ("xmpp", 5222, "_5222._tcp.{}. 300 IN TLSA 3 1 1"),
    ("xmpps", 5223, "_5223._tcp.{}. 300 IN TLSA 3 1 2"),
    ("imaps", 993, "_993._tcp.{}. 300 IN TLSA 3 0 2"),
    ("ldaps", 636, "_636._tcp.{}. 300 IN TLSA 2 0 1"),
    ("pop3s", 995, "_995._tcp.{}. 300 IN TLSA 2 1 1"),
]


def add_services(conn) -> None:
    for name, port, prefix in SERVICES[1:]:
        conn.execute("SELECT add_tlsa_service(%s, %s, %s)", (name, port, prefix))


def deploy(conn, instance: int) -> None:
    """What a finished distribution does (complete_distribute): the successor goes live, the old one expires.
    The DANE-safe guard wants the TLSA out for 2 x TTL: the clock is moved on for this step only."""
    conn.execute("SELECT set_config('pki.now', %s, false)", (time_in(3 * 3600),))
    try:
        cert = conn.execute("SELECT certificate FROM certinstances WHERE id = %s", (instance,)).fetchone()[0]
        owner = owner_conn(conn)   # the owner's function complete_distribute would do this
        owner.execute("UPDATE certinstances SET state = 'deployed' WHERE id = %s", (instance,))
        owner.execute("UPDATE certinstances SET state = 'expired' WHERE certificate = %s AND state = 'deployed' AND id <> %s",
                      (cert, instance))
    finally:
        conn.execute("RESET pki.now")


def time_in(seconds: int) -> str:
    import datetime as dt

    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)).isoformat()


def consolidate(conn, config, name: str) -> dict:
    """-T for one certificate, drained; the publish job's row."""
    job_id, = conn.execute("SELECT job FROM request_consolidate_tlsa(selection(only_certs => ARRAY[%s]))", (name,)).fetchone()
    drain(config)
    return job(conn, job_id)


def expected(conn, instances: list[int], names, services=SERVICES) -> dict[str, set[str]]:
    """owner -> records, computed with openssl from the stored certificates (and their issuers for usage 2)."""
    out: dict[str, set[str]] = {}
    for _, port, prefix in services:
        usage, selector, matching = (int(x) for x in (prefix or "3 0 1").split()[-3:])
        for n in names:
            records = out.setdefault(f"_{port}._tcp.{n}.", set())
            for inst in instances:
                if usage == 3:
                    certs = [p["cert"] for p in pairs(conn, inst).values()]
                else:
                    ca = conn.execute("SELECT cacert FROM certinstances WHERE id = %s", (inst,)).fetchone()[0]
                    certs = [p["cert"] for p in pairs(conn, ca).values()]
                for pem in certs:
                    records.add(f"{usage} {selector} {matching} {openssl_tlsa(pem, selector, matching)}")
    return out


def test_tlsa_records_in_bind_equal_openssls_hashes(conn, config, bind):
    register(conn, config)
    add_services(conn)
    name = f"dane.{ZONE}"
    names = (name, f"dane.{OTHER}")
    add_le_cert(conn, name, "rsa_plus_ec", altnames=names[1:], services=tuple((s, p) for s, p, _ in SERVICES))
    instance, _ = issued(conn, config, name)
    deploy(conn, instance)
    row = consolidate(conn, config, name)
    assert row["state"] == "done", row["last_error"]
    # one UPDATE per zone, all owners of the zone in it
    assert row["result"]["dns_updates"] == {f"{ZONE}.": 1, f"{OTHER}.": 1}
    want = expected(conn, [instance], names)
    for owner, records in want.items():
        assert served(bind, owner) == records, owner
    # rsa and ec: two EE records per owner; the trust anchor (one issuer) once
    assert len(want[f"_443._tcp.{name}."]) == 2 and len(want[f"_636._tcp.{name}."]) == 1
    # the view says the same as openssl
    view = conn.execute("SELECT owner, usage || ' ' || selector || ' ' || matching || ' ' || data FROM tlsa_desired "
                        "WHERE instance = %s", (instance,)).fetchall()
    assert {r for _, r in view} == set().union(*want.values())
    assert conn.execute("SELECT tlsa_published IS NOT NULL FROM certinstances WHERE id = %s", (instance,)).fetchone()[0]


def test_prepublish_shows_two_records_per_owner_and_the_rollover_leaves_one(conn, config, bind):
    register(conn, config)
    name = f"roll.{ZONE}"
    add_le_cert(conn, name)
    active, _ = issued(conn, config, name)
    deploy(conn, active)
    assert consolidate(conn, config, name)["state"] == "done"
    owner = f"_443._tcp.{name}."
    assert served(bind, owner) == expected(conn, [active], [name], SERVICES[:1])[owner]
    successor, _ = issued(conn, config, name)
    # the scheduler's prepublish (rule 9) enqueues exactly this
    owner_conn(conn).execute("SELECT * FROM enqueue_tlsa_many(ARRAY[cert_id(%s)], ARRAY['rule 9: prepublish'], ARRAY[%s])",
                 (name, successor))
    drain(config)
    both = served(bind, owner)
    assert len(both) == 2 and both == expected(conn, [active, successor], [name], SERVICES[:1])[owner]
    assert conn.execute("SELECT state::text FROM certinstances WHERE id = %s", (successor,)).fetchone()[0] == "prepublished"
    # the successor is deployed: the RRset holds the active instance only
    deploy(conn, successor)
    owner_conn(conn).execute("SELECT enqueue_tlsa(cert_id(%s), 'successor deployed')", (name,))
    drain(config)
    assert served(bind, owner) == expected(conn, [successor], [name], SERVICES[:1])[owner]
    assert len(served(bind, owner)) == 1


def test_remove_tlsa_empties_the_rrsets(conn, config, bind):
    register(conn, config)
    name = f"gone.{ZONE}"
    add_le_cert(conn, name, altnames=(f"gone.{OTHER}",))
    instance, _ = issued(conn, config, name)
    deploy(conn, instance)
    consolidate(conn, config, name)
    assert served(bind, f"_443._tcp.{name}.") and served(bind, f"_443._tcp.gone.{OTHER}.")
    job_id, = conn.execute("SELECT job FROM request_remove_tlsa(selection(only_certs => ARRAY[%s]))", (name,)).fetchone()
    drain(config)
    assert job(conn, job_id)["state"] == "done"
    assert served(bind, f"_443._tcp.{name}.") == set() and served(bind, f"_443._tcp.gone.{OTHER}.") == set()
    assert conn.execute("SELECT tlsa_published FROM certinstances WHERE id = %s", (instance,)).fetchone()[0] is None


@pytest.mark.parametrize("same_name, complaint", [(True, "BADSIG"), (False, "BADKEY")])
def test_a_wrong_tsig_key_fails_clearly_and_changes_nothing(conn, config, tmp_path, agent_dsn, pebble, bind,
                                                            same_name, complaint):
    register(conn, config)
    name = f"wrongkey-{complaint.lower()}.{ZONE}"
    add_le_cert(conn, name)
    active, _ = issued(conn, config, name)
    deploy(conn, active)
    consolidate(conn, config, name)
    owner = f"_443._tcp.{name}."
    before_dns = served(bind, owner)
    successor, _ = issued(conn, config, name)
    before_db = conn.execute("SELECT id, state::text, tlsa_published FROM certinstances ORDER BY id").fetchall()
    wrong_key = bind.other_key_file(None if same_name else "not-the-lab-key")
    wrong = make_config(tmp_path, agent_dsn, pebble, bind, key_file=wrong_key)
    job_id = owner_conn(conn).execute("SELECT enqueue_tlsa(cert_id(%s), 'prepublish', %s)", (name, successor)).fetchone()[0]
    drain(wrong)
    row = job(conn, job_id)
    assert row["state"] == "dead"
    key_name = "serverpki-lab" if same_name else "not-the-lab-key"
    for part in (complaint, f"zone {ZONE}.", bind.primary, f"TSIG key {key_name}"):
        assert part in row["last_error"], row["last_error"]
    assert served(bind, owner) == before_dns
    assert conn.execute("SELECT id, state::text, tlsa_published FROM certinstances ORDER BY id").fetchall() == before_db
    # issuing with it fails the same way, and leaves no reserved instance behind
    other = f"wrongkey2-{complaint.lower()}.{ZONE}"
    add_le_cert(conn, other)
    issue_row = create(conn, wrong, other)
    assert issue_row["state"] == "dead" and complaint in issue_row["last_error"]
    assert conn.execute("SELECT count(*) FROM certinstances i JOIN subjects s ON s.certificate = i.certificate "
                        "WHERE s.name = %s", (other,)).fetchone()[0] == 0


def test_no_tsig_key_is_refused_naming_zone_server_and_key(bind):
    """Without a key BIND answers REFUSED; the updater says where and with which key it tried."""
    import dns.tsig

    updater = dnsupdate.DnsUpdater(key=dns.tsig.Key("unknown-key.", b"0" * 32), primary=("127.0.0.1", bind.port))
    zone = dns.name.from_text("not-served.example.")
    with pytest.raises(dnsupdate.DnsRefused) as info:
        updater.replace_rrsets(zone, {dns.name.from_text("_443._tcp.x.not-served.example."): (60, set())},
                               dns.rdatatype.TLSA)
    assert "not-served.example." in str(info.value) and bind.primary in str(info.value)


def test_zone_is_found_from_the_soa_or_the_configuration(bind):
    import dns.tsig

    updater = dnsupdate.DnsUpdater(key=dns.tsig.Key("k.", b"0" * 32), primary=("127.0.0.1", bind.port))
    assert updater.zone_for(f"_443._tcp.deep.www.{ZONE}.").to_text() == f"{ZONE}."
    assert updater.zone_for(f"{OTHER}.").to_text() == f"{OTHER}."
    assert updater.servers_for(dns.name.from_text(ZONE)) == [("127.0.0.1", bind.port)]
    mapped = dnsupdate.DnsUpdater(key=dns.tsig.Key("k.", b"0" * 32), primary=("127.0.0.1", bind.port),
                                  zones={"mapped.example": OTHER})
    assert mapped.zone_for("_25._tcp.mx.mapped.example.").to_text() == f"{OTHER}."
    with pytest.raises(dnsupdate.DnsRefused, match=r"answered REFUSED for www.example.com.*\[dns\] zones"):
        updater.zone_for("www.example.com.")


def test_publish_with_bind_stopped_retries_and_succeeds_when_it_is_back(conn, config, bind):
    register(conn, config)
    name = f"dnsdown.{ZONE}"
    add_le_cert(conn, name)
    instance, _ = issued(conn, config, name)
    deploy(conn, instance)
    bind.stop()
    try:
        row = consolidate(conn, config, name)
    finally:
        bind.start()
    assert row["state"] == "failed" and "unreachable" in row["last_error"]
    due_now(conn)
    drain(config)
    assert job(conn, row["id"])["state"] == "done"
    assert len(served(bind, f"_443._tcp.{name}.")) == 1


# --------------------------------------------------------------------------- roles and parallel agents

def test_the_operator_sees_the_account_but_not_its_key(conn, config, pg_server, dbname):
    register(conn, config)
    role = f"t_admin_{uuid.uuid4().hex[:8]}"
    owner_conn(conn).execute(f'CREATE ROLE "{role}" LOGIN IN ROLE pki_admin')
    try:
        with psycopg.connect(make_conninfo(pg_server.dsn(dbname), user=role), autocommit=True) as admin:
            assert admin.execute("SELECT directory_url, contact FROM acme_accounts").fetchone()[1] == CONTACT
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                admin.execute("SELECT key FROM acme_accounts")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                admin.execute("SELECT save_job_progress(1, gen_random_uuid(), '{}')")
            admin.execute("SELECT owner, data FROM tlsa_desired").fetchall()
    finally:
        owner_conn(conn).execute(f'DROP ROLE "{role}"')


def test_agents_in_parallel_store_the_issuer_once(conn, config):
    import threading

    register(conn, config)
    names = [f"par{i}.{ZONE}" for i in range(6)]
    for i, name in enumerate(names):
        add_le_cert(conn, name, ["rsa", "ec"][i % 2])
    conn.execute("SELECT * FROM request_create(selection(only_certs => %s))", (names,))

    def work(i: int) -> None:
        agent = Agent(config.database.dsn, config, name=f"agent-{i}", lease=60, batch=1)
        try:
            agent.drain()
        finally:
            agent.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert conn.execute("SELECT array_agg(DISTINCT state::text) FROM jobs WHERE kind = 'issue_acme'").fetchone()[0] == ["done"]
    assert conn.execute("SELECT count(*) FROM subjects WHERE type = 'CA'").fetchone()[0] == 1
    assert conn.execute("SELECT count(DISTINCT cacert) FROM certinstances WHERE cacert IS NOT NULL").fetchone()[0] == 1
