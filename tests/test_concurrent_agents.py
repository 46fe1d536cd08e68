"""Several agents drain one queue at once (issue 8, item 2).

Over the whole lab (tests/fleet.py): ~530 jobs — a hundred local certificates and thirty ACME
ones, each issued, distributed to two disthosts and its TLSA published — worked by three
long-running `serverpki agent` processes while two cron hosts run `operate_serverPKI -S -a` at
the same moment (each scheduling, then draining as an agent of its own). Every job must run
exactly once, and that is proved from three sides:

- the database: one `done` event per job, one outcome event per attempt, one attempt per job;
- the agents: each job is reported done in the log of exactly one agent, and every agent worked;
- the peers: Pebble issued exactly the serials the database stored (one per certificate and key
  algorithm), every sshd accepted one login per distribute job, and every host's reload log
  holds each distribute job's reload commands exactly once (each certificate's place has a
  reload command of its own, so a line names its certificate).

Beside it, focused regression tests for what concurrency exposed:
- scheduler passes that run at once decide on each other's results (one issue job each);
- a scheduler pass and an operator's -C at once, with an agent issuing in between, issue once
  (the pass planned before it waited and issued a second time: schedule() now holds -C off);
- two jobs that create the same directory on a host at once both succeed (the loser of the
  SFTP mkdir race failed its job: sshclient.makedirs now accepts the directory another made);
- a claimed job that waited in its agent's batch past its lease, and was taken over by another
  agent, is not run by the first as well (the agent renews the lease as each job starts).
No speed is asserted here; bench/concurrent_agents.py measures.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from cryptography import x509

from fleet import Fleet
from helpers import owner_conn
from serverpki import sshclient
from serverpki.agent import Agent
from serverpki.config import Config, load_config
from serverpki.handlers import Completion
from lab import roles
from lab.lab import HOSTS, ZONE
from lab.process import remove_dir, temp_dir

N_LOCAL, N_ACME, N_AGENTS, N_CRON = 100, 30, 3, 2
# "job 12 distribute www.example.org -> web1.example.org: done" (Job.label, then the outcome)
DONE_LINE = re.compile(r"^job (\d+) (\w+)[^\n:]*: done$", re.M)
ACTIVE = "('queued', 'running', 'failed')"


# ---------------------------------------------------------------- the workload

def workload_sql(n_local: int, n_acme: int) -> str:
    """What an operator types into psql: n_local local and n_acme ACME certificates (every third
    rsa_plus_ec), each with TLSA for https, on web1 and in the mail jail of jailhost, through a
    place of its own whose reload command names the certificate."""
    lines = []
    for prefix, count, cert_type in (("l", n_local, "local"), ("a", n_acme, "LE")):
        for i in range(count):
            tag = f"{prefix}{i:03d}"
            algo = "rsa_plus_ec" if cert_type == "LE" and i % 3 == 0 else "ec"
            lines += [
                f"SELECT add_place('p-{tag}', 'combine cacert', '/usr/local/etc/nginx/ssl', NULL, 0, 0, 384, "
                f"false, false, 'service nginx reload {tag}');",
                f"SELECT * FROM add_cert('{tag}.{ZONE}', 'server', '{cert_type}', '{algo}', false, "
                f"NULL, 'https', 443, '{HOSTS[0]}', NULL, 'p-{tag}');",
                f"SELECT add_target('{tag}.{ZONE}', '{HOSTS[1]}', 'mail', 'p-{tag}');",
            ]
    return "\n".join(lines) + "\n"


def add_workload(fleet: Fleet, n_local: int, n_acme: int) -> None:
    sql = fleet.lab.base / "workload.sql"
    sql.write_text(workload_sql(n_local, n_acme))
    run = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(sql)], env=fleet.env(),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def request_local(fleet: Fleet) -> int:
    """-C for every local certificate (the scheduler issues local ones on request only); returns the jobs."""
    return len(fleet.conn.execute("""
        SELECT * FROM request_create(selection(only_certs => ARRAY(
            SELECT s.name::text FROM subjects s JOIN certificates c ON c.id = s.certificate
             WHERE c.type = 'local' AND s.type <> 'CA' AND NOT s.isaltname)))""").fetchall())


@contextmanager
def fleet_base():
    """A folder for a Fleet that the postgres user can reach (pytest's tmp folders are private to root)."""
    base = temp_dir("serverpki-concurrent-")   # removed also when SIGTERM ends the run (lab.process)
    try:
        yield base
    finally:
        remove_dir(base)


def active_jobs(fleet: Fleet) -> int:
    return fleet.conn.execute(f"SELECT count(*) FROM jobs WHERE state IN {ACTIVE}").fetchone()[0]


def open_actions(fleet: Fleet) -> int:
    """What a scheduler pass would still do (anything but waiting)."""
    return fleet.conn.execute("SELECT count(*) FROM plan() WHERE action <> 'wait'").fetchone()[0]


def wait_idle(fleet: Fleet, deadline: float) -> None:
    while active_jobs(fleet) and time.monotonic() < deadline:
        time.sleep(0.2)


# ---------------------------------------------------------------- agents as processes

@dataclass
class AgentProcs:
    """N `serverpki agent` processes, each with its own configuration (its [agent] name) and log."""

    fleet: Fleet
    n: int
    poll_seconds: int = 60
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def start(self) -> "AgentProcs":
        template = self.fleet.lab.config.read_text()
        assert template.count("[agent]\n") == 1, template
        for k in range(1, self.n + 1):
            name = f"agent-{k}"
            config = self.fleet.lab.base / f"{name}.toml"
            config.write_text(template.replace(
                "[agent]\n", f'[agent]\nname = "{name}"\npoll_seconds = {self.poll_seconds}\n'))
            self.logs[name] = self.fleet.lab.base / f"{name}.log"
            with self.logs[name].open("w") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "serverpki.admin", "agent", "-f", str(config)],
                    env=self.fleet.env(roles.WORKER), stdout=log, stderr=subprocess.STDOUT)
        self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 30) -> None:
        """Until every agent has said it listens (its first drain found nothing)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all("listening for jobs" in log.read_text() for log in self.logs.values()):
                return
            assert all(p.poll() is None for p in self.procs.values()), self.output()
            time.sleep(0.1)
        raise AssertionError(f"agents did not start listening: {self.output()}")

    def stop(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return {name: proc.wait(timeout=60) for name, proc in self.procs.items()}

    def output(self) -> dict[str, str]:
        return {name: log.read_text() for name, log in self.logs.items()}


def cron_round(fleet: Fleet, n: int) -> list[subprocess.CompletedProcess]:
    """n `operate_serverPKI -S -a` started at the same moment, as n cron hosts would."""
    runs: list = [None] * n
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        runs[i] = fleet.cli("-S", "-a")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return runs


# ---------------------------------------------------------------- the proofs

def done_by_agent(logs: dict[str, str]) -> dict[int, list[str]]:
    """job id -> the agents whose log reports it done (each line once per report)."""
    found: dict[int, list[str]] = {}
    for name, text in logs.items():
        for job, _kind in DONE_LINE.findall(text):
            found.setdefault(int(job), []).append(name)
    return found


def event_problems(conn: psycopg.Connection, first_job: int) -> list[str]:
    """Each job of the run: state done, one attempt, one `done` outcome event and one outcome event
    per attempt (a second claim of a running job would show as a second attempt or outcome)."""
    return [f"job {j} {kind} is {state} after {attempts} attempt(s), {done} done event(s), {outcomes} outcome event(s)"
            for j, kind, state, attempts, done, outcomes in conn.execute("""
        SELECT j.id, j.kind, j.state::text, j.attempts,
               count(e.id) FILTER (WHERE e.job_state = 'done'), count(e.id)
          FROM jobs j LEFT JOIN events e ON e.job = j.id AND e.job_state IS NOT NULL
         WHERE j.id >= %s
         GROUP BY j.id
        HAVING j.state <> 'done' OR j.attempts <> 1 OR count(e.id) FILTER (WHERE e.job_state = 'done') <> 1
            OR count(e.id) <> j.attempts
         ORDER BY j.id""", (first_job,))]


def issuance_problems(conn: psycopg.Connection) -> list[str]:
    """No certificate issued twice for one need: one instance, one issue job, one reservation each."""
    return [f"certificate {name}: {inst} instance(s), {issues} issue job(s), {reserved} reservation event(s)"
            for name, inst, issues, reserved in conn.execute("""
        SELECT s.name::text,
               (SELECT count(*) FROM certinstances ci WHERE ci.certificate = c.id),
               (SELECT count(*) FROM jobs j WHERE j.certificate = c.id AND j.kind LIKE 'issue%%'),
               (SELECT count(*) FROM events e WHERE e.certificate = c.id AND e.to_state = 'reserved')
          FROM certificates c JOIN subjects s ON s.certificate = c.id AND NOT s.isaltname
         WHERE s.type <> 'CA'
         ORDER BY 1""") if (inst, issues, reserved) != (1, 1, 1)]


def acme_serials(conn: psycopg.Connection) -> tuple[Counter, int]:
    """The serials of the ACME certificates stored, and how many (certificate, algorithm) pairs the
    configuration asks for."""
    stored = Counter(x509.load_pem_x509_certificate(bytes(pem)).serial_number for (pem,) in conn.execute("""
        SELECT k.cert FROM certkeydata k JOIN certinstances ci ON ci.id = k.certinstance
          JOIN certificates c ON c.id = ci.certificate JOIN subjects s ON s.certificate = c.id AND NOT s.isaltname
         WHERE c.type = 'LE' AND s.type <> 'CA'"""))
    wanted = conn.execute("""
        SELECT coalesce(sum(CASE WHEN c.encryption_algo = 'rsa_plus_ec' THEN 2 ELSE 1 END), 0)
          FROM certificates c JOIN subjects s ON s.certificate = c.id AND NOT s.isaltname
         WHERE c.type = 'LE' AND s.type <> 'CA' AND NOT c.disabled""").fetchone()[0]
    return stored, wanted


def reload_problems(fleet: Fleet) -> list[str]:
    """Every host's /var/log/reloads holds the reload commands its distribute jobs ran, each once."""
    found = []
    ran: dict[str, Counter] = {fqdn: Counter() for fqdn in fleet.lab.ssh.hosts}
    for host, reloads in fleet.conn.execute(
            "SELECT result ->> 'host', result -> 'reload' FROM jobs WHERE kind = 'distribute' AND state = 'done'"):
        ran[host].update(r["command"] for r in reloads)
    for fqdn, host in fleet.lab.ssh.hosts.items():
        log = host.root / "var/log/reloads"
        logged = Counter(log.read_text().splitlines() if log.exists() else [])
        if logged != ran[fqdn]:
            found.append(f"{fqdn}: reloads logged {sorted((logged - ran[fqdn]).items())} beyond the jobs', "
                         f"missing {sorted((ran[fqdn] - logged).items())}")
        twice = sorted(line for line, n in logged.items() if n > 1 and re.search(r" [la]\d{3}$", line))
        if twice:
            found.append(f"{fqdn}: a certificate's place reloaded more than once: {twice}")
    return found


