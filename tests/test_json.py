"""--json for scripts (docs/cli.md): every JSON output of the command lines parses, matches the schema
docs/cli.md documents (parsed from the document, so the two cannot drift apart), and holds the same rows
and values as the table of the same command on the same database, compared cell by cell once the JSON's
values are formatted as the grid formats them.

The commands run as processes under the login roles that run them in production: operate_serverPKI as
the cron run's pki_cron, `serverpki jobs` as the monitoring login pki_reader and the operator pki_operator,
`serverpki db status` as pki_operator.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from commands import OPERATE, SERVERPKI, environment, one_warning, run
from helpers import small_cli_world
from lab import roles
from serverpki import reports
from serverpki.log import one_line

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

# --- the documented schemas ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    key: str
    type: str      # as documented: string, integer, boolean, timestamp, date, "literal", array of X; "or null"
    column: str    # a row's: the grid column it comes from; the top level's: when the key is present


def documented() -> dict[str, list[Field]]:
    """docs/cli.md's schema and row tables: each heading's first `name` -> the fields of the table under it."""
    tables: dict[str, list[Field]] = {}
    name = None
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            found = re.search(r"`([^`]+)`", line)
            name = found.group(1) if found else None
        elif name and line.startswith("| `"):
            key, kind, column = [c.strip() for c in line.strip().strip("|").split("|")][:3]
            tables.setdefault(name, []).append(Field(key.strip("`"), kind, column))
    return tables


SCHEMAS = documented()
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z\Z")
DATE = re.compile(r"\d{4}-\d\d-\d\d\Z")
SCALARS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "timestamp": lambda v: isinstance(v, str) and TIMESTAMP.match(v) is not None,
    "date": lambda v: isinstance(v, str) and DATE.match(v) is not None,
}


def violations(value, kind: str, where: str) -> list[str]:
    """What in value does not fit the documented type (empty: it fits)."""
    kind = kind.strip()
    if kind.endswith(" or null"):
        return [] if value is None else violations(value, kind[:-len(" or null")], where)
    if kind.startswith("`\"") or kind.startswith('"'):
        return [] if value == kind.strip('`"') else [f"{where}: {value!r} is not {kind}"]
    if kind.startswith("array of "):
        if not isinstance(value, list):
            return [f"{where}: {value!r} is no array"]
        return [v for i, item in enumerate(value) for v in violations(item, kind[len("array of "):], f"{where}[{i}]")]
    if kind.startswith("`"):   # a row documented in its own table
        return object_violations(value, kind.strip("`"), where)
    if kind not in SCALARS:
        raise AssertionError(f"docs/cli.md: {where} has the type {kind!r}, which the schema check does not know")
    return [] if SCALARS[kind](value) else [f"{where}: {value!r} is not a {kind}"]


def object_violations(value, name: str, where: str, present: set[str] | None = None) -> list[str]:
    """A row (every key) or a document (the keys marked always, and those present asks for) against its table."""
    if not isinstance(value, dict):
        return [f"{where}: {value!r} is no object"]
    fields = {f.key: f for f in SCHEMAS[name]}
    required = set(fields) if present is None else {k for k, f in fields.items() if f.column == "always"} | present
    errors = [f"{where}: key {k!r} is not documented" for k in value if k not in fields]
    errors += [f"{where}: key {k!r} is missing" for k in sorted(required - set(value))]
    return errors + [v for k, item in value.items() if k in fields for v in violations(item, fields[k].type, f"{where}.{k}")]


def conforming(stdout: str, schema: str, present: set[str] = frozenset()) -> dict:
    """The output parsed (all of stdout is one JSON document), checked against its documented schema."""
    document = json.loads(stdout)
    assert document.get("schema") == schema, document.get("schema")
    assert object_violations(document, schema, "$", set(present)) == []
    return document


def test_the_schema_check_finds_what_does_not_fit():
    """The check the tests below rely on: every schema is documented, and a document off it is caught."""
    assert {"serverpki.check/1", "serverpki.plan/1", "serverpki.renew/1", "serverpki.jobs/1",
            "serverpki.db_status/1", "problem", "warning", "certificate", "instance", "plan row", "renew row",
            "job"} <= set(SCHEMAS)
    good = {"schema": "serverpki.plan/1", "problems": [], "warnings": [],
            "plan": [{"cert_name": "a", "serial": None, "action": "issue", "reason": "r"}]}
    assert object_violations(good, "serverpki.plan/1", "$", set()) == []
    for broken in ({**good, "schema": "serverpki.plan/2"}, {**good, "extra": 1}, {k: v for k, v in good.items() if k != "plan"},
                   {**good, "plan": [{**good["plan"][0], "serial": "1"}]}, {**good, "plan": [{**good["plan"][0], "serial": True}]},
                   {**good, "plan": [{"cert_name": "a", "serial": None, "action": "issue"}]}, {**good, "plan": {}}):
        assert object_violations(broken, "serverpki.plan/1", "$", set()), broken
    row = {f.key: None for f in SCHEMAS["instance"]}
    assert violations("2026-12-06 14:10:50", "timestamp", "t") and not violations("2026-12-06T14:10:50.5Z", "timestamp", "t")
    assert violations("2026-12-06T14:10:50+01:00", "timestamp or null", "t") and violations(row, "`instance`", "i")


# --- the tables, and the JSON formatted as they format ------------------------------------------------------


def grids(text: str) -> list[list[list[str]]]:
    """Every prettytable grid in text, in order: each a list of rows of cells (the header first)."""
    found, current, rules = [], None, 0
    for line in text.splitlines():
        if line.startswith("+-"):
            if current is None:
                current, rules = [], 0
            rules += 1
            if rules == 3:   # top, under the header, bottom
                found.append(current)
                current = None
        elif current is not None and line.startswith("|"):
            current.append([c.strip() for c in line[1:-1].split("|")])
    return found


def decoded(value, kind: str):
    """A JSON value back in Python as the database gave it (timestamps aware, dates as dates)."""
    if value is None:
        return None
    kind = kind.removesuffix(" or null")
    if kind == "timestamp":
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if kind == "date":
        return dt.date.fromisoformat(value)
    return value


def assert_same_rows(grid: list[list[str]], rows: list[dict], row_type: str, shortened=frozenset()) -> None:
    """The grid and the JSON rows hold the same data: the grid's header is the documented columns, in the
    documented order, and each cell is the JSON's value formatted as the grid formats."""
    fields = SCHEMAS[row_type]
    assert grid[0] == [f.column for f in fields], (grid[0], [f.column for f in fields])
    assert len(grid) - 1 == len(rows), (len(grid) - 1, len(rows))
    assert rows, "nothing to compare: the test's world should give rows here"
    for cells, row in zip(grid[1:], rows):
        assert list(row) == [f.key for f in fields]
        assert cells == [reports.cell(decoded(row[f.key], f.type), f.column in shortened) for f in fields], (cells, row)


