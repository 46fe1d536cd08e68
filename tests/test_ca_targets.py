"""CA certificates as targets (issue 13 item 6): the CA certificate goes to its targets as a trust
file, the CA instance stays 'issued', its key never leaves the database (functions/150_ca_targets.sql,
handlers/distribute.py).

The SQL tests drive the queue as the agent would (claim, distribution_files, complete) as the cron
role; the lab tests run operate_serverPKI itself (-D -o "Local CA", -K, -I, -S) as the cron role
against real OpenSSH servers (lab.sshd) and look at the files from outside.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from psycopg.rows import dict_row

from certfactory import issue_result
from helpers import assert_refused, owner_conn, remember_leases, lease_of
from helpers import complete as complete_job
from lab.lab import secret
from lab.sshd import SSHLab

WEB1, WEB2 = "web1.example.org", "web2.example.org"
CA = "Local CA"
CA_FILE = "Local CA_CA_cert.pem"
UTC = dt.timezone.utc


def one(conn, sql: str, params=()) -> dict:
    return conn.cursor(row_factory=dict_row).execute(sql, params).fetchone()


def rows(conn, sql: str, params=()) -> list[dict]:
    return conn.cursor(row_factory=dict_row).execute(sql, params).fetchall()


# --------------------------------------------------------------------------- SQL: the queue as the agent drives it

def claim(conn, kind: str) -> list[dict]:
    return remember_leases(conn, rows(conn, "SELECT * FROM claim_jobs('sql-test', ARRAY[%s], 100)", (kind,)))


def complete(conn, job: dict, result: dict) -> None:
    complete_job(conn, job["id"], lease_of(conn, job["id"], "sql-test"), result)


def issue_local_ca(conn) -> int:
    """-I completed with a correct result (certfactory): the new issued CA instance; its key is stored."""
    conn.execute("SELECT request_local_ca(%s, 'rsa')", (CA,))
    [job] = claim(conn, "issue_local_ca")
    complete(conn, job, issue_result(conn, "issue_local_ca", job["certificate"], dt.datetime.now(UTC), 3650))
    return job["instance"]


def ca_world(conn) -> None:
    conn.execute("SELECT add_disthost(%s)", (WEB1,))
    conn.execute("SELECT add_disthost(%s, '/usr/jails')", (WEB2,))
    conn.execute("SELECT add_jail('db', %s)", (WEB2,))
    conn.execute("SELECT add_place('cacerts', 'cert only', '/usr/local/share/certs')")
    conn.execute("SELECT add_place('pg', 'separate', '/var/db/postgres/.postgresql', '/var/db/postgres/private', "
                 "70, 70, 416, false, true, 'service postgresql reload')")


def distribute_jobs(conn, files: bool = True) -> list[dict]:
    """Claim every distribute job; with its files as distribution_files gives them to the agent."""
    jobs = claim(conn, "distribute")
    for job in jobs:
        job["files"] = rows(conn, "SELECT * FROM distribution_files(%s)", (job["id"],)) if files else []
    return jobs


def test_add_target_on_the_local_CA_and_on_an_ACME_issuer_is_accepted(conn):
    ca_world(conn)
    issue_local_ca(conn)
    # an ACME issuer: stored as a CA subject (type LE) by the chain of an ACME result (apply_acme_chain)
    conn.execute("SELECT * FROM add_cert('www.example.org', 'server', 'LE', 'ec', false, NULL, NULL, NULL, NULL, NULL, NULL)")
    conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY['www.example.org']))")
    [job] = claim(conn, "issue_acme")
    complete(conn, job, issue_result(conn, "issue_acme", job["certificate"], dt.datetime.now(UTC)))
    issuer = one(conn, "SELECT s.name::text AS name, c.type::text AS type FROM subjects s JOIN certificates c "
                       "ON c.id = s.certificate WHERE s.type = 'CA' AND c.type = 'LE'")
    assert issuer["type"] == "LE"

    conn.execute("SELECT add_target('Local CA', 'web1.example.org', NULL, 'cacerts')")   # the README's line
    conn.execute("SELECT add_target(%s, %s, 'db', 'pg')", (CA, WEB2))
    conn.execute("SELECT add_target(%s, %s, NULL, 'cacerts')", (issuer["name"], WEB1))

    got = rows(conn, """SELECT s.name::text AS name, d.fqdn::text AS host, j.name::text AS jail, p.name::text AS place
                          FROM targets t JOIN subjects s ON s.certificate = t.certificate AND NOT s.isaltname
                          JOIN disthosts d ON d.id = t.disthost LEFT JOIN jails j ON j.id = t.jail
                          JOIN places p ON p.id = t.place WHERE s.type = 'CA' ORDER BY 1, 2""")
    assert got == [{"name": CA, "host": WEB1, "jail": None, "place": "cacerts"},
                   {"name": CA, "host": WEB2, "jail": "db", "place": "pg"},
                   {"name": issuer["name"], "host": WEB1, "jail": None, "place": "cacerts"}]
    # the seed's way too, and the same target twice is refused as for certificates
    conn.execute("SELECT add_disthost('web3.example.org')")
    conn.execute("SELECT add_target('Local CA', 'web3.example.org', NULL, 'cacerts')")
    assert_refused(conn, "INSERT INTO targets (disthost, place, certificate) SELECT t.disthost, t.place, t.certificate "
                         "FROM targets t JOIN disthosts d ON d.id = t.disthost WHERE d.fqdn = 'web3.example.org'",
                   sqlstate="SP003", match="has the target")


def test_distribution_files_never_return_a_key_for_a_CA_and_the_CA_stays_issued(conn):
    ca_world(conn)
    ca = issue_local_ca(conn)
    # the local CA's key is in the database (the owner sees it) ...
    assert owner_conn(conn).execute("SELECT key IS NOT NULL FROM certkeydata WHERE certinstance = %s", (ca,)).fetchone()[0]
    conn.execute("SELECT add_target(%s, %s, NULL, 'cacerts')", (CA, WEB1))
    conn.execute("SELECT add_target(%s, %s, 'db', 'pg')", (CA, WEB2))

    requested = rows(conn, "SELECT * FROM request_distribute(selection(only_certs => ARRAY[%s]))", (CA,))
    assert {(r["certificate"], r["instance"]) for r in requested} == {(CA, ca)} and len(requested) == 2
    jobs = distribute_jobs(conn)

    # ... and never in what the agent is given: the certificate only, for each target, whatever the place
    stored = one(conn, "SELECT convert_from(cert, 'UTF8') AS pem FROM certkeydata WHERE certinstance = %s", (ca,))["pem"]
    files = [f for j in jobs for f in j["files"]]
    assert sorted((f["fqdn"], f["place"], f["subject_type"]) for f in files) == [
        (WEB1, "cacerts", "CA"), (WEB2, "pg", "CA")]
    assert all(f["key"] is None and f["cert"] == stored and f["instance"] == ca for f in files)
    assert not any("PRIVATE KEY" in str(v) for f in files for v in f.values())

    for job in jobs:
        complete(conn, job, {"host": job["files"][0]["fqdn"], "files": [], "reload": []})
    # the CA instance stays issued; the deployments say where it went
    assert one(conn, "SELECT state::text FROM certinstances WHERE id = %s", (ca,))["state"] == "issued"
    assert one(conn, "SELECT count(*) AS n FROM deployments WHERE instance = %s", (ca,))["n"] == 2
    assert rows(conn, "SELECT * FROM deployed_where WHERE certificate = %s", (CA,))[0]["state"] == "issued"


def test_the_cron_run_brings_a_new_CA_instance_once_and_a_late_job_of_the_old_one_gives_up(conn):
    ca_world(conn)
    first = issue_local_ca(conn)
    conn.execute("SELECT add_target(%s, %s, NULL, 'cacerts')", (CA, WEB1))
    plan = rows(conn, "SELECT * FROM plan(selection(true))")
    assert [(p["certificate"], p["instance"], p["action"]) for p in plan] == [(CA, first, "distribute CA")]
    assert "not on 1 of its targets yet: web1.example.org" in plan[0]["reason"]

    ran = rows(conn, "SELECT * FROM schedule(selection(true))")
    assert [(p["certificate"], p["action"]) for p in ran] == [(CA, "distribute CA")]
    # pending: the next run waits for it and enqueues nothing
    assert [p["action"] for p in rows(conn, "SELECT * FROM schedule(selection(true))")] == ["wait"]
    [job] = distribute_jobs(conn)
    assert job["reason"] == "scheduler: the CA's newest issued instance for its targets"
    complete(conn, job, {"files": [], "reload": []})
    # distributed once: nothing more to do
    assert rows(conn, "SELECT * FROM schedule(selection(true))") == []
    assert claim(conn, "distribute") == []

    # a new target gets it on the next run (only that one lacks it)
    conn.execute("SELECT add_target(%s, %s, 'db', 'pg')", (CA, WEB2))
    assert [p["action"] for p in rows(conn, "SELECT * FROM schedule(selection(true))")] == ["distribute CA"]
    [job] = distribute_jobs(conn)
    assert job["files"][0]["fqdn"] == WEB2
    complete(conn, job, {"files": [], "reload": []})

    # -I: a new instance; the old one's late -K job gives up, the cron run brings the new one once
    conn.execute("SELECT * FROM request_consolidate_certs(selection(only_certs => ARRAY[%s]))", (CA,))
    second = issue_local_ca(conn)
    [late, _] = sorted(claim(conn, "distribute"), key=lambda j: j["id"])
    with pytest.raises(Exception) as info:
        conn.execute("SELECT * FROM distribution_files(%s)", (late["id"],))
    assert info.value.diag.sqlstate == "SP023" and "not the newest issued instance" in info.value.diag.message_primary
    for job in (late, _):
        conn.execute("SELECT fail_job(%s, %s, 'given up', false)", (job["id"], lease_of(conn, job["id"], "sql-test")))
    ran = rows(conn, "SELECT * FROM schedule(selection(true))")
    assert [(p["instance"], p["action"]) for p in ran] == [(second, "distribute CA")]
    jobs = distribute_jobs(conn)
    assert sorted(j["files"][0]["fqdn"] for j in jobs) == [WEB1, WEB2]
    assert all(f["instance"] == second and f["key"] is None for j in jobs for f in j["files"])
    for job in jobs:
        complete(conn, job, {"files": [], "reload": []})
    assert rows(conn, "SELECT * FROM schedule(selection(true))") == []
    assert {r["id"]: r["state"] for r in rows(conn, "SELECT id, state::text FROM certinstances WHERE id IN (%s, %s)",
                                               (first, second))} == {first: "issued", second: "issued"}


def test_selection_of_CAs_follows_the_options(conn):
    ca_world(conn)
    ca = issue_local_ca(conn)
    conn.execute("SELECT add_target(%s, %s, NULL, 'cacerts')", (CA, WEB1))
    conn.execute("SELECT add_target(%s, %s, 'db', 'pg')", (CA, WEB2))
    # -r N is about local certificates: -D -r leaves the CAs out (as the original's -r did)
    assert rows(conn, "SELECT * FROM request_distribute(selection(), 30)") == []
    # -e, -s/-l
    assert rows(conn, "SELECT * FROM request_distribute(selection(exclude => ARRAY[%s]))", (CA,)) == []
    got = rows(conn, "SELECT * FROM request_distribute(selection(only_hosts => ARRAY[%s]))", (WEB2,))
    assert [(r["certificate"], r["instance"]) for r in got] == [(CA, ca)]
    # a disabled CA only with -a or -i
    conn.execute("SELECT disable_cert(%s)", (CA,))
    assert rows(conn, "SELECT * FROM request_consolidate_certs(selection())") == []
    assert rows(conn, "SELECT * FROM plan(selection())") == []
    assert len(rows(conn, "SELECT * FROM request_consolidate_certs(selection(include => ARRAY[%s]))", (CA,))) == 1


def test_a_CA_with_targets_but_no_instance_says_so(conn):
    ca_world(conn)
    conn.execute("SELECT * FROM add_cert(%s, 'CA', 'local', 'rsa', false, NULL, NULL, NULL, %s, NULL, 'cacerts')",
                 (CA, WEB1))
    got = rows(conn, "SELECT * FROM request_distribute(selection(only_certs => ARRAY[%s]))", (CA,))
    assert [(r["job"], r["certificate"]) for r in got] == [(None, CA)] and "-I" in got[0]["reason"]
    assert rows(conn, "SELECT * FROM plan(selection(true))") == []


# --------------------------------------------------------------------------- the lab: operate_serverPKI and real sshd

@pytest.fixture(scope="module")
def lab():
    with SSHLab([WEB1, WEB2]) as lab:
        yield lab


@pytest.fixture
def cli(lab, pg_server, dbname, tmp_path):
    """operate_serverPKI as the cron run calls it (the cron role, a configuration file), on the lab."""
    lab.reset()
    ssh = lab.ssh_settings()
    config = tmp_path / "serverpki.toml"
    config.write_text(f"""
