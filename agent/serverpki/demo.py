"""`make demo` / `serverpki demo`: the job on a self-contained local setup.

Starts a private PostgreSQL cluster on loopback, installs the schema, loads the
example configuration through psql as an operator would, and shows the
result. Everything it starts is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

import psycopg

from . import migrate
from .lab.postgres import PostgresCluster
from .lab.smtp import SMTPLab
from .lab.sshd import SSHLab

DEMO_DB = "serverpki_demo"


def _psql(cluster: PostgresCluster, *args: str) -> None:
    env = {**os.environ, **cluster.env(DEMO_DB)}
    subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-P", "pager=off", *args], env=env, check=True)


def _operate(cluster: PostgresCluster, config: Path, *args: str, now: str | None = None) -> int:
    env = {**os.environ, **cluster.env(DEMO_DB), "SERVERPKI_CONFIG": str(config)}
    if now:  # time travel: every session of the run shares the clock (pki.now)
        env["PGOPTIONS"] = f"-c pki.now={now}"
    print(f"$ operate_serverPKI {' '.join(args)}" + (f"   (pki.now = {now})" if now else ""), flush=True)
    return subprocess.run([sys.executable, "-m", "serverpki.operate", *args], env=env).returncode


def _secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


# the lab's disthosts are Linux chroots; these stand in for FreeBSD's service(8) and jexec(8)
# and write what they were asked to do to /var/log/reloads on that host
SHIMS = {
    "service": '#!/bin/sh\necho "service $*" >> /var/log/reloads\necho "$1 reloaded"\n',
    "jexec": '#!/bin/sh\njail="$1"; shift\necho "jexec $jail $*" >> /var/log/reloads\necho "in jail $jail: $*"\n',
}


def _install_shims(ssh: SSHLab) -> None:
    for host in ssh.hosts.values():
        for folder in ("usr/sbin", "var/log"):
            (host.root / folder).mkdir(mode=0o755, parents=True, exist_ok=True)
        for name, script in SHIMS.items():
            (host.root / "usr/sbin" / name).write_text(script)
            (host.root / "usr/sbin" / name).chmod(0o755)


def _write_config(base: Path, smtp_port: int, ssh: SSHLab) -> Path:
    """The agent's configuration for the lab (see examples/serverpki.toml for every key)."""
    config = base / "serverpki.toml"
    config.write_text(f"""
[paths]
work_dir = "{base / 'work'}"
db_encryption_key = "{_secret(base / 'db_encryption_key', 'demo passphrase of the stored keys')}"
[local_ca]
passphrase_file = "{_secret(base / 'local_ca.pass', 'demo passphrase of the local CA')}"
[x509]
country = "DE"
organization = "serverPKI demo"
[mail]
relay_host = "127.0.0.1"
relay_port = {smtp_port}
sender = "serverpki@demo.serverpki.test"
recipients = ["pki-admins@demo.serverpki.test"]
[ssh]
known_hosts = "{ssh.known_hosts}"
config_file = "{ssh.client_config}"
identity_file = "{ssh.identity}"
[logging]
syslog_address = ""
""")
    return config


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run_demo(keep: bool = False) -> None:
    base = Path(tempfile.mkdtemp(prefix="serverpki-demo-"))
    os.chmod(base, 0o755)  # the postgres user needs to reach its data folder
    cluster = PostgresCluster(base / "pg")
    smtp = SMTPLab()
    ssh = SSHLab(["web1.demo.serverpki.test", "jailhost.demo.serverpki.test"])
    try:
        smtp.start()
        _banner(f"starting a private PostgreSQL 15 cluster on 127.0.0.1:{cluster.port}")
        cluster.start()
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DEMO_DB}")
        _banner("installing the schema (serverpki db init)")
        with psycopg.connect(cluster.dsn(DEMO_DB), autocommit=True) as conn:
            migrate.upgrade(conn)
        example = Path(str(resources.files("serverpki") / "examples" / "example_config.sql"))
        _banner(f"loading the example configuration with psql -f {example.name}")
        _psql(cluster, "-q", "-f", str(example))
        _banner("SELECT * FROM certs")
        _psql(cluster, "-c", "SELECT * FROM certs")
        _banner("starting two OpenSSH servers as the disthosts (one with a jail)")
        ssh.start()
        _install_shims(ssh)
        ssh.write_known_hosts()
        ssh.write_client_config()
        for fqdn, host in ssh.hosts.items():
            print(f"{fqdn}: sshd on {host.address}:{host.port}, its / is {host.root}")
        config = _write_config(base, smtp.port, ssh)
        _banner("issue the local CA (its key is stored encrypted with its own passphrase)")
        _operate(cluster, config, "-I")
        _banner("issue the local certificates (the ACME one follows with the ACME handlers)")
        _operate(cluster, config, "-C", "-o", "intranet.demo.serverpki.test", "-o", "backup_op")
        _banner("operate_serverPKI -n -v  (the configuration check and the seed's two tables)")
        _operate(cluster, config, "-n", "-v")
        _banner("encrypt every stored key at rest (-X)")
        _operate(cluster, config, "-X")
        _banner("operate_serverPKI -S -n -a  (what the hourly cron run would do now, and why)")
        _operate(cluster, config, "-S", "-n", "-a")
        _banner("the hourly cron run: operate_serverPKI -S -q -a  (without the ACME certificate: this lab has no ACME CA yet)")
        rc = _operate(cluster, config, "-S", "-q", "-a", "-e", "www.demo.serverpki.test")
        print(f"(exit status {rc}: every job it ran succeeded)" if rc == 0 else f"(exit status {rc})")
        _banner("the job summary: SELECT * FROM jobs_summary")
        _psql(cluster, "-c", "SELECT kind, state, jobs, last_error FROM jobs_summary")
        _banner("the history of the local server certificate: SELECT * FROM instance_history")
        _psql(cluster, "-c", "SELECT instance, certificate, from_state, to_state, reason FROM instance_history "
                             "WHERE certificate = 'intranet.demo.serverpki.test'")
        _banner("the files on the disthosts")
        for fqdn, host in ssh.hosts.items():
            for path in sorted(p for p in host.root.rglob("*.pem") if "/usr/lib" not in str(p)):
                st = path.lstat()
                print(f"{fqdn}:{'/' + str(path.relative_to(host.root))}  mode {st.st_mode & 0o777:04o}")
            reloads = host.root / "var/log/reloads"
            if reloads.exists():
                print(f"{fqdn}: reload commands run: {', '.join(reloads.read_text().split(chr(10))[:-1])}")
        print(f"\nmails received by the lab's SMTP relay: {len(smtp.messages)}")
        if keep:
            env = " ".join(f"{k}={v}" for k, v in cluster.env(DEMO_DB).items())
            print(f"\nthe lab keeps running; connect with: {env} psql\nstop it with: rm -rf {base} after pg_ctl stop")
            return
    finally:
        if not keep:
            ssh.close()
            smtp.stop()
            cluster.stop()
            shutil.rmtree(base, ignore_errors=True)
    print("\ndemo finished; everything it started is stopped")
