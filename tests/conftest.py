"""Test harness: a real PostgreSQL 15 with plpython3u, a template database built
once from db/, and a fresh database per test (CREATE DATABASE ... TEMPLATE).

Set SERVERPKI_TEST_DSN to a superuser connection string to use a running
server instead of starting a private cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from serverpki import migrate
from serverpki.lab.postgres import PostgresCluster


class Server:
    """Where the tests' databases live: our private cluster or an external server."""

    def __init__(self, base_dsn: str):
        self.base_dsn = base_dsn

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(self.base_dsn, dbname=dbname)

    def new_database(self, template: str, prefix: str = "t_") -> str:
        """A new database copied from template, configured (search_path) for the sessions that follow."""
        name = f"{prefix}{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        with psycopg.connect(self.dsn(name), autocommit=True) as conn:
            migrate.configure_database(conn)
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def env(self, dbname: str = "postgres") -> dict[str, str]:
        info = conninfo_to_dict(self.dsn(dbname))
        names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE", "password": "PGPASSWORD"}
        return {names[k]: str(v) for k, v in info.items() if k in names}


@pytest.fixture(scope="session")
def pg_server() -> Server:
    external = os.environ.get("SERVERPKI_TEST_DSN")
    if external:
        yield Server(external)
        return
    # pytest's tmp folders are private to root; the postgres user must reach its data folder
    base = Path(tempfile.mkdtemp(prefix="serverpki-test-pg-"))
    os.chmod(base, 0o755)
    cluster = PostgresCluster(base / "cluster")
    cluster.start()
    try:
        yield Server(cluster.dsn())
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> str:
    name = f"serverpki_tpl_{os.getpid()}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
        migrate.upgrade(conn, log=lambda _line: None)
    yield name
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def dbname(pg_server: Server, template_db: str) -> str:
    """A fresh database with the schema installed."""
    name = pg_server.new_database(template_db)
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def dsn(pg_server: Server, dbname: str) -> str:
    return pg_server.dsn(dbname)


@pytest.fixture
def conn(dsn: str):
    """A superuser connection to a fresh database, autocommit, search_path pki, dd."""
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def psql(pg_server: Server, dbname: str):
    """Run psql against the fresh database; returns the CompletedProcess (stdout and stderr as text)."""

    def run(script: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        env = {**os.environ, **pg_server.env(dbname)}
        return subprocess.run(["psql", "-X", "-P", "pager=off", *args], input=script, text=True,
                              capture_output=True, env=env, check=check)

    return run


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
