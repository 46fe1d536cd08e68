"""The login roles of an installation, created as the README tells an operator to, so that
the demo, the tests and the benches run every path as those roles and never as the owner.

    CREATE ROLE pki_operator LOGIN IN ROLE pki_admin;            -- a person with psql
    CREATE ROLE pki_cron     LOGIN IN ROLE pki_admin, pki_agent; -- operate_serverPKI from cron
    CREATE ROLE pki_worker   LOGIN IN ROLE pki_agent;            -- serverpki agent
    CREATE ROLE pki_reader   LOGIN IN ROLE pki_report;           -- reports, monitoring
"""

from __future__ import annotations

import psycopg
from psycopg import sql

OPERATOR, CRON, WORKER, READER = "pki_operator", "pki_cron", "pki_worker", "pki_reader"
LOGIN_ROLES: dict[str, tuple[str, ...]] = {
    OPERATOR: ("pki_admin",),
    CRON: ("pki_admin", "pki_agent"),
    WORKER: ("pki_agent",),
    READER: ("pki_report",),
}


def create_login_roles(conn: psycopg.Connection) -> None:
    """The four login roles (cluster-wide; kept when they exist). The group roles come with the schema."""
    for role, groups in LOGIN_ROLES.items():
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            continue
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
            sql.Identifier(role), sql.SQL(", ").join(map(sql.Identifier, groups))))


def enable_time_travel(conn: psycopg.Connection) -> None:
    """Let sessions of this database move pki.now (SET pki.now): the owner's switch, for tests and demos."""
    conn.execute("UPDATE pki.time_travel SET enabled = true")
