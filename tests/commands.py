"""The two command lines as processes, as cron and monitoring run them: under a login role of a test database,
with the caller's environment minus any libpq variables it may carry (test_json, test_exit_status)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from psycopg import sql


def _command(program: str, module: str) -> list[str]:
    path = Path(sys.executable).with_name(program)
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


OPERATE = _command("operate_serverPKI", "serverpki.operate")
SERVERPKI = _command("serverpki", "serverpki.admin")
LIBPQ_VARS = ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGOPTIONS",
              "SERVERPKI_DSN", "SERVERPKI_CONFIG")


def environment(pg_server, dbname: str, role: str, config: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a run as `role` on dbname (with this configuration file)."""
    env = {k: v for k, v in os.environ.items() if k not in LIBPQ_VARS}
    env.update(pg_server.env(dbname, role), **extra)
    if config is not None:
        env["SERVERPKI_CONFIG"] = str(config)
    return env


def run(command: list[str], *args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=timeout)


def one_warning(owner, certificate: str) -> str:
    """pki.check_warnings has no rule yet (issue 15, item 7): as the owner, give this test database's one
    warning for the certificate, so -n has a warning to show. Returns the line -n prints for it."""
    owner.execute(sql.SQL("""CREATE OR REPLACE FUNCTION pki.check_warnings(sel dd.selection DEFAULT NULL)
                     RETURNS TABLE (certificate text, warning text, hint text) LANGUAGE sql STABLE
                     AS $$ SELECT {}::text, 'a warning of the test'::text, 'nothing to fix'::text $$""").format(
        sql.Literal(certificate)))
    return f"warning: {certificate}: a warning of the test; fix: nothing to fix"
