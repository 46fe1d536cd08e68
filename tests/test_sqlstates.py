"""One registry of our SQLSTATEs: the codes raised under db/, the rows of
dd.sqlstates and the table of docs/sqlstates.md are the same set."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

CODE = re.compile(r"\bSP\d{3}\b")
QUOTED_CODE = re.compile(r"""['"](SP\d{3})['"]""")
DOC_ROW = re.compile(r"^\|\s*(SP\d{3})\s*\|\s*([a-z_]+)\s*\|([^|]*)\|([^|]*)\|\s*$")
REGISTRY_INSERT = re.compile(r"INSERT INTO dd\.sqlstates.*?ON CONFLICT", re.S)


def db_sources(repo_root: Path) -> dict[Path, str]:
    files = sorted((repo_root / "db").rglob("*.sql"))
    assert files, "no SQL under db/"
    return {f: f.read_text() for f in files}


def without_registry(text: str) -> str:
    """The SQL with the registry's own INSERT taken out (listing a code there is not using it)."""
    return REGISTRY_INSERT.sub("", text)


def codes_raised(repo_root: Path) -> dict[str, set[str]]:
    """code -> files that raise it: raise_error('SPnnn', ...), ERRCODE = 'SPnnn', plpy.error(..., sqlstate='SPnnn')."""
    out: dict[str, set[str]] = {}
    for path, text in db_sources(repo_root).items():
        for code in QUOTED_CODE.findall(without_registry(text)):
            out.setdefault(code, set()).add(path.relative_to(repo_root).as_posix())
    return out


def codes_mentioned(repo_root: Path) -> set[str]:
    """Every SPnnn anywhere under db/ outside the registry, comments included."""
    return {c for text in db_sources(repo_root).values() for c in CODE.findall(without_registry(text))}


def registry(conn) -> dict[str, tuple[str, str]]:
    return {code: (name, meaning) for code, name, meaning in conn.execute("SELECT code, name, meaning FROM dd.sqlstates")}


def documented(repo_root: Path) -> dict[str, tuple[str, str, str]]:
    doc = repo_root / "docs" / "sqlstates.md"
    assert doc.exists(), "docs/sqlstates.md is missing"
    rows: dict[str, tuple[str, str, str]] = {}
    for line in doc.read_text().splitlines():
        if CODE.search(line.split("|")[1] if line.startswith("|") and line.count("|") > 2 else ""):
            m = DOC_ROW.match(line)
            assert m, f"docs/sqlstates.md: malformed row {line!r}"
            code, name, meaning, hint = m.groups()
            assert code not in rows, f"docs/sqlstates.md lists {code} twice"
            rows[code] = (name, meaning.strip(), hint.strip())
    return rows


def test_scanner_finds_the_known_ways_of_raising(repo_root):
    raised = codes_raised(repo_root)
    assert "db/functions/040_manage.sql" in raised["SP002"]            # PERFORM raise_error('SP002', ...)
    assert "db/triggers/030_certkeydata.sql" in raised["SP008"]        # PL/Python refuse("SP008", ...)
    assert "db/triggers/030_certkeydata.sql" in raised["SP012"]
    # the registry's INSERT alone does not count as a use
    assert all(files != {"db/functions/010_errors.sql"} for files in raised.values())


def test_every_code_used_under_db_is_registered(conn, repo_root):
    known = set(registry(conn))
    unregistered = {c: sorted(f) for c, f in codes_raised(repo_root).items() if c not in known}
    assert not unregistered, f"raised under db/ but not in dd.sqlstates: {unregistered}"
    assert codes_mentioned(repo_root) <= known, f"mentioned but not registered: {codes_mentioned(repo_root) - known}"


def test_every_registered_code_is_raised_somewhere(conn, repo_root):
    unused = set(registry(conn)) - set(codes_raised(repo_root))
    assert not unused, f"in dd.sqlstates but raised nowhere under db/: {sorted(unused)}"


def test_docs_list_exactly_the_registry(conn, repo_root):
    reg, doc = registry(conn), documented(repo_root)
    assert sorted(doc) == sorted(reg), (
        f"only in dd.sqlstates: {sorted(set(reg) - set(doc))}; only in docs/sqlstates.md: {sorted(set(doc) - set(reg))}")
    for code, (name, _meaning) in reg.items():
        doc_name, doc_meaning, doc_hint = doc[code]
        assert doc_name == name, f"{code}: docs say {doc_name}, dd.sqlstates says {name}"
        assert doc_meaning and doc_hint, f"{code}: docs/sqlstates.md needs a meaning and a typical hint"


def test_registry_rows_are_well_formed(conn):
    reg = registry(conn)
    assert len(reg) >= 12
    for code, (name, meaning) in reg.items():
        assert re.fullmatch(r"SP\d{3}", code)
        assert re.fullmatch(r"[a-z][a-z_]*", name), name
        assert meaning.strip(), code
    assert len({name for name, _ in reg.values()}) == len(reg)


def test_each_registered_code_is_raised_with_its_sqlstate_and_hint(conn):
    for code in registry(conn):
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT raise_error(%s, %s, %s)", (code, f"message of {code}", f"hint of {code}"))
        diag = info.value.diag
        assert (diag.sqlstate, diag.message_primary, diag.message_hint) == (code, f"message of {code}", f"hint of {code}")


def test_an_unregistered_code_is_not_raised_as_ours(conn):
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT raise_error('SP999', 'boom', 'none')")
    assert info.value.diag.sqlstate != "SP999"
    assert "unregistered SQLSTATE SP999" in info.value.diag.message_primary


def test_the_registry_is_readable_by_every_role(conn):
    for role in ("pki_admin", "pki_agent", "pki_report"):
        assert conn.execute("SELECT has_table_privilege(%s, 'dd.sqlstates', 'SELECT')", (role,)).fetchone()[0], role
