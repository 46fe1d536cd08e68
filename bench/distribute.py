"""Distribution to 10 disthosts × 10 targets over real OpenSSH, beside one connection per file.

Run:  .venv/bin/python bench/distribute.py [HOSTS [TARGETS]]     (default 10 10; needs root for the lab's sshd)

Starts a private cluster (lab.postgres) and HOSTS sshd on 127.0.0.2... (lab.sshd),
issues one local certificate with the real -I/-C path, gives it TARGETS places ('separate': a
certificate and a key file each) on every host, then measures in the same run:
  queue:     request_distribute (-D) and Agent.drain(): one distribute job per host, each on ONE
             SSH connection for all its targets, hosts in the pool of [ssh] max_parallel_hosts;
  baseline:  the same files (the handler's own plan and atomic writer), one new SSH connection
             per file, hosts in a pool of the same size.
It prints the SSH connections opened (counted by the client and by the servers' logs: the queue's
must equal the number of hosts) and the wall time of both.
"""

from __future__ import annotations

import os
import posixpath
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lab (lab/): in the checkout, never installed

from serverpki import migrate, sshclient  # noqa: E402
from serverpki.agent import Agent  # noqa: E402
from serverpki.config import load_config  # noqa: E402
from serverpki.handlers import distribute as dist  # noqa: E402
from lab import roles  # noqa: E402
from lab.postgres import PostgresCluster  # noqa: E402
from lab.process import remove_dir, temp_dir  # noqa: E402
from lab.sshd import SSHLab  # noqa: E402
from serverpki.queries import q  # noqa: E402

NAME = "www.bench.test"


def one_connection_per_file(plan: dist.Plan, ssh) -> int:
    """The baseline: every file and link of the plan on a connection of its own; returns the connections."""
    opened = 0
    for f in plan.files.values():
        with sshclient.connect(plan.fqdn, ssh) as c:
            c.makedirs(posixpath.dirname(f.path))
            c.put_atomic(f)
        opened += 1
    for path, target in plan.links.items():
        with sshclient.connect(plan.fqdn, ssh) as c:
            c.symlink_atomic(target, path)
        opened += 1
    return opened


def main(n_hosts: int, n_targets: int) -> None:
    base = temp_dir("serverpki-bench-", 0o755)  # removed also when SIGTERM ends the run (lab.process)
    fqdns = [f"web{i:02d}.bench.test" for i in range(1, n_hosts + 1)]
    cluster = PostgresCluster(base / "pg")
    lab = SSHLab(fqdns)
    try:
        cluster.start()
        lab.start()
        passfile = base / "ca.pass"
        passfile.write_text("bench passphrase\n")
        passfile.chmod(0o600)
        config_file = base / "serverpki.toml"
        config_file.write_text(
            f'[local_ca]\npassphrase_file = "{passfile}"\nkey_type = "ec"\nkey_size = 256\n'
            f'[ssh]\nknown_hosts = "{lab.known_hosts}"\nconfig_file = "{lab.client_config}"\n'
            f'identity_file = "{lab.identity}"\nmax_parallel_hosts = 4\n'
            '[logging]\nsyslog_address = ""\n')
        config = load_config(config_file)
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE DATABASE bench")
        with psycopg.connect(cluster.dsn("bench"), autocommit=True) as owner:   # the installer
            migrate.upgrade(owner, log=lambda _: None)
            roles.create_login_roles(owner)
        # as deployed: the operator's requests as the cron run's role, the agent as its own
        with psycopg.connect(cluster.dsn("bench", roles.CRON), autocommit=True) as conn:
            conn.execute("SELECT * FROM add_cert(%s, 'server', 'local', 'ec', false, NULL, NULL, NULL, NULL, NULL, NULL)",
                         (NAME,))
            with conn.transaction():
                for t in range(n_targets):
                    conn.execute("SELECT add_place(%s, 'separate', %s)", (f"p{t}", f"/etc/ssl/p{t}/{{}}"))
                for fqdn in fqdns:
                    conn.execute("SELECT add_disthost(%s)", (fqdn,))
                    for t in range(n_targets):
                        conn.execute("SELECT add_target(%s, %s, NULL, %s)", (NAME, fqdn, f"p{t}"))
            agent = Agent(cluster.dsn("bench", roles.WORKER), config, name="bench", batch=max(n_hosts, 10))
            conn.execute("SELECT request_local_ca('Local CA', 'ec')")
            conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY[%s]))", (NAME,))
            assert agent.drain().all_succeeded

            logins = sum(lab.host(f).accepted_logins() for f in fqdns)
            client = sshclient.connections_opened()
            start = time.perf_counter()
            jobs = [r[0] for r in conn.execute("SELECT job FROM request_distribute(selection(only_certs => ARRAY[%s]))",
                                               (NAME,))]
            stats = agent.drain()
            queue_s = time.perf_counter() - start
            assert stats.all_succeeded and stats.outcomes["done"] == n_hosts, stats.summary()
            queue_client = sshclient.connections_opened() - client
            queue_logins = sum(lab.host(f).accepted_logins() for f in fqdns) - logins
            deployed = conn.execute("SELECT count(*) FROM deployed_where WHERE state = 'deployed'").fetchone()[0]
            assert deployed == n_hosts * n_targets, deployed
            files = sum(len(r["files"]) + len(r["links"]) for (r,) in
                        conn.execute("SELECT result FROM jobs WHERE id = ANY(%s)", (jobs,)))
            agent.close()

            # the same files, planned by the handler from the same rows
            plans = [dist.build_plan(conn.cursor(row_factory=dict_row).execute(q("distribution_files"), {"job": j})
                                     .fetchall(), lambda pem: pem) for j in jobs]
        for fqdn in fqdns:
            lab.host(fqdn).reset()
        logins = sum(lab.host(f).accepted_logins() for f in fqdns)
        client = sshclient.connections_opened()
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=config.ssh.max_parallel_hosts) as pool:
            opened = sum(pool.map(lambda plan: one_connection_per_file(plan, config.ssh), plans))
        base_s = time.perf_counter() - start
        base_client = sshclient.connections_opened() - client
        base_logins = sum(lab.host(f).accepted_logins() for f in fqdns) - logins
        assert opened == base_client
    finally:
        lab.close()
        cluster.destroy()
        remove_dir(base)
    print(f"{n_hosts} hosts x {n_targets} targets ({files} files and links), "
          f"{config.ssh.max_parallel_hosts} hosts in parallel")
    print(f"  queue (one connection per host): {queue_s:6.2f} s  SSH connections: {queue_client} opened, "
          f"{queue_logins} accepted by the servers (hosts: {n_hosts})")
    print(f"  baseline (one per file):         {base_s:6.2f} s  SSH connections: {base_client} opened, "
          f"{base_logins} accepted by the servers")
    print(f"  one connection per host is {base_s / queue_s:.1f}x faster")
    if queue_client != n_hosts or queue_logins != n_hosts:
        sys.exit(f"the queue opened {queue_client} connections for {n_hosts} hosts")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10, int(sys.argv[2]) if len(sys.argv) > 2 else 10)
