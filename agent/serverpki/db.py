"""Database access: connections from libpq variables or a DSN, and our error mapping."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg

from .errors import from_database


def connect(dsn: str | None = None, **kwargs) -> psycopg.Connection:
    """Connect with the DSN, or with PGHOST/PGPORT/PGDATABASE/PGUSER when it is empty (libpq's rules)."""
    try:
        return psycopg.connect(dsn or "", **kwargs)
    except psycopg.OperationalError as exc:
        raise from_database(exc) from exc


@contextlib.contextmanager
def refusals_as_errors() -> Iterator[None]:
    """Re-raise a database refusal as our exception, with SQLSTATE and hint in one line."""
    try:
        yield
    except psycopg.Error as exc:
        raise from_database(exc) from exc