def check_lines(document: dict) -> list[str]:
    """The lines -n prints for the document's problems and warnings."""
    return [one_line(f"{p['certificate']}: {p['problem']}; fix: {p['hint']}") for p in document["problems"]] + \
        [one_line(f"warning: {w['certificate']}: {w['warning']}; fix: {w['hint']}") for w in document["warnings"]]


# --- the world: a local CA, certificates with instances, a problem, a failed job ----------------------------


@dataclass
class World:
    conn: psycopg.Connection   # the cron run's, for setting up
    env: dict[str, dict[str, str]]

    def operate(self, *args: str, status: int | None = None):
        done = run(OPERATE, *args, env=self.env[roles.CRON])
        if status is not None:
            assert done.returncode == status, (args, done.returncode, done.stdout, done.stderr)
        return done

    def serverpki(self, *args: str, role: str = roles.READER, status: int | None = 0):
        done = run(SERVERPKI, *args, env=self.env[role])
        if status is not None:
            assert done.returncode == status, (args, done.returncode, done.stdout, done.stderr)
        return done


def deploy(conn: psycopg.Connection, name: str) -> None:
    """Deploy a certificate's issued instance as its distribute job would (no SSH in this test)."""
    conn.execute("SELECT * FROM request_distribute(selection(only_certs => ARRAY[%s]))", (name,)).fetchall()
    job, token = conn.execute("SELECT id, lease_token FROM claim_jobs('t', ARRAY['distribute'], 1)").fetchone()
    conn.execute("SELECT complete_distribute(%s, %s)", (job, token))