def login_problems(fleet: Fleet) -> list[str]:
    """One SSH login per attempt of a distribute job, on the host it concerns (sshd's own log)."""
    attempts = dict(fleet.conn.execute("""
        SELECT d.fqdn::text, sum(j.attempts)::int FROM jobs j JOIN disthosts d ON d.id = j.disthost
         WHERE j.kind = 'distribute' GROUP BY 1""").fetchall())
    return [f"{fqdn}: sshd accepted {host.accepted_logins()} logins for {attempts.get(fqdn, 0)} distribute attempts"
            for fqdn, host in fleet.lab.ssh.hosts.items() if host.accepted_logins() != attempts.get(fqdn, 0)]


# ---------------------------------------------------------------- the test

@pytest.mark.slow
def test_agents_and_cron_hosts_drain_one_queue_each_job_once():
    with fleet_base() as base, Fleet(base) as fleet:
        add_workload(fleet, N_LOCAL, N_ACME)
        first_job = fleet.conn.execute("SELECT coalesce(max(id), 0) + 1 FROM jobs").fetchone()[0]
        server_log = fleet.lab.cluster.log.stat().st_size
        agents = AgentProcs(fleet, N_AGENTS).start()
        crons: list[subprocess.CompletedProcess] = []
        try:
            start = time.monotonic()
            deadline = start + 150
            assert request_local(fleet) == N_LOCAL + 2          # and the example's two local certificates
            # cron rounds: two hosts schedule and drain at once, the agents work beside them; a
            # round after the local certificates are issued enqueues their distribution
            for _ in range(5):
                runs = cron_round(fleet, N_CRON)
                crons += runs
                for run in runs:
                    assert run.returncode == 0, run.stderr[-3000:]
                wait_idle(fleet, deadline)
                if not active_jobs(fleet) and not open_actions(fleet):
                    break
            elapsed = time.monotonic() - start
            assert not active_jobs(fleet) and not open_actions(fleet), fleet.conn.execute(
                f"SELECT id, kind, state::text, last_error FROM jobs WHERE state IN {ACTIVE} ORDER BY id LIMIT 20").fetchall()

            # no lost wake-up: idle agents (polling only every minute) take new work at once
            woken = time.monotonic()
            extra = [j for (j,) in fleet.conn.execute(   # -K: consolidate two certificates on their hosts
                f"SELECT job FROM request_consolidate_certs(selection(only_certs => ARRAY['l000.{ZONE}', 'a001.{ZONE}']))")]
            assert len(extra) == 4
            wait_idle(fleet, woken + 20)
            assert not active_jobs(fleet), "idle agents were not woken by the new jobs"
            assert time.monotonic() - woken < 20
        finally:
            codes = agents.stop()
        assert set(codes.values()) == {0}, agents.output()

        conn = fleet.conn
        jobs = conn.execute("SELECT count(*) FROM jobs WHERE id >= %s", (first_job,)).fetchone()[0]
        kinds = dict(conn.execute("SELECT kind, count(*) FROM jobs WHERE id >= %s GROUP BY 1", (first_job,)).fetchall())
        assert jobs >= 500, kinds

        # the database: every job done once, one attempt, one outcome event per attempt; and the
        # server refused nothing meanwhile (no deadlock, unique violation, lease refusal, ...)
        assert event_problems(conn, first_job) == []
        with fleet.lab.cluster.log.open(errors="replace") as log:
            log.seek(server_log)
            assert [line for line in log if re.search(r"ERROR|FATAL|deadlock", line)] == []

        # the agents: each job reported done by exactly one of them; all of them worked
        logs = agents.output()
        logs.update({f"cron-{i}": run.stderr for i, run in enumerate(crons)})
        by = done_by_agent(logs)
        assert sorted(j for j, names in by.items() if len(names) > 1) == []
        assert set(by) == {j for (j,) in conn.execute("SELECT id FROM jobs WHERE id >= %s", (first_job,))}
        per_agent = Counter(names[0] for names in by.values())
        for name in agents.procs:
            assert per_agent[name] >= jobs // 20, per_agent     # every long-running agent took a share
        # the new jobs of the wake-up check went to the agents, the cron runs had ended
        assert {by[j][0] for j in extra} <= set(agents.procs)

        # Pebble: the serials it issued are exactly those stored, one per certificate and algorithm
        stored, wanted = acme_serials(conn)
        issued = Counter(int(s, 16) for s in fleet.pebble_issued())
        assert sum(stored.values()) == wanted
        assert issued == stored
        assert max(issued.values()) == 1

        # the targets: one login per distribute attempt, each reload once
        assert login_problems(fleet) == []
        assert reload_problems(fleet) == []

        # no certificate issued twice for the same need; the fleet converged
        assert issuance_problems(conn) == []
        assert fleet.problems() == []

        print(f"\n{jobs} jobs ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}) in {elapsed:.1f} s "
              f"= {jobs / elapsed:.0f} jobs/s; per agent: {dict(sorted(per_agent.items()))}")