[paths]
work_dir = "{tmp_path / 'work'}"
db_encryption_key = "{secret(tmp_path / 'db.pass', 'db passphrase')}"
[local_ca]
name = "{CA}"
key_type = "ec"
key_size = 256
passphrase_file = "{secret(tmp_path / 'ca.pass', 'ca passphrase')}"
[x509]
country = "DE"
organization = "Example e.V."
[ssh]
known_hosts = "{ssh['known_hosts']}"
config_file = "{ssh['config_file']}"
identity_file = "{ssh['identity_file']}"
user = "{ssh['user']}"
connect_timeout_seconds = 5
command_timeout_seconds = 5
[logging]
syslog_address = ""
""")
    env = {**os.environ, **pg_server.env(dbname), "SERVERPKI_CONFIG": str(config)}
    agent_path = str(Path(__file__).resolve().parents[1] / "agent")
    env["PYTHONPATH"] = os.pathsep.join([agent_path, env.get("PYTHONPATH", "")])

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "serverpki.operate", *args], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    return run


def everything_on(lab: SSHLab, fqdn: str) -> dict[str, bytes]:
    """Every deployed file on the host (links left out) with its content."""
    host = lab.host(fqdn)
    return {p: host.path(p).read_bytes() for p in host.deployed_files() if not host.path(p).is_symlink()}


def mode_owner(lab: SSHLab, fqdn: str, path: str) -> tuple[str, int, int]:
    s = os.lstat(lab.host(fqdn).path(path))
    return f"{stat.S_IMODE(s.st_mode):04o}", s.st_uid, s.st_gid


def ca_instances(conn) -> list[dict]:
    return rows(conn, "SELECT i.id, i.state::text AS state, convert_from(k.cert, 'UTF8') AS pem "
                      "FROM certinstances i JOIN certkeydata k ON k.certinstance = i.id "
                      "WHERE i.certificate = cert_id(%s) ORDER BY i.id", (CA,))


def distribute_job_results(conn, since: int) -> list[dict]:
    return rows(conn, "SELECT j.id, j.state::text AS state, j.result, j.last_error, d.fqdn::text AS host FROM jobs j "
                      "JOIN disthosts d ON d.id = j.disthost WHERE j.kind = 'distribute' AND j.id > %s ORDER BY j.id",
                (since,))


def last_job(conn) -> int:
    return one(conn, "SELECT coalesce(max(id), 0) AS id FROM jobs")["id"]


def test_the_local_CA_goes_to_its_targets_as_a_trust_file_without_key_and_stays_issued(conn, cli, lab):
    cli("-I")
    [first] = ca_instances(conn)
    conn.execute("SELECT add_disthost(%s)", (WEB1,))
    conn.execute("SELECT add_disthost(%s, '/usr/jails')", (WEB2,))
    conn.execute("SELECT add_jail('db', %s)", (WEB2,))
    # a trust store (no mode: 0644; owner 0:80) and a PostgreSQL client's folder in a jail (0640, pglink: root.crt)
    conn.execute("SELECT add_place('cacerts', 'cert only', '/usr/local/share/certs', NULL, 0, 80, NULL, false, false, "
                 "'echo trust {} >> /reloads.log')")
    conn.execute("SELECT add_place('pg', 'combine both', '/var/db/postgres/.postgresql', '/var/db/postgres/private', "
                 "770, 771, 416, false, true, 'echo pg {} >> /reloads.log')")
    conn.execute("SELECT add_target(%s, %s, NULL, 'cacerts')", (CA, WEB1))
    conn.execute("SELECT add_target(%s, %s, 'db', 'pg')", (CA, WEB2))
    before = last_job(conn)

    cli("-D", "-o", CA)

    jobs = distribute_job_results(conn, before)
    assert {j["host"]: j["state"] for j in jobs} == {WEB1: "done", WEB2: "done"}, jobs
    web1, web2 = everything_on(lab, WEB1), everything_on(lab, WEB2)
    trust = f"/usr/local/share/certs/{CA_FILE}"
    pg = f"/usr/jails/db/var/db/postgres/.postgresql/{CA_FILE}"
    assert set(web1) == {trust, "/reloads.log"}
    assert set(web2) == {pg, "/reloads.log"}   # and the link root.crt:
    assert os.readlink(lab.host(WEB2).path("/usr/jails/db/var/db/postgres/.postgresql/root.crt")) == CA_FILE
    # the CA certificate, with the place's mode and owner; the reloads ran once each
    assert web1[trust].decode() == web2[pg].decode() == first["pem"]
    assert x509.load_pem_x509_certificate(web1[trust]).extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert mode_owner(lab, WEB1, trust) == ("0644", 0, 80)
    assert mode_owner(lab, WEB2, pg) == ("0640", 770, 771)
    assert web1["/reloads.log"] == b"trust \n" and web2["/reloads.log"] == b"pg db\n"
    # no key anywhere: not on the hosts, not in the queue; the key stays in the database
    for content in (*web1.values(), *web2.values()):
        assert b"PRIVATE KEY" not in content
    assert not any(p.startswith("/var/db/postgres/private") or "private" in p for p in (*web1, *web2))
    assert conn.execute("SELECT count(*) FROM jobs WHERE concat(args::text, result::text, last_error) "
                        "LIKE '%PRIVATE KEY%'").fetchone()[0] == 0
    assert owner_conn(conn).execute("SELECT key LIKE '%%ENCRYPTED PRIVATE KEY%%' FROM certkeydata "
                                    "WHERE certinstance = %s", (first["id"],)).fetchone()[0]
    # the CA instance's state is unchanged; the deployments record where it went
    assert [i["state"] for i in ca_instances(conn)] == ["issued"]
    assert one(conn, "SELECT count(*) AS n FROM deployments WHERE instance = %s", (first["id"],))["n"] == 2

    # -K: no drift, nothing written, no reload
    before = last_job(conn)
    cli("-K", "-o", CA)
    consolidated = distribute_job_results(conn, before)
    assert sorted(j["host"] for j in consolidated) == [WEB1, WEB2]
    for job in consolidated:
        assert job["state"] == "done" and job["result"]["drift"] == [] and job["result"]["reload"] == []
        assert not any(f["written"] for f in job["result"]["files"])
    # the cron run has nothing to do for the CA: it is on every target
    before = last_job(conn)
    cli("-S", "-a")
    assert distribute_job_results(conn, before) == []

    # a new local CA (-I): the next cron run brings its certificate to every target, once
    cli("-I")
    old, new = ca_instances(conn)
    assert new["pem"] != old["pem"]
    before = last_job(conn)
    cli("-S", "-a")
    jobs = distribute_job_results(conn, before)
    assert {j["host"]: j["state"] for j in jobs} == {WEB1: "done", WEB2: "done"}, jobs
    web1, web2 = everything_on(lab, WEB1), everything_on(lab, WEB2)
    assert web1[trust].decode() == web2[pg].decode() == new["pem"]
    assert mode_owner(lab, WEB1, trust) == ("0644", 0, 80) and mode_owner(lab, WEB2, pg) == ("0640", 770, 771)
    assert web1["/reloads.log"] == b"trust \ntrust \n" and web2["/reloads.log"] == b"pg db\npg db\n"
    assert [i["state"] for i in ca_instances(conn)] == ["issued", "issued"]
    before = last_job(conn)
    cli("-S", "-a")
    assert distribute_job_results(conn, before) == []
    assert not any(b"PRIVATE KEY" in c for c in (*web1.values(), *web2.values()))


def test_consolidation_brings_a_new_CA_instance_and_repairs_a_trust_file(conn, cli, lab):
    cli("-I")
    conn.execute("SELECT add_disthost(%s)", (WEB1,))
    conn.execute("SELECT add_place('cacerts', 'separate', '/etc/ssl/certs')")   # file type is ignored for a CA
    conn.execute("SELECT add_target(%s, %s, NULL, 'cacerts')", (CA, WEB1))
    cli("-D", "-o", CA)
    trust = f"/etc/ssl/certs/{CA_FILE}"
    assert set(everything_on(lab, WEB1)) == {trust}
    assert mode_owner(lab, WEB1, trust)[0] == "0644"   # the place has no mode

    cli("-I")
    _, new = ca_instances(conn)
    before = last_job(conn)
    cli("-K")
    [job] = distribute_job_results(conn, before)
    assert job["state"] == "done" and job["result"]["drift"] == [{"path": trust, "drift": ["content"]}]
    assert everything_on(lab, WEB1) == {trust: new["pem"].encode()}
