"""The one exception family of serverPKI, and the mapping of our SQLSTATEs."""

from __future__ import annotations

import psycopg


class ServerPKIError(Exception):
    """serverPKI failed."""

    exit_code = 1

    def __init__(self, message: str | None = None):
        super().__init__(message or self.__doc__)


class UsageError(ServerPKIError):
    """The command line or the configuration asks for something impossible."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration file is wrong."""


class DatabaseRefusal(ServerPKIError):
    """The database refused the request."""

    def __init__(self, message: str, sqlstate: str | None, hint: str | None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.hint = hint


def from_database(exc: psycopg.Error) -> ServerPKIError:
    """Turn a database error into one line an operator can act on (our SQLSTATEs are SPnnn)."""
    diag = exc.diag
    message = diag.message_primary or str(exc).strip()
    text = f"{message} (hint: {diag.message_hint})" if diag.message_hint else message
    if diag.sqlstate and diag.sqlstate.startswith("SP"):
        text = f"{diag.sqlstate}: {text}"
    return DatabaseRefusal(text, diag.sqlstate, diag.message_hint)