@pytest.fixture(scope="module")
def world(pg_server, template_db, tmp_path_factory):
    """c1 deployed with an issued successor (the renewals list it), lonely without a target (a problem of -n),
    www.example.org with an alt name and a TLSA service (and a warning), c2's distribution failed (a job with
    its error)."""
    name = pg_server.new_database(template_db, "j_")
    try:
        with psycopg.connect(pg_server.dsn(name, roles.CRON), autocommit=True) as conn:
            folder = tmp_path_factory.mktemp("json")
            config = small_cli_world(conn, folder)
            (folder / "known_hosts").write_text("")
            with config.open("a") as f:
                f.write(f'[ssh]\nknown_hosts = "{folder / "known_hosts"}"\n')
            conn.execute("SELECT add_place('nginx', 'separate', '/etc/ssl')")
            conn.execute("SELECT * FROM add_cert('www.example.org', 'server', 'LE', 'ec', false, 'example.org', "
                         "'https', 443, 'web1.example.org', NULL, 'nginx')")
            conn.execute("SELECT * FROM add_cert('lonely', 'server', 'local', 'rsa', false, NULL, NULL, NULL, "
                         "NULL, NULL, NULL)")
            conn.execute("SELECT * FROM add_cert('c2', 'client', 'local', 'ec', false, NULL, NULL, NULL, "
                         "'web1.example.org', NULL, 'p')")
            env = {role: environment(pg_server, name, role, config) for role in (roles.CRON, roles.READER, roles.OPERATOR)}
            w = World(conn, env)
            w.operate("-I", status=0)
            w.operate("-C", "-o", "c1", "-o", "lonely", "-o", "c2", status=0)
            deploy(conn, "c1")
            w.operate("-C", "-o", "c1", status=0)    # c1's successor
            w.operate("-D", "-o", "c2", status=1)    # web1.example.org is nowhere: c2's distribute job failed
            with psycopg.connect(pg_server.dsn(name), autocommit=True) as owner:
                one_warning(owner, "www.example.org")
            yield w
    finally:
        pg_server.drop_database(name)


def text_and_json(world: World, *args: str, status: int) -> tuple[list[str], dict, str]:
    """operate_serverPKI args as text and with --json, each with this exit status: the text's lines, the JSON, its stdout."""
    text = world.operate(*args, status=status)
    as_json = world.operate(*args, "--json", status=status)
    assert as_json.stdout.startswith("{"), as_json.stdout[:200]
    return text.stdout.splitlines(), json.loads(as_json.stdout), as_json.stdout


def test_check_verbose_holds_the_problems_and_both_grids(world):
    lines, document, stdout = text_and_json(world, "-n", "-v", status=4)   # lonely has no target
    conforming(stdout, "serverpki.check/1", {"certificates", "instances"})
    assert [p["certificate"] for p in document["problems"]] == ["lonely"]
    assert [w["certificate"] for w in document["warnings"]] == ["www.example.org"]
    assert lines[0].startswith("[") and lines[1:1 + len(check_lines(document))] == check_lines(document)
    certificates, instances = grids("\n".join(lines))
    assert_same_rows(certificates, document["certificates"], "certificate")
    assert_same_rows(instances, document["instances"], "instance")
    assert any(r["port"] == 443 and r["alt_name"] == "example.org" for r in document["certificates"])
    assert {r["state"] for r in document["instances"]} >= {"deployed", "issued"}


def test_check_without_v_holds_the_problems_alone(world):
    lines, document, stdout = text_and_json(world, "-n", status=4)
    conforming(stdout, "serverpki.check/1")
    assert set(document) == {"schema", "problems", "warnings"}
    assert lines == check_lines(document) and document["problems"]