# ---------------------------------------------------------------- focused regressions

@pytest.fixture(scope="module")
def small_fleet():
    with fleet_base() as base, Fleet(base) as fleet:
        yield fleet


@pytest.mark.slow
def test_concurrent_scheduler_passes_decide_on_each_others_results(small_fleet):
    """Four cron hosts run a pass at the same moment: each certificate is issued by one of them;
    the later passes see its job (they wait), so no second job or reserved instance appears."""
    fleet = small_fleet
    add_workload(fleet, 0, 12)
    n = 4
    barrier = threading.Barrier(n)
    plans: list = [None] * n

    def one(i: int) -> None:
        with psycopg.connect(fleet.dsn, autocommit=True) as conn:
            barrier.wait()
            plans[i] = conn.execute("SELECT certificate, action FROM schedule()").fetchall()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    issued_by = Counter(cert for plan in plans for cert, action in plan if action == "issue")
    le = [name for (name,) in fleet.conn.execute("""
        SELECT s.name::text FROM certificates c JOIN subjects s ON s.certificate = c.id AND NOT s.isaltname
         WHERE c.type = 'LE' AND s.type <> 'CA'""")]
    assert issued_by == Counter(le)                       # each decided by exactly one pass
    assert fleet.conn.execute("""
        SELECT count(*), count(DISTINCT certificate) FROM jobs WHERE kind = 'issue_acme' AND state IN {ACTIVE}
    """.format(ACTIVE=ACTIVE)).fetchone() == (len(le), len(le))
    assert fleet.conn.execute("""
        SELECT count(*) FROM certinstances ci JOIN certificates c ON c.id = ci.certificate WHERE c.type = 'LE'
    """).fetchone()[0] == len(le)


