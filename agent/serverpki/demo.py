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

DEMO_DB = "serverpki_demo"


def _psql(cluster: PostgresCluster, *args: str) -> None:
    env = {**os.environ, **cluster.env(DEMO_DB)}
    subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-P", "pager=off", *args], env=env, check=True)


def _operate(cluster: PostgresCluster, *args: str) -> None:
    env = {**os.environ, **cluster.env(DEMO_DB)}
    subprocess.run([sys.executable, "-m", "serverpki.operate", *args], env=env, check=True)


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run_demo(keep: bool = False) -> None:
    base = Path(tempfile.mkdtemp(prefix="serverpki-demo-"))
    os.chmod(base, 0o755)  # the postgres user needs to reach its data folder
    cluster = PostgresCluster(base / "pg")
    try:
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
        _banner("operate_serverPKI -n -v  (the configuration check and the seed's two tables)")
        _operate(cluster, "-n", "-v")
        _banner("operate_serverPKI -S -n -a  (what the hourly cron run would do now, and why)")
        _operate(cluster, "-S", "-n", "-a")
        if keep:
            env = " ".join(f"{k}={v}" for k, v in cluster.env(DEMO_DB).items())
            print(f"\nthe lab keeps running; connect with: {env} psql\nstop it with: rm -rf {base} after pg_ctl stop")
            return
    finally:
        if not keep:
            cluster.stop()
            shutil.rmtree(base, ignore_errors=True)
    print("\ndemo finished; everything it started is stopped")
