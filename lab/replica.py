"""A streaming replica of a lab PostgreSQL cluster, and its promotion: a failover on loopback.

    primary = PostgresCluster(base / "primary", extra_options=SYNCHRONOUS).start()
    ...                                          # the schema and the roles, on the primary
    standby = start_standby(primary, base / "standby")   # pg_basebackup -R through a slot, streaming
    make_synchronous(primary, standby)           # a commit returns once the standby has it on disk
    primary.stop("immediate")                    # the primary's host is lost
    promote(standby)                             # the standby takes over, read-write

Everything in the cluster replicates, the login roles too: the standby needs nothing of its own
but its data folder, port and socket. The lab clusters run with synchronous_commit=off (speed);
a primary whose commits must survive its loss runs with SYNCHRONOUS.
"""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

import psycopg
from psycopg import sql

from .postgres import PG_BIN, PostgresCluster

REPLICATION_ROLE = "replicator"
# for the primary: commits wait for the synchronous standby's flush (the lab's default is off)
SYNCHRONOUS = "-c synchronous_commit=on"


def start_standby(primary: PostgresCluster, base: Path, name: str = "standby") -> PostgresCluster:
    """A hot standby of primary in base: a replication role and an hba line for it on loopback,
    a base backup with -R (standby.signal, primary_conninfo) through a physical slot of the same
    name (the primary keeps the WAL the standby has not received), started and streaming."""
    with psycopg.connect(primary.dsn(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (REPLICATION_ROLE,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(REPLICATION_ROLE)))
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        line = f"host replication {REPLICATION_ROLE} 127.0.0.1/32 trust\n"
        if line not in hba.read_text():
            hba.write_text(line + hba.read_text())   # first: hba takes the first line that matches
            conn.execute("SELECT pg_reload_conf()")
    # cluster_name: the application_name the standby streams under (synchronous_standby_names)
    standby = PostgresCluster(base, extra_options=f"-c cluster_name={name}")
    base.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(base, pg.pw_uid, pg.pw_gid)
    standby._run(str(PG_BIN / "pg_basebackup"), "-D", str(standby.data), "-R", "-X", "stream", "-C", "-S", name,
                 "-c", "fast", "--no-sync",
                 "-d", f"host=127.0.0.1 port={primary.port} user={REPLICATION_ROLE} application_name={name}")
    standby.start()
    _wait(primary, "SELECT state = 'streaming' FROM pg_stat_replication WHERE application_name = %s", name,
          f"standby {name} is not streaming from the primary")
    return standby


def make_synchronous(primary: PostgresCluster, standby_name: str = "standby") -> None:
    """Commits on primary wait until the standby has flushed them: what the primary acknowledged
    survives its loss. The primary must run with SYNCHRONOUS (else its commits wait for nobody)."""
    with psycopg.connect(primary.dsn(), autocommit=True) as conn:
        if conn.execute("SHOW synchronous_commit").fetchone()[0] == "off":
            raise RuntimeError("the primary runs with synchronous_commit=off: start it with lab.replica.SYNCHRONOUS")
        conn.execute(sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
            sql.Literal(f'FIRST 1 ("{standby_name}")')))
        conn.execute("SELECT pg_reload_conf()")
    _wait(primary, "SELECT sync_state = 'sync' FROM pg_stat_replication WHERE application_name = %s", standby_name,
          f"standby {standby_name} did not become synchronous")


def promote(standby: PostgresCluster) -> None:
    """The standby leaves recovery and takes writes (pg_ctl promote waits until it does)."""
    standby._run(str(PG_BIN / "pg_ctl"), "-D", str(standby.data), "-w", "promote")


def multi_host_dsn(clusters: list[PostgresCluster], dbname: str, user: str, uri: bool = False) -> str:
    """A libpq connection string naming every cluster on loopback, in order, that takes only a
    read-write server (the primary, whichever it is now); uri: the postgresql:// form."""
    if uri:
        hosts = ",".join(f"127.0.0.1:{c.port}" for c in clusters)
        return f"postgresql://{user}@{hosts}/{dbname}?target_session_attrs=read-write&connect_timeout=2"
    return (f"host={','.join('127.0.0.1' for _ in clusters)} port={','.join(str(c.port) for c in clusters)} "
            f"dbname={dbname} user={user} target_session_attrs=read-write connect_timeout=2")


def _wait(cluster: PostgresCluster, query: str, arg: str, failure: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(query, (arg,)).fetchone()
            if row and row[0]:
                return
            time.sleep(0.1)
    raise RuntimeError(f"{failure} within {timeout:.0f} s")