@pytest.mark.slow
def test_two_jobs_making_the_same_directory_on_a_host_both_succeed(small_fleet):
    """A fresh host: the first distribute jobs of several agents create the same directories at once.
    The one that loses the race (SFTP mkdir says only "Failure") must go on, not fail its job."""
    ssh = load_config(small_fleet.lab.config).ssh
    fqdn = HOSTS[0]
    root = small_fleet.lab.ssh.host(fqdn).root
    with sshclient.connect(fqdn, ssh) as first, sshclient.connect(fqdn, ssh) as second:
        # deterministic: the second looked before the first made them
        assert first.makedirs("/race/det/a/b") == ["/race", "/race/det", "/race/det/a", "/race/det/a/b"]
        real_lstat, stale = second.lstat, {"/race/det/a/b/c", "/race/det/a/b", "/race/det/a", "/race/det"}

        def lstat_before_first(path):   # each of them missing once, when the second probes
            if path in stale:
                stale.discard(path)
                return None
            return real_lstat(path)

        second.lstat = lstat_before_first
        try:
            assert second.makedirs("/race/det/a/b/c") == ["/race/det/a/b/c"]
        finally:
            second.lstat = real_lstat
        assert (root / "race/det/a/b/c").is_dir()
        # and for real: four connections, released at once, twenty times
        conns = [first, second] + [sshclient.connect(fqdn, ssh) for _ in range(2)]
        try:
            for n in range(20):
                barrier, errors = threading.Barrier(len(conns)), []

                def make(c, path=f"/race/{n}/x/y/z"):
                    barrier.wait()
                    try:
                        c.makedirs(path)
                    except OSError as exc:
                        errors.append(str(exc))

                threads = [threading.Thread(target=make, args=(c,)) for c in conns]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert errors == [], errors
                assert (root / f"race/{n}/x/y/z").is_dir()
        finally:
            for c in conns[2:]:
                c.close()


