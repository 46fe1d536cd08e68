"""Distribution over SSH against real OpenSSH servers (lab.sshd): three sshd on
127.0.0.2-4, each chrooted into its own folder, reached through an OpenSSH client config
with a Host alias per disthost FQDN and checked against a known_hosts file.

Everything runs as the operator and cron would: local certificates come from the local CA
handlers (request_local_ca, request_create), distribution from request_distribute (-D) and
request_consolidate_certs (-K), and the agent's drain() runs the jobs (distribute jobs of
several hosts in its bounded pool). Files are checked from outside with os.stat and by
reading them in the host's folder.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
import time
from pathlib import Path
from unittest import mock

import psycopg
from psycopg import sql
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from psycopg.rows import dict_row

from certfactory import issue_result
from helpers import complete, owner_conn
from serverpki import handlers as handler_registry
from serverpki import sshclient
from serverpki.agent import Agent
from serverpki.config import Config, LocalCAConfig, PathsConfig, SshConfig, X509Config
from serverpki.handlers import HANDLERS
from serverpki.handlers import distribute as _distribute  # noqa: F401  (registers distribute)
from serverpki.handlers import issue_local as _issue_local  # noqa: F401  (issue_local, issue_local_ca)
from serverpki.handlers import keys as _keys  # noqa: F401  (encrypt_keys, decrypt_keys)
from lab.sshd import SSHLab
from lab.lab import secret

WEB1, WEB2, WEB3 = "web1.example.org", "web2.example.org", "web3.example.org"
KINDS = ("issue_local", "issue_local_ca", "distribute", "encrypt_keys", "decrypt_keys")
DB_PASS = "db passphrase"


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def lab():
    with SSHLab([WEB1, WEB2, WEB3]) as lab:
        yield lab


@pytest.fixture
def hosts(lab) -> SSHLab:
    """The lab with every host up, its root emptied and known_hosts holding the current keys."""
    lab.reset()
    return lab


@pytest.fixture
def config(tmp_path, hosts) -> Config:
    return Config(
        ssh=SshConfig(**hosts.ssh_settings(), connect_timeout_seconds=3, command_timeout_seconds=3,
                      max_parallel_hosts=3),
        paths=PathsConfig(db_encryption_key=secret(tmp_path / "db.pass", DB_PASS)),
        x509=X509Config(country="DE", organization="Example e.V.", rsa_key_size=2048, ec_curve="secp256r1"),
        local_ca=LocalCAConfig(key_type="ec", key_size=256, passphrase_file=secret(tmp_path / "ca.pass", "ca pass")),
    )


def agent_for(dsn: str, config: Config) -> Agent:
    """The agent with the handlers of this test (not every module of the package)."""
    with mock.patch.object(handler_registry, "load_all", lambda: {k: HANDLERS[k] for k in KINDS}):
        return Agent(dsn, config, name="dist-test", lease=60)


@pytest.fixture
def agent(dsn, config):
    a = agent_for(dsn, config)
    yield a
    a.close()


# --------------------------------------------------------------------------- helpers

def one(conn, sql: str, params=()) -> dict:
    return conn.cursor(row_factory=dict_row).execute(sql, params).fetchone()


def rows(conn, sql: str, params=()) -> list[dict]:
    return conn.cursor(row_factory=dict_row).execute(sql, params).fetchall()


def local_ca(conn, agent) -> int:
    conn.execute("SELECT request_local_ca('Local CA', 'ec')")
    assert agent.drain().all_succeeded
    return one(conn, "SELECT i.id FROM certinstances i JOIN subjects s ON s.certificate = i.certificate "
                     "WHERE s.name = 'Local CA'")["id"]


def add_cert(conn, name: str, algo: str = "ec", cert_type: str = "local") -> None:
    conn.execute("SELECT * FROM add_cert(%s, 'server', %s, %s, false, NULL, NULL, NULL, NULL, NULL, NULL)",
                 (name, cert_type, algo))


def target(conn, name: str, host: str, place: str, jail: str | None = None) -> None:
    conn.execute("SELECT add_target(%s, %s, %s, %s)", (name, host, jail, place))


def issue(conn, agent, name: str) -> int:
    """-C for one local certificate: its new issued instance."""
    conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY[%s]))", (name,))
    assert agent.drain().all_succeeded
    return one(conn, "SELECT max(i.id) AS id FROM certinstances i JOIN subjects s ON s.certificate = i.certificate "
                     "WHERE s.name = %s AND i.state = 'issued'", (name,))["id"]


def distribute(conn, agent, name: str, skip: tuple = (), only: tuple = ()) -> dict[str, dict]:
    """-D for one certificate (with -s/-l); the jobs by disthost after the drain."""
    got = rows(conn, "SELECT job FROM request_distribute(selection(only_certs => ARRAY[%s], skip_hosts => %s, "
                     "only_hosts => %s)) WHERE job IS NOT NULL", (name, list(skip), list(only)))
    agent.drain()
    return jobs_by_host(conn, [r["job"] for r in got])


def consolidate(conn, agent, name: str) -> dict[str, dict]:
    """-K for one certificate."""
    got = rows(conn, "SELECT job FROM request_consolidate_certs(selection(only_certs => ARRAY[%s])) "
                     "WHERE job IS NOT NULL", (name,))
    agent.drain()
    return jobs_by_host(conn, [r["job"] for r in got])


def jobs_by_host(conn, ids: list[int]) -> dict[str, dict]:
    found = rows(conn, "SELECT j.*, d.fqdn::text AS host FROM jobs j JOIN disthosts d ON d.id = j.disthost "
                       "WHERE j.id = ANY(%s)", (ids,))
    return {r["host"]: r for r in found}


def state(conn, instance: int) -> str:
    return one(conn, "SELECT state::text FROM certinstances WHERE id = %s", (instance,))["state"]


def pairs(conn, instance: int) -> dict[str, dict]:
    found = rows(conn, "SELECT encryption_algo::text AS algo, convert_from(cert, 'UTF8') AS cert, "
                       "convert_from(key, 'UTF8') AS key FROM certkeydata WHERE certinstance = %s", (instance,))
    return {r["algo"]: r for r in found}


def ca_pem(conn, ca: int) -> str:
    return one(conn, "SELECT convert_from(cert, 'UTF8') AS pem FROM certkeydata WHERE certinstance = %s", (ca,))["pem"]


def files_on(lab: SSHLab, fqdn: str) -> set[str]:
    """Every file and link the deployments left on the host (the lab's userland left out)."""
    return lab.host(fqdn).deployed_files()


def st(lab: SSHLab, fqdn: str, path: str) -> tuple[str, int, int]:
    s = os.lstat(lab.host(fqdn).path(path))
    return f"{stat.S_IMODE(s.st_mode):04o}", s.st_uid, s.st_gid


def text(lab: SSHLab, fqdn: str, path: str) -> str:
    return lab.host(fqdn).path(path).read_text()


def public_of_key(pem: str) -> bytes:
    key = serialization.load_pem_private_key(pem.encode(), None)
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_of_cert(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def assert_no_key_in_jobs(conn) -> None:
    leaks = conn.execute("SELECT id FROM jobs WHERE concat(args::text, result::text, last_error) LIKE '%PRIVATE KEY%'"
                         ).fetchall()
    assert leaks == [], f"key material in the queue: {leaks}"


def logins(lab: SSHLab) -> dict[str, int]:
    return {f: lab.host(f).accepted_logins() for f in lab.fqdns}


def reopen_job(conn, job_id: int) -> None:
    """The back-off is over: the failed job is due now."""
    owner_conn(conn).execute("UPDATE jobs SET run_after = now() - interval '1 second' WHERE id = %s", (job_id,))


# --------------------------------------------------------------------------- file layout

def test_every_file_type_with_and_without_jails_modes_owners_and_pglink(conn, agent, hosts):
    ca = local_ca(conn, agent)
    conn.execute("SELECT add_disthost(%s)", (WEB1,))
    conn.execute("SELECT add_disthost(%s, '/usr/jails')", (WEB2,))
    conn.execute("SELECT add_jail('j1', %s)", (WEB2,))
    conn.execute("SELECT add_jail('j2', %s)", (WEB2,))
    # name, type, cert_path, key_path, uid, gid, mode, chownboth, pglink
    conn.execute("SELECT add_place('sep', 'separate', '/etc/ssl/{}', '/etc/ssl/private', 101, 102, 288, true, true)")
    conn.execute("SELECT add_place('crt', 'cert only', '/srv/certonly')")
    conn.execute("SELECT add_place('ck', 'combine key', '/srv/ck')")
    conn.execute("SELECT add_place('cc', 'combine cacert', '/srv/cc', NULL, 103, 104)")
    conn.execute("SELECT add_place('cb', 'combine both', '/srv/cb', NULL, NULL, 105, 384)")
    name = "www.example.org"
    add_cert(conn, name, "rsa_plus_ec")
    for place in ("sep", "crt", "ck", "cc", "cb"):
        target(conn, name, WEB1, place)
    target(conn, name, WEB2, "sep", "j1")
    target(conn, name, WEB2, "cb", "j1")
    target(conn, name, WEB2, "cc", "j2")
    inst = issue(conn, agent, name)
    before = logins(hosts)

    jobs = distribute(conn, agent, name)

    assert {h: j["state"] for h, j in jobs.items()} == {WEB1: "done", WEB2: "done"}, \
        {h: j["last_error"] for h, j in jobs.items()}
    assert state(conn, inst) == "deployed"
    # one SSH connection per job, however many targets
    after = logins(hosts)
    assert {f: after[f] - before[f] for f in after} == {WEB1: 1, WEB2: 1, WEB3: 0}

    n = f"{name}_server_"
    web1 = {
        f"/etc/ssl/{name}/{n}cert.pem", f"/etc/ssl/{name}/{n}ec_cert.pem", f"/etc/ssl/{name}/postgresql.crt",
        f"/etc/ssl/private/{n}key.pem", f"/etc/ssl/private/{n}ec_key.pem", "/etc/ssl/private/postgresql.key",
        f"/srv/certonly/{n}cert.pem", f"/srv/certonly/{n}ec_cert.pem",
        f"/srv/ck/{n}key_cert.pem", f"/srv/ck/{n}key_ec_cert.pem",
        f"/srv/cc/{n}cert_cacert.pem", f"/srv/cc/{n}ec_cert_cacert.pem", f"/srv/cc/{n}key.pem", f"/srv/cc/{n}ec_key.pem",
        f"/srv/cb/{n}key_cert_cacert.pem", f"/srv/cb/{n}key_ec_cert_cacert.pem",
    }
    assert files_on(hosts, WEB1) == web1  # no temporary file left behind either
    j1, j2 = "/usr/jails/j1", "/usr/jails/j2"
    assert files_on(hosts, WEB2) == {
        f"{j1}/etc/ssl/{name}/{n}cert.pem", f"{j1}/etc/ssl/{name}/{n}ec_cert.pem", f"{j1}/etc/ssl/{name}/postgresql.crt",
        f"{j1}/etc/ssl/private/{n}key.pem", f"{j1}/etc/ssl/private/{n}ec_key.pem", f"{j1}/etc/ssl/private/postgresql.key",
        f"{j1}/srv/cb/{n}key_cert_cacert.pem", f"{j1}/srv/cb/{n}key_ec_cert_cacert.pem",
        f"{j2}/srv/cc/{n}cert_cacert.pem", f"{j2}/srv/cc/{n}ec_cert_cacert.pem", f"{j2}/srv/cc/{n}key.pem",
        f"{j2}/srv/cc/{n}ec_key.pem",
    }
    assert files_on(hosts, WEB3) == set()

    p, ca_text = pairs(conn, inst), ca_pem(conn, ca)
    for algo, ec in (("rsa", ""), ("ec", "ec_")):
        cert, key = p[algo]["cert"], p[algo]["key"]
        for root in ("", j1):
            # separate: the key in key_path, mode 288 = 0440, owner 101:102; chownboth gives the cert that owner
            assert text(hosts, WEB1 if not root else WEB2, f"{root}/etc/ssl/{name}/{n}{ec}cert.pem") == cert
            assert text(hosts, WEB1 if not root else WEB2, f"{root}/etc/ssl/private/{n}{ec}key.pem") == key
            assert st(hosts, WEB1 if not root else WEB2, f"{root}/etc/ssl/private/{n}{ec}key.pem") == ("0440", 101, 102)
            assert st(hosts, WEB1 if not root else WEB2, f"{root}/etc/ssl/{name}/{n}{ec}cert.pem") == ("0644", 101, 102)
            # combine both: key + cert + CA certificate, mode 384 = 0600, group 105 (uid not set: as created)
            both = text(hosts, WEB1 if not root else WEB2, f"{root}/srv/cb/{n}key_{ec}cert_cacert.pem")
            assert both == key + cert + ca_text
            assert st(hosts, WEB1 if not root else WEB2, f"{root}/srv/cb/{n}key_{ec}cert_cacert.pem") == ("0600", 0, 105)
        assert public_of_key(key) == public_of_cert(cert)
        assert text(hosts, WEB1, f"/srv/certonly/{n}{ec}cert.pem") == cert
        assert st(hosts, WEB1, f"/srv/certonly/{n}{ec}cert.pem") == ("0644", 0, 0)
        # combine key: key + cert in one file, 0400 by default
        assert text(hosts, WEB1, f"/srv/ck/{n}key_{ec}cert.pem") == key + cert
        assert st(hosts, WEB1, f"/srv/ck/{n}key_{ec}cert.pem") == ("0400", 0, 0)
        # combine cacert: cert + CA certificate (0644, not chowned), the key apart (0400, 103:104)
        for host, root in ((WEB1, ""), (WEB2, j2)):
            assert text(hosts, host, f"{root}/srv/cc/{n}{ec}cert_cacert.pem") == cert + ca_text
            assert st(hosts, host, f"{root}/srv/cc/{n}{ec}cert_cacert.pem") == ("0644", 0, 0)
            assert st(hosts, host, f"{root}/srv/cc/{n}{ec}key.pem") == ("0400", 103, 104)
    # pglink: relative links to the RSA pair, in the directories of the files
    for host, root in ((WEB1, ""), (WEB2, j1)):
        assert os.readlink(hosts.host(host).path(f"{root}/etc/ssl/{name}/postgresql.crt")) == f"{n}cert.pem"
        assert os.readlink(hosts.host(host).path(f"{root}/etc/ssl/private/postgresql.key")) == f"{n}key.pem"
        assert hosts.host(host).path(f"{root}/etc/ssl/private/postgresql.key").read_text() == p["rsa"]["key"]

    result = jobs[WEB1]["result"]
    assert result["host"] == WEB1 and result["mode"] == "deploy" and len(result["targets"]) == 5
    assert {f["path"] for f in result["files"]} | {lk["path"] for lk in result["links"]} == web1
    assert all(f["written"] for f in result["files"]) and result["drift"] == []
    assert "127.0.0." in result["endpoint"]  # reached through the alias of the client config
    assert_no_key_in_jobs(conn)


def test_an_LE_certificate_gets_the_chain_files(conn, agent, hosts):
    conn.execute("SELECT add_disthost(%s)", (WEB3,))
    conn.execute("SELECT add_place('le-sep', 'separate', '/etc/le')")
    conn.execute("SELECT add_place('le-ck', 'combine key', '/etc/le-ck', NULL, NULL, NULL, 416)")
    name = "le.example.org"
    add_cert(conn, name, "rsa", "LE")
    target(conn, name, WEB3, "le-sep")
    target(conn, name, WEB3, "le-ck")
    # the ACME handler is not part of this test: its job is completed with a pair and its issuer
    conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY[%s]))", (name,))
    job = one(conn, "SELECT * FROM claim_jobs('acme-stand-in', ARRAY['issue_acme'], 1)")
    now = one(conn, "SELECT pki.now() AS now")["now"]
    result = issue_result(conn, "issue_acme", job["certificate"], now, 90)
    pair = result["pairs"][0]
    complete(conn, job["id"], job["lease_token"], result)
    # the issuer is stored from the chain, as an instance of its own
    ca = one(conn, "SELECT cacert FROM certinstances WHERE id = %s", (job["instance"],))["cacert"]
    assert ca_pem(conn, ca) == result["chain"][0]

    jobs = distribute(conn, agent, name)

    assert jobs[WEB3]["state"] == "done", jobs[WEB3]["last_error"]
    n, chain = f"{name}_server_", ca_pem(conn, ca)
    assert files_on(hosts, WEB3) == {f"/etc/le/{n}cert.pem", f"/etc/le/{n}key.pem", f"/etc/le/{n}cert_cacert_chain.pem",
                                     f"/etc/le-ck/{n}key_cert.pem", f"/etc/le-ck/{n}key_cert_cacert_chain.pem"}
    assert text(hosts, WEB3, f"/etc/le/{n}cert_cacert_chain.pem") == pair["cert"] + chain
    assert text(hosts, WEB3, f"/etc/le-ck/{n}key_cert_cacert_chain.pem") == pair["key"] + pair["cert"] + chain
    assert st(hosts, WEB3, f"/etc/le-ck/{n}key_cert_cacert_chain.pem") == ("0640", 0, 0)
    assert st(hosts, WEB3, f"/etc/le/{n}cert_cacert_chain.pem") == ("0644", 0, 0)


