"""One home for the agent's SQL: every statement the Python package runs is a named query of
queries.sql, run as `q("name")`. No SQL text in the .py files, none built with f-strings, `%`,
`+`, `.format` or `.replace`: values travel as bind parameters, the selection too.

The rule, checked on the source (no database needed):
  1. the statement given to .execute()/.executemany() is `q(...)`, a variable, or a migration
     file's `.read_text()`; never a string literal, f-string, concatenation or method call on text;
  2. no string literal outside queries.py begins like an SQL statement (SELECT, INSERT, LISTEN, ...);
  3. nothing calls .replace()/.format() on a named query;
  4. every `q("name")` names a query of queries.sql;
  5. the selection is the same pki.selection(...) call, with bind parameters, in every query that takes one;
  6. one named query is a template: kind_completion, the call of a job kind's completion function, whose name
     and named arguments are filled in by psycopg.sql (Identifier, Placeholder) in handlers.Completion;
     no other named query is composed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from serverpki.queries import QUERIES

PACKAGE = Path(__file__).resolve().parents[1] / "agent" / "serverpki"

SQL_START = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH|LISTEN|NOTIFY|SET|DO|CREATE|ALTER|DROP|GRANT|REVOKE|"
                       r"TRUNCATE|COPY|CALL|BEGIN|COMMIT|LOCK)\s", re.S)
SELECTION = ("pki.selection(%(sel_all)s, %(sel_include)s, %(sel_exclude)s, %(sel_only)s, %(sel_skip)s, "
             "%(sel_limit)s, %(sel_no_tlsa)s)")


def _is_q(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "q"


def violations(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "queries.py" and path.parent == package:
            continue
        where = path.relative_to(package.parent)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            line = f"{where}:{getattr(node, 'lineno', '?')}"
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("execute", "executemany") and node.args):
                sql = node.args[0]
                allowed = (_is_q(sql) or isinstance(sql, ast.Name)
                           or (isinstance(sql, ast.Call) and isinstance(sql.func, ast.Attribute)
                               and sql.func.attr == "read_text" and not sql.args))
                if not allowed:
                    found.append(f"{line}: .{node.func.attr}() of SQL not from q(): {ast.unparse(sql)[:80]}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("replace", "format", "format_map") and _is_q(node.func.value)):
                found.append(f"{line}: .{node.func.attr}() on a named query")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
                    and isinstance(node.func.value, ast.Call) and node.func.value.args and _is_q(node.func.value.args[0])
                    and ast.unparse(node.func.value.args[0]) != "q('kind_completion')"):
                found.append(f"{line}: a named query composed with psycopg.sql other than kind_completion")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_START.match(node.value):
                found.append(f"{line}: SQL text outside queries.sql: {node.value[:80]!r}")
            if _is_q(node) and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value not in QUERIES:
                found.append(f"{line}: q({node.args[0].value!r}) is not in queries.sql")
    return found


def test_every_statement_is_a_named_query():
    assert violations(PACKAGE) == []


def test_the_scan_finds_what_the_rule_forbids(tmp_path):
    """The old ways of building SQL (the CLI before its statements moved) are each found."""
    (tmp_path / "bad.py").write_text(
        'REQUESTS = {"-S": "SELECT x FROM schedule({sel})"}\n'
        'def f(conn, sel_sql, p):\n'
        '    conn.execute(REQUESTS["-S"].replace("{sel}", sel_sql), p)\n'
        '    conn.execute(f"SELECT check_selection({sel_sql})", p)\n'
        '    conn.execute("LISTEN pki_jobs")\n'
        '    conn.execute("SELECT 1 " + sel_sql)\n'
        '    conn.execute(q("job_state").replace("id", "x"), p)\n'
        '    conn.execute(q("no_such_query"), p)\n'
        '    composed = sql.SQL(q("job_state")).format(x=sql.Identifier(name))\n'
        '    template = sql.SQL(q("kind_completion")).format(function=sql.Identifier(name))\n')
    found = "\n".join(violations(tmp_path))
    for line, what in ((1, "SQL text outside"), (3, ".execute() of SQL not from q()"), (4, ".execute() of SQL not from q()"),
                       (5, ".execute() of SQL not from q()"), (6, ".execute() of SQL not from q()"),
                       (7, ".replace() on a named query"), (8, "q('no_such_query') is not in queries.sql"),
                       (9, "a named query composed with psycopg.sql other than kind_completion")):
        assert f"bad.py:{line}: {what}" in found, found
    assert "bad.py:10:" not in found, "the one template may be composed"
    assert "{function}" in QUERIES["kind_completion"]


def test_the_selection_is_one_expression_of_bind_parameters():
    takes = [name for name, sql in QUERIES.items() if "pki.selection(" in sql or "%(sel_" in sql]
    assert "check_selection" in takes and "request_create" in takes and "report_plan" in takes
    for name in takes:
        sql = QUERIES[name]
        assert sql.count("pki.selection(") == sql.count(SELECTION) == 1, name