def test_json_stays_alone_on_stdout_while_logging(world, tmp_path):
    """Log lines go to stderr, so stdout is still the document alone (| jq works): a syslog that is not
    there makes the run log a warning."""
    config = Path(world.env[roles.CRON]["SERVERPKI_CONFIG"]).read_text()
    logging = tmp_path / "serverpki.toml"
    logging.write_text(config.replace('syslog_address = ""', f'syslog_address = "{tmp_path / "no-syslog"}"'))
    logging.chmod(0o600)
    quiet = world.operate("-n", "-v", "--json", status=4)
    logged = world.operate("-n", "-v", "-d", "--json", "-f", str(logging), status=4)
    assert "logging to stderr only" in logged.stderr, logged.stderr
    assert json.loads(logged.stdout) == json.loads(quiet.stdout)


def test_plan_holds_the_plans_rows(world):
    lines, document, stdout = text_and_json(world, "-S", "-n", "-a", status=4)
    conforming(stdout, "serverpki.plan/1")
    assert lines[:len(check_lines(document))] == check_lines(document)
    [plan] = grids("\n".join(lines))
    assert_same_rows(plan, document["plan"], "plan row")
    assert any(r["serial"] is None for r in document["plan"]) and any(r["serial"] for r in document["plan"])


@pytest.mark.parametrize("distribute", [False, True], ids=["-r", "-D -r"])
def test_renew_holds_the_renewals(world, distribute):
    args = ("-D",) * distribute + ("-r", "3650", "-n")
    lines, document, stdout = text_and_json(world, *args, status=4)
    conforming(stdout, "serverpki.renew/1")
    assert document["remaining_days"] == 3650 and document["distribute"] is distribute
    [renew] = grids("\n".join(lines))
    assert_same_rows(renew, document["renew"], "renew row")
    assert [r["cert_name"] for r in document["renew"]] == ["c1"]   # deployed, with an issued successor


@pytest.mark.parametrize("role", [roles.READER, roles.OPERATOR])
@pytest.mark.parametrize("options", [(), ("--state", "failed", "--kind", "distribute"), ("--certificate", "C1"),
                                     ("--limit", "2"), ("--state", "done", "--state", "failed", "--limit", "0")],
                         ids=["all", "state-kind", "certificate", "limit", "states"])
def test_jobs_as_the_monitoring_login_and_the_operator(world, role, options):
    text = world.serverpki("jobs", *options, role=role)
    as_json = world.serverpki("jobs", *options, "--json", role=role)
    document = conforming(as_json.stdout, "serverpki.jobs/1")
    [table] = grids(text.stdout)
    assert_same_rows(table, document["jobs"], "job", reports.JOB_SHORTENED)
    rows = document["jobs"]
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)   # newest first
    if "--state" in options and "--kind" in options:
        assert {(r["state"], r["kind"]) for r in rows} == {("failed", "distribute")}
        assert rows[0]["last_error"] and rows[0]["certificate"] == "c2"
    elif "--certificate" in options:
        assert {r["certificate"] for r in rows} == {"c1"} and len(rows) == 3   # two issues, one distribution
    elif options[:1] == ("--limit",):
        assert len(rows) == 2
    elif "--state" in options:
        assert {r["state"] for r in rows} == {"done", "failed"}


def test_db_status_holds_what_the_lines_say(world):
    text = world.serverpki("db", "status", role=roles.OPERATOR).stdout.splitlines()
    document = conforming(world.serverpki("db", "status", "--json", role=roles.OPERATOR).stdout,
                          "serverpki.db_status/1")
    assert text == [f"applied: {', '.join(document['applied'])}", "pending: none", "keys encrypted: no"]
    assert document["pending"] == document["unknown"] == [] and document["keys_encrypted"] is False
    assert document["compatible"] is True and document["problem"] is None


def test_db_status_of_an_incompatible_schema_prints_json_and_exits_3(pg_server, dbname, owner):
    owner.execute("INSERT INTO pki.schema_migrations (version) VALUES ('9999_from_a_newer_release')")
    done = run(SERVERPKI, "db", "status", "--json", env=environment(pg_server, dbname, roles.OPERATOR))
    assert done.returncode == 3, done.stderr
    document = conforming(done.stdout, "serverpki.db_status/1")
    assert document["unknown"] == ["9999_from_a_newer_release"] and document["compatible"] is False
    assert f"serverpki: {document['problem']}" == done.stderr.strip()