def test_encrypted_keys_are_written_in_clear_and_a_wrong_passphrase_gives_up(conn, agent, hosts, dsn, config, tmp_path):
    local_ca(conn, agent)
    conn.execute("SELECT add_disthost(%s)", (WEB1,))
    conn.execute("SELECT add_place('nginx', 'separate', '/etc/nginx/ssl')")
    add_cert(conn, "enc.example.org")
    target(conn, "enc.example.org", WEB1, "nginx")
    inst = issue(conn, agent, "enc.example.org")
    conn.execute("SELECT request_key_encryption(true)")
    assert agent.drain().all_succeeded
    stored = pairs(conn, inst)["ec"]["key"]
    assert stored.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")

    wrong = agent_for(dsn, dataclasses.replace(
        config, paths=PathsConfig(db_encryption_key=secret(tmp_path / "wrong.pass", "not it"))))
    jobs = distribute(conn, wrong, "enc.example.org")
    wrong.close()
    assert jobs[WEB1]["state"] == "dead" and "wrong passphrase" in jobs[WEB1]["last_error"]
    assert files_on(hosts, WEB1) == set() and state(conn, inst) == "issued"

    jobs = distribute(conn, agent, "enc.example.org")
    assert jobs[WEB1]["state"] == "done", jobs[WEB1]["last_error"]
    key = text(hosts, WEB1, "/etc/nginx/ssl/enc.example.org_server_ec_key.pem")
    assert key.startswith("-----BEGIN PRIVATE KEY-----")
    assert public_of_key(key) == public_of_cert(pairs(conn, inst)["ec"]["cert"])
    assert_no_key_in_jobs(conn)


