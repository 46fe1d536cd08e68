"""The installer (agent/serverpki/migrate.py) and its command line (`serverpki db ...`).

Versioned DDL is applied once and recorded; functions, views and triggers are
re-applied on every upgrade. A fresh install, a repeated upgrade and an upgrade
from the first release give the same schema, compared by a fingerprint read
from pg_catalog. The SQL ships inside the wheel.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner

from helpers import small_cli_world, snapshot
from serverpki import migrate
from serverpki.admin import app
from serverpki.agent import Agent
from serverpki.config import Config

SCHEMAS = ("pki", "dd")
PG_VARS = ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSERVICE", "SERVERPKI_DSN")


# --- fixtures -------------------------------------------------------------------


@pytest.fixture
def conn(owner):
    """The installer's tests: only the installer runs as the owner, and so does this module's conn."""
    return owner


@pytest.fixture
def dsn(owner_dsn):
    return owner_dsn

@pytest.fixture
def new_db(pg_server):
    """new_db(): the name of a NEW, empty database (no schema); dropped after the test."""
    made: list[str] = []

    def create() -> str:
        name = f"m_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_server.dsn(), autocommit=True) as su:
            su.execute(f"CREATE DATABASE {name}")
        made.append(name)
        return name

    yield create
    with psycopg.connect(pg_server.dsn(), autocommit=True) as su:
        for name in made:
            su.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def cli_env(pg_server, dbname: str | None) -> dict[str, str | None]:
    """libpq variables for dbname (or none at all), and nothing inherited from the caller's shell."""
    env: dict[str, str | None] = {k: None for k in PG_VARS}
    if dbname is not None:
        env.update(pg_server.env(dbname, user=None))
    return env


def versions_on_disk(repo_root: Path) -> list[str]:
    return sorted(p.stem for p in (repo_root / "db" / "schema").glob("[0-9][0-9][0-9][0-9]_*.sql"))


