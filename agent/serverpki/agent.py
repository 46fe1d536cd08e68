"""The agent loop: claim jobs, run their handlers, hand each outcome to SQL.

The agent decides nothing: pki.claim_jobs says what is due, the handler does
the side effect, the kind's completion function (db/jobs/) or pki.fail_job
apply the outcome (and the retry decision's back-off) in the database. A heartbeat thread extends the
lease while a handler works, so a slow SSH host or ACME order keeps its job.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import select
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from . import handlers as handler_registry
from . import migrate, notices
from .config import Config, default_agent_name
from .errors import GiveUp, RetryLater, ServerPKIError, clean_text, with_hint
from .faults import crash_point
from .handlers import Completion, Context, Job
from .log import ProgressBar, on_terminal
from .queries import q

log = logging.getLogger("serverpki.agent")

# the completer gathers at least this many completions, or waits this long for them, before it sends them: each
# call of the completion has a fixed cost in the database, which a few more completions share
GATHER_COMPLETIONS = 8
GATHER_SECONDS = 0.02
_FLUSH = object()   # to the completer: send what you gathered now (the drain waits for it)
# the reads of a claim made ahead that wait for its turn are made this many jobs before it (Agent._read_at_turn):
# a query of the claimer takes the GIL a few times, each when the signing thread lets it go (once a certificate)
TURN_LEAD = 3
# how long a drain that ends abnormally waits to hand its jobs back (Agent._hand_back): a database that does
# not answer does not hold the exit; the leases bring the jobs back then
HAND_BACK_SECONDS = 5


class DatabaseLost(ServerPKIError):
    """The connection to the database broke while jobs ran."""


def _connection_lost(exc: BaseException) -> bool:
    """Whether a database error means the connection is gone: raised by the client (no SQLSTATE),
    a connection exception (08xxx) or the server shutting down (57P0x) — not a deadlock or a timeout."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate or exc.diag.sqlstate
    return state is None or state.startswith(("08", "57P"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class RunStats:
    """What one drain did: outcomes by job state, for the exit status and the summary."""

    outcomes: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def ran(self) -> int:
        return sum(self.outcomes.values())

    @property
    def all_succeeded(self) -> bool:
        return self.outcomes["failed"] == 0 and self.outcomes["dead"] == 0 and self.outcomes["lost"] == 0

    def summary(self) -> str:
        parts = [f"{n} {state}" for state, n in sorted(self.outcomes.items())]
        return f"{self.ran} job(s): " + (", ".join(parts) if parts else "none")


def _names_connect_timeout(dsn: str) -> bool:
    """Whether the DSN or the environment (PGCONNECT_TIMEOUT) sets libpq's connect_timeout."""
    return bool(conninfo_to_dict(dsn).get("connect_timeout") or os.environ.get("PGCONNECT_TIMEOUT"))


class _Heartbeats(threading.Thread):
    """Extends the lease of every running job of the agent every third of the lease, on its own connection.
    One thread for all of them, started with the first: a thread started and joined per job cost more
    than a short job's handler."""

    def __init__(self, dsn: str, lease: int):
        super().__init__(daemon=True, name="heartbeats")
        self.dsn, self.lease = dsn, lease
        self.every = max(lease / 3, 1)
        # a connect that hangs (a host gone during a failover, its packets dropped) must not hold every
        # lease past its end: libpq waits forever unless told; the DSN's or PGCONNECT_TIMEOUT's value wins
        self.connect_timeout = None if _names_connect_timeout(dsn) else max(2, min(10, int(self.every / 2)))
        self.changed = threading.Condition()
        self.watched: dict[int, tuple[Job, float]] = {}   # job id -> (job, when its lease is extended next)
        self.sleeping_until = float("inf")                 # when the thread wakes up next by itself
        self.closed = False

    def watch(self, job: Job) -> None:
        with self.changed:
            when = time.monotonic() + self.every
            self.watched[job.id] = (job, when)
            if when < self.sleeping_until:   # else it wakes up in time anyway: no thread switch per job
                self.changed.notify()

    def unwatch(self, job: Job) -> bool:
        """Whether the job was watched."""
        with self.changed:
            return self.watched.pop(job.id, None) is not None

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify()

    def _due(self) -> list[Job]:
        """The jobs whose lease is due for extension, waiting until there are some (none: closed)."""
        with self.changed:
            while not self.closed:
                now = time.monotonic()
                due = [job for job, when in self.watched.values() if when <= now]
                if due:
                    for job in due:
                        self.watched[job.id] = (job, now + self.every)
                    return due
                # most jobs end long before a third of their lease: nothing is sent for those
                self.sleeping_until = min((when for _, when in self.watched.values()), default=now + 60)
                self.changed.wait(self.sleeping_until - now)
                self.sleeping_until = float("inf")
            return []

    def run(self) -> None:
        conn = None
        try:
            while due := self._due():
                for job in due:
                    try:
                        # a lost connection (a restart, a failover) is made anew at the next beat: the
                        # database may answer again, on another host, before the lease runs out
                        if conn is None or conn.closed or conn.broken:
                            timeout = {} if self.connect_timeout is None else {"connect_timeout": self.connect_timeout}
                            conn = psycopg.connect(self.dsn, autocommit=True, **timeout)
                        conn.execute(q("extend_lease"), {"job": job.id, "token": job.lease, "lease": self.lease})
                    except psycopg.Error as exc:
                        if not _connection_lost(exc):  # the job will be refused at completion (SP022); say why now
                            if self.unwatch(job):   # (not when its handler ended meanwhile: it is reported)
                                log.warning("%s: lease could not be extended: %s", job.label,
                                            exc.diag.message_primary or exc)
                            continue
                        log.warning("%s: lease not extended, the database connection was lost (%s); trying again "
                                    "in %.0f s", job.label, _first_line(exc), self.every)
                        if conn is not None:
                            conn.close()
                            conn = None
        finally:
            if conn is not None:
                conn.close()


class _Held:
    """The jobs a drain claimed that have no outcome yet, and how far their handlers went: what a drain that
    ends abnormally hands back (Agent._hand_back). Threads claim (the claimer) and begin jobs (the pool) while
    the drain ends: once it hands back, no job begins any more."""

    def __init__(self):
        self.lock = threading.Lock()
        self.jobs: dict[int, Job] = {}
        self.acting: set[int] = set()   # handlers that may have acted outside the agent (run_job): never handed back
        self.inside: set[int] = set()   # handlers of overlapped kinds that ran (they act only inside the agent)
        self.closed = False

    def claimed(self, jobs: list[Job]) -> None:
        with self.lock:
            if not self.closed:   # (claimed as the drain ends: left to their leases)
                self.jobs.update((job.id, job) for job in jobs)

    def finished(self, job: Job) -> None:
        self.jobs.pop(job.id, None)

    def ran_inside(self, job: Job) -> None:
        self.inside.add(job.id)

    def may_act(self, job: Job) -> bool:
        """Whether the job may begin (its handler act outside the agent): not once the drain hands back."""
        with self.lock:
            if self.closed:
                return False
            self.acting.add(job.id)
            return True

    def to_hand_back(self, interrupted: bool) -> list[Job]:
        """The jobs whose work never took effect, and no job begins any more. Interrupted (Ctrl-C): those of
        overlapped kinds whose handlers ran too; after an error they keep their leases (it may be theirs,
        and its attempt counts: a job that makes the drain fail goes dead in the end)."""
        with self.lock:
            self.closed = True
            return [job for job in self.jobs.values()
                    if job.id not in self.acting and (interrupted or job.id not in self.inside)]


class _Completions:
    """Completions overlapped: a job of an overlapped kind (job_kinds.concurrency: issue_local, a key and a
    certificate) does nothing outside the agent but compute its completion, so the next ones' handlers may
    run while the database applies the completions of those before (checks, storage, events, on the other
    core), and the next claim goes while the last ones are applied. A completer thread takes
    the completions handed over whenever the database is free, all that are there (a few gathered first:
    GATHER_COMPLETIONS), together (complete_issue_batch: one round trip, one statement per step for all of
    them), on the agent's own connection (the one whose server-side Python is warm): it does not wait for
    the thread that signs to finish its job to send them; each refusal is handled as run_job handles it
    (_refused: SP022 lost, SP023 dead, else failed and retried; a lost connection stops the drain). The
    handlers read through a second connection."""

    def __init__(self, agent: "Agent"):
        self.agent = agent
        # (job, (Completion, statement) or its outcome), _FLUSH, None: the end
        self.todo: queue.SimpleQueue = queue.SimpleQueue()
        # (job, outcome) in order; (None, error): the completer stopped
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.waiting = 0                                     # jobs handed over whose outcome was not yielded yet
        self.completer: threading.Thread | None = None      # started with the first completion of the drain

    def __enter__(self) -> "_Completions":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.completer is None:
            return
        if exc_type is not None:   # the drain stops (an error, Ctrl-C): what was not taken yet is not sent (those
            while True:            # jobs are handed back: Agent._hand_back); what is on its way is waited for
                try:
                    self.todo.get_nowait()
                except queue.Empty:
                    break
        self.todo.put(None)
        self.completer.join()

    @property
    def pending(self) -> bool:
        """Whether completions are on their way or waiting to be sent."""
        return self.waiting > 0

    def _complete(self) -> None:
        """The completer thread: the completions there, sent together, as long as the drain hands some over;
        after the first, it gathers GATHER_COMPLETIONS, for GATHER_SECONDS at most, unless told to send (_FLUSH)."""
        while (first := self.todo.get()) is not None:
            if first is _FLUSH:
                continue
            started, end = [first], False
            until = time.monotonic() + GATHER_SECONDS
            while True:
                try:
                    gathered = len(started) >= GATHER_COMPLETIONS
                    item = (self.todo.get_nowait() if gathered
                            else self.todo.get(timeout=max(0.0, until - time.monotonic())))
                except queue.Empty:
                    break
                if item is None:
                    end = True
                    break
                if item is _FLUSH:
                    break
                started.append(item)
            try:
                outcomes = self.agent._finish_overlapped(started)
            except BaseException as exc:   # (the database lost) the drain stops with it, at its next outcome
                self.done.put((None, exc))
                return
            for (job, _), outcome in zip(started, outcomes):
                self.done.put((job, outcome))
            if end:
                return

    def _hand_over(self, job: Job, begun: object) -> None:
        if self.completer is None:
            self.completer = threading.Thread(target=self._complete, name="completer", daemon=True)
            self.completer.start()
        self.waiting += 1
        self.todo.put((job, begun))

    def _outcome(self, item: tuple) -> tuple[Job, str]:
        job, outcome = item
        if job is None:
            self.waiting = 0
            raise outcome
        self.waiting -= 1
        return item

    def _arrived(self):
        while self.waiting:
            try:
                item = self.done.get_nowait()
            except queue.Empty:
                return
            yield self._outcome(item)

    def run(self, jobs: list[Job], fresh_until: float, before_last=None):
        """The handlers of the jobs, their completions handed to the completer; those of the last ones may
        still be on their way (wait). before_last(): called as the last TURN_LEAD jobs' handlers start (the
        first job's never: what the first one does comes before)."""
        agent = self.agent
        lead_from = max(1, len(jobs) - TURN_LEAD)
        for n, job in enumerate(jobs):
            if before_last is not None and n == lead_from:
                before_last()
            if agent._reader is None or agent._reader.closed or agent._reader.broken:
                agent._reader = agent._connect()   # lost (a restart, a failover): waited for, as the own one
            # within the first third of the claim's lease the job is ours without asking (no other
            # agent takes it before the lease runs out); later the lease is renewed as run_job does
            if time.monotonic() >= fresh_until and not agent._renew_lease(job, agent._reader):
                self._hand_over(job, "lost")
            else:
                agent._held.ran_inside(job)
                self._hand_over(job, agent._start_job(job, agent._reader))
            yield from self._arrived()

    def wait(self):
        """The outcomes of every completion still to come, sent and received."""
        if self.waiting:
            self.todo.put(_FLUSH)
        while self.waiting:
            yield self._outcome(self.done.get())


class Agent:
    def __init__(self, dsn: str, config: Config, name: str | None = None, lease: int = 300, batch: int = 10,
                 kinds: list[str] | None = None, selection: dict | None = None):
        """selection: the parameters of an operate_serverPKI run's selection (sel_all, sel_include, sel_exclude,
        sel_only, sel_skip, sel_limit, sel_no_tlsa): its drains claim only the jobs of that selection
        (pki.claim_jobs says which). None: every due job (serverpki agent)."""
        self.dsn = dsn
        self.selection = selection
        self.requested: list[int] = []   # jobs the run requested (claimed even when outside the selection)
        self.config = config
        self.name = name or default_agent_name()
        self.lease = lease
        self.batch = batch
        self.handlers = dict(handler_registry.load_all())
        self.kinds = sorted(k for k in (kinds or self.handlers) if k in self.handlers)
        if not config.alerts.channels and "notify_alerts" in self.kinds:
            # alerts are told with the [alerts] and [mail] of the process that runs the job: one that
            # tells nobody leaves them to one that does (the cron run's file, or the agent's)
            self.kinds.remove("notify_alerts")
        self._conn: psycopg.Connection | None = None
        self._heartbeats: _Heartbeats | None = None
        self._heartbeats_lock = threading.Lock()   # the pool's threads start jobs at once
        # the connection the handlers of overlapped jobs read through while the agent's own one sends
        # completions (_Completions)
        self._reader: psycopg.Connection | None = None
        # the connection the next claim is made on while the handlers of this one work (_claim_ahead)
        self._claimer: psycopg.Connection | None = None
        # reads that hold for the claimed batch being worked (Context.batch); new with each claim
        self._batch: dict = {}
        # job kind -> (its completion function, how its jobs may run: serial, pooled (those of one claim at
        # once), overlapped (_Completions)), as the kind's file in db/jobs/ registered them (read by claim)
        self._kinds: dict[str, tuple[str, str]] = {}
        # the drain's jobs claimed and without an outcome yet (_hand_back)
        self._held = _Held()

    # one autocommit connection for the queue and the handlers' named reads; once it was lost, a new
    # one is waited for (_connect), so that a drain goes on across a restart or a failover
    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None:
            self._conn = psycopg.connect(self.dsn, autocommit=True)
        elif self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._reader is not None:
            self._reader.close()
        if self._claimer is not None:
            self._claimer.close()
        if self._heartbeats is not None:
            self._heartbeats.close()
            self._heartbeats = None

    def claim(self, on_reader: bool = False, ahead: bool = False) -> list[Job]:
        """The next due jobs, leased to this agent. on_reader: claimed on the handlers' connection, while
        the agent's own one sends completions (_Completions); ahead: on a connection of its own, while the
        handlers of the last claim work (_claim_ahead), as on_reader."""
        # while completions are on their way, only jobs that depend on nothing they do (pki.kinds_to_claim)
        params = {"agent": self.name, "kinds": self.kinds, "overlapped_only": on_reader or ahead,
                  "max_jobs": self.batch, "lease": self.lease}
        query = q("claim_jobs")
        if self.selection is not None:
            params.update(self.selection, requested=self.requested)
            query = q("claim_selected_jobs")

        def claimed(conn: psycopg.Connection) -> list[tuple]:
            return conn.execute(query, params).fetchall()   # a Job's fields, in its order (query claim_jobs)

        # the connection may have died while it waited (a restart, a failover): claim on a new one. Had
        # the lost claim gone through after all, its jobs come back when their lease runs out
        side = "_claimer" if ahead else "_reader" if on_reader else None
        if side:
            rows = self._on_side(side, claimed, f"agent {self.name}")
        else:
            rows = self._on_own_connection(claimed, f"agent {self.name}")
        if any(r[1] not in self._kinds for r in rows):   # (r[1]: the kind)
            # on the connection the claim used: the agent's own one may be busy sending completions
            kinds = (self._on_side(side, lambda conn: conn.execute(q("job_kinds")).fetchall(), f"agent {self.name}")
                     if side else self.conn.execute(q("job_kinds")).fetchall())
            self._kinds = {kind: (complete_with, concurrency) for kind, complete_with, concurrency in kinds}
        jobs = [Job(id, kind, certificate, instance, disthost, zone, args or {}, attempts, max_attempts, lease,
                    certificate_name, disthost_name)
                for id, kind, certificate, instance, disthost, zone, args, attempts, max_attempts, lease,
                    certificate_name, disthost_name in rows]
        self._held.claimed(jobs)
        return jobs

    def run_job(self, job: Job, conn: psycopg.Connection | None = None) -> str:
        """Run one claimed job to its outcome; returns done, failed, dead or lost.
        conn: the connection for the handler and the outcome (default: the agent's own)."""
        if not self._held.may_act(job):   # (the drain hands its jobs back: this one is among them)
            log.warning("%s: not run, the drain ends", job.label)
            return "lost"
        if conn is None:   # the agent's own: renewed if it died since the last job (a failover between two jobs)
            renewed = self._on_own_connection(lambda own: self._renew_lease(job, own), job.label)
            conn = self.conn
        else:
            renewed = self._renew_lease(job, conn)
        if not renewed:
            return "lost"
        started = self._start_job(job, conn)
        return started if isinstance(started, str) else self._finish_job(job, started[1], conn)

    def _heartbeat(self) -> _Heartbeats:
        with self._heartbeats_lock:
            if self._heartbeats is None or not self._heartbeats.is_alive():
                self._heartbeats = _Heartbeats(self.dsn, self.lease)
                self._heartbeats.start()
            return self._heartbeats

    def _start_job(self, job: Job, conn: psycopg.Connection) -> str | tuple[Completion, tuple]:
        """The handler of a job whose lease was renewed (or is fresh): its Completion and the statement that
        sends it, or the outcome (failed, dead) when there is nothing to complete."""
        heartbeat = self._heartbeat()
        heartbeat.watch(job)
        ctx = Context(config=self.config, conn=conn, agent_name=self.name, batch=self._batch)
        if log.isEnabledFor(logging.DEBUG):   # (a job's label is made anew at each use: not for nothing)
            log.debug("%s: start (attempt %s of %s)", job.label, job.attempts, job.max_attempts)
        crash_point(f"{job.kind}.claimed")
        try:
            # a handler that returns no Completion fails its attempt like one that crashed
            completion = self.handlers[job.kind](job, ctx)
            statement = completion.statement(self._kinds[job.kind][0], job.id, job.lease)
        except RetryLater as exc:
            return self._fail(job, str(exc), retry=True, retry_after=exc.retry_after, conn=conn)
        except GiveUp as exc:
            return self._fail(job, str(exc), retry=False, conn=conn)
        except Exception as exc:  # a crashed handler is a failed attempt, not a crashed run
            log.debug("%s crashed", job.label, exc_info=log.isEnabledFor(logging.DEBUG))
            return self._fail(job, f"{type(exc).__name__}: {exc}", retry=True, conn=conn)
        finally:
            heartbeat.unwatch(job)
        crash_point(f"{job.kind}.before_complete")
        return completion, statement

    def _finish_job(self, job: Job, statement: tuple, conn: psycopg.Connection) -> str:
        """A job's completion sent and its refusal handled: done, failed, dead or lost."""
        try:
            self._report(conn, *statement, label=job.label)
        except psycopg.Error as exc:
            if _connection_lost(exc):
                raise   # the database stayed away (_report waited): the drain stops, the lease brings the job back
            # the hint is what says how to mend it
            return self._refused(job, exc.diag.sqlstate or type(exc).__name__,
                                 with_hint(exc.diag.message_primary or _first_line(exc), exc.diag.message_hint), conn)
        log.info("%s: done", job.label)
        return "done"

    def _refused(self, job: Job, state: str, message: str, conn: psycopg.Connection) -> str:
        """A job whose completion the database refused: done when it was sent again after a lost connection
        and the first had been stored, lost (SP022), else a failed attempt, retried unless the outcome did
        not fit (SP023); the error kept."""
        if state == "SP022" and self._completion_stored(job):
            # sent again after the connection was lost, and refused: the first had been committed
            log.info("%s: the outcome sent before the connection was lost had been stored", job.label)
            log.info("%s: done", job.label)
            return "done"
        if state == "SP022":
            log.warning("%s: result dropped: %s", job.label, message)
            return "lost"
        # the outcome did not fit (SP023) or could not be stored: a failed attempt, the error kept
        return self._fail(job, f"{state}: {message}", retry=state != "SP023", conn=conn)

    def _completion_stored(self, job: Job) -> bool:
        """Whether this attempt's completion is in the database (it was refused when sent again)."""
        try:
            return self.conn.execute(q("completion_stored"), {"job": job.id, "attempt": job.attempts}).fetchone()[0]
        except psycopg.OperationalError:
            return False   # cannot tell: reported as a lost result; the database keeps whatever it has

    def _renew_lease(self, job: Job, conn: psycopg.Connection) -> bool:
        """Whether the job is still ours, its lease renewed, as its handler starts. The jobs of one
        claim wait their turn without a heartbeat: when one waited past its lease, another agent
        may have taken it over, and running it here as well would do its side effect twice."""
        try:
            conn.execute(q("extend_lease"), {"job": job.id, "token": job.lease, "lease": self.lease})
        except psycopg.Error as exc:
            if exc.diag.sqlstate != "SP022":
                raise
            log.warning("%s: not run, its lease ran out while it waited: %s", job.label, exc.diag.message_primary)
            return False
        return True

    def _report(self, conn: psycopg.Connection, query: str | sql.Composed, params: dict, label: str):
        """Send a job's outcome (its kind's completion, or fail_job) and return its row. When the connection
        died under it (a restart, a failover, the network), reconnect and send it again for up to half the
        lease, while the job is still ours: finished work is reported, not done again after the lease."""
        try:
            return conn.execute(query, params).fetchone()
        except psycopg.OperationalError as exc:
            if not (conn.closed or conn.broken):
                raise
            log.warning("%s: the database connection was lost (%s); reconnecting to report the outcome",
                        label, _first_line(exc))
        with self._reconnected() as fresh:
            row = fresh.execute(query, params).fetchone()
        log.info("%s: outcome reported after reconnecting", label)
        return row

    @contextlib.contextmanager
    def _reconnected(self):
        """A new connection (_connect), closed after use."""
        with self._connect() as conn:
            yield conn

    def _connect(self) -> psycopg.Connection:
        """A new autocommit connection, tried with a growing pause for up to half the lease while the
        database comes back (then its OperationalError). At a failover no host may take it for a
        moment: the old primary refuses, the standby is still read-only, which a multi-host DSN with
        target_session_attrs=read-write skips until it is promoted."""
        deadline = time.monotonic() + max(self.lease / 2, 1)
        delay = 0.25
        while True:
            try:
                return psycopg.connect(self.dsn, autocommit=True)
            except psycopg.OperationalError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.debug("agent %s: no database yet (%s); again in %.2f s", self.name, _first_line(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _on_own_connection(self, work, label: str):
        """work(conn) on the agent's own connection; when that connection turns out dead (it died since
        its last use: a restart, a failover), once more on a new one (_connect). Only for work that
        is safe to repeat: a claim (a lost one's jobs come back with their lease) or a lease renewal."""
        conn = self.conn   # a new one if the last was lost; its OperationalError when none came in time
        try:
            return work(conn)
        except psycopg.OperationalError as exc:
            if not (conn.closed or conn.broken):
                raise
            log.warning("%s: the database connection was lost (%s); reconnecting", label, _first_line(exc))
        self._conn.close()   # this one only: close() would end the handlers' connection and the heartbeats too
        self._conn = self._connect()
        return work(self._conn)

    def _on_side(self, side: str, work, label: str):
        """work(conn) on one of the agent's side connections (side: the attribute, "_reader" for the handlers'
        (_Completions), "_claimer" for the claims made ahead), as _on_own_connection on the agent's own."""
        conn = getattr(self, side)
        if conn is None or conn.closed or conn.broken:
            conn = self._connect()   # lost (a restart, a failover): waited for, as the own one
            setattr(self, side, conn)
        try:
            return work(conn)
        except psycopg.OperationalError as exc:
            if not (conn.closed or conn.broken):
                raise
            log.warning("%s: the database connection was lost (%s); reconnecting", label, _first_line(exc))
        conn.close()
        conn = self._connect()
        setattr(self, side, conn)
        return work(conn)

    def _on_reader(self, work, label: str):
        """work(conn) on the handlers' connection (_Completions)."""
        return self._on_side("_reader", work, label)

    def _claim_ahead(self) -> tuple[float, list[Job], dict]:
        """The next claim of overlapped jobs (claim(ahead=True)), when it was made (its leases' start) and
        its Context.batch, with what the handlers of its kinds read for a batch read already (a handler's
        read_ahead(jobs, ctx): the same reads, made here, off the thread that runs the handlers)."""
        claiming = time.monotonic()
        jobs = self.claim(ahead=True)
        # they wait for the claim before them: their leases are extended as a running job's are
        heartbeat = self._heartbeat()
        for job in jobs:
            heartbeat.watch(job)
        return claiming, jobs, self._read_ahead(jobs, lambda work, label: self._on_side("_claimer", work, label))

    def _read_at_turn(self, ahead: Future) -> None:
        """The reads of the claim made ahead that wait for its turn (a handler's read_at_turn: issue_local's
        CA), made by the claimer as the last handlers of the claim before it start: TURN_LEAD jobs before its
        turn at most, never before that claim's first job. The thread that signs finds them there and does not
        wait for the database."""
        _, jobs, batch = ahead.result()
        if jobs:
            self._read_ahead(jobs, lambda work, label: self._on_side("_claimer", work, label), hook="read_at_turn",
                             batch=batch)

    def _hand_back(self, interrupted: bool) -> None:
        """A drain that ended abnormally, its threads joined (after a second Ctrl-C some may still run: _Held
        keeps them from beginning a job), hands back the jobs it claimed whose work never took effect
        (_Held.to_hand_back: the claim made ahead, the rest of a claim, and when interrupted the overlapped
        jobs whose completions were not sent). release_jobs: due again at once, the attempt not
        counted; a job done, refused or taken over meanwhile is not under its lease any more and stays as it
        is. On a connection of its own, for HAND_BACK_SECONDS at most: a database that does not answer does
        not hold the exit, and the leases bring the jobs back."""
        jobs = self._held.to_hand_back(interrupted)
        if self._heartbeats is not None:
            for job in jobs:
                self._heartbeats.unwatch(job)   # those claimed ahead: no longer extended
        if not jobs:
            return
        released: list = []

        def release() -> None:
            try:
                params = {"jobs": [job.id for job in jobs], "tokens": [job.lease for job in jobs]}
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=HAND_BACK_SECONDS) as conn:
                    released.append(conn.execute(q("release_jobs"), params).fetchone()[0])
            except psycopg.Error as exc:
                released.append(exc)

        worker = threading.Thread(target=release, name="hand-back", daemon=True)
        worker.start()
        worker.join(HAND_BACK_SECONDS)
        listed = ", ".join(str(job.id) for job in jobs)
        if released and isinstance(released[0], int):
            # (of those listed, a job whose outcome was stored meanwhile stays as it is)
            log.info("agent %s: %s jobs handed back, due again (of %s: %s)", self.name, released[0], len(jobs), listed)
        else:
            why = _first_line(released[0]) if released else f"no answer within {HAND_BACK_SECONDS} s"
            log.warning("agent %s: %s jobs not handed back (%s); they are claimed again when their lease runs out, "
                        "in %s s at most: run again then (%s)", self.name, len(jobs), listed, self.lease, why)

    def _read_ahead(self, jobs: list[Job], on_connection, hook: str = "read_ahead", batch: dict | None = None) -> dict:
        """Context.batch for the handlers of a claim (batch: the one it has, else a new one), with what the
        handlers of its kinds read once for it read already (a handler's read_ahead(jobs, ctx), or the hook
        named); on_connection(work, label): where."""
        batch = self._new_batch(jobs) if batch is None else batch
        for kind in sorted({job.kind for job in jobs}):
            read_ahead = getattr(self.handlers[kind], hook, None)
            if read_ahead is not None:
                ofkind = [job for job in jobs if job.kind == kind]
                try:
                    on_connection(lambda conn: read_ahead(ofkind, Context(
                        config=self.config, conn=conn, agent_name=self.name, batch=batch)), f"agent {self.name}")
                except Exception as exc:   # (a certificate gone, the database) the handlers read it, and meet it, themselves
                    log.debug("agent %s: reading ahead for %s jobs failed: %s", self.name, kind, _first_line(exc))
        return batch

    @staticmethod
    def _new_batch(jobs: list[Job]) -> dict:
        """Context.batch for the handlers of a claim: what they read once for it (handlers.common.batch_read)."""
        return {"certificates": sorted({job.certificate for job in jobs if job.certificate is not None})}

    def _fail(self, job: Job, error: str, retry: bool, retry_after: float | None = None,
              conn: psycopg.Connection | None = None) -> str:
        # the error comes from peers too (a reload's output, a CA's answer): no NUL, no control
        # characters, bounded, so that the database takes it
        error = clean_text(error)
        params = {"job": job.id, "token": job.lease, "error": error, "retry": retry, "retry_after": retry_after}
        try:
            outcome = self._report(conn or self.conn, q("fail_job"), params, job.label)[0]
        except psycopg.Error as exc:
            if exc.diag.sqlstate == "SP022":
                log.warning("%s: failure not recorded, lease lost: %s", job.label, error)
                return "lost"
            if _connection_lost(exc):
                raise
            # the database refused the report itself (a value it cannot hold): report it plainly, with
            # the queue's own back-off, rather than stop the drain and leave the job running
            refusal = f"{exc.diag.sqlstate or type(exc).__name__}: {_first_line(exc)}"
            plain = clean_text(f"the database refused this failure report ({refusal}); the failure was: "
                               + error.encode("ascii", "backslashreplace").decode("ascii"))
            try:
                outcome = self._report(conn or self.conn, q("fail_job"), dict(params, error=plain, retry_after=None),
                                       job.label)[0]
            except psycopg.Error as again:
                if _connection_lost(again):
                    raise
                log.error("%s: failure not recorded (%s), the job returns when its lease runs out: %s",
                          job.label, _first_line(again), error)
                return "lost"
            error = plain
        log.error("%s: %s (%s)", job.label, error, outcome)
        return outcome

    def due(self) -> int:
        """How many jobs of this agent's kinds are due now (of the run's selection, with what it requested)."""
        if self.selection is None:
            return self.conn.execute(q("due_jobs"), {"kinds": self.kinds}).fetchone()[0]
        return self.conn.execute(q("due_selected_jobs"),
                                 {**self.selection, "kinds": self.kinds, "requested": self.requested}).fetchone()[0]

    def _outcomes(self, max_jobs: int | None, bar: ProgressBar):
        """(job, outcome) of every due job, claim after claim until nothing is due (follow-ups included);
        the jobs of a pooled kind (distribute) of one claim run in the pool. The bar's total: what was
        claimed and what is due after each claim (the follow-ups the jobs before it enqueued)."""
        claimed = 0
        ahead: Future | None = None   # the next claim, made while the handlers of this one work
        turn: Future | None = None    # its reads that wait for its turn, made as the last handlers of this one start
        with _Completions(self) as completions, ThreadPoolExecutor(max_workers=1, thread_name_prefix="claimer") as claimer:
            try:
                while max_jobs is None or claimed < max_jobs:
                    if ahead is not None:
                        claiming, jobs, batch = ahead.result()
                        ahead = None
                        if turn is not None:
                            with contextlib.suppress(Exception):   # (what failed is read below, as the handlers would)
                                turn.result()
                            turn = None
                    else:
                        claiming = time.monotonic()
                        # while the completions of the last claim's overlapped jobs are on their way (on the agent's
                        # own connection), the next claim goes on the handlers' one: the database has both at once
                        on_reader = completions.pending
                        jobs = self.claim(on_reader=on_reader)
                        # claimed on the agent's own connection (nothing on its way: the first claim of a drain), the
                        # handlers' reads go there too: it is idle and warm, the handlers' one is new
                        batch = self._new_batch(jobs) if on_reader else self._read_ahead(jobs, self._on_own_connection)
                    if not jobs:
                        if not completions.pending:
                            break
                        # the follow-ups of the completions on their way (a distribution after an issue) are
                        # enqueued when these are in: claimed once they are
                        yield from completions.wait()
                        continue
                    # the handlers of this claim share what they read once for it (Context.batch); what may not be
                    # read before the claim's turn (read_at_turn: issue_local's CA and keys' form) was read as the
                    # last handlers of the claim before it started (a claim made ahead, _read_at_turn), else it is
                    # read just before its overlapped jobs run, after the jobs claimed before them (-I, -X/-Y)
                    self._batch = batch
                    claimed += len(jobs)
                    # a full claim of overlapped jobs (more are likely due): the next one is claimed while these
                    # run, on a connection of its own, and is there when they are done. Only overlapped kinds,
                    # as on the handlers' connection: completions are on their way by then
                    before_last = None
                    if (len(jobs) >= self.batch and all(map(self._overlapped, jobs))
                            and (max_jobs is None or claimed < max_jobs)):
                        ahead = claimer.submit(self._claim_ahead)

                        def before_last(ahead: Future = ahead) -> None:
                            nonlocal turn
                            turn = claimer.submit(self._read_at_turn, ahead)
                    if bar.shown:
                        bar.set_total(claimed + self.due())
                    pooled = [job for job in jobs if self._kinds[job.kind][1] == "pooled"]
                    pooled = pooled if len(pooled) > 1 else []
                    # in claim order; the completions of a run of consecutive overlapped jobs are in before any
                    # other job starts: that one may depend on them
                    for overlapped, run in itertools.groupby((job for job in jobs if job.id not in {p.id for p in pooled}),
                                                             key=self._overlapped):
                        if overlapped:
                            run = list(run)
                            self._read_ahead(run, self._on_reader, hook="read_at_turn", batch=self._batch)
                            yield from completions.run(run, fresh_until=claiming + self.lease / 3,
                                                       before_last=before_last)
                        else:
                            yield from completions.wait()
                            for job in run:
                                yield job, self.run_job(job)
                            # such a job may have changed what the claim read (-I, -X/-Y): the next ones read anew
                            self._batch = self._new_batch(jobs)
                    if pooled:
                        yield from completions.wait()
                        yield from self._run_pooled(pooled)
                yield from completions.wait()
            except BaseException:   # (an error, Ctrl-C, the database lost): drain() hands back what was not begun
                if ahead is not None:
                    ahead.cancel()      # not made if not under way; else waited for as the claimer exits (its jobs: _held)
                raise

    def _overlapped(self, job: Job) -> bool:
        """Whether the job's kind acts only inside the agent (job_kinds.concurrency): _Completions runs it."""
        return self._kinds[job.kind][1] == "overlapped"

    def _finish_overlapped(self, started: list[tuple[Job, object]]) -> list[str]:
        """The outcomes of jobs started by _Completions.run, their completions sent together."""
        if self._conn is not None and self._conn.broken:
            self._conn.close()   # lost since its last use: self.conn waits for a new one (_connect)
        outcomes: dict[int, str] = {job.id: begun for job, begun in started if isinstance(begun, str)}
        batch = [(job, begun) for job, begun in started if not isinstance(begun, str)]
        if len(batch) > 1 and all(self._kinds[job.kind][0] == "complete_issue"
                                  and set(completion.args) <= {"pairs", "cacert"} for job, (completion, _) in batch):
            # at most 32 subtransactions a call (PostgreSQL caches 64 subtransaction ids per backend: beyond,
            # every snapshot of every session is 'suboverflowed' until it commits)
            for start in range(0, len(batch), 32):
                outcomes.update(self._finish_batch(batch[start:start + 32]))
        else:
            for job, (_, statement) in batch:
                outcomes[job.id] = self._finish_job(job, statement, self.conn)
        if any(outcome != "done" for outcome in outcomes.values()):
            self._batch.clear()   # a refusal may come from a stale read of the batch (-X/-Y, the CA): read again
        return [outcomes[job.id] for job, _ in started]

    def _finish_batch(self, batch: list[tuple[Job, tuple]]) -> dict[int, str]:
        """complete_issue_batch for the jobs: each one's outcome as _finish_job would give it."""
        params = {"jobs": [job.id for job, _ in batch], "tokens": [job.lease for job, _ in batch],
                  "pairs": Jsonb([[pair._asdict() for pair in completion.args.get("pairs") or []]
                                  for _, (completion, _) in batch]),
                  "cacerts": [completion.args.get("cacert") for _, (completion, _) in batch],
                  "reports": Jsonb([completion.report for _, (completion, _) in batch])}
        try:
            states, messages = self._report(self.conn, q("complete_issue_batch"), params,
                                            label=f"{len(batch)} {batch[0][0].kind} jobs")
        except psycopg.Error as exc:
            if _connection_lost(exc):
                raise   # as _finish_job: the drain stops, the leases bring the jobs back
            # the call itself was refused (nothing of it applied): each completion on its own
            log.warning("%s jobs: their completions together were refused (%s: %s); sending them one by one. "
                        "The database's schema or grants do not match this agent: run serverpki db upgrade",
                        len(batch), exc.diag.sqlstate or type(exc).__name__, _first_line(exc))
            return {job.id: self._finish_job(job, statement, self.conn) for job, (_, statement) in batch}
        outcomes = {}
        told = log.isEnabledFor(logging.INFO)
        for (job, _), state, message in zip(batch, states, messages):
            if state is None:
                if told:
                    log.info("%s: done", job.label)
                outcomes[job.id] = "done"
            else:
                outcomes[job.id] = self._refused(job, state, message or state, self.conn)
        return outcomes

    # --- hosts in parallel: distribute jobs concern one disthost each, so a bounded pool
    # ([ssh] max_parallel_hosts) runs those of one claim at once, each on its own connection
    def _run_pooled(self, jobs: list[Job]):
        if not jobs:
            return
        workers = getattr(getattr(self.config, "ssh", None), "max_parallel_hosts", 1) or 1

        def one(job: Job) -> str:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                return self.run_job(job, conn)

        pool = ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="pool")
        try:
            yield from zip(jobs, pool.map(one, jobs))
        finally:   # a drain that ends abnormally: the jobs not begun are not (they are handed back); running ones end
            pool.shutdown(wait=True, cancel_futures=True)

    def drain(self, max_jobs: int | None = None, requested: list[int] | None = None, label: str = "jobs") -> RunStats:
        """Run what is due now, follow-ups included, then return (the cron run); a progress bar named label
        shows on a terminal. With a selection: only its jobs, and the jobs requested (ids an action's request
        returned)."""
        self.requested = [job for job in requested or () if job is not None]
        stats = RunStats()
        self._held = _Held()
        try:
            # counted for a terminal only; nothing due, no bar (`serverpki agent` drains at every wake-up)
            with ProgressBar(label, self.due() if on_terminal() else 0) as bar:
                outcomes = self._outcomes(max_jobs, bar)
                try:
                    for job, outcome in outcomes:
                        self._held.finished(job)
                        stats.outcomes[outcome] += 1
                        bar.advance()
                        if outcome != "done":
                            stats.errors.append(f"{job.label}: {outcome}")
                except BaseException as exc:
                    outcomes.close()   # its threads joined: the completions on their way are in, the others dropped
                    if not (isinstance(exc, psycopg.OperationalError) and _connection_lost(exc)):
                        self._hand_back(interrupted=isinstance(exc, KeyboardInterrupt))
                    raise   # (the database lost: the leases bring the jobs back)
        except psycopg.OperationalError as exc:
            if not _connection_lost(exc):
                raise
            self.close()
            raise DatabaseLost(
                f"the database connection was lost after {stats.summary()} ({_first_line(exc)}); jobs this "
                f"agent had claimed go back to the queue when their lease of {self.lease} s runs out") from exc
        return stats

    def unhandled_pending(self) -> list[tuple[str, int]]:
        """Jobs due now of kinds this agent has no handler for."""
        return self.conn.execute(q("unhandled_due_jobs"), {"kinds": self.kinds}).fetchall()

    def forever(self, poll_seconds: float = 30, stop: threading.Event | None = None) -> None:
        """The long-running agent: woken by NOTIFY pki_jobs, polling as a fallback, reconnecting after outages.
        Raises migrate.SchemaMismatch when the database's schema does not fit this release (at start or on
        reconnecting): the agent does not work a queue whose functions it does not know."""
        stop = stop or threading.Event()
        delay = 1.0
        while not stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as listener:
                    # at start and after every reconnection: the database may have been upgraded meanwhile
                    migrate.check_compatible(listener)   # SchemaMismatch: the agent stops
                    self._kinds = {}                     # an upgrade may have changed them (claim reads them anew)
                    listener.execute(q("listen_jobs"))
                    delay = 1.0
                    log.info("agent %s: listening for jobs of kinds %s", self.name, ", ".join(self.kinds))
                    told_at = float("-inf")
                    while not stop.is_set():
                        stats = self.drain()
                        if stats.ran:
                            log.info("agent %s: %s", self.name, stats.summary())
                        # what is new in pki.alerts, after work and once per poll interval; the database
                        # tells each alert once (a notify job just done leaves an empty digest: no loop)
                        if stats.ran or time.monotonic() - told_at >= poll_seconds:
                            told_at = time.monotonic()
                            told = notices.tell(self)
                            if told is not None and told.ran:
                                log.info("agent %s: alerts: %s", self.name, told.summary())
                        # wait for a notification or the poll interval, whichever comes first;
                        # in short slices, so a stop request is honoured within a second
                        deadline = time.monotonic() + poll_seconds
                        while not stop.is_set() and time.monotonic() < deadline:
                            ready, _, _ = select.select([listener.fileno()], [], [], min(1.0, poll_seconds))
                            if ready:
                                for _ in listener.notifies(timeout=0, stop_after=1000):
                                    pass
                                break
            except (psycopg.OperationalError, DatabaseLost, psycopg.errors.ReadOnlySqlTransaction) as exc:
                if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
                    # a standby took the connection: a DSN naming several hosts needs
                    # target_session_attrs=read-write, else libpq takes the first that answers
                    log.warning("agent %s: the database is read-only, a standby (%s); add "
                                "target_session_attrs=read-write to the connection string", self.name, _first_line(exc))
                log.warning("agent %s: database unreachable (%s); reconnecting in %.0f s", self.name,
                            _first_line(exc), delay)
                self.close()
                if stop.wait(delay):
                    break
                delay = min(delay * 2, 60)