def test_a_missing_parent_that_cannot_be_made_is_named(conn, agent, hosts):
    local_ca(conn, agent)
    conn.execute("SELECT add_disthost(%s)", (WEB1,))
    conn.execute("SELECT add_place('blocked', 'separate', '/srv/blocked/ssl')")
    hosts.host(WEB1).path("/srv").mkdir()
    hosts.host(WEB1).path("/srv/blocked").write_text("a file where a directory should be\n")
    add_cert(conn, "blk.example.org")
    target(conn, "blk.example.org", WEB1, "blocked")
    inst = issue(conn, agent, "blk.example.org")

    jobs = distribute(conn, agent, "blk.example.org")

    assert jobs[WEB1]["state"] == "failed"
    assert "/srv/blocked is not a directory" in jobs[WEB1]["last_error"]
    assert state(conn, inst) == "issued"


# --------------------------------------------------------------------------- reload commands

def test_reload_commands_run_once_each_with_their_output_and_a_failing_one_fails_the_job(conn, agent, hosts):
    local_ca(conn, agent)
    conn.execute("SELECT add_disthost(%s, '/jails')", (WEB1,))
    conn.execute("SELECT add_jail('mx', %s)", (WEB1,))
    log_it = "echo reloaded {} >> /reloads.log; echo service in {} reloaded"
    conn.execute("SELECT add_place('a', 'separate', '/etc/a', NULL, NULL, NULL, NULL, false, false, %s)", (log_it,))
    conn.execute("SELECT add_place('b', 'cert only', '/etc/b', NULL, NULL, NULL, NULL, false, false, %s)", (log_it,))
    conn.execute("SELECT add_place('c', 'cert only', '/etc/c', NULL, NULL, NULL, NULL, false, false, "
                 "'echo broken config >&2; exit 3')")
    name = "mail.example.org"
    add_cert(conn, name)
    target(conn, name, WEB1, "a", "mx")
    target(conn, name, WEB1, "b", "mx")   # the same command for the same jail: once
    target(conn, name, WEB1, "a")         # no jail: {} is ''
    target(conn, name, WEB1, "c", "mx")
    inst = issue(conn, agent, name)

    jobs = distribute(conn, agent, name)

    job = jobs[WEB1]
    assert job["state"] == "failed"
    assert "reload `echo broken config >&2; exit 3` exited 3: broken config" in job["last_error"]
    # the files are in place, the other reloads ran once each, the instance is not deployed
    assert "/jails/mx/etc/c/mail.example.org_server_ec_cert.pem" in files_on(hosts, WEB1)
    assert text(hosts, WEB1, "/reloads.log") == "reloaded mx\nreloaded \n"
    assert state(conn, inst) == "issued"
    overview = one(conn, "SELECT state::text, last_error FROM jobs_overview WHERE id = %s", (job["id"],))
    assert overview["state"] == "failed" and "exited 3" in overview["last_error"]

    # the operator mends the place; the retry succeeds and reports every command's output
    conn.execute("UPDATE places SET reload_command = 'echo ok' WHERE name = 'c'")
    reopen_job(conn, job["id"])
    assert agent.drain().all_succeeded
    done = jobs_by_host(conn, [job["id"]])[WEB1]
    assert done["state"] == "done" and state(conn, inst) == "deployed"
    assert done["result"]["reload"] == [
        {"command": "echo reloaded mx >> /reloads.log; echo service in mx reloaded", "exit": 0,
         "output": "service in mx reloaded\n", "seconds": done["result"]["reload"][0]["seconds"]},
        {"command": "echo reloaded '' >> /reloads.log; echo service in '' reloaded", "exit": 0,
         "output": "service in  reloaded\n", "seconds": done["result"]["reload"][1]["seconds"]},
        {"command": "echo ok", "exit": 0, "output": "ok\n", "seconds": done["result"]["reload"][2]["seconds"]},
    ]