def applied_versions(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as c:
        return [r[0] for r in c.execute("SELECT version FROM pki.schema_migrations ORDER BY version")]


def has_schema(dsn: str) -> bool:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT count(*) FROM pg_namespace WHERE nspname = ANY(%s)", (list(SCHEMAS),)).fetchone()[0] > 0


# --- the schema fingerprint -------------------------------------------------------

FINGERPRINT_QUERIES = {
    "relations": """
        SELECT n.nspname || '.' || c.relname,
               c.relkind::text || ' acl=' || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(c.relacl) a), '')
               || ' options=' || coalesce(array_to_string(c.reloptions, ','), '')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')""",
    "columns": """
        SELECT n.nspname || '.' || c.relname || '.' || a.attname,
               format('#%%s %%s notnull=%%s default=%%s acl=%%s',
                      row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
                      format_type(a.atttypid, a.atttypmod), a.attnotnull,
                      coalesce(pg_get_expr(d.adbin, d.adrelid), ''),
                      coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(a.attacl) x), ''))
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND a.attnum > 0 AND NOT a.attisdropped""",
    "functions": """
        SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               format('returns=%%s lang=%%s src=%%s secdef=%%s volatile=%%s config=%%s acl=%%s',
                      pg_get_function_result(p.oid), l.lanname, md5(p.prosrc), p.prosecdef, p.provolatile,
                      coalesce(array_to_string(p.proconfig, ','), ''),
                      coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(p.proacl) x), ''))
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
         WHERE n.nspname = ANY(%(schemas)s)""",
    "views": """
        SELECT n.nspname || '.' || c.relname, pg_get_viewdef(c.oid)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('v', 'm')""",
    "triggers": """
        SELECT n.nspname || '.' || c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY(%(schemas)s) AND NOT t.tgisinternal""",
    "indexes": """
        SELECT n.nspname || '.' || c.relname, pg_get_indexdef(c.oid)
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY(%(schemas)s)""",
    "constraints": """
        SELECT n.nspname || '.' || coalesce(r.relname, ty.typname, '') || '.' || co.conname,
               co.contype::text || ' ' || pg_get_constraintdef(co.oid)
          FROM pg_constraint co
          JOIN pg_namespace n ON n.oid = co.connamespace
          LEFT JOIN pg_class r ON r.oid = co.conrelid
          LEFT JOIN pg_type ty ON ty.oid = co.contypid
         WHERE n.nspname = ANY(%(schemas)s)""",
    "types": """
        SELECT n.nspname || '.' || t.typname,
               t.typtype::text || ' ' || CASE t.typtype
                   WHEN 'e' THEN (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid)
                   WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod) || ' notnull=' || t.typnotnull
                                 || ' default=' || coalesce(t.typdefault, '')
                   ELSE '' END
          FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = ANY(%(schemas)s) AND t.typtype IN ('e', 'd', 'c')
           AND (t.typtype <> 'c' OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')""",
    "schemas": """
        SELECT n.nspname, coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(n.nspacl) x), '')
          FROM pg_namespace n WHERE n.nspname = ANY(%(schemas)s)""",
    "extensions": """
        SELECT e.extname, e.extversion || ' in ' || n.nspname
          FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace""",
    "database settings": """
        SELECT coalesce(r.rolname, '*'), array_to_string(s.setconfig, ',')
          FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
          LEFT JOIN pg_roles r ON r.oid = s.setrole
         WHERE d.datname = current_database()""",
}


def fingerprint(dsn: str) -> dict[str, dict[str, str]]:
    """Everything an install defines in pki and dd, plus the rows it seeds (timestamps left out)."""
    out: dict[str, dict[str, str]] = {}
    with psycopg.connect(dsn) as c:
        for part, sql in FINGERPRINT_QUERIES.items():
            rows = c.execute(sql, {"schemas": list(SCHEMAS)}).fetchall()
            keys = [r[0] for r in rows]
            assert len(keys) == len(set(keys)), f"{part}: duplicate keys {keys}"
            out[part] = dict(rows)
        tables = c.execute("SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c "
                           "JOIN pg_namespace n ON n.oid = c.relnamespace "
                           "WHERE n.nspname = ANY(%s) AND c.relkind = 'r'", (list(SCHEMAS),)).fetchall()
        data = {}
        for (table,) in tables:
            if table == "pki.schema_migrations":   # rows carry the time they were applied
                continue
            rows = c.execute(f"SELECT (to_jsonb(t) - 'created' - 'updated')::text FROM {table} t").fetchall()
            data[table] = "\n".join(sorted(r[0] for r in rows))
        out["seeded rows"] = data
    return out


def assert_same_schema(left: dict, right: dict, what: str) -> None:
    problems = []
    for part in sorted(set(left) | set(right)):
        a, b = left.get(part, {}), right.get(part, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                problems.append(f"{part} {key}:\n    {a.get(key)!r}\n != {b.get(key)!r}")
    assert not problems, f"{what}: schemas differ\n" + "\n".join(problems[:20])


def test_fingerprint_sees_what_matters(dsn, conn):
    """The fingerprint is sharp enough to tell a changed function, grant, default or row."""
    base = fingerprint(dsn)
    assert {"pki.disthosts", "pki.certkeydata", "pki.schema_migrations"} <= set(base["relations"])
    assert any(k.startswith("pki.add_cert(") for k in base["functions"])
    assert "pki.certs" in base["views"] and "pki.certkeydata.check_certkeydata" in base["triggers"]
    assert base["seeded rows"]["dd.sqlstates"] and base["seeded rows"]["pki.settings"]

    conn.execute("CREATE OR REPLACE FUNCTION pki.enable_cert(the_cert_name text) RETURNS void LANGUAGE sql "
                 "SET search_path = pki, dd, pg_temp AS $$ SELECT NULL::void $$")
    conn.execute("GRANT DELETE ON pki.settings TO pki_report")
    conn.execute("ALTER TABLE pki.places ALTER COLUMN mode SET DEFAULT 256")
    conn.execute("UPDATE settings SET value = '21' WHERE name = 'pre_publish_days'")
    changed = fingerprint(dsn)
    with pytest.raises(AssertionError) as info:
        assert_same_schema(base, changed, "changed")
    text = str(info.value)
    for expected in ("pki.enable_cert(", "relations pki.settings", "pki.places.mode", "seeded rows pki.settings"):
        assert expected in text, f"fingerprint missed {expected}"


# --- the command line ---------------------------------------------------------------

def test_db_init_with_libpq_variables(runner, pg_server, new_db, repo_root):
    name = new_db()
    dsn = pg_server.dsn(name)
    assert not has_schema(dsn)

    result = runner.invoke(app, ["db", "init"], env=cli_env(pg_server, name))
    assert result.exit_code == 0, result.output
    versions = versions_on_disk(repo_root)
    for v in versions:
        assert f"applied schema/{v}.sql" in result.output
    assert f"schema is current ({len(versions)} migration(s) applied now" in result.output
    assert applied_versions(dsn) == versions

    with psycopg.connect(dsn) as c:   # a new session sees the database's search_path
        assert c.execute("SHOW search_path").fetchone()[0] == "pki, dd, public"
        assert c.execute("SELECT count(*) FROM services").fetchone()[0] > 0


def test_db_upgrade_with_dsn_option(runner, pg_server, new_db, repo_root):
    name = new_db()
    dsn = pg_server.dsn(name)
    result = runner.invoke(app, ["db", "upgrade", "--dsn", dsn], env=cli_env(pg_server, None))
    assert result.exit_code == 0, result.output
    assert applied_versions(dsn) == versions_on_disk(repo_root)


def test_dsn_from_serverpki_dsn_variable(runner, pg_server, new_db, repo_root):
    name = new_db()
    env = cli_env(pg_server, None)
    env["SERVERPKI_DSN"] = pg_server.dsn(name)
    result = runner.invoke(app, ["db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output
    assert applied_versions(pg_server.dsn(name)) == versions_on_disk(repo_root)


def test_upgrade_twice_is_harmless(runner, pg_server, new_db, repo_root):
    name = new_db()
    dsn = pg_server.dsn(name)
    env = cli_env(pg_server, name)
    assert runner.invoke(app, ["db", "init"], env=env).exit_code == 0
    with psycopg.connect(dsn, autocommit=True) as c:   # data an operator entered survives an upgrade
        c.execute("SELECT add_disthost('web1.example.org')")
        c.execute("UPDATE settings SET value = '21' WHERE name = 'pre_publish_days'")
    first = fingerprint(dsn)
    first_applied = applied_versions(dsn)

    result = runner.invoke(app, ["db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output
    assert "applied schema/" not in result.output
    assert "schema is current (0 migration(s) applied now" in result.output
    assert applied_versions(dsn) == first_applied == versions_on_disk(repo_root)
    assert_same_schema(first, fingerprint(dsn), "after a second upgrade")
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT count(*) FROM disthosts").fetchone()[0] == 1
        assert c.execute("SELECT value FROM settings WHERE name = 'pre_publish_days'").fetchone()[0] == "21"


def test_status_lists_applied_and_pending(runner, pg_server, new_db, repo_root):
    name = new_db()
    env = cli_env(pg_server, name)
    versions = versions_on_disk(repo_root)

    before = runner.invoke(app, ["db", "status"], env=env)
    assert before.output.splitlines() == ["applied: none", f"pending: {', '.join(versions)}",
                                          "serverpki: the database has no serverPKI schema: run serverpki db upgrade "
                                          "(as the schema's owner)"]
    assert before.exit_code == 3, "pending migrations make status fail as the agent would, so scripts can test it"
    assert not has_schema(pg_server.dsn(name)), "status must not change the database"

    assert runner.invoke(app, ["db", "init"], env=env).exit_code == 0
    after = runner.invoke(app, ["db", "status"], env=env)
    assert after.exit_code == 0, after.output
    assert after.output.splitlines() == [f"applied: {', '.join(versions)}", "pending: none", "keys encrypted: no"]


def test_status_shows_a_partly_applied_database(pg_server, new_db, repo_root, monkeypatch):
    """A database installed by an older release lists the newer migrations as pending."""
    name = new_db()
    versions = versions_on_disk(repo_root)
    first = migrate.versioned_files()[:1]
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as c:
        monkeypatch.setattr(migrate, "versioned_files", lambda root=None: first)
        monkeypatch.setattr(migrate, "apply_repeatable", lambda c: None)
        assert migrate.upgrade(c, log=lambda _l: None) == [versions[0]]
        monkeypatch.undo()
        st = migrate.status(c)
    assert st.applied == versions[:1]
    assert st.pending == versions[1:]


def test_cli_refusals_are_one_line(runner, pg_server, new_db):
    missing = f"nope_{uuid.uuid4().hex[:8]}"
    result = runner.invoke(app, ["db", "status"], env=cli_env(pg_server, missing))
    assert result.exit_code == 3   # database unreachable
    assert result.output.startswith("serverpki: ") and missing in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_failed_upgrade_leaves_nothing_behind(runner, pg_server, new_db):
    """A non-superuser cannot install (plpython3u is untrusted); the attempt changes nothing."""
    name = new_db()
    role = f"t_installer_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as su:
        su.execute(f"CREATE ROLE {role} LOGIN")
        su.execute(f"GRANT CREATE ON DATABASE {name} TO {role}")
    try:
        dsn = make_conninfo(pg_server.dsn(name), user=role)
        result = runner.invoke(app, ["db", "upgrade", "--dsn", dsn], env=cli_env(pg_server, None))
        assert result.exit_code == 1
        assert result.output.startswith("serverpki: ") and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not has_schema(pg_server.dsn(name))
    finally:
        with psycopg.connect(pg_server.dsn(name), autocommit=True) as su:
            su.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(pg_server.dsn(), autocommit=True) as su:
            su.execute(f"REVOKE ALL ON DATABASE {name} FROM {role}")
            su.execute(f"DROP ROLE {role}")


def test_installed_console_script(pg_server, new_db, repo_root):
    """The serverpki entry point of the virtualenv, as an operator runs it."""
    script = Path(sys.executable).with_name("serverpki")
    assert script.exists(), script
    name = new_db()
    env = {k: v for k, v in os.environ.items() if k not in PG_VARS}
    env.update(pg_server.env(name, user=None))
    for verb in ("init", "upgrade", "status"):
        done = subprocess.run([str(script), "db", verb], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"db {verb}: {done.stdout}{done.stderr}"
    assert "pending: none" in done.stdout
    assert applied_versions(pg_server.dsn(name)) == versions_on_disk(repo_root)


# --- one schema, however it was reached ------------------------------------------------

def test_fresh_install_equals_repeated_upgrade_and_template(pg_server, new_db, template_db):
    once, twice = new_db(), new_db()
    with psycopg.connect(pg_server.dsn(once), autocommit=True) as c:
        migrate.upgrade(c, log=lambda _l: None)
    with psycopg.connect(pg_server.dsn(twice), autocommit=True) as c:
        migrate.upgrade(c, log=lambda _l: None)
    with psycopg.connect(pg_server.dsn(twice), autocommit=True) as c:   # a later session, as cron or an operator
        assert migrate.upgrade(c, log=lambda _l: None) == []
    fresh = fingerprint(pg_server.dsn(once))
    assert_same_schema(fresh, fingerprint(pg_server.dsn(twice)), "fresh install vs upgraded twice")
    template = fingerprint(pg_server.dsn(template_db))
    # the one row that differs on purpose: the tests travel in time, a fresh install may not
    assert template["seeded rows"].pop("pki.time_travel") == '{"enabled": true, "only_row": true}'
    assert fresh["seeded rows"].pop("pki.time_travel") == '{"enabled": false, "only_row": true}'
    assert_same_schema(fresh, template, "fresh install vs the tests' template")


def install_old_tree(monkeypatch, conn, root: Path) -> list[str]:
    """Install a db/ tree of an earlier commit as that commit's loader did: before db/retired.sql
    existed, the repeatable files of functions/, views/ and triggers/ ran in the order of their
    NNNN_ prefix across the three folders (each view file dropped its views with CASCADE); before
    db/functions/015_describe.sql, nothing was described."""
    def legacy(c):
        files = [f for d in ("functions", "views", "triggers") for f in (root / d).glob("[0-9][0-9][0-9][0-9]_*.sql")]
        for f in sorted(files, key=lambda f: (f.name, f.parent.name)):
            c.execute(f.read_text())

    with monkeypatch.context() as m:
        m.setattr(migrate, "sql_root", lambda: root)
        if not (root / "retired.sql").exists():
            m.setattr(migrate, "apply_repeatable", legacy)
        elif not (root / "functions" / "015_describe.sql").exists():   # its loader described nothing
            m.setattr(migrate, "described", lambda root=None: [])
        return migrate.upgrade(conn, log=lambda _l: None)


def test_upgrade_from_the_first_release_equals_fresh_install(pg_server, new_db, repo_root, tmp_path, monkeypatch):
    """Install the db/ of the repository's first commit, upgrade it to this tree, compare with a fresh install."""
    first_commit = subprocess.run(["git", "-C", str(repo_root), "rev-list", "--max-parents=0", "HEAD"],
                                  capture_output=True, text=True, check=True).stdout.split()[-1]
    archive = subprocess.run(["git", "-C", str(repo_root), "archive", first_commit, "db"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    old_root = tmp_path / "db"
    assert (old_root / "schema" / "0001_core.sql").exists()
    current_root = migrate.sql_root()

    old, fresh = new_db(), new_db()
    with psycopg.connect(pg_server.dsn(old), autocommit=True) as c:
        old_versions = install_old_tree(monkeypatch, c, old_root)
    assert old_versions and set(old_versions) <= set(versions_on_disk(repo_root))
    with psycopg.connect(pg_server.dsn(old), autocommit=True) as c:   # some configuration of the old release
        c.execute("INSERT INTO disthosts (fqdn, jailroot) VALUES ('host-with-jails.on.domain', '/usr/jails')")
    assert migrate.sql_root() == current_root

    with psycopg.connect(pg_server.dsn(old), autocommit=True) as c:
        newly = migrate.upgrade(c, log=lambda _l: None)
    assert newly == [v for v in versions_on_disk(repo_root) if v not in old_versions]
    with psycopg.connect(pg_server.dsn(old), autocommit=True) as c:
        assert c.execute("DELETE FROM disthosts WHERE fqdn = 'host-with-jails.on.domain'").rowcount == 1
    with psycopg.connect(pg_server.dsn(fresh), autocommit=True) as c:
        migrate.upgrade(c, log=lambda _l: None)
    upgraded, installed = fingerprint(pg_server.dsn(old)), fingerprint(pg_server.dsn(fresh))
    # no function of a retired signature survives (db/retired.sql drops them): every
    # function of the upgraded database exists in a fresh install with the same signature, and back
    left_over = sorted(set(upgraded["functions"]) - set(installed["functions"]))
    assert not left_over, f"old signatures survive the upgrade; add their DROP to retired.sql: {left_over}"
    assert set(upgraded["functions"]) == set(installed["functions"])
    # the disthost inserted and deleted above advanced a sequence, nothing else
    assert_same_schema(installed, upgraded, f"upgrade from {first_commit[:10]} vs fresh install")


SIGNATURES = """
    SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') returns '
           || coalesce(pg_get_function_result(p.oid), '')
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname = ANY(%s)"""
# versioned migrations edited after they were committed (before the first release): a database
# installed from these commits cannot be upgraded, and an edit of a released migration must not recur
EDITED_MIGRATIONS = {"0c8fcb3": ["0006_job_keys.sql"]}


def signatures(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as c:
        return {r[0] for r in c.execute(SIGNATURES, (list(SCHEMAS),))}


@pytest.mark.slow
def test_no_old_signature_survives_an_upgrade_from_any_commit(pg_server, new_db, repo_root, tmp_path, monkeypatch):
    """Every commit that changed db/: its db/ installed, upgraded to this tree, has exactly the functions of
    a fresh install, signature for signature (retired.sql dropped every one that changed since)."""
    commits = subprocess.run(["git", "-C", str(repo_root), "rev-list", "--reverse", "HEAD", "--", "db"],
                             capture_output=True, text=True, check=True).stdout.split()
    current_root = migrate.sql_root()
    released = {p.name: p.read_bytes() for p in (current_root / "schema").glob("*.sql")}
    fresh = new_db()
    with psycopg.connect(pg_server.dsn(fresh), autocommit=True) as c:
        migrate.upgrade(c, log=lambda _l: None)
    want = signatures(pg_server.dsn(fresh))
    edited: dict[str, list[str]] = {}
    for commit in commits:
        root = tmp_path / commit
        root.mkdir()
        archive = subprocess.run(["git", "-C", str(repo_root), "archive", commit, "db"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        changed = sorted(p.name for p in (root / "db" / "schema").glob("*.sql") if p.read_bytes() != released.get(p.name))
        if changed:
            edited[commit[:7]] = changed
            continue
        name = new_db()
        with psycopg.connect(pg_server.dsn(name), autocommit=True) as c:
            install_old_tree(monkeypatch, c, root / "db")
        with psycopg.connect(pg_server.dsn(name), autocommit=True) as c:
            try:
                migrate.upgrade(c, log=lambda _l: None)
            except psycopg.Error as exc:   # CREATE OR REPLACE cannot change a return type: the DROP is missing
                pytest.fail(f"upgrade from {commit[:10]} failed (a missing line in retired.sql?): "
                            f"{exc.diag.message_primary} {exc.diag.message_hint or ''}")
        got = signatures(pg_server.dsn(name))
        assert got == want, (f"upgrade from {commit[:10]}: old signatures survive (add their DROP to "
                             f"db/retired.sql): {sorted(got - want)}; missing: {sorted(want - got)}")
        pg_server.drop_database(name)
    assert edited == EDITED_MIGRATIONS, "a committed db/schema migration was edited (or removed): add a new one instead"


def test_a_changed_signature_survives_an_upgrade_unless_retired(dsn, conn, tmp_path, monkeypatch):
    """The convention of db/retired.sql, and that the comparison above enforces it.

    A function whose arguments change is a new overload to PostgreSQL: CREATE OR REPLACE leaves the
    old one in place, callable. Here a database carries two old signatures, as an older release left
    them: one retired in retired.sql (dropped by the upgrade), one without a line there (it
    survives, and the fingerprint comparison names it) until its DROP is added."""
    base = fingerprint(dsn)
    retired = "pki.clock_locked()"          # retired.sql: DROP FUNCTION IF EXISTS pki.clock_locked();
    unlisted = "pki.enable_cert(the_cert_name text, why text)"
    conn.execute("CREATE FUNCTION pki.clock_locked() RETURNS boolean LANGUAGE sql AS $$ SELECT false $$")
    conn.execute("CREATE FUNCTION pki.enable_cert(the_cert_name text, why text) RETURNS void LANGUAGE sql "
                 "AS $$ SELECT NULL::void $$")
    migrate.upgrade(conn, log=lambda _l: None)
    upgraded = fingerprint(dsn)
    assert retired not in upgraded["functions"], "a retired signature survived the upgrade"
    with pytest.raises(AssertionError) as caught:
        assert_same_schema(base, upgraded, "an old overload left behind")
    assert f"functions {unlisted}:" in str(caught.value)
    assert set(upgraded["functions"]) ^ set(base["functions"]) == {unlisted}, "the overload is the one difference"
    assert_same_schema(base, {**upgraded, "functions": {k: v for k, v in upgraded["functions"].items() if k != unlisted}},
                       "all but the overload")

    root = tmp_path / "db"   # the fix: the old signature's DROP in retired.sql
    shutil.copytree(migrate.sql_root(), root)
    with (root / "retired.sql").open("a") as f:
        f.write("DROP FUNCTION IF EXISTS pki.enable_cert(text, text);\n")
    monkeypatch.setattr(migrate, "sql_root", lambda: root)
    migrate.upgrade(conn, log=lambda _l: None)
    assert_same_schema(base, fingerprint(dsn), "after retiring the old signature")


def test_versioned_migrations_are_recorded(dsn, repo_root):
    versions = versions_on_disk(repo_root)
    assert versions[:2] == ["0001_core", "0002_roles"]
    assert [f.stem for f in migrate.versioned_files()] == versions
    with psycopg.connect(dsn) as c:
        rows = c.execute("SELECT version, applied FROM pki.schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == versions
    assert all(r[1] is not None for r in rows)


def test_load_order_is_the_folders_order_then_the_numbers(repo_root):
    """db/README.md's order: each folder of REPEATABLE_DIRS in turn, its files by number; every .sql
    file of db/ is loaded (a file without its NNN_ prefix, or in another folder, would be skipped)."""
    files = migrate.repeatable_files()
    folders = [f.parent.name for f in files]
    assert folders == sorted(folders, key=migrate.REPEATABLE_DIRS.index)
    for d in migrate.REPEATABLE_DIRS:
        names = [f.name for f in files if f.parent.name == d]
        assert names == sorted(names) and len({n[:3] for n in names}) == len(names), f"{d}: numbers out of order or repeated"
    every_sql = {p.relative_to(repo_root / "db").as_posix() for p in (repo_root / "db").glob("**/*.sql")}
    loaded = {f.relative_to(migrate.sql_root()).as_posix() for f in files + migrate.versioned_files()}
    assert every_sql - loaded == {"retired.sql"}, "an SQL file of db/ that the loader would skip"
    assert folders[-1] == "privileges", "grants come last"
    readme = (repo_root / "db" / "README.md").read_text()
    assert [readme.index(f"db/{d}/") for d in migrate.REPEATABLE_DIRS] == sorted(
        readme.index(f"db/{d}/") for d in migrate.REPEATABLE_DIRS), "db/README.md names the folders in load order"


def test_no_view_file_drops_with_cascade(repo_root):
    """The upgrade drops every view itself, without CASCADE (drop_all_views): a view file that drops
    with CASCADE would silently take along whatever depends on its view until a later file recreates it."""
    for f in (repo_root / "db").glob("**/*.sql"):
        text = f.read_text()
        assert "CASCADE;" not in text.replace("ON UPDATE CASCADE", "").replace("ON DELETE CASCADE", "") \
            or f.parent.name == "schema", f"{f.name} drops with CASCADE"


def test_a_broken_function_body_stops_the_upgrade(conn, tmp_path, monkeypatch):
    """Bodies are loaded unchecked (a file may call what a later one creates), then every one is checked:
    a LANGUAGE sql body naming a column that does not exist stops the upgrade, and nothing of it stays."""
    root = tmp_path / "db"
    shutil.copytree(migrate.sql_root(), root)
    with (root / "jobs" / "060_mail_reminder.sql").open("a") as f:
        f.write("CREATE OR REPLACE FUNCTION pki.broken() RETURNS int LANGUAGE sql AS $$ SELECT no_such_column FROM pki.jobs $$;\n")
    monkeypatch.setattr(migrate, "sql_root", lambda: root)
    with pytest.raises(psycopg.errors.UndefinedColumn):
        migrate.upgrade(conn, log=lambda _l: None)
    assert conn.execute("SELECT to_regproc('pki.broken')").fetchone()[0] is None


def test_the_views_of_an_extension_in_pki_survive_the_upgrade(conn):
    """The database's search_path starts with pki: an extension a DBA creates lands there; its views
    are the extension's, and the upgrade that drops and re-creates ours leaves them."""
    conn.execute("CREATE EXTENSION pg_stat_statements SCHEMA pki")
    try:
        migrate.upgrade(conn, log=lambda _l: None)
        assert conn.execute("SELECT to_regclass('pki.pg_stat_statements')").fetchone()[0] is not None
    finally:
        conn.execute("DROP EXTENSION pg_stat_statements")


def test_an_object_that_depends_on_a_view_stops_the_upgrade(conn):
    """Nothing may depend on a view: the upgrade drops them all and says which object is in the way."""
    conn.execute("CREATE FUNCTION pki.first_cert() RETURNS SETOF pki.certs LANGUAGE sql AS $$ SELECT * FROM pki.certs LIMIT 1 $$")
    with pytest.raises(psycopg.errors.DependentObjectsStillExist) as caught:
        migrate.upgrade(conn, log=lambda _l: None)
    assert "first_cert" in (caught.value.diag.message_detail or "")
    conn.execute("DROP FUNCTION pki.first_cert()")
    migrate.upgrade(conn, log=lambda _l: None)


# --- upgrade safety: a release works only a schema it knows ---------------------------------

CRON = "pki_cron"   # the cron run's login role (README), as the CLI runs
FUTURE = "9999_from_a_newer_release"
OPERATE = Path(sys.executable).with_name("operate_serverPKI")
OPERATE_CMD = [str(OPERATE)] if OPERATE.exists() else [sys.executable, "-m", "serverpki.operate"]
AGENT_CMD = [sys.executable, "-m", "serverpki.admin", "agent"]


def make_pending(owner: psycopg.Connection) -> str:
    """An older database: the newest migration not applied (its row deleted, as the owner)."""
    return owner.execute("DELETE FROM pki.schema_migrations WHERE version = "
                         "(SELECT max(version) FROM pki.schema_migrations) RETURNING version").fetchone()[0]


def make_newer(owner: psycopg.Connection) -> str:
    """A database a newer release upgraded: a migration this release does not have."""
    owner.execute("INSERT INTO pki.schema_migrations (version) VALUES (%s)", (FUTURE,))
    return FUTURE


SPOIL = {"pending": make_pending, "newer": make_newer}


@pytest.fixture
def cli_setup(pg_server, dbname, conn, tmp_path):
    """A small configuration in the fresh database, a queued job, and the environment of the cron role."""
    config = small_cli_world(conn, tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in PG_VARS}
    env.update(pg_server.env(dbname, user=CRON), SERVERPKI_CONFIG=str(config))
    return env


def world(conn: psycopg.Connection):
    """What a run could change: the state tables, the queue, the history."""
    return snapshot(conn), conn.execute("SELECT (SELECT array_agg((id, state, attempts)::text ORDER BY id) FROM jobs), "
                                        "(SELECT count(*) FROM events), (SELECT count(*) FROM deployments)").fetchone()


def assert_one_line_refusal(done: subprocess.CompletedProcess, program: str, *expected: str) -> str:
    err = done.stderr.strip()
    assert done.returncode == 3, f"exit status {done.returncode}: {done.stdout}{done.stderr}"
    assert len(err.splitlines()) == 1 and err.startswith(f"{program}: ") and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def test_check_compatible_is_one_query_any_role_can_make(pg_server, dbname, conn, new_db):
    with psycopg.connect(pg_server.dsn(dbname, CRON), autocommit=True) as cron:
        statements: list[str] = []
        execute = cron.execute
        cron.execute = lambda query, *a, **kw: (statements.append(query), execute(query, *a, **kw))[1]
        migrate.check_compatible(cron)   # current: no complaint
        assert len(statements) == 1, statements

        version = make_pending(conn)
        with pytest.raises(migrate.SchemaMismatch) as pending:
            migrate.check_compatible(cron)
        assert pending.value.exit_code == 3
        assert str(pending.value) == (f"the database has pending migration(s) {version}: "
                                      "run serverpki db upgrade (as the schema's owner)")

        conn.execute("INSERT INTO pki.schema_migrations (version) VALUES (%s)", (version,))
        make_newer(conn)
        with pytest.raises(migrate.SchemaMismatch) as newer:
            migrate.check_compatible(cron)
        assert str(newer.value).startswith("this serverPKI is older than the database's schema: upgrade serverPKI")
        assert FUTURE in str(newer.value)

    with psycopg.connect(pg_server.dsn(new_db()), autocommit=True) as empty:
        with pytest.raises(migrate.SchemaMismatch, match="no serverPKI schema: run serverpki db upgrade"):
            migrate.check_compatible(empty)


@pytest.mark.parametrize("spoil", sorted(SPOIL))
def test_status_shows_what_the_agent_would_refuse(runner, pg_server, dbname, conn, spoil):
    version = SPOIL[spoil](conn)
    result = runner.invoke(app, ["db", "status"], env=cli_env(pg_server, dbname))
    assert result.exit_code == 3, result.output
    lines = result.output.splitlines()
    if spoil == "pending":
        assert lines[1] == f"pending: {version}"
        assert lines[-1].endswith("run serverpki db upgrade (as the schema's owner)")
    else:
        assert lines[1] == "pending: none" and lines[2] == f"unknown to this release: {FUTURE}"
        assert lines[-1].startswith("serverpki: this serverPKI is older than the database's schema: upgrade serverPKI")


@pytest.mark.parametrize("spoil", sorted(SPOIL))
@pytest.mark.parametrize("args", [("-n",), ("-S", "-q", "-a")], ids=["check", "cron-run"])
def test_operate_refuses_a_schema_of_another_release(cli_setup, conn, spoil, args):
    conn.execute("SELECT request_local_ca('Local CA', 'rsa')")   # a queued job, which the run must leave
    version = SPOIL[spoil](conn)
    before = world(conn)
    done = subprocess.run([*OPERATE_CMD, *args], env=cli_setup, capture_output=True, text=True, timeout=120)
    expected = ("serverpki db upgrade", version) if spoil == "pending" else \
        ("this serverPKI is older than the database's schema: upgrade serverPKI", version)
    assert_one_line_refusal(done, "operate_serverPKI", *expected)
    assert done.stdout == ""
    assert world(conn) == before, "a refused run changed the database"


def test_operate_works_a_current_schema(cli_setup, conn):
    done = subprocess.run([*OPERATE_CMD, "-n"], env=cli_setup, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 4) and "serverpki db upgrade" not in done.stderr, done.stderr
    assert "upgrade serverPKI" not in done.stderr


@pytest.mark.parametrize("spoil", sorted(SPOIL))
def test_agent_refuses_a_schema_of_another_release_then_works_the_upgraded_one(cli_setup, conn, spoil):
    conn.execute("SELECT request_local_ca('Local CA', 'rsa')")
    version = SPOIL[spoil](conn)
    before = world(conn)
    done = subprocess.run(AGENT_CMD, env=cli_setup, capture_output=True, text=True, timeout=120)
    assert_one_line_refusal(done, "serverpki", version,
                            "serverpki db upgrade" if spoil == "pending" else "upgrade serverPKI")
    assert world(conn) == before, "a refused agent changed the database"

    # made current again (what serverpki db upgrade, or the newer serverPKI, does), the agent works
    if spoil == "pending":
        conn.execute("INSERT INTO pki.schema_migrations (version) VALUES (%s)", (version,))
    else:
        conn.execute("DELETE FROM pki.schema_migrations WHERE version = %s", (version,))
    proc = subprocess.Popen([*AGENT_CMD, "--kind", "issue_local_ca"], env=cli_setup, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and \
                conn.execute("SELECT state FROM jobs").fetchone()[0] != "done":
            time.sleep(0.2)
        assert conn.execute("SELECT kind, state FROM jobs").fetchall() == [("issue_local_ca", "done")]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err


def test_agent_stops_when_it_reconnects_to_an_upgraded_database(pg_server, dbname, conn):
    """The long-running agent checks again after a reconnection: the database may have been
    upgraded by a newer serverPKI while it was away."""
    agent = Agent(pg_server.dsn(dbname, CRON), Config(), name="t-upgrade")
    stop = threading.Event()
    outcome: dict[str, BaseException] = {}

    def work() -> None:
        try:
            agent.forever(poll_seconds=60, stop=stop)
        except BaseException as exc:   # reported below
            outcome["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = %s "
                "AND query = 'LISTEN pki_jobs'", (CRON,)).fetchone()[0]:
            time.sleep(0.1)
        assert worker.is_alive() and not outcome, outcome
        make_newer(conn)
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND usename = %s", (CRON,))
        worker.join(timeout=30)
        assert not worker.is_alive(), "the agent went on with a schema it does not know"
    finally:
        stop.set()
        worker.join(timeout=10)
        agent.close()
    assert isinstance(outcome.get("error"), migrate.SchemaMismatch), outcome
    assert FUTURE in str(outcome["error"])


# --- two installers at once ------------------------------------------------------------

@pytest.mark.parametrize("start", ["empty", "installed"])
def test_concurrent_installers(pg_server, new_db, repo_root, start):
    name = new_db()
    dsn = pg_server.dsn(name)
    if start == "installed":
        with psycopg.connect(dsn, autocommit=True) as c:
            migrate.upgrade(c, log=lambda _l: None)

    barrier = threading.Barrier(2)
    results: dict[int, list[str]] = {}
    errors: dict[int, BaseException] = {}

    def install(n: int) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                barrier.wait(timeout=30)
                results[n] = migrate.upgrade(c, log=lambda _l: None)
        except BaseException as exc:   # reported below, with the thread's number
            errors[n] = exc

    threads = [threading.Thread(target=install, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "an installer hangs"
    assert not errors, f"installers failed: {errors!r}"

    versions = versions_on_disk(repo_root)
    applied_now = sorted(results[1] + results[2])
    assert applied_now == ([] if start == "installed" else versions), "each migration applied exactly once"
    if start == "empty":
        assert sorted([results[1], results[2]], key=len) == [[], versions], "one installer did it all, the other waited"
    assert applied_versions(dsn) == versions
    reference = new_db()
    with psycopg.connect(pg_server.dsn(reference), autocommit=True) as c:
        migrate.upgrade(c, log=lambda _l: None)
    assert_same_schema(fingerprint(pg_server.dsn(reference)), fingerprint(dsn), "after two concurrent installers")


def test_concurrent_installers_in_two_databases_of_a_new_cluster():
    """The roles are cluster-wide: two databases installed at once on a new cluster both get them.

    (The advisory lock serializes installers of one database only.) A private cluster, because
    the roles of the session's cluster exist already."""
    from lab.postgres import PostgresCluster

    # pytest's tmp folders are private to root; the postgres user must reach its data folder
    top = Path(tempfile.mkdtemp(prefix="serverpki-test-pg2-"))
    os.chmod(top, 0o755)
    with PostgresCluster(top / "cluster") as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as su:
            assert su.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pki\\_%'").fetchone()[0] == 0
            for name in ("pki_op", "pki_dev"):   # the seed runs both on one server
                su.execute(f"CREATE DATABASE {name}")
        barrier = threading.Barrier(2)
        results: dict[str, list[str]] = {}
        errors: dict[str, BaseException] = {}

        def install(name: str) -> None:
            try:
                with psycopg.connect(cluster.dsn(name), autocommit=True) as c:
                    barrier.wait(timeout=30)
                    results[name] = migrate.upgrade(c, log=lambda _l: None)
            except BaseException as exc:   # reported below, with the database's name
                errors[name] = exc

        threads = [threading.Thread(target=install, args=(name,)) for name in ("pki_op", "pki_dev")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "an installer hangs"
        assert not errors, f"installers failed: {errors!r}"
        versions = [f.stem for f in migrate.versioned_files()]
        assert results == {"pki_op": versions, "pki_dev": versions}
        assert_same_schema(fingerprint(cluster.dsn("pki_op")), fingerprint(cluster.dsn("pki_dev")), "two databases")
    shutil.rmtree(top, ignore_errors=True)


# --- the SQL ships inside the wheel -------------------------------------------------------

def test_wheel_contains_the_sql(repo_root, tmp_path):
    source = tmp_path / "src"
    # a copy of the working tree, so building leaves no build/ or egg-info behind in the checkout
    shutil.copytree(repo_root, source, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                                  ".pytest_cache", ".hypothesis", "lab-run"))
    out = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = out.glob("serverpki-*.whl")

    sql_files = sorted(p.relative_to(repo_root / "db") for p in (repo_root / "db").glob("**/*.sql"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "serverpki/db/schema/0001_core.sql" in names
        assert any(n.startswith("serverpki/db/functions/") and n.endswith(".sql") for n in names)
        for rel in sql_files:
            member = f"serverpki/db/{rel.as_posix()}"
            assert member in names, f"{member} missing from the wheel"
            assert z.read(member) == (repo_root / "db" / rel).read_bytes(), f"{member} differs from db/{rel}"
        shipped = {n for n in names if n.startswith("serverpki/db/") and n.endswith(".sql")}
        assert len(shipped) == len(sql_files)
        z.extractall(tmp_path / "installed")

    # installed from the wheel (not from the checkout), the installer finds its SQL
    probe = ("import json; from serverpki import migrate; "
             "print(json.dumps([migrate.__file__, [f.name for f in migrate.versioned_files()], "
             "[f.name for f in migrate.repeatable_files()]]))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "installed")}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    module_file, versioned, repeatable = json.loads(done.stdout)
    assert module_file.startswith(str(tmp_path / "installed"))
    assert versioned == [p.name for p in sorted((repo_root / "db" / "schema").glob("*.sql"))]
    assert sorted(repeatable) == sorted(p.name for d in migrate.REPEATABLE_DIRS for p in (repo_root / "db" / d).glob("*.sql"))


def test_sql_root_is_the_checkout_db_in_development(repo_root):
    root = migrate.sql_root()
    digest = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.glob("**/*.sql")}
    want = {p.relative_to(repo_root / "db").as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (repo_root / "db").glob("**/*.sql")}
    assert digest == want
