"""Test harness: a real PostgreSQL 15 with plpython3u, a template database built
once from db/, and a fresh database per test (CREATE DATABASE ... TEMPLATE).

Only the installer runs as the owner (a superuser). Every path under test runs as
the login roles an operator creates (lab.roles, the README's lines): `conn`,
`dsn` and the CLI's environment are the cron run's role, `pki_cron`; `owner` is for
installing, and for setting up or inspecting what no role may touch.

Set SERVERPKI_TEST_DSN to a superuser connection string to use a running
server instead of starting a private cluster.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from serverpki import migrate
from lab import roles
from lab.postgres import PostgresCluster
from lab.process import remove_dir, temp_dir


class Server:
    """Where the tests' databases live: our private cluster or an external server."""

    def __init__(self, base_dsn: str):
        self.base_dsn = base_dsn

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A connection string for dbname as user (default: the superuser of base_dsn)."""
        return make_conninfo(self.base_dsn, dbname=dbname, **({"user": user} if user else {}))

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

    def env(self, dbname: str = "postgres", user: str | None = roles.CRON) -> dict[str, str]:
        """libpq variables for psql and the CLI: as the cron run's role unless told otherwise."""
        info = conninfo_to_dict(self.dsn(dbname, user))
        names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE", "password": "PGPASSWORD"}
        return {names[k]: str(v) for k, v in info.items() if k in names}


@pytest.fixture(scope="session")
def pg_server() -> Server:
    external = os.environ.get("SERVERPKI_TEST_DSN")
    if external:
        yield Server(external)
        return
    # pytest's tmp folders are private to root; the postgres user must reach its data folder
    base = temp_dir("serverpki-test-pg-", 0o755)  # removed also when SIGTERM ends the run (lab.process)
    cluster = PostgresCluster(base / "cluster")
    cluster.start()
    try:
        yield Server(cluster.dsn())
    finally:
        cluster.destroy()
        remove_dir(base)


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> str:
    # helpers.owner_conn: who the schema owner is
    os.environ["SERVERPKI_TEST_OWNER"] = conninfo_to_dict(pg_server.dsn()).get("user") or "postgres"
    name = f"serverpki_tpl_{os.getpid()}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
        migrate.upgrade(conn, log=lambda _line: None)
        roles.create_login_roles(conn)
        roles.enable_time_travel(conn)   # the tests travel in time (SET pki.now)
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
    """The fresh database as the cron run's login role (pki_admin and pki_agent)."""
    return pg_server.dsn(dbname, roles.CRON)


@pytest.fixture
def owner_dsn(pg_server: Server, dbname: str) -> str:
    """The fresh database as the schema owner: the installer's, and the tests' for setup and inspection."""
    return pg_server.dsn(dbname)


@pytest.fixture
def conn(dsn: str):
    """A connection to a fresh database as the cron run's role, autocommit, search_path pki, dd."""
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def owner(owner_dsn: str):
    """A superuser connection to the fresh database: for what no login role may do (setup, white-box checks)."""
    with psycopg.connect(owner_dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def psql(pg_server: Server, dbname: str):
    """Run psql against the fresh database; returns the CompletedProcess (stdout and stderr as text)."""

    def run(script: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        env = {**os.environ, **pg_server.env(dbname, roles.OPERATOR)}   # a person with psql
        return subprocess.run(["psql", "-X", "-P", "pager=off", *args], input=script, text=True,
                              capture_output=True, env=env, check=check)

    return run


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