def test_a_reload_that_outlives_the_command_timeout_fails(conn, agent, hosts):
    local_ca(conn, agent)
    conn.execute("SELECT add_disthost(%s)", (WEB2,))
    conn.execute("SELECT add_place('slow', 'cert only', '/etc/slow', NULL, NULL, NULL, NULL, false, false, "
                 "'echo starting; sleep 20')")
    add_cert(conn, "slow.example.org")
    target(conn, "slow.example.org", WEB2, "slow")
    issue(conn, agent, "slow.example.org")
    started = time.monotonic()

    jobs = distribute(conn, agent, "slow.example.org")

    assert time.monotonic() - started < 10
    assert jobs[WEB2]["state"] == "failed"
    assert "timed out: starting" in jobs[WEB2]["last_error"] and "(timed out after 3 s)" in jobs[WEB2]["last_error"]


# --------------------------------------------------------------------------- faults and state

def three_host_cert(conn, agent, name: str, place: str = "nginx", path: str = "/etc/nginx/ssl") -> int:
    for fqdn in (WEB1, WEB2, WEB3):
        if not one(conn, "SELECT 1 AS x FROM disthosts WHERE fqdn = %s", (fqdn,)):
            conn.execute("SELECT add_disthost(%s)", (fqdn,))
    if not one(conn, "SELECT 1 AS x FROM places WHERE name = %s", (place,)):
        conn.execute("SELECT add_place(%s, 'separate', %s)", (place, path))
    add_cert(conn, name)
    for fqdn in (WEB1, WEB2, WEB3):
        target(conn, name, fqdn, place)
    return issue(conn, agent, name)


