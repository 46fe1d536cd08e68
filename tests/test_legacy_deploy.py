"""Issue 16, item 5 and 6: the real serverPKI 0.9.11 deploys to the lab's sshd hosts and publishes TLSA
records in the lab's BIND; after `serverpki db import-legacy`, our first cron run (`-S -q -a`) and `-K`
leave every file it deployed and every record it published as they were.

The original connects with paramiko to FQDN:22 (its known_hosts and keys in ~/.ssh) and sends its DNS
updates to 127.0.0.1:53, both hard-wired; it runs in a network namespace of its own (lab.privatenet)
where the hosts' names resolve to addresses whose port 22 leads to their sshd, 127.0.0.1:53 to BIND
and the database's port to the tests' PostgreSQL. Nothing of it is patched for this."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import psycopg
import pytest

from commands import OPERATE, SERVERPKI, environment, run
from lab import roles
from lab.acme_front import AcmeFront
from lab.bind import BindLab
from lab.lab import install_shims
from lab.pebble import PebbleLab
from lab.privatenet import PrivateNetwork
from lab.process import remove_dir, temp_dir
from lab.sshd import SSHLab
from legacy import (DISABLED, LE_CERTS, LOCAL_CERTS, PLACES, copy_legacy, legacy_db,  # noqa: F401  (the session fixture)
                    operate_in, use_acme_server)

ZONE = "lab.example"
HOSTS = ["www.lab.example", "jails.lab.example"]
JAILS = {"jails.lab.example": ["/usr/jails/web1", "/usr/jails/mail1"]}
DEPLOYED = [c for c in LOCAL_CERTS if c != DISABLED] + LE_CERTS   # what the original distributes here (-D -o ...)


class BindForTheOriginal(BindLab):
    """0.9.11 reads the TSIG secret with the pattern [=/a-zA-Z0-9]+: a base64 '+' in it fails its parser
    ("Cant parse ddns key file"), so this server's key has none (about every second key does)."""

    def _keygen(self, name: str) -> str:
        while "+" in (text := super()._keygen(name)):
            pass
        return text


@pytest.fixture(scope="module")
def peers():
    # authz_reuse: Pebble reuses a valid authorization, as Let's Encrypt does (the original sleeps 15 s per round)
    with BindForTheOriginal(zones=(ZONE,)) as bind, PebbleLab(dns_port=bind.port, authz_reuse=100) as pebble, \
            SSHLab(HOSTS) as ssh:
        for host in ssh.hosts.values():
            install_shims(host.root)   # the reload commands' service(8), as on the demo's hosts
            # the original makes only the last folder of a path (sftp mkdir): the rest is the host's
            for root in ["/", *JAILS.get(host.fqdn, [])]:
                for sql in PLACES.values():
                    for path in _paths_of(sql):
                        (host.root / root.lstrip("/") / path.lstrip("/")).parent.mkdir(mode=0o755, parents=True,
                                                                                      exist_ok=True)
        yield bind, pebble, ssh


def _paths_of(sql: str) -> list[str]:
    return [word.strip("',") for word in sql.split() if word.strip("',").startswith("/")]


RELOADS = "/var/log/reloads"   # where the lab's service(8) notes each reload it was asked for


def reloads(ssh: SSHLab) -> dict[str, str]:
    return {h.fqdn: h.path(RELOADS).read_text() for h in ssh.hosts.values() if h.path(RELOADS).exists()}


def files_on(ssh: SSHLab) -> dict[str, tuple]:
    """Every file and link the deployments left on the hosts: content, owner, mode, mtime and inode."""
    found = {}
    for host in ssh.hosts.values():
        for remote in host.deployed_files() - {RELOADS}:
            path = host.path(remote)
            st = path.lstat()
            content = os.readlink(path) if path.is_symlink() else path.read_bytes()
            found[f"{host.fqdn}:{remote}"] = (content, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                              st.st_mtime_ns, st.st_ino)
    return found


def tlsa_owners(legacy_dsn: str) -> list[str]:
    """Where the original publishes TLSA records: each name of a certificate with a service, per port."""
    with psycopg.connect(legacy_dsn) as conn:
        return [f"_{port}._tcp.{name}." for name, port in conn.execute(
            "SELECT s.name::text, sv.port FROM pki.subjects s JOIN pki.certificates_services cs USING (certificate) "
            "JOIN pki.services sv ON sv.id = cs.service ORDER BY 1, 2")]


def served(bind: BindLab, owners: list[str]) -> dict[str, list[str]]:
    """The zone's SOA and the TLSA records of these owners as BIND serves them."""
    def ask(name: str, rdtype) -> list[str]:
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~0x0100  # the authoritative server itself
        answer = dns.query.tcp(query, "127.0.0.1", port=bind.port, timeout=5)
        return sorted(rr.to_text() for rrset in answer.answer for rr in rrset)
    return {"SOA": ask(ZONE, dns.rdatatype.SOA), **{o: ask(o, dns.rdatatype.TLSA) for o in owners}}


