"""Job handlers: one module per kind of side effect, registered by job kind.

A handler performs the side effect of one job idempotently and returns the
outcome as a dict for pki.complete_job; it decides nothing. It raises
RetryLater for a passing fault and GiveUp for one that no retry will mend;
any other exception is a failed attempt that is retried with back-off.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ..errors import ServerPKIError
from ..queries import q


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
    # the claim's lease token: every call about the job presents it (never logged, hence repr=False)
    lease: str | None = field(default=None, repr=False)


@dataclass
class Context:
    """What a handler may use: the configuration, a database connection for
    named reads, and keep_alive() to extend its lease during long steps."""

    config: Any
    conn: psycopg.Connection
    agent_name: str
    keep_alive: Callable[[], None] = field(default=lambda: None)


@dataclass
class Progress:
    """How far a job got, kept in jobs.result while it runs (pki.save_job_progress, which strips
    key material), so that the attempt after a crash resumes instead of repeating a side effect."""

    job: Job
    ctx: Context
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, job: Job, ctx: Context) -> "Progress":
        row = ctx.conn.execute(q("job_progress"), {"job": job.id}).fetchone()
        data = dict(row[0] or {}) if row else {}
        data["attempt"] = job.attempts
        return cls(job, ctx, data)

    def save(self, step: str | None = None) -> None:
        if step:
            self.data["step"] = step
        self.ctx.conn.execute(q("save_job_progress"), {"job": self.job.id, "token": self.job.lease,
                                                        "progress": Jsonb(self.data)})
        self.ctx.keep_alive()


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
    """A passing fault: try the job again later (after retry_after seconds, bounded; None: the queue's back-off)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = None if retry_after is None else bounded_delay(retry_after)


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


def outcome_of(exc: ServerPKIError, what: str) -> "GiveUp | RetryLater":
    """What an error of ours means for the job: a DNS server that did not answer or did not show
    the records yet passes (RetryLater); one that refused the update (wrong TSIG key, not the
    primary) or a configuration that cannot work does not (GiveUp)."""
    from ..dnsupdate import DnsError, DnsRefused

    if isinstance(exc, DnsError) and not isinstance(exc, DnsRefused):
        return RetryLater(f"{what}: {exc}")
    return GiveUp(f"{what}: {exc}")


def job_key(job: Job, ctx: Context, algo: str):
    """The key an earlier attempt of this job stored for its ACME order or account (pki.job_key), or None."""
    stored = ctx.conn.execute(q("job_key"), {"job": job.id, "token": job.lease, "algo": algo}).fetchone()[0]
    if stored is None:
        return None
    return open_stored_key(stored, ctx.config.paths.db_encryption_key, "paths.db_encryption_key",
                           f"the {algo} key of job {job.id}")


def save_job_key(job: Job, ctx: Context, algo: str, key, passphrase: bytes | None) -> None:
    """Keep a new key with the job before a CA sees it, so that a crash cannot orphan what the CA makes for it."""
    from .. import keystore

    ctx.conn.execute(q("save_job_key"), {"job": job.id, "token": job.lease, "algo": algo,
                                         "key": keystore.dump_key(key, passphrase)})


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
