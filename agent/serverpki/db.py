"""Database access: connections from libpq variables or a DSN, and our error mapping."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from .errors import DatabaseUnreachable, UsageError, from_database


def connect(dsn: str | None = None, **kwargs) -> psycopg.Connection:
    """Connect with the DSN, or with PGHOST/PGPORT/PGDATABASE/PGUSER when it is empty (libpq's rules).
    A connection string libpq cannot parse is a usage error (exit status 2), a failed connection
    DatabaseUnreachable (exit status 3): one line naming where, never the password."""
    try:
        where = _where(dsn or "")
    except psycopg.ProgrammingError:
        # not libpq's message: it may quote a piece of the string, the password too
        raise UsageError("the database connection string (--dsn, SERVERPKI_DSN or [database] dsn) is not a "
                         "libpq connection string or URI") from None
    try:
        return psycopg.connect(dsn or "", **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(f"cannot connect to the database {where}: {_reason(exc)}") from exc


def _where(dsn: str) -> str:
    """'pki on db.example.org port 5432 as pki_cron': the DSN's values, else libpq's (environment, defaults)."""
    given = conninfo_to_dict(dsn)
    defaults = {o.keyword.decode(): o.val.decode() for o in pq.Conninfo.get_defaults() if o.val is not None}

    def value(key: str) -> str | None:
        return str(given[key]) if given.get(key) not in (None, "") else defaults.get(key)

    user = value("user")
    host = value("host") or value("hostaddr") or "the local socket"
    return f"{value('dbname') or user or '?'} on {host} port {value('port') or '5432'} as {user or '?'}"


def _reason(exc: psycopg.OperationalError) -> str:
    """libpq's reason, without the 'connection to server at ... failed:' that _where already says."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    return " ".join(first.rpartition(" failed: ")[2].split()) or first


@contextlib.contextmanager
def refusals_as_errors() -> Iterator[None]:
    """Re-raise a database refusal as our exception, with SQLSTATE and hint in one line."""
    try:
        yield
    except psycopg.Error as exc:
        raise from_database(exc) from exc