def original_network(ssh: SSHLab, bind: BindLab, inst) -> PrivateNetwork:
    """The original's view of the lab: its hosts on port 22, BIND on 127.0.0.1:53, PostgreSQL where its
    config says; its ~/.ssh holds the lab's client key and the hosts' keys under their names."""
    names = {fqdn: f"127.0.1.{n}" for n, fqdn in enumerate(ssh.fqdns, start=1)}
    net = PrivateNetwork(names).start()
    try:
        for fqdn, address in names.items():
            host = ssh.host(fqdn)
            net.forward((address, 22), (host.address, host.port))
        net.forward(("127.0.0.1", 53), ("127.0.0.1", bind.port))
        net.forward(("127.0.0.1", inst.db_port), ("127.0.0.1", inst.db_port))
    except BaseException:
        net.close()
        raise
    dot_ssh = inst.home / ".ssh"
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    shutil.copy(ssh.identity, dot_ssh / "id_ed25519")
    (dot_ssh / "id_ed25519").chmod(0o600)
    (dot_ssh / "known_hosts").write_text("".join(f"{fqdn} {ssh.host(fqdn).public_key()}\n" for fqdn in ssh.fqdns))
    shutil.copy(bind.key_file, inst.home / "db" / "ddns-key.conf")
    (inst.home / "zones" / ZONE).mkdir(parents=True, exist_ok=True)   # how it finds the zone of a name
    return net


def our_config(tmp_path: Path, inst, bind: BindLab, ssh: SSHLab, front: AcmeFront, pebble: PebbleLab) -> Path:
    """Our configuration for the imported installation: the original's key file for the keys and the CA."""
    (tmp_path / "work").mkdir(exist_ok=True)
    key = inst.db_encryption_key
    config = tmp_path / "serverpki.toml"
    config.write_text(f"""
[paths]
work_dir = "{tmp_path / 'work'}"
db_encryption_key = "{key}"
[local_ca]
name = "Local CA"
passphrase_file = "{key}"
[acme]
directory_url = "{front.url}/directory"
ca_bundle = "{pebble.ca_bundle}"
contact_email = "admin@lab.example"
agree_tos = true
[dns]
tsig_key_file = "{bind.key_file}"
primary = "{bind.primary}"
propagation_timeout_seconds = 10
[ssh]
known_hosts = "{ssh.known_hosts}"
config_file = "{ssh.client_config}"
identity_file = "{ssh.identity}"
[logging]
syslog_address = ""
""")
    return config


def drift_of(pg_server, dbname: str) -> list[str]:
    """What our -K found drifted, host and path, from its distribute jobs' results (as the owner: a white-box read)."""
    with psycopg.connect(pg_server.dsn(dbname)) as conn:
        return sorted(f"{host}:{d['path']}: {', '.join(d['drift'])}" for host, drift in conn.execute(
            "SELECT result->>'host', result->'drift' FROM pki.jobs WHERE kind = 'distribute'") for d in drift)


def account_uses(pg_server, dbname: str) -> tuple[list, list, list]:
    """Our stored ACME accounts (directory, uri), the register_acme jobs ever queued, and the issued
    instances of the LE certificate with their pairs."""
    with psycopg.connect(pg_server.dsn(dbname)) as conn:
        return (conn.execute("SELECT directory_url, uri FROM pki.acme_accounts").fetchall(),
                conn.execute("SELECT id FROM pki.jobs WHERE kind = 'register_acme'").fetchall(),
                conn.execute("SELECT i.id, count(k.id) FROM pki.certinstances i JOIN pki.certkeydata k ON k.certinstance = i.id "
                             "WHERE i.certificate = pki.cert_id(%s) AND i.state = 'issued' GROUP BY 1", LE_CERTS).fetchall())