def test_a_host_that_is_down_leaves_the_instance_undeployed_until_the_retry(conn, agent, hosts):
    local_ca(conn, agent)
    inst = three_host_cert(conn, agent, "down.example.org")
    hosts.host(WEB2).stop()

    jobs = distribute(conn, agent, "down.example.org")

    assert {h: j["state"] for h, j in jobs.items()} == {WEB1: "done", WEB2: "failed", WEB3: "done"}
    assert "cannot connect" in jobs[WEB2]["last_error"] and WEB2 in jobs[WEB2]["last_error"]
    assert state(conn, inst) == "issued"
    assert files_on(hosts, WEB2) == set()
    assert one(conn, "SELECT count(*) AS n FROM deployed_where WHERE instance = %s", (inst,))["n"] == 2

    hosts.host(WEB2).start()
    reopen_job(conn, jobs[WEB2]["id"])
    assert agent.drain().all_succeeded
    assert jobs_by_host(conn, [jobs[WEB2]["id"]])[WEB2]["state"] == "done"
    assert state(conn, inst) == "deployed"
    assert "/etc/nginx/ssl/down.example.org_server_ec_key.pem" in files_on(hosts, WEB2)


def test_an_unknown_host_key_is_refused_naming_the_key_offered(conn, dsn, config, hosts, tmp_path):
    partial = hosts.write_known_hosts(tmp_path / "known_hosts", [WEB1, WEB2])
    agent = agent_for(dsn, dataclasses.replace(config, ssh=dataclasses.replace(config.ssh, known_hosts=partial)))
    local_ca(conn, agent)
    inst = three_host_cert(conn, agent, "unknown.example.org")

    jobs = distribute(conn, agent, "unknown.example.org")
    agent.close()

    assert {h: j["state"] for h, j in jobs.items()} == {WEB1: "done", WEB2: "done", WEB3: "dead"}
    error = jobs[WEB3]["last_error"]
    web3 = hosts.host(WEB3)
    assert f"host key of {WEB3} is unknown" in error
    assert f"[{web3.address}]:{web3.port} offered ssh-ed25519 {web3.fingerprint()}" in error
    assert files_on(hosts, WEB3) == set() and state(conn, inst) == "issued"


