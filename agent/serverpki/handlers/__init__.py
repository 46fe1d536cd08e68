"""Job handlers: one module per kind of side effect, registered by job kind.

A handler performs the side effect of one job idempotently and returns the
outcome as a dict for pki.complete_job; it decides nothing. It raises
RetryLater for a passing fault and GiveUp for one that no retry will mend;
any other exception is a failed attempt that is retried with back-off.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..errors import ServerPKIError


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    certificate: int | None
    instance: int | None
    disthost: int | None
    zone: str | None
    args: dict[str, Any]
    attempts: int
    max_attempts: int


@dataclass
class Context:
    """What a handler may use: the configuration, a database connection for
    named reads, and keep_alive() to extend its lease during long steps."""

    config: Any
    conn: psycopg.Connection
    agent_name: str
    keep_alive: Callable[[], None] = field(default=lambda: None)


class RetryLater(ServerPKIError):
    """A passing fault: try the job again later."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class GiveUp(ServerPKIError):
    """A fault that no retry will mend: the job is dead."""


def open_stored_key(pem: str, passphrase_file, setting: str, what: str):
    """A stored private key, opened with the passphrase in passphrase_file when it is encrypted;
    a wrong passphrase gives the job up, naming the configuration key to fix."""
    from .. import keystore  # keystore imports this package's errors only; keep the import local

    passphrase = None
    if keystore.is_encrypted(pem):
        passphrase = keystore.read_passphrase(passphrase_file, f"Passphrase for the {what}: ")
    try:
        return keystore.load_key(pem, passphrase, what)
    except keystore.WrongPassphrase:
        raise GiveUp(f"{what}: wrong passphrase (configuration: {setting})") from None


Handler = Callable[[Job, Context], dict]
HANDLERS: dict[str, Handler] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    """Register a function as the handler of one job kind."""

    def register(fn: Handler) -> Handler:
        if kind in HANDLERS:
            raise RuntimeError(f"two handlers for job kind {kind}")
        HANDLERS[kind] = fn
        return fn

    return register


def load_all() -> dict[str, Handler]:
    """Import every handler module of this package, so each registers itself."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return HANDLERS
