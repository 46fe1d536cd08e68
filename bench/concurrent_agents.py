"""Concurrent agents: the same workload drained by 1, 2, 3 and 4 `serverpki agent` processes.

Run:  .venv/bin/python bench/concurrent_agents.py [LOCAL [ACME [MAX_AGENTS [MODE]]]]
      (default 100 30 4 both; needs root for the lab's sshd; MODE phased, mixed or both)

For each number of agents a fresh lab (tests/fleet.py: PostgreSQL, BIND 9, Pebble, two sshd
disthosts, SMTP) gets the workload of tests/test_concurrent_agents.py: LOCAL local and ACME ACME
certificates (every third ACME one rsa_plus_ec), each with TLSA for https and a target on both
disthosts: about 4 x (LOCAL + ACME) jobs. N long-running agents (each `serverpki agent`, its own
[agent] name) drain it:
  phased:  one kind of job at a time, so each kind's scaling shows on its own:
             issue_local   -C for the local certificates (one job each)
             issue_acme    -C for the ACME certificates (Pebble, dns-01 through BIND)
             distribute    one scheduler pass with -N (every certificate to both hosts, SFTP + reload)
             publish_tlsa  -T (one RFC 2136 update per certificate)
  mixed:   everything at once, as cron would have it: -C for the local certificates and a
           scheduler pass every half second (SELECT schedule(), which does not drain) while the
           agents work; issue, distribution and TLSA overlap.
It prints jobs per second by number of agents and the ratio to one agent, how the jobs spread
over the agents, and where the CPU went while draining (from /proc: CPU seconds of the lab's
processes and their children by component, "others" what the rest of the machine used meanwhile;
with it how many of the cores the machine and the lab kept busy, and the lab's CPU per job).
Each run also checks that every job ran once (one attempt each), Pebble issued exactly the
serials stored, and the fleet converged (fleet.problems()).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "agent"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))  # the lab (lab/): in the checkout, never installed

from fleet import Fleet  # noqa: E402
from test_concurrent_agents import (  # noqa: E402
    AgentProcs, acme_serials, active_jobs, add_workload, done_by_agent, fleet_base, open_actions, request_local)

CLK_TCK = os.sysconf("SC_CLK_TCK")
COMPONENTS = ("agents", "postgres", "pebble", "sshd", "bind", "driver")


# ---------------------------------------------------------------- CPU by component, from /proc

def machine_busy() -> float:
    """CPU seconds the whole machine spent busy so far (all cores)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal, *_ = map(int, f.readline().split()[1:])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def lab_processes(fleet: Fleet, agent_pids: set[int]) -> dict[int, str]:
    """The processes this run started, by component: CPU is counted for them and their descendants
    only (other labs on the machine run the same programs)."""
    roots = {int((fleet.lab.cluster.data / "postmaster.pid").read_text().split()[0]): "postgres",
             fleet.lab.pebble._proc.pid: "pebble", fleet.lab.bind._proc.pid: "bind", os.getpid(): "driver"}
    roots.update({host.process.pid: "sshd" for host in fleet.lab.ssh.hosts.values()})
    roots.update({pid: "agents" for pid in agent_pids})
    return roots


