"""Job handlers: one module per kind of side effect, registered by job kind.

A handler performs the side effect of one job idempotently and returns its
outcome as a Completion: the typed arguments of the kind's completion function
in the database (db/jobs/, named by job_kinds.complete_with) and a report for
the operator; it decides nothing. Its faults are
RetryLater for a passing one and GiveUp for one that no retry will mend
(serverpki.errors): the peer adapters raise their subclasses, so a handler
passes them on; any other exception is a failed attempt that is retried with
back-off. What several handlers use lives in handlers.common.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..config import Config
from ..log import one_line
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
    # what its log lines call it: the certificate's main subject, the disthost's FQDN (the claim's names)
    certificate_name: str | None = None
    disthost_name: str | None = None

    @property
    def label(self) -> str:
        """The job in a log line, with what it concerns: "job 12 distribute www.example.com -> web1.example.com"
        (names from the database on one line: one cannot break the log line)."""
        words = [f"job {self.id} {self.kind}"]
        if self.certificate_name is not None:
            words.append(one_line(self.certificate_name))
        elif self.certificate is not None:
            words.append(f"certificate {self.certificate}")
        if self.disthost_name is not None:
            words.append(f"-> {one_line(self.disthost_name)}")
        elif self.disthost is not None:
            words.append(f"-> disthost {self.disthost}")
        if self.zone is not None:
            words.append(f"in zone {one_line(self.zone)}")
        return " ".join(words)


@dataclass
class Context:
    """What a handler may use: the configuration, a database connection for
    named reads, and keep_alive() to extend its lease during long steps.
    batch: reads that hold for the agent's whole claimed batch (handlers.common.batch_read);
    the agent drops them when a completion is refused, so a stale one costs a retry, not a wrong row."""

    config: Config
    conn: psycopg.Connection
    agent_name: str
    keep_alive: Callable[[], None] = field(default=lambda: None)
    batch: dict[str, Any] = field(default_factory=dict, repr=False)   # it holds the opened CA key, passphrases


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


class IssuedPair(NamedTuple):
    """dd.issued_pair: an issued key and its certificate, PEM; chain: an ACME order's certificates after the leaf."""

    algo: str
    cert: str
    key: str
    chain: list[str] | None = None

    def __repr__(self) -> str:   # never the key, in a log or a traceback
        return f"IssuedPair(algo={self.algo!r}, cert=<{len(self.cert)} characters>, key=<hidden>)"


class StoredKey(NamedTuple):
    """dd.stored_key: a stored key in a new form (-X / -Y), by the id of its row."""

    id: int
    key: str

    def __repr__(self) -> str:
        return f"StoredKey(id={self.id!r}, key=<hidden>)"


@dataclass(frozen=True)
class Completion:
    """A job's outcome: the arguments of its kind's completion function, pki.<complete_with>(job_id,
    lease_token, **args, report) (psycopg adapts lists, NamedTuples as composites, datetimes), and a
    report of what was done for jobs.result (the database strips key material from it)."""

    args: dict[str, Any] = field(default_factory=dict, repr=False)
    report: dict[str, Any] = field(default_factory=dict)

    def statement(self, function: str, job: int, token: str) -> tuple[sql.Composed, dict[str, Any]]:
        """The call of pki.<function> with these arguments, by name, as bind parameters."""
        return _completion_call(function, tuple(self.args)), {**self.args, "job": job, "token": token,
                                                              "report": Jsonb(self.report)}


@functools.lru_cache(maxsize=64)
def _completion_call(function: str, names: tuple[str, ...]) -> sql.Composed:
    """The call of pki.<function> with arguments of these names; composed once per kind and set of names,
    not once per job (a tenth of a millisecond, on the thread that runs the handlers)."""
    arguments = sql.SQL("").join(sql.SQL(", {} => {}").format(sql.Identifier(name), sql.Placeholder(name))
                                 for name in names)
    return sql.SQL(q("kind_completion")).format(function=sql.Identifier("pki", function), arguments=arguments)


Handler = Callable[[Job, Context], Completion]
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
