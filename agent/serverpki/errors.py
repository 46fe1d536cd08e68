"""The one exception family of serverPKI, the verdicts on a job's faults, the mapping of our SQLSTATEs,
and the exit statuses of the command lines (docs/cli.md), each carried by the exception that ends a run."""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # the command lines' -h and usage errors need no database driver
    import psycopg


class ExitStatus(enum.IntEnum):
    """What a run of operate_serverPKI or serverpki tells cron (docs/cli.md has the table)."""

    OK = 0
    FAILED = 1            # a job failed (or another error that is neither of the below)
    USAGE = 2             # bad option, bad selection (SP024), bad configuration file
    DATABASE = 3          # database unreachable, or its schema incompatible with this release
    CHECK_PROBLEMS = 4    # -n found configuration problems (warnings do not count)


class ServerPKIError(Exception):
    """serverPKI failed."""

    exit_code = ExitStatus.FAILED

    def __init__(self, message: str | None = None):
        super().__init__(message or self.__doc__)


class UsageError(ServerPKIError):
    """The command line or the configuration asks for something impossible."""

    exit_code = ExitStatus.USAGE


class ConfigError(UsageError):
    """The configuration file is wrong."""


class DatabaseUnreachable(ServerPKIError):
    """No connection to the database (down, refused, unknown database, authentication): nothing was done."""

    exit_code = ExitStatus.DATABASE


class SchemaIncompatible(ServerPKIError):
    """The database's schema does not fit this release of serverPKI: nothing was done."""

    exit_code = ExitStatus.DATABASE


# the shortest and longest wait a peer may ask for before a retry (Retry-After)
RETRY_AFTER_MIN, RETRY_AFTER_MAX = 1.0, 86400.0


def bounded_delay(seconds: object) -> float | None:
    """A wait before the retry that the database can hold: between RETRY_AFTER_MIN and RETRY_AFTER_MAX
    (a longer one, infinity too, is cut to the maximum); None (the queue's own back-off) for no number,
    NaN or a negative one, which no peer means."""
    try:
        value = float(seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    if math.isnan(value) or value < 0:
        return None
    return min(max(value, RETRY_AFTER_MIN), RETRY_AFTER_MAX)


class RetryLater(ServerPKIError):
    """A passing fault: try the job again later (after retry_after seconds, bounded; None: the queue's back-off).
    The peer adapters raise subclasses of it (DnsUnavailable, HostUnreachable, ...)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = None if retry_after is None else bounded_delay(retry_after)


class GiveUp(ServerPKIError):
    """A fault that no retry will mend: the job is dead. The peer adapters raise subclasses of it
    (DnsRefused, HostRefused, ...)."""


class DatabaseRefusal(ServerPKIError):
    """The database refused the request."""

    def __init__(self, message: str, sqlstate: str | None, hint: str | None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.hint = hint
        self.exit_code = REFUSAL_EXIT.get(sqlstate or "", ServerPKIError.exit_code)


# refusals that are not a failure of the run's work: a bad selection is a usage error (nothing was done);
# a table, column or function our fixed SQL names that the database lacks means a schema of another release
REFUSAL_EXIT = {
    "SP024": ExitStatus.USAGE,             # unknown certificate or disthost names
    "3F000": ExitStatus.DATABASE,          # invalid_schema_name: no serverPKI schema
    "42P01": ExitStatus.DATABASE,          # undefined_table (a view too)
    "42703": ExitStatus.DATABASE,          # undefined_column
    "42883": ExitStatus.DATABASE,          # undefined_function
}


def with_hint(message: str, hint: str | None) -> str:
    """A database refusal's message and its hint (what says how to mend it) on one line."""
    return f"{message} (hint: {hint})" if hint else message


def from_database(exc: psycopg.Error) -> ServerPKIError:
    """Turn a database error into one line an operator can act on (our SQLSTATEs are SPnnn)."""
    diag = exc.diag
    text = with_hint(diag.message_primary or str(exc).strip(), diag.message_hint)
    if diag.sqlstate and diag.sqlstate.startswith("SP"):
        text = f"{diag.sqlstate}: {text}"
    elif REFUSAL_EXIT.get(diag.sqlstate or "") == ExitStatus.DATABASE:
        text = f"{text} (no serverPKI schema, or one of another release: serverpki db status says which)"
    return DatabaseRefusal(text, diag.sqlstate, diag.message_hint)


# what a job's error may hold in the database (jobs.last_error keeps 4000 characters)
ERROR_LIMIT = 4000
# bidirectional overrides and isolates: they would make an error read differently from what it says
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _visible(ch: str) -> str:
    """A character as it may stand in a stored error: control and bidi characters spelled out."""
    code = ord(ch)
    if ch in "\n\t" or (code >= 0x20 and code != 0x7f and not 0x80 <= code <= 0x9f and ch not in _BIDI):
        return "\ufffd" if 0xd800 <= code <= 0xdfff else ch   # a lone surrogate is no UTF-8
    return f"\\x{code:02x}" if code <= 0xff else f"\\u{code:04x}"


def clean_text(text: object, limit: int | None = ERROR_LIMIT) -> str:
    """Text from anywhere (a peer's output, an exception) made fit for a text column and a terminal:
    valid UTF-8 (undecodable bytes become U+FFFD), no NUL or other control character but newline
    and tab (spelled out as \\x00 ...), and at most `limit` characters, the cut in the middle marked."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = str(text)
    text = text.replace("\r\n", "\n")
    length = len(text)
    if limit is not None and length > 2 * limit:   # spell out only what can be kept
        text = text[:limit] + text[-limit:]
    text = "".join(map(_visible, text))
    if limit is None or len(text) <= limit:
        return text
    mark = f"\n[... cut to {limit} characters; the text had {length} ...]\n"
    keep = max(limit - len(mark), 0)
    head, tail = keep * 2 // 3, keep - keep * 2 // 3
    return (text[:head] + mark + (text[-tail:] if tail else ""))[:limit]
