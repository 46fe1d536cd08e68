"""A private, throwaway PostgreSQL 15 cluster with plpython3u, on loopback and a private socket.

postgres refuses to run as root, so as root the binaries run as the
`postgres` system user. The Debian `main` cluster is never used.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_port
from .process import done, on_exit, starting

PG_BIN = Path(os.environ.get("SERVERPKI_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class PostgresCluster:
    base: Path
    port: int = field(default_factory=free_port)
    superuser: str = "postgres"
    # more server options for pg_ctl -o, e.g. "-c shared_preload_libraries=pg_stat_statements"
    extra_options: str = ""

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "socket"

    @property
    def log(self) -> Path:
        return self.base / "postgres.log"

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A connection string for dbname, as user (default: the superuser, who installs the schema)."""
        return f"host={self.socket_dir} port={self.port} user={user or self.superuser} dbname={dbname}"

    def env(self, dbname: str = "postgres", user: str | None = None) -> dict[str, str]:
        """The libpq variables that point psql and serverpki at this cluster, as user (default: the superuser)."""
        return {"PGHOST": str(self.socket_dir), "PGPORT": str(self.port),
                "PGUSER": user or self.superuser, "PGDATABASE": dbname}

    def _run(self, *args: str) -> None:
        result = subprocess.run([*_as_postgres(), *args], capture_output=True, text=True, cwd="/")
        if result.returncode:
            raise RuntimeError(f"{Path(args[0]).name} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
                               f"{' — see ' + str(self.log) if self.log.exists() else ''}")

    def start(self) -> "PostgresCluster":
        with starting():   # initdb and the postmaster run to the end and are registered before a SIGTERM ends us
            on_exit(self, self.stop)
            self._start()
        return self

    def _start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(self.base, pg.pw_uid, pg.pw_gid)
            os.chown(self.socket_dir, pg.pw_uid, pg.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", self.superuser, "--auth=trust",
                      "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c synchronous_commit=off -c max_connections=200")
        if self.extra_options:
            options += " " + self.extra_options
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; mode "immediate" is a crash (no shutdown checkpoint), as a lost host would be."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
        done(self)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()