def test_a_changed_host_key_is_refused_naming_both_keys(conn, agent, hosts):
    local_ca(conn, agent)
    inst = three_host_cert(conn, agent, "changed.example.org")
    web3 = hosts.host(WEB3)
    known = web3.fingerprint()
    web3.rekey()  # reinstalled: a new key; known_hosts still has the old one

    jobs = distribute(conn, agent, "changed.example.org")

    assert jobs[WEB3]["state"] == "dead"
    error = jobs[WEB3]["last_error"]
    assert f"host key of {WEB3} has changed" in error
    assert f"offered ssh-ed25519 {web3.fingerprint()}" in error and f"has ssh-ed25519 {known}" in error
    assert web3.fingerprint() != known
    assert files_on(hosts, WEB3) == set() and state(conn, inst) == "issued"


def test_skipped_or_limited_hosts_keep_the_state_until_every_target_has_the_instance(conn, agent, hosts):
    local_ca(conn, agent)
    inst = three_host_cert(conn, agent, "sel.example.org")

    jobs = distribute(conn, agent, "sel.example.org", only=(WEB1,))          # -l web1
    assert {h: j["state"] for h, j in jobs.items()} == {WEB1: "done"}
    assert state(conn, inst) == "issued"

    jobs = distribute(conn, agent, "sel.example.org", skip=(WEB2,))          # -s web2
    assert {h: j["state"] for h, j in jobs.items()} == {WEB1: "done", WEB3: "done"}
    assert state(conn, inst) == "issued"
    assert files_on(hosts, WEB2) == set()

    jobs = distribute(conn, agent, "sel.example.org", only=(WEB2,))          # -l web2: now every target has it
    assert {h: j["state"] for h, j in jobs.items()} == {WEB2: "done"}
    assert state(conn, inst) == "deployed"


def test_hosts_are_served_in_parallel_by_the_bounded_pool(conn, agent, hosts):
    local_ca(conn, agent)
    for fqdn in (WEB1, WEB2, WEB3):
        conn.execute("SELECT add_disthost(%s)", (fqdn,))
    conn.execute("SELECT add_place('nap', 'cert only', '/etc/nap', NULL, NULL, NULL, NULL, false, false, 'sleep 1')")
    add_cert(conn, "par.example.org")
    for fqdn in (WEB1, WEB2, WEB3):
        target(conn, "par.example.org", fqdn, "nap")
    inst = issue(conn, agent, "par.example.org")
    started = time.monotonic()

    jobs = distribute(conn, agent, "par.example.org")

    elapsed = time.monotonic() - started
    assert {j["state"] for j in jobs.values()} == {"done"} and state(conn, inst) == "deployed"
    assert elapsed < 2.5, f"three hosts with a 1 s reload each took {elapsed:.1f} s: not in parallel"


# --------------------------------------------------------------------------- atomic writes

def test_a_reader_sees_the_whole_old_or_the_whole_new_file_and_keys_are_never_readable(conn, agent, config, hosts):
    local_ca(conn, agent)
    conn.execute("SELECT add_disthost(%s)", (WEB1,))
    conn.execute("SELECT add_place('atomic', 'separate', '/srv/atomic')")
    name = "atomic.example.org"
    add_cert(conn, name)
    target(conn, name, WEB1, "atomic")
    old = issue(conn, agent, name)
    assert distribute(conn, agent, name)[WEB1]["state"] == "done"
    new = issue(conn, agent, name)
    host = hosts.host(WEB1)
    cert_file = host.path(f"/srv/atomic/{name}_server_ec_cert.pem")
    big_file = host.path("/srv/atomic/big.pem")
    allowed = {pairs(conn, old)["ec"]["cert"], pairs(conn, new)["ec"]["cert"]}
    big = [("A" * 63 + "\n").encode() * 16384, ("B" * 63 + "\n").encode() * 16384]   # 1 MiB each
    big_file.write_bytes(big[0])
    stop = threading.Event()
    seen: dict[str, set] = {"cert": set(), "torn": set(), "open_keys": set()}
    reads = {"n": 0}

    def read_loop():
        while not stop.is_set():
            seen["cert"].add(cert_file.read_text())
            data = big_file.read_bytes()
            if data not in big:
                seen["torn"].add((data[:1], data[-2:-1], len(data)))
            reads["n"] += 1

    def watch_modes():
        # every file that holds a key, temporary ones included, must never be open to group or others
        while not stop.is_set():
            for entry in os.scandir(cert_file.parent):
                try:
                    mode = entry.stat(follow_symlinks=False).st_mode
                except FileNotFoundError:
                    continue
                if "key" in entry.name and mode & 0o077:
                    seen["open_keys"].add((entry.name, oct(mode)))

    threads = [threading.Thread(target=read_loop), threading.Thread(target=watch_modes)]
    for t in threads:
        t.start()
    try:
        jobs = distribute(conn, agent, name)                # the real redeploy, old -> new
        with sshclient.connect(WEB1, config.ssh) as c:      # and 40 more atomic rewrites of a big file
            for n in range(40):
                c.put_atomic(sshclient.RemoteFile("/srv/atomic/big.pem", big[(n + 1) % 2], 0o644))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert jobs[WEB1]["state"] == "done" and state(conn, new) == "deployed"
    assert reads["n"] > 20
    assert seen["cert"] <= allowed and cert_file.read_text() == pairs(conn, new)["ec"]["cert"]
    assert seen["torn"] == set(), f"a reader saw a half-written file: {seen['torn']}"
    assert seen["open_keys"] == set()
    assert not [p for p in files_on(hosts, WEB1) if ".tmp" in p]