def cpu_by_component(roots: dict[int, str]) -> Counter:
    """CPU seconds so far of the lab's components, children reaped included (sshd's per-connection
    processes and the reload commands end up in the listening sshd, exited backends in the postmaster)."""
    cpu, parent = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parent[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = sum(int(x) for x in fields[11:15]) / CLK_TCK    # utime stime cutime cstime
    found: Counter = Counter()
    for pid, seconds in cpu.items():
        probe = pid
        while probe not in roots and probe > 1:
            probe = parent.get(probe, 0)
        if probe in roots:
            found[roots[probe]] += seconds
    return found


@dataclass
class Meter:
    """CPU and wall time between start() and stop()."""

    roots: dict[int, str]
    cpu: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def start(self) -> "Meter":
        self._t, self._busy, self._by = time.monotonic(), machine_busy(), cpu_by_component(self.roots)
        return self

    def stop(self) -> "Meter":
        self.seconds = time.monotonic() - self._t
        now = cpu_by_component(self.roots)
        self.cpu = {k: max(now[k] - self._by.get(k, 0.0), 0.0) for k in COMPONENTS}
        self.cpu["others"] = max(machine_busy() - self._busy - sum(self.cpu.values()), 0.0)
        return self

    def line(self, jobs: int) -> str:
        busy, own = sum(self.cpu.values()), sum(v for k, v in self.cpu.items() if k != "others")
        return (f"machine {busy / self.seconds:4.2f} cores busy, the lab {own / self.seconds:4.2f} "
                f"({1000 * own / jobs:3.0f} ms CPU per job): "
                + ", ".join(f"{k} {v:.1f}s" for k, v in self.cpu.items() if v >= 0.05))


# ---------------------------------------------------------------- one run

@dataclass
class Run:
    agents: int
    mode: str
    phases: dict[str, tuple[int, Meter]] = field(default_factory=dict)   # phase -> (jobs, meter)
    per_agent: dict[str, int] = field(default_factory=dict)

    @property
    def jobs(self) -> int:
        return sum(n for n, _ in self.phases.values())

    @property
    def seconds(self) -> float:
        return sum(m.seconds for _, m in self.phases.values())


def drain(fleet: Fleet, meter: Meter, timeout: float = 600, schedule_every: float | None = None) -> Meter:
    """Wait until no job is active (and, when scheduling, a pass would do nothing more)."""
    deadline = time.monotonic() + timeout
    next_pass = time.monotonic() + (schedule_every or 0)
    while time.monotonic() < deadline:
        if schedule_every and time.monotonic() >= next_pass:
            fleet.conn.execute("SELECT * FROM schedule()").fetchall()
            next_pass = time.monotonic() + schedule_every
        if not active_jobs(fleet) and (not schedule_every or not open_actions(fleet)):
            return meter.stop()
        time.sleep(0.05)
    left = fleet.conn.execute("SELECT kind, state::text, count(*) FROM jobs GROUP BY 1, 2").fetchall()
    raise SystemExit(f"not drained in {timeout} s: {left}")


def run(n_agents: int, n_local: int, n_acme: int, mode: str) -> Run:
    result = Run(n_agents, mode)
    with fleet_base() as base, Fleet(base) as fleet:
        add_workload(fleet, n_local, n_acme)
        first_job = fleet.conn.execute("SELECT coalesce(max(id), 0) + 1 FROM jobs").fetchone()[0]
        agents = AgentProcs(fleet, n_agents).start()
        roots = lab_processes(fleet, {p.pid for p in agents.procs.values()})
        try:
            if mode == "phased":
                steps = {
                    "issue_local": lambda: request_local(fleet),
                    "issue_acme": lambda: fleet.conn.execute("""
                        SELECT * FROM request_create(selection(only_certs => ARRAY(
                            SELECT s.name::text FROM subjects s JOIN certificates c ON c.id = s.certificate
                             WHERE c.type = 'LE' AND s.type <> 'CA' AND NOT s.isaltname)))""").fetchall(),
                    "distribute": lambda: fleet.conn.execute(
                        "SELECT * FROM schedule(selection(true, no_tlsa => true))").fetchall(),
                    "publish_tlsa": lambda: fleet.conn.execute(
                        "SELECT * FROM request_consolidate_tlsa(selection(true))").fetchall(),
                }
                for phase, enqueue in steps.items():
                    before = fleet.conn.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0]
                    meter = Meter(roots).start()
                    enqueue()
                    drain(fleet, meter)
                    kinds = dict(fleet.conn.execute("SELECT kind, count(*) FROM jobs WHERE id > %s GROUP BY 1",
                                                    (before,)).fetchall())
                    assert set(kinds) == {phase}, (phase, kinds)
                    result.phases[phase] = (kinds[phase], meter)
            else:
                meter = Meter(roots).start()
                request_local(fleet)
                fleet.conn.execute("SELECT * FROM schedule()").fetchall()
                drain(fleet, meter, schedule_every=0.5)
                jobs = fleet.conn.execute("SELECT count(*) FROM jobs WHERE id >= %s", (first_job,)).fetchone()[0]
                result.phases["all kinds"] = (jobs, meter)
        finally:
            codes = agents.stop()
        assert set(codes.values()) == {0}, agents.output()
        # the same proofs as the test, in short: each job once, Pebble's serials, a converged fleet
        conn = fleet.conn
        retried = conn.execute("SELECT count(*) FROM jobs WHERE id >= %s AND (state <> 'done' OR attempts <> 1)",
                               (first_job,)).fetchone()[0]
        by = done_by_agent(agents.output())
        assert retried == 0 and all(len(names) == 1 for names in by.values()), (retried, by)
        stored, wanted = acme_serials(conn)
        assert sum(stored.values()) == wanted and Counter(int(s, 16) for s in fleet.pebble_issued()) == stored
        problems = fleet.problems()
        assert problems == [], problems
        result.per_agent = dict(sorted(Counter(names[0] for names in by.values()).items()))
    return result


def main(n_local: int, n_acme: int, max_agents: int, modes: list[str]) -> None:
    print(f"workload: {n_local} local + {n_acme} ACME certificates (+ the example's 3), on 2 disthosts, "
          f"TLSA for each; {os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.1f}", flush=True)
    for mode in modes:
        runs = []
        for n in range(1, max_agents + 1):
            r = run(n, n_local, n_acme, mode)
            runs.append(r)
            print(f"[{mode}] {n} agent(s): {r.jobs} jobs in {r.seconds:.1f} s = {r.jobs / r.seconds:.1f} jobs/s; "
                  f"per agent {r.per_agent}", flush=True)
        base = runs[0]
        print(f"\n{mode}: jobs/s by number of agents (ratio to 1 agent)")
        phases = list(base.phases)
        header = f"  {'phase':<14}{'jobs':>6}" + "".join(f"{f'{r.agents} agent(s)':>22}" for r in runs)
        print(header)
        def rate(r: Run, phase: str) -> float:
            return r.jobs / r.seconds if phase == "total" else r.phases[phase][0] / r.phases[phase][1].seconds

        for phase in phases + ["total"]:
            cells = [f"{rate(r, phase):8.1f} ({rate(r, phase) / rate(base, phase):4.2f}x)" for r in runs]
            jobs = base.jobs if phase == "total" else base.phases[phase][0]
            print(f"  {phase:<14}{jobs:>6}" + "".join(f"{c:>22}" for c in cells))
        print("  where the CPU went while draining:")
        for r in runs:
            for phase, (jobs, meter) in r.phases.items():
                print(f"    {r.agents} agent(s) {phase:<13} {meter.seconds:6.1f} s  {meter.line(jobs)}")
        print(flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    mode = args[3] if len(args) > 3 else "both"
    main(int(args[0]) if args else 100, int(args[1]) if len(args) > 1 else 30, int(args[2]) if len(args) > 2 else 4,
         ["phased", "mixed"] if mode == "both" else [mode])
