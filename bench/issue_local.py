"""Issuing local certificates through the queue, beside bare cryptography.

Run:  .venv/bin/python bench/issue_local.py [COUNT [ALGO]]     (no arguments: 200 ec, then 100 rsa)

Starts a private cluster (lab.postgres), installs the schema, creates
the local CA with the real -I path (request_local_ca + the agent), configures
COUNT local EC server certificates, then measures in the same run:
  queue:  SELECT request_create(...) and Agent.drain() (batch = 50) — claim, issue_local
          handler (key, certificate, PEM), complete_issue (plpython parses and
          checks every certificate, the state machine, events), per certificate;
  bare:   the same key generation and signing with cryptography alone
          (the CA key opened once, then x509util.new_key + issue_leaf + PEM), no database.
It prints certificates per second for both and the queue's rate as a share of
the bare rate (target: at least 70 %). Both run in the same process, one after
the other: on a machine shared with other work, compare them within one run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lab (lab/): in the checkout, never installed

from serverpki import keystore, migrate, x509util  # noqa: E402
from serverpki.agent import Agent  # noqa: E402
from serverpki.config import load_config  # noqa: E402
from lab import roles  # noqa: E402
from lab.postgres import PostgresCluster  # noqa: E402
from lab.process import remove_dir, temp_dir  # noqa: E402


TARGET = 0.70   # the queue's rate at least this share of the bare rate (issue 18)
BATCH = 50      # jobs claimed at once ([agent] batch), as a host that issues many local certificates sets it


def main(count: int, algo: str = "ec") -> bool:
    """Measure; True when the queue reaches TARGET of the bare rate."""
    base = temp_dir("serverpki-bench-", 0o755)  # removed also when SIGTERM ends the run (lab.process)
    passfile = base / "ca.pass"
    passfile.write_text("bench passphrase\n")
    passfile.chmod(0o600)
    config_file = base / "serverpki.toml"
    config_file.write_text(f'[local_ca]\npassphrase_file = "{passfile}"\nkey_size = 2048\n'
                           '[logging]\nsyslog_address = ""\n')
    config = load_config(config_file)
    cluster = PostgresCluster(base / "pg")
    cluster.start()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE DATABASE bench")
        with psycopg.connect(cluster.dsn("bench"), autocommit=True) as owner:   # the installer
            migrate.upgrade(owner, log=lambda _: None)
            roles.create_login_roles(owner)
        # as deployed: the operator's requests as the cron run's role, the agent as its own
        with psycopg.connect(cluster.dsn("bench", roles.CRON), autocommit=True) as conn:
            conn.execute("SELECT add_disthost('web1.bench.test')")
            conn.execute("SELECT add_place('p', 'separate', '/etc/ssl')")
            with conn.transaction():
                for i in range(count):
                    conn.execute("SELECT add_cert(%s, 'server', 'local', %s, false, NULL, NULL, NULL, "
                                 "'web1.bench.test', NULL, 'p')", (f"host{i}.bench.test", algo))
            # [agent] batch = 50: a claim's fixed cost (the claim, its reads) shared by more certificates; at 1,000
            # certificates 73 % of the bare rate against 68 % with 20 (median of 5 each, quiet machine)
            agent = Agent(cluster.dsn("bench", roles.WORKER), config, name="bench", batch=BATCH)
            conn.execute("SELECT request_local_ca('Local CA', 'rsa')")
            assert agent.drain().all_succeeded

            start = time.perf_counter()
            conn.execute("SELECT * FROM request_create(selection(), NULL)")
            stats = agent.drain()
            queue_s = time.perf_counter() - start
            assert stats.outcomes["done"] == count and stats.all_succeeded, stats.summary()
            issued = conn.execute("SELECT count(*) FROM certinstances WHERE state = 'issued'").fetchone()[0]
            assert issued == count + 1  # and the CA
            agent.close()

            ca = conn.execute("""SELECT convert_from(k.cert, 'UTF8'), convert_from(k.key, 'UTF8') FROM certkeydata k
                                  JOIN certinstances i ON i.id = k.certinstance JOIN subjects s ON s.certificate = i.certificate
                                 WHERE s.type = 'CA'""").fetchone()
        # like the agent's run: the CA's key opened once (its passphrase derivation is a fixed cost of a
        # run, a tenth of a second, not one of the queue), then the certificates
        start = time.perf_counter()
        ca_cert = x509util.load_cert(ca[0])
        ca_key = keystore.load_key(ca[1], keystore.read_passphrase(passfile))   # the whole file, as the agent reads it
        open_s = time.perf_counter() - start
        for i in range(count):
            key = x509util.new_key(algo, config.x509.rsa_key_size, config.x509.ec_curve)
            cert = x509util.issue_leaf(ca_cert, ca_key, key.public_key(), f"host{i}.bench.test", altnames=[],
                                       subject_type="server", must_staple=False,
                                       lifetime_days=config.x509.server_lifetime_days, names={})
            x509util.cert_pem(cert), keystore.dump_key(key)
        bare_s = time.perf_counter() - start
    finally:
        cluster.destroy()
        remove_dir(base)
    queue_rate, bare_rate = count / queue_s, count / bare_s
    kind = f"EC ({config.x509.ec_curve})" if algo == "ec" else f"RSA ({config.x509.rsa_key_size} bits)"
    print(f"{count} local {kind} certificates")
    print(f"  through the queue: {queue_s:6.2f} s  {queue_rate:7.1f} certificates/s")
    print(f"  bare cryptography: {bare_s:6.2f} s  {bare_rate:7.1f} certificates/s "
          f"({open_s:.2f} s of it opening the CA's key, once, as the agent does)")
    ratio = queue_rate / bare_rate
    print(f"  queue/bare: {ratio:.0%} of the bare rate (target: at least {TARGET:.0%}): "
          f"{'met' if ratio >= TARGET else 'NOT met'}")
    return ratio >= TARGET


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "ec")
    else:   # make bench: both algorithms
        main(200, "ec")
        main(100, "rsa")