# --------------------------------------------------------------------------- -K

def test_consolidate_rewrites_only_what_drifted_and_reports_it(conn, agent, hosts):
    local_ca(conn, agent)
    conn.execute("SELECT add_disthost(%s)", (WEB1,))
    conn.execute("SELECT add_place('pg', 'separate', '/var/lib/pg', NULL, 70, 70, NULL, false, true, "
                 "'echo reloaded >> /reloads.log')")
    conn.execute("SELECT add_place('whole', 'combine both', '/etc/whole')")
    name = "db.example.org"
    add_cert(conn, name)
    target(conn, name, WEB1, "pg")
    target(conn, name, WEB1, "whole")
    inst = issue(conn, agent, name)
    assert distribute(conn, agent, name)[WEB1]["state"] == "done"
    host = hosts.host(WEB1)
    n = f"{name}_server_"
    cert, key, link = (host.path(f"/var/lib/pg/{n}ec_cert.pem"), host.path(f"/var/lib/pg/{n}ec_key.pem"),
                       host.path("/var/lib/pg/postgresql.crt"))
    untouched = host.path(f"/etc/whole/{n}key_ec_cert_cacert.pem")
    inode = untouched.stat().st_ino
    want_cert = cert.read_text()
    # by hand: a changed certificate, a key opened to everyone, a lost link
    cert.write_text("edited by hand\n")
    key.chmod(0o644)
    link.unlink()

    jobs = consolidate(conn, agent, name)

    result = jobs[WEB1]["result"]
    assert jobs[WEB1]["state"] == "done" and result["mode"] == "consolidate"
    assert sorted((d["path"], d["drift"]) for d in result["drift"]) == [
        (f"/var/lib/pg/{n}ec_cert.pem", ["content"]),
        (f"/var/lib/pg/{n}ec_key.pem", ["mode 0644, not 0400"]),
        ("/var/lib/pg/postgresql.crt", ["missing link"]),
    ]
    assert cert.read_text() == want_cert
    assert (stat.S_IMODE(key.stat().st_mode), key.stat().st_uid, key.stat().st_gid) == (0o400, 70, 70)
    assert os.readlink(link) == f"{n}ec_cert.pem"
    assert untouched.stat().st_ino == inode, "a file that had not drifted was rewritten"
    assert [f["written"] for f in result["files"] if f["path"].startswith("/etc/whole")] == [False]
    assert text(hosts, WEB1, "/reloads.log") == "reloaded\nreloaded\n"  # deploy, then the drifted place
    assert state(conn, inst) == "deployed"

    again = consolidate(conn, agent, name)[WEB1]["result"]
    assert again["drift"] == [] and again["reload"] == [] and not any(f["written"] for f in again["files"])


def test_a_consolidation_of_an_instance_that_was_replaced_meanwhile_gives_up(conn, agent, hosts):
    local_ca(conn, agent)
    conn.execute("SELECT add_disthost(%s)", (WEB1,))
    conn.execute("SELECT add_place('nginx', 'separate', '/etc/nginx/ssl')")
    add_cert(conn, "late.example.org")
    target(conn, "late.example.org", WEB1, "nginx")
    inst = issue(conn, agent, "late.example.org")
    assert distribute(conn, agent, "late.example.org")[WEB1]["state"] == "done"
    [job] = [r["job"] for r in rows(conn, "SELECT job FROM request_consolidate_certs(selection(only_certs => "
                                          "ARRAY['late.example.org']))")]
    owner_conn(conn).execute("UPDATE certinstances SET state = 'expired' WHERE id = %s", (inst,))
    (hosts.host(WEB1).path("/etc/nginx/ssl/late.example.org_server_ec_cert.pem")).write_text("the successor\n")

    agent.drain()

    row = jobs_by_host(conn, [job])[WEB1]
    assert row["state"] == "dead" and "SP023" in row["last_error"] and "is expired now" in row["last_error"]
    assert text(hosts, WEB1, "/etc/nginx/ssl/late.example.org_server_ec_cert.pem") == "the successor\n"


def test_the_agent_reads_the_files_of_a_job_and_the_operator_cannot(conn, agent, hosts):
    local_ca(conn, agent)
    conn.execute("SELECT add_disthost(%s)", (WEB1,))
    conn.execute("SELECT add_place('nginx', 'separate', '/etc/nginx/ssl')")
    add_cert(conn, "roles.example.org")
    target(conn, "roles.example.org", WEB1, "nginx")
    issue(conn, agent, "roles.example.org")
    [job] = [r["job"] for r in rows(conn, "SELECT job FROM request_distribute(selection(only_certs => "
                                          "ARRAY['roles.example.org']))")]
    conn.execute("SET ROLE pki_agent")
    [row] = rows(conn, "SELECT fqdn, place, algo, key LIKE '-----BEGIN PRIVATE KEY-----%%' AS has_key "
                       "FROM distribution_files(%s)", (job,))
    assert row == {"fqdn": WEB1, "place": "nginx", "algo": "ec", "has_key": True}
    conn.execute("SET ROLE pki_admin")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM distribution_files(%s)", (job,))
    conn.execute("RESET ROLE")


