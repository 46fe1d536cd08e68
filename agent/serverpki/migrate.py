"""Install and upgrade the database: versioned DDL once, everything else always.

db/schema/NNNN_*.sql are applied once each, in order, and recorded in
pki.schema_migrations (the row is written before the DDL, in the same
transaction, so two installers racing cannot both apply one). Then, on every
upgrade, in this order (db/README.md):

  db/retired.sql     drops the functions whose signature changed
  (every view)       dropped, without CASCADE: nothing may depend on a view
  db/functions/      NNN_*.sql in number order, then the same for db/jobs/
  (one file per job kind), db/views/, db/triggers/ and db/privileges/ (the one
  allow-list of grants)

Each folder numbers its own files; the folders' order is the load order. Last, every
function, view, table, column and type gets its description (COMMENT ON, via pki.describe):
the comment above its CREATE, or, for tables and columns, db/descriptions.md (schema_comments).

check_compatible is the one check that this release and the database's schema
fit: operate_serverPKI runs it once per run, the long-running agent at start and
after each reconnection; `serverpki db status` shows its verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import psycopg

from . import __version__, schema_comments
from .errors import SchemaIncompatible
from .queries import q

REPEATABLE_DIRS = ("functions", "jobs", "views", "triggers", "privileges")   # in load order
LOCK_KEY = 0x5E5F_E9C1  # advisory lock: one installer at a time per database


def sql_root() -> Path:
    """The db/ folder shipped inside the package (a link to the checkout's db/ in development)."""
    return Path(str(resources.files("serverpki") / "db"))


def versioned_files(root: Path | None = None) -> list[Path]:
    root = root or sql_root()
    return sorted((root / "schema").glob("[0-9][0-9][0-9][0-9]_*.sql"))


def repeatable_files(root: Path | None = None) -> list[Path]:
    """Each folder of REPEATABLE_DIRS in turn, its files in number order."""
    root = root or sql_root()
    return [f for d in REPEATABLE_DIRS for f in sorted((root / d).glob("[0-9][0-9][0-9]_*.sql"))]


# the comment block right above a CREATE of a function or view of pki: its description (\df+, \dv+)
_DESCRIBED = re.compile(r"((?:^--[^\n]*\n)+)CREATE (?:OR REPLACE )?(FUNCTION|VIEW) pki\.(\w+)", re.M)


def descriptions(sql_text: str) -> list[tuple[str, str, str]]:
    """(FUNCTION or VIEW, name, description) for each object of sql_text with a comment right above it;
    a leading "name:" (or "a / name / b:") is the object's own name, not part of its description."""
    found = []
    for block, kind, name in _DESCRIBED.findall(sql_text):
        text = "\n".join(line[2:].strip() for line in block.strip().splitlines())
        text = re.sub(rf"^(?:[\w.()]+ / )*{name}(?:\(\))?(?: / [\w.()]+)*:\s*", "", text)
        found.append((kind, name, text))
    return found


def described(root: Path | None = None) -> list[tuple[str, str, str]]:
    """(kind, name, description) of everything db/ describes: the functions and views of the repeatable
    files, the tables, columns and types of the migrations (pki.describe turns each into COMMENT ON)."""
    root = root or sql_root()
    extra = root / schema_comments.DESCRIPTIONS_FILE   # not in the db/ of older releases
    schema = schema_comments.schema_descriptions([f.read_text() for f in versioned_files(root)],
                                                 extra.read_text() if extra.exists() else "")
    return ([d for f in repeatable_files(root) for d in descriptions(f.read_text())]
            + [(kind, name, text) for (kind, name), text in schema.items() if text])


def apply_repeatable(conn: psycopg.Connection) -> None:
    """Everything but the versioned DDL, as the module's docstring orders it."""
    # as pg_dump does: a LANGUAGE sql body is checked when first called, not at creation, so a file
    # may use what a later folder creates (the queue's functions call the job kinds' and back)
    conn.execute(q("defer_function_body_checks"))
    conn.execute((sql_root() / "retired.sql").read_text())
    conn.execute(q("drop_all_views"))   # db/views re-creates them, columns changed or not
    for f in repeatable_files():
        conn.execute(f.read_text())
    conn.execute(q("check_function_bodies"))
    with conn.cursor() as cur:
        cur.executemany(q("describe"), [{"kind": kind, "name": name, "description": text}
                                        for kind, name, text in described()])


class SchemaMismatch(SchemaIncompatible):
    """The database's schema does not fit this release of serverPKI: nothing was done (exit status 3)."""


def mismatch(applied: list[str], known: list[str] | None = None) -> SchemaMismatch | None:
    """Why a database with these migrations recorded may not be worked by this release, or None.

    Newer first: a migration recorded that this release's db/schema does not have means a newer
    serverPKI upgraded the database (its functions may have changed under us). Then pending ones:
    this release's functions expect DDL the database has not had yet."""
    known = [f.stem for f in versioned_files()] if known is None else known
    newer = [v for v in applied if v not in known]
    if newer:
        return SchemaMismatch(
            f"this serverPKI is older than the database's schema: upgrade serverPKI (the database has "
            f"migration{'s' if len(newer) > 1 else ''} {', '.join(newer)}, which serverPKI {__version__} does not know)")
    pending = [v for v in known if v not in applied]
    if pending:
        what = "no serverPKI schema" if not applied else f"pending migration(s) {', '.join(pending)}"
        return SchemaMismatch(f"the database has {what}: run serverpki db upgrade (as the schema's owner)")
    return None


def check_compatible(conn: psycopg.Connection) -> None:
    """Refuse (SchemaMismatch, exit status 3) a database with pending migrations or a newer schema.

    One query, readable by every serverPKI role (privileges/010_grants.sql). On a connection in a transaction,
    a database without the table leaves that transaction aborted (the caller's to roll back)."""
    try:
        applied = conn.execute(q("applied_migrations")).fetchone()[0]
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        applied = []
    problem = mismatch(applied)
    if problem is not None:
        raise problem


@dataclass
class Status:
    applied: list[str]
    pending: list[str]
    keys_encrypted: bool | None
    newer: list[str] = field(default_factory=list)   # recorded, unknown to this release
    problem: SchemaMismatch | None = None              # what check_compatible refuses


def _applied(conn: psycopg.Connection) -> list[str]:
    exists = conn.execute(q("migrations_table_exists")).fetchone()[0]
    if not exists:
        return []
    return [r[0] for r in conn.execute(q("migration_versions"))]


def status(conn: psycopg.Connection) -> Status:
    applied = _applied(conn)
    known = [f.stem for f in versioned_files()]
    pending = [v for v in known if v not in applied]
    encrypted = None
    if applied:
        row = conn.execute(q("keys_encrypted_any_release")).fetchone()
        encrypted = row[0] if row else None
    return Status(applied, pending, encrypted, [v for v in applied if v not in known], mismatch(applied, known))


# the roles are cluster-wide, but the advisory lock is per database: an installer of another
# database may create them first, and ours then fails on this index and starts over
ROLE_RACE_CONSTRAINT = "pg_authid_rolname_index"
ATTEMPTS = 3


def upgrade(conn: psycopg.Connection, log=print) -> list[str]:
    """Bring the database to this release; returns the versions applied now. Safe to run twice."""
    for attempt in range(1, ATTEMPTS + 1):
        lines: list[str] = []
        try:
            done = _upgrade_once(conn, lines.append)
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name != ROLE_RACE_CONSTRAINT or attempt == ATTEMPTS:
                raise
            continue
        # report only what was committed (a rolled-back attempt applied nothing)
        for line in lines:
            log(line)
        return done
    raise AssertionError("unreachable")


def _upgrade_once(conn: psycopg.Connection, log) -> list[str]:
    done: list[str] = []
    with conn.transaction():
        conn.execute(q("migration_lock"), {"key": LOCK_KEY})
        conn.execute(q("migration_search_path"))
        applied = set(_applied(conn))
        for f in versioned_files():
            if f.stem in applied:
                continue
            if applied or done:
                conn.execute(q("record_migration"), {"version": f.stem})
                conn.execute(f.read_text())
            else:  # the first migration creates the table it is recorded in
                conn.execute(f.read_text())
                conn.execute(q("record_migration"), {"version": f.stem})
            done.append(f.stem)
            log(f"applied {f.relative_to(f.parents[1])}")
        apply_repeatable(conn)
        configure_database(conn)
    return done


def configure_database(conn: psycopg.Connection) -> None:
    """Per-database settings, which CREATE DATABASE ... TEMPLATE does not copy."""
    conn.execute(q("database_search_path"))
    # the agent hands issued keys to complete_issue as bind parameters: the server must not log their values,
    # whatever log_statement an operator turns on (an installer without the right to set these leaves them)
    conn.execute(q("database_log_parameters"))
