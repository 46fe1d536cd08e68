"""A jail's owner cannot lead the agent's writes (or -K's reads) out of the jail (issue 12, item 7; -K reads bounded).

On the lab's real sshd (each host chrooted into its own folder, so the host's "/" is that
folder), a jail's owner plants symbolic links in the jail: a directory of a place pointing
to /etc, to a neighbour jail, a link higher up the path, a link in place of a file, a
huge sparse file in place of a certificate. Every outcome is read back from the files on
the host (the whole root compared before and after), the job's row in the real database,
and internal-sftp's own log of what it read.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest

from lab.sshd import SSHLab
from test_distribution import (WEB1, WEB2, add_cert, agent_for, issue, jobs_by_host, local_ca, one, rows, state,
                               target)
from test_distribution import config  # noqa: F401  (fixture)
from test_secrets import SftpLog

JAILROOT = "/usr/jails"
NAME = "www.example.org"
N = f"{NAME}_server_"
SSL = "/usr/local/etc/nginx/ssl"


@pytest.fixture(scope="module")
def lab():
    # internal-sftp logs every close with the bytes it read and wrote: the -K test counts them
    with SSHLab([WEB1, WEB2], sftp_log_level="INFO") as lab:
        lab.sftp_logs = {}
        try:
            yield lab
        finally:
            for log in lab.sftp_logs.values():
                log.close()


@pytest.fixture
def hosts(lab):
    lab.reset()
    for fqdn in lab.fqdns:
        if fqdn in lab.sftp_logs:
            lab.sftp_logs[fqdn].close()
        lab.sftp_logs[fqdn] = SftpLog(lab.host(fqdn).root)
    return lab


@pytest.fixture
def agent(dsn, config):  # noqa: F811
    a = agent_for(dsn, config)
    yield a
    a.close()


def tree(root: Path) -> dict[str, tuple]:
    """Everything below the host's root: type, mode, owner and content (or link target) of each entry."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name == "log" and p.parent.name == "dev":   # the SFTP log's socket
            continue
        s = p.lstat()
        if stat.S_ISLNK(s.st_mode):
            what = ("link", os.readlink(p))
        elif stat.S_ISREG(s.st_mode):
            what = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            what = ("dir",)
        out[str(p.relative_to(root))] = (*what, stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid)
    return out


def jailed_world(conn, agent, reload: str = "touch /reloaded") -> int:
    """WEB2 with jails j1 and j2 under /usr/jails; www.example.org to nginx (separate, SSL) in j1, and to
    a second place (/srv/ok) in j1 and one on the host itself, all in one job; its issued instance."""
    local_ca(conn, agent)
    conn.execute("SELECT add_disthost(%s, %s)", (WEB2, JAILROOT))
    conn.execute("SELECT add_jail('j1', %s)", (WEB2,))
    conn.execute("SELECT add_jail('j2', %s)", (WEB2,))
    conn.execute("SELECT add_place('nginx', 'separate', %s, NULL, NULL, NULL, NULL, false, true, %s)", (SSL, reload))
    conn.execute("SELECT add_place('ok', 'cert only', '/srv/ok')")
    add_cert(conn, NAME)
    target(conn, NAME, WEB2, "nginx", "j1")
    target(conn, NAME, WEB2, "ok", "j1")
    target(conn, NAME, WEB2, "ok")
    return issue(conn, agent, NAME)


def request(conn, what: str = "request_distribute") -> int:
    [job] = [r["job"] for r in rows(conn, f"SELECT job FROM {what}(selection(only_certs => ARRAY[%s])) "
                                          "WHERE job IS NOT NULL", (NAME,))]
    return job


def run(conn, agent, job: int) -> dict:
    agent.drain()
    return jobs_by_host(conn, [job])[WEB2]


# --------------------------------------------------------------------------- links out of the jail

