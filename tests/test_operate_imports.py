"""A check-only or listing run imports only what it uses (issue 18, item 2): operate_serverPKI run as cron
runs it, under pki_cron against a real database, with `python -X importtime`, whose report names every module
the process imported. The agent's peers (ACME, SSH, DNS), the crypto, the progress bar and the lab are for
the runs that act; -h needs not even the database driver. bench/startup.py measures the time this saves."""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import pytest

from commands import OPERATE, SERVERPKI, environment, run
from helpers import small_cli_world
from lab import roles
from serverpki import operate

# the top-level packages (and our modules) a run that only checks or lists must not import
ACTING = {"acme", "josepy", "paramiko", "dns", "cryptography", "OpenSSL", "bcrypt", "rich", "lab",
          "serverpki.agent", "serverpki.handlers", "serverpki.actions", "serverpki.keystore", "serverpki.x509util",
          "serverpki.sshclient", "serverpki.acmeclient", "serverpki.dnsupdate", "serverpki.smtpclient"}


def imported_modules(*args: str, env: dict[str, str], statuses: tuple[int, ...] = (0,),
                     command: list[str] = OPERATE, module: str = "serverpki.operate") -> set[str]:
    """The modules the command imported in a run with these arguments, which ends with one of statuses."""
    # the entry point's script when installed, else the module: either way the interpreter reports its imports
    program = [command[0]] if Path(command[0]).name != Path(sys.executable).name else ["-m", module]
    done = run([sys.executable, "-X", "importtime", *program], *args, env=env)
    assert done.returncode in statuses, done.stderr[-2000:]
    names = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    names.discard("imported package")
    assert module in names or "__main__" in names, done.stderr[-2000:]
    return names


def unwanted(names: set[str], forbidden: set[str]) -> set[str]:
    return {n for n in names if n in forbidden or n.split(".")[0] in forbidden
            or any(n.startswith(f + ".") for f in forbidden)}


@pytest.fixture
def cron_env(pg_server, dbname, conn, tmp_path) -> dict[str, str]:
    """c1, a local certificate with a target, in a fresh database; the cron run's environment."""
    return environment(pg_server, dbname, roles.CRON, small_cli_world(conn, tmp_path))


@pytest.mark.parametrize("args", [("-n",), ("-n", "-v"), ("-n", "-v", "-a"), ("-S", "-n"), ("-r", "30", "-n")])
def test_check_only_and_listing_runs_import_no_agent_peer_crypto_or_lab(cron_env, args):
    names = imported_modules(*args, env=cron_env, statuses=(0, 4))   # 4: c1 has no local CA yet, a problem -n reports
    assert "psycopg" in names   # the run did reach the database
    assert unwanted(names, ACTING) == set()


def test_help_imports_not_even_the_database_driver(cron_env):
    names = imported_modules("-h", env=cron_env)
    assert unwanted(names, ACTING | {"psycopg", "psycopg_binary", "serverpki.config", "serverpki.db"}) == set()


def test_a_run_that_acts_does_import_the_agent(cron_env):
    """The other side: the check above would pass vacuously if importtime reported nothing of the agent."""
    names = imported_modules("-I", "-q", env=cron_env)   # issue the local CA
    assert {"serverpki.agent", "serverpki.handlers", "cryptography"} <= names


def test_serverpki_help_imports_no_agent_peer_or_crypto(cron_env):
    """The administrative command line too: its importer of legacy databases and -E's keystore load on use."""
    names = imported_modules("-h", env=cron_env, command=SERVERPKI, module="serverpki.admin")
    assert unwanted(names, ACTING | {"serverpki.legacy"}) == set()


# what the interpreter collects while the module loads, once imported, and inside a run of main(); a run that
# acts turns collection on in _run, whose first statement says so (read from its source: it needs a database)
GC_PROBE = """
import atexit, gc, sys
before = gc.isenabled()
from serverpki import operate
imported = gc.isenabled()
operate.app = lambda **options: print(before, imported, gc.isenabled())
atexit.register(lambda: print(gc.get_freeze_count() > 0))   # at exit, what the run made is frozen
operate.main()
"""


def test_the_command_line_collects_no_garbage_while_checking_and_its_importers_as_before():
    """main() turns cyclic garbage collection off for a run (its libraries and a listing make no cycles worth
    collecting: 10-25 ms of each run) and freezes what the run made before it exits (the interpreter's last
    collection need not walk it); a program that imports the module (the tests' CliRunner) collects as before."""
    done = run([sys.executable, "-c", GC_PROBE], env={k: v for k, v in os.environ.items()})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "False", "True"]
    source = inspect.getsource(operate._run)
    assert "gc.enable()" in source.split('"""', 2)[2].split("\n", 2)[1]
