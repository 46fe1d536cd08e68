"""The allow-list: db/privileges/010_grants.sql is the only place that lets PUBLIC or a role call a
function of schema pki. The catalog must say exactly what the file says, so a function nobody
decided about is callable by nobody (but its owner)."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from helpers import owner_conn
from serverpki import migrate

ROLES = ("pki_admin", "pki_agent", "pki_report")
GRANT_LINE = re.compile(r"^GRANT EXECUTE ON FUNCTION (?P<sig>pki\.\w+\([^)]*\)) TO (?P<roles>[\w, ]+);$")


def allow_list(repo_root: Path) -> list[tuple[str, str]]:
    """(signature, role) of every GRANT EXECUTE line of the file; each function granted on one line."""
    text = (repo_root / "db" / "privileges" / "010_grants.sql").read_text()
    pairs = []
    for line in text.splitlines():
        if line.startswith("GRANT EXECUTE"):
            m = GRANT_LINE.match(line)
            assert m, f"a function grant must be one line 'GRANT EXECUTE ON FUNCTION pki.f(types) TO roles;': {line}"
            pairs += [(m["sig"], role.strip()) for role in m["roles"].split(",")]
        else:
            assert "EXECUTE ON ALL FUNCTIONS" not in line or line.startswith("REVOKE"), \
                f"grant functions one by one, never all at once: {line}"
    return pairs


def executable_by(conn: psycopg.Connection) -> set[tuple[int, str]]:
    """(function oid, grantee) of every EXECUTE privilege on a pki function held by PUBLIC or our roles;
    a NULL proacl is PostgreSQL's default, which lets PUBLIC execute."""
    return set(conn.execute("""
        SELECT p.oid::int, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
          FROM pg_proc p
          CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
         WHERE p.pronamespace = 'pki'::regnamespace AND a.privilege_type = 'EXECUTE'
           AND (a.grantee = 0 OR a.grantee::regrole::text = ANY (%s))""", (list(ROLES),)).fetchall())


def completions(owner: psycopg.Connection) -> list[tuple[str, str]]:
    """The file's one rule: each job kind's completion function (job_kinds.complete_with) is pki_agent's."""
    rows = owner.execute("SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pki.job_kinds k ON k.complete_with = p.proname "
                         "WHERE p.pronamespace = 'pki'::regnamespace").fetchall()
    assert len(rows) >= 6, rows
    return [(sig, "pki_agent") for (sig,) in rows]


def test_the_catalog_grants_exactly_what_the_allow_list_says(conn, repo_root):
    owner = owner_conn(conn)
    listed = set()
    for sig, role in allow_list(repo_root) + completions(owner):
        oid = owner.execute("SELECT to_regprocedure(%s)::int", (sig,)).fetchone()[0]
        assert oid is not None, f"privileges/010_grants.sql grants {sig}, which does not exist"
        assert role in ROLES, f"{sig} granted to {role}: only {ROLES} are ours to grant to"
        listed.add((oid, role))
    granted = executable_by(owner)
    name = lambda pairs: sorted(f"{owner.execute('SELECT %s::regprocedure::text', (o,)).fetchone()[0]} -> {r}"
                                for o, r in pairs)
    assert not name(granted - listed), f"executable but not in the allow-list: {name(granted - listed)}"
    assert not name(listed - granted), f"in the allow-list but not granted: {name(listed - granted)}"
    assert not any(r == "PUBLIC" for _o, r in granted)


def test_a_new_security_definer_function_is_callable_by_nobody(conn, dsn):
    """An owner who adds a function (by hand, or a release that forgot its grant line) lets nobody call it."""
    owner = owner_conn(conn)
    owner.execute("CREATE FUNCTION pki.forgotten() RETURNS int LANGUAGE sql SECURITY DEFINER "
                  "SET search_path = pki, dd, pg_temp AS 'SELECT 1'")
    oid = owner.execute("SELECT 'pki.forgotten()'::regprocedure::int").fetchone()[0]
    assert {g for o, g in executable_by(owner) if o == oid} == set()    # ALTER DEFAULT PRIVILEGES
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT pki.forgotten()")
    # a GRANT by hand is taken back by the next upgrade: the file is the whole truth
    owner.execute("GRANT EXECUTE ON FUNCTION pki.forgotten() TO PUBLIC, pki_admin")
    migrate.upgrade(owner, log=lambda _line: None)
    assert {g for o, g in executable_by(owner) if o == oid} == set()