@pytest.mark.parametrize("link, points_to, resolved", [
    # the place's directory -> the host's /etc (in the jail's eyes its own /etc)
    (f"{SSL}", "/etc", "/etc"),
    # relative, up and into the neighbour jail
    (f"{SSL}", "../../../../../j2/etc/ssl", "/usr/jails/j2/etc/ssl"),
    # higher up, with the rest of the path still to be made: makedirs must not follow it either
    ("/usr/local", "/", "/etc/nginx/ssl"),
], ids=["absolute", "neighbour-jail", "parent-with-missing-rest"])
def test_a_link_out_of_the_jail_gives_the_job_up_and_nothing_is_written_on_the_host(
        conn, agent, hosts, link, points_to, resolved):
    inst = jailed_world(conn, agent)
    host = hosts.host(WEB2)
    jail = host.path(f"{JAILROOT}/j1")
    (jail / link.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (jail / link.lstrip("/")).symlink_to(points_to)
    for d in ("/etc/ssl", "/usr/jails/j2/etc/ssl"):
        host.path(d).mkdir(parents=True, exist_ok=True)
    host.path("/etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    before = tree(host.root)
    job = request(conn)

    row = run(conn, agent, job)

    assert row["state"] == "dead" and row["attempts"] == 1, row["last_error"]
    assert row["last_error"] == (
        f"{WEB2}: refused to write to {JAILROOT}/j1{SSL}: it resolves to {resolved}, outside the jail root "
        f"{JAILROOT}/j1; a symbolic link in the jail points out of it: have the jail's owner remove it or point "
        "it inside the jail, or give the place a path that has no such link")
    assert tree(host.root) == before, "something was written on the host"
    assert not host.path("/reloaded").exists()
    assert state(conn, inst) == "issued"
    overview = one(conn, "SELECT state::text, last_error FROM jobs_overview WHERE id = %s", (job,))
    assert overview == {"state": "dead", "last_error": row["last_error"]}


def test_a_link_that_stays_in_the_jail_is_followed_and_consolidate_reads_through_it(conn, agent, hosts):
    inst = jailed_world(conn, agent, reload="echo reloaded >> /reloads.log")
    host = hosts.host(WEB2)
    jail = host.path(f"{JAILROOT}/j1")
    (jail / "usr/local/etc/nginx").mkdir(parents=True)
    (jail / "etc").mkdir()
    # to the jail's own /etc/ssl, which is not there yet: the agent makes it
    (jail / "usr/local/etc/nginx/ssl").symlink_to("../../../../etc/ssl")

    row = run(conn, agent, request(conn))

    assert row["state"] == "done", row["last_error"]
    assert state(conn, inst) == "deployed"
    assert (jail / "usr/local/etc/nginx/ssl").is_symlink()
    key = jail / f"etc/ssl/{N}ec_key.pem"
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(key.lstat().st_mode) == 0o400
    assert os.readlink(jail / "etc/ssl/postgresql.key") == f"{N}ec_key.pem"
    # the result names the configured paths
    assert f"{JAILROOT}/j1{SSL}/{N}ec_key.pem" in {f["path"] for f in row["result"]["files"]}
    again = run(conn, agent, request(conn, "request_consolidate_certs"))
    assert again["state"] == "done" and again["result"]["drift"] == [], again["result"]


def test_a_jailroot_that_is_a_link_is_compared_resolved(conn, agent, hosts):
    inst = jailed_world(conn, agent)
    host = hosts.host(WEB2)
    host.path("/data/jails/j1").mkdir(parents=True)
    host.path("/usr").mkdir(exist_ok=True)
    host.path(JAILROOT).symlink_to("/data/jails")   # the host's admin keeps the jails elsewhere

    row = run(conn, agent, request(conn))

    assert row["state"] == "done", row["last_error"]
    assert state(conn, inst) == "deployed"
    assert host.path(f"/data/jails/j1{SSL}/{N}ec_key.pem").is_file()

    # a link in such a jail that leads out of it is still refused, both roots named
    host.path("/data/jails/j1/srv/ok").rename(host.path("/data/jails/j1/srv/moved"))
    host.path("/data/jails/j1/srv/ok").symlink_to("/data/jails/j2")
    host.path("/data/jails/j2").mkdir()
    row = run(conn, agent, request(conn, "request_consolidate_certs"))   # -K: it would rewrite the moved file
    assert row["state"] == "dead"
    assert (f"refused to write to {JAILROOT}/j1/srv/ok: it resolves to /data/jails/j2, outside the jail root "
            f"{JAILROOT}/j1 (on the host /data/jails/j1)") in row["last_error"]
    assert list(host.path("/data/jails/j2").iterdir()) == []


# --------------------------------------------------------------------------- links in place of files

def test_a_link_in_place_of_a_file_or_a_temporary_file_is_replaced_not_followed(conn, agent, hosts):
    jailed_world(conn, agent)
    host = hosts.host(WEB2)
    outside = host.path("/etc/passwd")
    outside.parent.mkdir()
    outside.write_text("root:x:0:0::/root:/bin/sh\n")
    ssl = host.path(f"{JAILROOT}/j1{SSL}")
    ssl.mkdir(parents=True)
    (ssl / f"{N}ec_key.pem").symlink_to("/etc/passwd")
    job = request(conn)
    # the temporary name of this job's certificate file too
    (ssl / f".{N}ec_cert.pem.serverpki-job{job}.tmp").symlink_to("/etc/passwd")
    before = outside.read_bytes(), outside.stat()

    row = run(conn, agent, job)

    assert row["state"] == "done", row["last_error"]
    assert (outside.read_bytes(), outside.stat()) == before
    for name in (f"{N}ec_key.pem", f"{N}ec_cert.pem"):
        assert stat.S_ISREG((ssl / name).lstat().st_mode)
    assert stat.S_IMODE((ssl / f"{N}ec_key.pem").lstat().st_mode) == 0o400
    assert not [p for p in ssl.iterdir() if ".tmp" in p.name]

    # -K: a link swapped in for the certificate is drift, replaced; the file it pointed to is not touched
    (ssl / f"{N}ec_cert.pem").unlink()
    (ssl / f"{N}ec_cert.pem").symlink_to("/etc/passwd")
    row = run(conn, agent, request(conn, "request_consolidate_certs"))
    assert row["state"] == "done", row["last_error"]
    assert {"path": f"{JAILROOT}/j1{SSL}/{N}ec_cert.pem", "drift": ["not a regular file"]} in row["result"]["drift"]
    assert stat.S_ISREG((ssl / f"{N}ec_cert.pem").lstat().st_mode)
    assert (outside.read_bytes(), outside.stat()) == before


# --------------------------------------------------------------------------- -K reads no more than it needs

_CLOSE = re.compile(r'close "(.*)" bytes read (\d+) written (\d+)')


def bytes_read(lab: SSHLab, fqdn: str) -> dict[str, int]:
    """What internal-sftp read per file of the host, from its own log."""
    out: dict[str, int] = {}
    for line in lab.sftp_logs[fqdn].text():
        m = _CLOSE.search(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2))
    return out


def test_consolidate_does_not_read_a_huge_file_put_in_place_of_a_certificate(conn, agent, hosts):
    jailed_world(conn, agent)
    host = hosts.host(WEB2)
    assert run(conn, agent, request(conn))["state"] == "done"
    cert_path = f"{JAILROOT}/j1{SSL}/{N}ec_cert.pem"
    cert, key = host.path(cert_path), host.path(f"{JAILROOT}/j1{SSL}/{N}ec_key.pem")
    want, size = cert.read_text(), cert.stat().st_size
    # the jail's owner swaps in a big sparse file (64 MiB: were it read whole, the test still ends), and
    # edits the key in place (same size)
    cert.unlink()
    with open(cert, "wb") as f:
        f.truncate(64 << 20)
    key_text = key.read_text()
    key.chmod(0o600)
    key.write_text(key_text[:-2] + ("A" if key_text[-2] != "A" else "B") + "\n")
    key.chmod(0o400)
    key_size = key.stat().st_size
    hosts.sftp_logs[WEB2].lines.clear()

    row = run(conn, agent, request(conn, "request_consolidate_certs"))

    assert row["state"] == "done", row["last_error"]
    drift = {d["path"]: d["drift"] for d in row["result"]["drift"]}
    assert drift[cert_path] == ["content"] and drift[f"{JAILROOT}/j1{SSL}/{N}ec_key.pem"] == ["content"]
    assert cert.read_text() == want and cert.stat().st_size == size
    read = bytes_read(hosts, WEB2)
    assert cert_path not in read, f"the 64 MiB file was opened: {read.get(cert_path)} bytes read"
    # a file of the right size is read, but no more than its size and one byte
    assert 0 < read[f"{JAILROOT}/j1{SSL}/{N}ec_key.pem"] <= key_size + 1, read