def _waiting(conn: psycopg.Connection, pid: int) -> str | None:
    """What the session with this backend pid waits for (a lock type), or None."""
    row = conn.execute("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return f"{row[0]}:{row[1]}" if row and row[0] == "Lock" else None


@pytest.mark.slow
def test_scheduler_pass_and_create_request_at_once_issue_once():
    """A cron pass decides on what it read when it began. When an operator's -C enqueues the same
    certificate meanwhile and an agent issues it before the pass enqueues, the pass must not issue
    it a second time: -C waits for the pass (or the pass sees -C's job), never both."""
    with fleet_base() as base, Fleet(base) as fleet:
        _pass_and_create_request(fleet)


def _pass_and_create_request(fleet: Fleet) -> None:
    conn = fleet.conn
    name = f"race.{ZONE}"
    conn.execute(f"SELECT * FROM add_cert('{name}', 'server', 'LE', 'ec', false, NULL, NULL, NULL, NULL, NULL, NULL)")
    # something the pass must change after planning: a reserved instance without an issue job (rule 1)
    conn.execute(f"SELECT * FROM add_cert('stale.{ZONE}', 'server', 'local', 'ec', false, NULL, NULL, NULL, NULL, NULL, NULL)")
    stale = conn.execute("INSERT INTO certinstances (certificate, state) SELECT certificate, 'reserved' FROM subjects "
                         "WHERE name = %s RETURNING id", (f"stale.{ZONE}",)).fetchone()[0]
    config = load_config(fleet.lab.config)
    results: dict[str, object] = {}

    def session(key: str, sql: str, pids: dict) -> None:
        with psycopg.connect(fleet.role_dsn(), autocommit=True) as c:   # the cron run and the operator
            pids[key] = c.info.backend_pid
            results[key] = c.execute(sql).fetchall()

    with psycopg.connect(fleet.dsn) as holder:       # holds the stale instance: the pass stops after planning
        holder.execute("SELECT 1 FROM certinstances WHERE id = %s FOR UPDATE", (stale,))
        pids: dict[str, int] = {}
        cron = threading.Thread(target=session, args=("cron", "SELECT certificate, action FROM schedule()", pids))
        cron.start()
        deadline = time.monotonic() + 20
        while not (pids.get("cron") and _waiting(conn, pids["cron"])) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _waiting(conn, pids["cron"]), "the pass did not stop at the held instance"
        operator = threading.Thread(target=session, args=(
            "operator", f"SELECT job FROM request_create(selection(only_certs => ARRAY['{name}']))", pids))
        operator.start()
        while operator.is_alive() and not (pids.get("operator") and _waiting(conn, pids["operator"])) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        if not operator.is_alive():        # -C went through: an agent issues the certificate at once
            quick = Agent(fleet.role_dsn(roles.WORKER), config, name="quick", kinds=["issue_acme"])
            stats = quick.drain()
            quick.close()
            assert stats.all_succeeded, stats.errors
        holder.rollback()
    cron.join(30)
    operator.join(30)
    assert not cron.is_alive() and not operator.is_alive()
    assert fleet.conn.execute("""
        SELECT count(*) FROM jobs j JOIN subjects s ON s.certificate = j.certificate
         WHERE s.name = %s AND j.kind = 'issue_acme'""", (name,)).fetchone()[0] == 1
    assert fleet.conn.execute("""
        SELECT count(*) FROM certinstances ci JOIN subjects s ON s.certificate = ci.certificate WHERE s.name = %s""",
        (name,)).fetchone()[0] == 1


def test_a_claimed_job_whose_lease_ran_out_is_not_run_by_its_first_agent(conn, dsn):
    """An agent claims a batch and works it in turn; only the running job has a heartbeat. When a
    waiting job's lease runs out, another agent's claim requeues it and that agent runs it: the
    first must then drop it unrun, not do its side effect a second time."""
    owner = owner_conn(conn)   # a job kind of the test's own, and its jobs: the owner's setup
    owner.execute("INSERT INTO job_kinds (kind, description, max_attempts) VALUES ('t_side', 'test', 3)")
    slow = owner.execute("SELECT enqueue('t_side', 'slow', 'test', '{\"slow\": true}')").fetchone()[0]
    waiting = owner.execute("SELECT enqueue('t_side', 'waiting', 'test')").fetchone()[0]
    runs: Counter = Counter()

    def side_effect(job, ctx):
        runs[job.id, ctx.agent_name] += 1
        if job.args.get("slow"):
            time.sleep(3.5)      # its heartbeat keeps it; the other job of the batch waits
        return Completion()

    def agent(name: str) -> Agent:
        a = Agent(dsn, Config(), name=name, lease=2, batch=2)
        a.handlers, a.kinds = {"t_side": side_effect}, ["t_side"]
        return a

    first, second, out = agent("first"), agent("second"), {}
    worker = threading.Thread(target=lambda: out.update(stats=first.drain()))
    worker.start()
    time.sleep(2.7)                           # the waiting job's lease (2 s) has run out
    assert second.claim() == []               # this claim put it back in the queue (after a back-off)
    worker.join(10)
    assert out["stats"].outcomes == Counter({"done": 1, "lost": 1})
    owner.execute("UPDATE jobs SET run_after = now() WHERE id = %s", (waiting,))
    assert second.drain().outcomes == Counter({"done": 1})
    first.close()
    second.close()
    assert runs == Counter({(slow, "first"): 1, (waiting, "second"): 1})
    assert conn.execute("SELECT state::text, attempts FROM jobs WHERE id = %s", (waiting,)).fetchone() == ("done", 2)