@pytest.mark.slow
def test_what_the_original_deployed_our_first_cron_run_and_k_leave_alone(pg_server, dbname, legacy_db, peers, tmp_path):
    """The original (its data made by tests/legacy.py: every place file type, jails, an 'ec'-labelled RSA
    pair, encrypted keys) registers at the lab's CA (-Z), issues its Let's Encrypt certificate (-C,
    rsa_plus_ec, dns-01 by dynamic update), distributes everything with its own -D and publishes the
    TLSA records. After the import our -S -q -a and -K as pki_cron rewrite no file (content, mode,
    owner, mtime, inode) and change no record (the SOA serial neither). -K adds three files, each
    announced: the key of a jailed target whose place has an absolute key_path (0.9.x wrote it outside
    the jail) and the chain files of the LE certificate in a place with a key_path (0.9.x wrote none).
    Then ours issues with the imported account: no new registration."""
    bind, pebble, ssh = peers
    home = temp_dir("serverpki-legacy-deploy-")
    inst = copy_legacy(pg_server, legacy_db, home)
    try:
        with AcmeFront(pebble, inst.le_account) as front, original_network(ssh, bind, inst) as net:
            net.forward(("127.0.0.1", front.port), ("127.0.0.1", front.port))
            use_acme_server(inst, front.url)
            trust = {"REQUESTS_CA_BUNDLE": str(pebble.ca_bundle)}
            inst.le_account.unlink()   # the offline account of tests/legacy.py: a real one at the lab's CA instead
            for args, answers in ((["-Z"], "y\ny\ny\n"),   # continue? agree to the terms?
                                  (["-C", *[a for c in LE_CERTS for a in ("-o", c)]], ""),
                                  (["-D", *[a for c in DEPLOYED for a in ("-o", c)]], "")):
                done = operate_in(net.command([]), inst, *args, answers=answers, **trust)
                assert done.returncode == 0, (args, done.stdout + done.stderr)
            owners = tlsa_owners(inst.dsn)
            before_files, before_zone, before_reloads = files_on(ssh), served(bind, owners), reloads(ssh)
            # what it did: every certificate deployed, its files on its hosts, its records for each name and port
            with psycopg.connect(inst.dsn) as conn:
                assert {s for (s,) in conn.execute(
                    "SELECT DISTINCT s.name::text FROM pki.certinstances i JOIN pki.subjects s USING (certificate) "
                    "WHERE i.state = 'deployed' AND NOT s.isaltname")} == set(DEPLOYED)
                assert conn.execute("SELECT count(*) FROM pki.certkeydata k JOIN pki.certinstances i ON i.id = k.certinstance "
                                    "JOIN pki.subjects s USING (certificate) WHERE s.name = %s", LE_CERTS).fetchone() == (2,)
            for name in DEPLOYED:
                assert any(f"/{name}_" in path for path in before_files), (name, sorted(before_files))
            assert all(before_zone[o] for o in owners), before_zone

            inst.le_account.chmod(0o600)   # its library wrote it 0644; the import wants a private file
            imported = run(SERVERPKI, "db", "import-legacy", "--from", inst.dsn, "--passphrase-file",
                           str(inst.db_encryption_key), "--account-file", str(inst.le_account),
                           "--acme-directory", f"{front.url}/directory", env=environment(pg_server, dbname, None))
            assert imported.returncode == 0, imported.stderr
            jailed_key = "jails.lab.example:/usr/jails/mail1/usr/local/etc/mail/keys/dual.lab.example_server_key.pem"
            assert "0.9.x wrote its key to /usr/local/etc/mail/keys on the host, outside its jail" in imported.stdout
            assert "0.9.x wrote no chain file (NAME_cert_cacert_chain.pem) into place p_separate" in imported.stdout
            config = our_config(tmp_path, inst, bind, ssh, front, pebble)

            cron = run(OPERATE, "-S", "-q", "-a", env=environment(pg_server, dbname, roles.CRON, config))
            assert cron.returncode == 0, cron.stdout + cron.stderr
            assert files_on(ssh) == before_files
            assert served(bind, owners) == before_zone
            assert reloads(ssh) == before_reloads

            consolidated = run(OPERATE, "-K", "-a", env=environment(pg_server, dbname, roles.CRON, config))
            assert consolidated.returncode == 0, consolidated.stdout + consolidated.stderr
            chains = [f"www.lab.example:/usr/local/etc/nginx/ssl/le.lab.example_server_{ec}cert_cacert_chain.pem"
                      for ec in ("", "ec_")]
            assert drift_of(pg_server, dbname) == sorted(f"{path}: missing" for path in [jailed_key, *chains])
            after = files_on(ssh)
            assert {k: v for k, v in after.items() if k not in (jailed_key, *chains)} == before_files
            outside = before_files[jailed_key.replace("/usr/jails/mail1", "")]
            assert after[jailed_key][0] == outside[0]   # the same key, written as the original wrote it
            assert served(bind, owners) == before_zone
            # only the place whose files changed reloads (the jailed place has no reload command)
            assert reloads(ssh) == {**before_reloads, "www.lab.example": before_reloads.get("www.lab.example", "")
                                    + "service nginx reload\n"}

            # the same account: ours orders with it (the CA knows it), nothing is registered anew
            accounts = account_uses(pg_server, dbname)
            renewed = run(OPERATE, "-C", "-o", LE_CERTS[0], env=environment(pg_server, dbname, roles.CRON, config))
            assert renewed.returncode == 0, renewed.stdout + renewed.stderr
            now = account_uses(pg_server, dbname)
            assert now[:2] == accounts[:2] and accounts[1] == []
            assert accounts[0] == [(f"{front.url}/directory", json.loads(inst.le_account.read_text())["uri"])]
            assert accounts[2] == [] and len(now[2]) == 1 and now[2][0][1] == 2   # a new rsa_plus_ec instance
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {inst.dbname} WITH (FORCE)")
        remove_dir(home)
