"""How fast the command line starts: `operate_serverPKI -h`, and `-n` on an empty database.

Run:  .venv/bin/python bench/startup.py [RUNS]        (default 15)

It starts a private PostgreSQL cluster, installs the schema and the login roles as an
operator does (lab.roles), and runs each command RUNS times as a whole process, as the
cron run's role (pki_cron), the way an operator types it. It prints the median wall time
of each beside `python -c pass` (the floor: the interpreter alone) and `import psycopg, typer`
(the libraries a run that reaches the database cannot do without), and whether it is within
the target of 0.25 s. A check-only run must import only what it uses: the ACME,
SSH, DNS and lab code are imported by the runs that act (tests/test_operate_imports.py).

Python's bytecode cache counts: pip compiles it when it installs the wheel, so the target
applies to runs with the cache (kept in the bench's own folder, PYTHONPYCACHEPREFIX, after
one warm-up run). Runs with PYTHONDONTWRITEBYTECODE=1 are shown beside, for information: in
a checkout never run without it, every run compiles the checkout's modules again.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "agent"))
sys.path.insert(0, str(ROOT / "tests"))   # tests/commands.py: the environment of a run
sys.path.insert(0, str(ROOT))  # the lab (lab/): in the checkout, never installed

from commands import LIBPQ_VARS  # noqa: E402
from serverpki import migrate  # noqa: E402
from lab import roles  # noqa: E402
from lab.postgres import PostgresCluster  # noqa: E402
from lab.process import remove_dir, temp_dir  # noqa: E402

TARGET_SECONDS = 0.25


def operate_command() -> list[str]:
    """The installed entry point beside this interpreter, else the module (a checkout without `pip install`)."""
    script = Path(sys.executable).with_name("operate_serverPKI")
    return [str(script)] if script.exists() else [sys.executable, "-m", "serverpki.operate"]


def median_wall(command: list[str], env: dict[str, str], runs: int) -> float:
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # warm-up: the cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    return statistics.median(times)


def installed_database(cluster: PostgresCluster, db: str) -> None:
    """A new database db with the schema and the login roles, as the installer (the owner) makes it."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {db}")
    with psycopg.connect(cluster.dsn(db), autocommit=True) as owner:
        migrate.upgrade(owner, log=lambda _: None)
        roles.create_login_roles(owner)


def cron_environment(cluster: PostgresCluster, db: str, config_file: Path) -> dict[str, str]:
    """The environment of operate_serverPKI run by cron on db: the login role pki_cron, this configuration,
    and this checkout's agent/ first on the path (as its `pip install -e` has it; a venv's entry point may
    belong to another checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in LIBPQ_VARS}
    env.update(cluster.env(db, roles.CRON), SERVERPKI_CONFIG=str(config_file),
               PYTHONPATH=os.pathsep.join([str(ROOT / "agent"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


def cached_environment(env: dict[str, str], base: Path) -> dict[str, str]:
    """env with Python's bytecode cache in the bench's folder base (PYTHONPYCACHEPREFIX), as an installed
    release has it (pip compiles the wheel): without, every run of the checkout compiles its modules again."""
    return {**{k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}, "PYTHONPYCACHEPREFIX": str(base / "pycache")}


def main(runs: int) -> int:
    base = temp_dir("serverpki-bench-", 0o755)  # removed also when SIGTERM ends the run (lab.process)
    config_file = base / "serverpki.toml"
    config_file.write_text('[logging]\nsyslog_address = ""\n')   # no syslog on a bench machine
    cluster = PostgresCluster(base / "pg")
    cluster.start()
    try:
        installed_database(cluster, "bench")
        env = cron_environment(cluster, "bench", config_file)
        cached = cached_environment(env, base)
        uncached = {**env, "PYTHONDONTWRITEBYTECODE": "1"}
        operate = operate_command()
        floor = median_wall([sys.executable, "-c", "pass"], cached, runs)
        # what no run that reaches the database can do without: the driver and the command line's library
        libraries = median_wall([sys.executable, "-c", "import psycopg, typer"], cached, runs)
        results = {option: (median_wall([*operate, option], cached, runs), median_wall([*operate, option], uncached, runs))
                   for option in ("-h", "-n")}
    finally:
        cluster.destroy()
        remove_dir(base)
    print(f"startup, median of {runs} runs as whole processes (pki_cron, empty database)")
    print(f"  python -c pass (floor):  {floor:.3f} s")
    print(f"  python -c 'import psycopg, typer' (what -n cannot do without):  {libraries:.3f} s")
    for option, (seconds, compiling) in results.items():
        print(f"  operate_serverPKI {option}:  {seconds:.3f} s  ({seconds - floor:+.3f} s above the floor) — "
              f"{'within' if seconds < TARGET_SECONDS else 'ABOVE'} the target of {TARGET_SECONDS} s"
              f"  (PYTHONDONTWRITEBYTECODE=1: {compiling:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 15))