# --------------------------------------------------------------------------- the client configuration

def test_the_openssh_client_config_gives_hostname_port_user_and_identity_files(tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host alias.example.org\n    HostName 192.0.2.7\n    Port 2222\n    User deploy\n"
                   "    IdentityFile /keys/one\n    IdentityFile /keys/two\n")
    ssh = SshConfig(known_hosts=tmp_path / "kh", config_file=cfg, user="root", identity_file=tmp_path / "default")
    where = sshclient.endpoint("alias.example.org", ssh)
    assert (where.hostname, where.port, where.user) == ("192.0.2.7", 2222, "deploy")
    assert where.identity_files == ("/keys/one", "/keys/two", str(tmp_path / "default"))
    assert where.known_hosts_name == "[192.0.2.7]:2222"
    other = sshclient.endpoint("plain.example.org", ssh)
    assert (other.hostname, other.port, other.user) == ("plain.example.org", 22, "root")
    assert other.known_hosts_name == "plain.example.org"


def imported_beside_ours(conn, owner, agent, file_type: str, algo: str, old: str, new: str, **columns: str) -> int:
    """Two certificates on one pglink place of WEB1 (/var/db/pg/NAME), both issued: old's pairs made what the
    import writes (key_file_format 'traditional', and these columns; immutable once written, so the trigger is
    bypassed), new's ours. Returns old's instance."""
    local_ca(conn, agent)
    conn.execute("SELECT add_disthost(%s)", (WEB1,))
    conn.execute("SELECT add_place('pg', %s, '/var/db/pg/{}', NULL, NULL, NULL, NULL, false, true)", (file_type,))
    for name in (old, new):
        add_cert(conn, name, algo)
        target(conn, name, WEB1, "pg")
    inst = issue(conn, agent, old)
    with owner.transaction():
        owner.execute("SET LOCAL session_replication_role = replica")
        owner.execute(sql.SQL("UPDATE certkeydata SET key_file_format = 'traditional'{} WHERE certinstance = %s").format(
            sql.SQL("").join(sql.SQL(", {} = {}").format(sql.Identifier(c), sql.Literal(v)) for c, v in columns.items())),
            (inst,))
    issue(conn, agent, new)
    return inst


def test_a_pair_imported_from_the_original_keeps_its_key_encoding_and_file_names(conn, owner, agent, hosts):
    """0010_imported_key_files: a pair `serverpki db import-legacy` brought (key_file_format 'traditional',
    file_name_algo of the original's label) is written as 0.9.x wrote it: a traditional PEM key (BEGIN EC
    PRIVATE KEY) in a file named by that label; pglink to a combined file is postgresql.key only, as the
    original made it. A pair of ours in the same place gets PKCS#8 and its own names."""
    old, new = "old.example.org", "new.example.org"
    inst = imported_beside_ours(conn, owner, agent, "combine both", "ec", old, new, file_name_algo="rsa")
    with pytest.raises(psycopg.Error) as refused:
        owner.execute("UPDATE certkeydata SET file_name_algo = NULL WHERE certinstance = %s", (inst,))
    assert refused.value.diag.sqlstate == "SP012" and "file_name_algo" in refused.value.diag.message_primary
    for name in (old, new):
        assert distribute(conn, agent, name)[WEB1]["state"] == "done"
    host = hosts.host(WEB1)
    combined = host.path(f"/var/db/pg/{old}/{old}_server_key_cert_cacert.pem")   # the 'rsa' label: no ec_
    text_of = combined.read_text()
    assert "-----BEGIN EC PRIVATE KEY-----" in text_of and "BEGIN PRIVATE KEY" not in text_of
    assert public_of_key(text_of) == public_of_cert(text_of)
    assert os.readlink(host.path(f"/var/db/pg/{old}/postgresql.key")) == combined.name
    assert not os.path.lexists(host.path(f"/var/db/pg/{old}/postgresql.crt"))
    assert consolidate(conn, agent, old)[WEB1]["result"]["drift"] == []
    ours = host.path(f"/var/db/pg/{new}/{new}_server_key_ec_cert_cacert.pem").read_text()   # a pair of ours
    assert "-----BEGIN PRIVATE KEY-----" in ours and "EC PRIVATE KEY" not in ours


def test_pglink_of_an_imported_rsa_plus_ec_instance_stays_on_the_ec_pair(conn, owner, agent, hosts):
    """0.9.x wrote the pairs of an rsa_plus_ec instance rsa first, re-linking postgresql.crt/.key on each:
    its links end on the EC pair. An imported instance keeps them there; ours link the RSA pair."""
    old, new = "old.example.org", "new.example.org"
    imported_beside_ours(conn, owner, agent, "separate", "rsa_plus_ec", old, new)
    for name in (old, new):
        assert distribute(conn, agent, name)[WEB1]["state"] == "done"
    host = hosts.host(WEB1)
    links = {name: {link: os.readlink(host.path(f"/var/db/pg/{name}/{link}")) for link in ("postgresql.crt", "postgresql.key")}
             for name in (old, new)}
    assert links == {old: {"postgresql.crt": f"{old}_server_ec_cert.pem", "postgresql.key": f"{old}_server_ec_key.pem"},
                     new: {"postgresql.crt": f"{new}_server_cert.pem", "postgresql.key": f"{new}_server_key.pem"}}
    assert consolidate(conn, agent, old)[WEB1]["result"]["drift"] == []
