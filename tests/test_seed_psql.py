"""The seed manual's psql session (operation.txt, "Management of configuration"),
typed verbatim into the real psql binary, answers as the manual shows.

The statements below are copied character for character from the manual,
including its lower-case `values(` and missing space before the parenthesis.
"""

from __future__ import annotations

import re

# the manual's statements, in its order, with the command tag psql printed for each
CREATE_DISTHOSTS = [
    ("INSERT INTO disthosts (fqdn, jailroot) values('host-with-jails.on.domain', '/usr/jails');", "INSERT 0 1"),
    ("INSERT INTO disthosts (fqdn) values('host-without-jails.on.domain');", "INSERT 0 1"),
]
SELECT_DISTHOST = "SELECT * FROM disthosts WHERE fqdn = 'host-with-jails.on.domain';"
JAIL_STATEMENTS = [
    ("INSERT INTO jails (name, disthost) VALUES('my_service_jail', 19);", "INSERT 0 1"),
    ("DELETE FROM jails WHERE name = 'my_service_jail';", "DELETE 1"),
]
DELETE_DISTHOSTS = (
    "DELETE FROM disthosts WHERE fqdn in ('host-with-jails.on.domain', 'host-without-jails.on.domain');",
    "DELETE 2",
)

# the manual's disthost ids start at 19; a fresh database's sequence starts at 1
SET_SEQUENCE = "SELECT setval(pg_get_serial_sequence('pki.disthosts', 'id'), 18);"


def run_ok(psql, script: str, *args: str) -> str:
    result = psql(script, "-v", "ON_ERROR_STOP=1", *args)
    assert result.returncode == 0, f"psql failed ({result.returncode}): {result.stderr}"
    assert "ERROR" not in result.stderr, result.stderr
    return result.stdout


def test_psql_session_of_the_manual_runs_verbatim(psql, owner):
    owner.execute(SET_SEQUENCE)    # setup: the operator (psql, pki_operator) may use the sequence, not set it

    for statement, tag in CREATE_DISTHOSTS:
        assert run_ok(psql, statement).strip() == tag

    out = run_ok(psql, SELECT_DISTHOST)
    lines = out.rstrip("\n").split("\n")
    header, rule, row, footer = lines
    assert [c.strip() for c in header.split("|")] == ["id", "fqdn", "jailroot", "updated", "created", "remarks"]
    assert re.fullmatch(r"[-+]+", rule)
    cells = [c.strip() for c in row.split("|")]
    assert cells[:3] == ["19", "host-with-jails.on.domain", "/usr/jails"]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", cells[3]), cells[3]   # updated
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", cells[4]), cells[4]   # created
    assert cells[5] == ""                                                  # remarks
    assert footer == "(1 row)"
    # psql's aligned layout: the fixed-width columns line up as in the manual
    assert header.startswith(" id |           fqdn            |  jailroot  |")
    assert row.startswith(" 19 | host-with-jails.on.domain | /usr/jails |")

    for statement, tag in JAIL_STATEMENTS:
        assert run_ok(psql, statement).strip() == tag

    statement, tag = DELETE_DISTHOSTS
    assert run_ok(psql, statement).strip() == tag


def test_psql_session_as_one_script(psql, conn, owner):
    """The whole session pasted at once: every command tag in order, and the tables end empty."""
    owner.execute(SET_SEQUENCE)
    statements = [s for s, _ in CREATE_DISTHOSTS] + [SELECT_DISTHOST] + [s for s, _ in JAIL_STATEMENTS] + [DELETE_DISTHOSTS[0]]
    out = run_ok(psql, "\n".join(statements) + "\n")
    tags = [line for line in out.split("\n") if re.fullmatch(r"(INSERT 0 \d+|DELETE \d+)", line)]
    assert tags == ["INSERT 0 1", "INSERT 0 1", "INSERT 0 1", "DELETE 1", "DELETE 2"]
    assert " 19 | host-with-jails.on.domain | /usr/jails |" in out
    assert conn.execute("SELECT count(*) FROM pki.disthosts").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM pki.jails").fetchone()[0] == 0


def test_psql_uses_the_database_search_path(psql):
    """The manual types unqualified names; psql gets pki, dd from ALTER DATABASE, not from the client."""
    out = run_ok(psql, "SHOW search_path;", "-A", "-t")
    assert out.strip() == "pki, dd, public"
