"""The agent loop: claim jobs, run their handlers, hand each outcome to SQL.

The agent decides nothing: pki.claim_jobs says what is due, the handler does
the side effect, the kind's completion function (db/jobs/) or pki.fail_job
apply the outcome (and the retry decision's back-off) in the database. A heartbeat thread extends the
lease while a handler works, so a slow SSH host or ACME order keeps its job.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from . import handlers as handler_registry
from . import migrate, notices
from .config import Config, default_agent_name
from .errors import GiveUp, RetryLater, ServerPKIError, clean_text
from .faults import crash_point
from .handlers import Context, Job
from .log import ProgressBar, on_terminal
from .queries import q

log = logging.getLogger("serverpki.agent")

# job kinds whose jobs of one claim run in parallel (one disthost each)
POOLED_KINDS = frozenset({"distribute"})


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


class _Heartbeat(threading.Thread):
    """Extends the lease of the running job every third of the lease, on its own connection."""

    def __init__(self, dsn: str, job: Job, lease: int):
        super().__init__(daemon=True, name=f"heartbeat-{job.id}")
        self.dsn, self.job_id, self.token, self.lease, self.label = dsn, job.id, job.lease, lease, job.label
        self.stopped = threading.Event()

    def run(self) -> None:
        # most jobs end long before a third of their lease: connect only for those that do not
        interval = max(self.lease / 3, 1)
        conn: psycopg.Connection | None = None
        try:
            while not self.stopped.wait(interval):
                try:
                    # a lost connection (a restart, a failover) is made anew at the next beat: the
                    # database may answer again, on another host, before the lease runs out
                    conn = conn if conn is not None and not conn.closed else psycopg.connect(self.dsn, autocommit=True)
                    conn.execute(q("extend_lease"), {"job": self.job_id, "token": self.token, "lease": self.lease})
                except psycopg.Error as exc:
                    if not _connection_lost(exc):  # the job will be refused at completion (SP022); say why now
                        log.warning("%s: lease could not be extended: %s", self.label, exc.diag.message_primary or exc)
                        return
                    log.warning("%s: lease not extended, the database connection was lost (%s); trying again "
                                "in %.0f s", self.label, _first_line(exc), interval)
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


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
        # job kind -> its completion function, as the kind's file in db/jobs/ registered it (read by claim)
        self._completions: dict[str, str] = {}

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

    def claim(self) -> list[Job]:
        params = {"agent": self.name, "kinds": self.kinds, "max_jobs": self.batch, "lease": self.lease}
        query = q("claim_jobs")
        if self.selection is not None:
            params.update(self.selection, requested=self.requested)
            query = q("claim_selected_jobs")
        # the connection may have died while it waited (a restart, a failover): claim on a new one. Had
        # the lost claim gone through after all, its jobs come back when their lease runs out
        rows = self._on_own_connection(lambda conn: conn.cursor(row_factory=dict_row).execute(query, params).fetchall(),
                                       f"agent {self.name}")
        if any(r["kind"] not in self._completions for r in rows):
            self._completions = dict(self.conn.execute(q("job_completions")).fetchall())
        return [Job(r["id"], r["kind"], r["certificate"], r["instance"], r["disthost"], r["zone"],
                    r["args"] or {}, r["attempts"], r["max_attempts"], str(r["lease_token"]),
                    r["certificate_name"], r["disthost_name"]) for r in rows]

    def run_job(self, job: Job, conn: psycopg.Connection | None = None) -> str:
        """Run one claimed job to its outcome; returns done, failed, dead or lost.
        conn: the connection for the handler and the outcome (default: the agent's own)."""
        if conn is None:   # the agent's own: renewed if it died since the last job (a failover between two jobs)
            renewed = self._on_own_connection(lambda own: self._renew_lease(job, own), job.label)
            conn = self.conn
        else:
            renewed = self._renew_lease(job, conn)
        if not renewed:
            return "lost"
        heartbeat = _Heartbeat(self.dsn, job, self.lease)
        heartbeat.start()
        ctx = Context(config=self.config, conn=conn, agent_name=self.name)
        log.debug("%s: start (attempt %s of %s)", job.label, job.attempts, job.max_attempts)
        crash_point(f"{job.kind}.claimed")
        try:
            # a handler that returns no Completion fails its attempt like one that crashed
            statement = self.handlers[job.kind](job, ctx).statement(self._completions[job.kind], job.id, job.lease)
        except RetryLater as exc:
            return self._fail(job, str(exc), retry=True, retry_after=exc.retry_after, conn=conn)
        except GiveUp as exc:
            return self._fail(job, str(exc), retry=False, conn=conn)
        except Exception as exc:  # a crashed handler is a failed attempt, not a crashed run
            log.debug("%s crashed", job.label, exc_info=log.isEnabledFor(logging.DEBUG))
            return self._fail(job, f"{type(exc).__name__}: {exc}", retry=True, conn=conn)
        finally:
            heartbeat.stop()
        crash_point(f"{job.kind}.before_complete")
        try:
            self._report(conn, *statement, label=job.label)
        except psycopg.Error as exc:
            if _connection_lost(exc):
                raise   # the database stayed away (_report waited): the drain stops, the lease brings the job back
            state = exc.diag.sqlstate
            if state == "SP022" and self._completion_stored(job):
                # sent again after the connection was lost, and refused: the first had been committed
                log.info("%s: the outcome sent before the connection was lost had been stored", job.label)
            elif state == "SP022":
                log.warning("%s: result dropped: %s", job.label, exc.diag.message_primary)
                return "lost"
            else:
                # the outcome did not fit (SP023) or could not be stored: a failed attempt, the error kept
                return self._fail(job, f"{state or type(exc).__name__}: {exc.diag.message_primary or _first_line(exc)}",
                                  retry=state != "SP023", conn=conn)
        log.info("%s: done", job.label)
        return "done"

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
        self.close()
        self._conn = self._connect()
        return work(self._conn)

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
        the distribute jobs of one claim run in the pool. The bar's total: what was claimed and what is
        due after each claim (the follow-ups the jobs before it enqueued)."""
        claimed = 0
        while max_jobs is None or claimed < max_jobs:
            jobs = self.claim()
            if not jobs:
                return
            claimed += len(jobs)
            if bar.shown:
                bar.set_total(claimed + self.due())
            pooled = [job for job in jobs if job.kind in POOLED_KINDS]
            pooled = pooled if len(pooled) > 1 else []
            for job in jobs:
                if job.id not in {p.id for p in pooled}:
                    yield job, self.run_job(job)
            yield from self._run_pooled(pooled)

    # --- hosts in parallel: distribute jobs concern one disthost each, so a bounded pool
    # ([ssh] max_parallel_hosts) runs those of one claim at once, each on its own connection
    def _run_pooled(self, jobs: list[Job]):
        if not jobs:
            return
        workers = getattr(getattr(self.config, "ssh", None), "max_parallel_hosts", 1) or 1

        def one(job: Job) -> str:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                return self.run_job(job, conn)

        with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="pool") as pool:
            yield from zip(jobs, pool.map(one, jobs))

    def drain(self, max_jobs: int | None = None, requested: list[int] | None = None, label: str = "jobs") -> RunStats:
        """Run what is due now, follow-ups included, then return (the cron run); a progress bar named label
        shows on a terminal. With a selection: only its jobs, and the jobs requested (ids an action's request
        returned)."""
        self.requested = [job for job in requested or () if job is not None]
        stats = RunStats()
        try:
            # counted for a terminal only; nothing due, no bar (`serverpki agent` drains at every wake-up)
            with ProgressBar(label, self.due() if on_terminal() else 0) as bar:
                for job, outcome in self._outcomes(max_jobs, bar):
                    stats.outcomes[outcome] += 1
                    bar.advance()
                    if outcome != "done":
                        stats.errors.append(f"{job.label}: {outcome}")
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
                    self._completions = {}               # an upgrade may have changed them
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
