"""The command lines' reports: the seed's grids (operate_serverPKI -n -v, -r N -n, -S -n), the check's
problems and warnings, `serverpki jobs` and `serverpki db status`, each as text for eyes and as JSON
for scripts (--json; docs/cli.md documents every schema).

The one place that knows the columns: a Report is one fetched result, and both renderings come
from it, so the grid and the JSON cannot disagree. prettytable's default style is exactly the grid
operation.txt shows; a JSON row holds the same cells under the column's snake_case name, typed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import repeat
from operator import methodcaller
from typing import Any, Optional

import psycopg

from .log import one_line
from .queries import q

# the grids' headers; each report query (queries.sql) selects exactly these columns (fetch checks)
META_COLUMNS = ["Subject", "Cert Name", "Type", "Algo", "OCSP m st", "authorized",
                "Alt Name", "TLSA", "Port", "Dist Host", "Jail", "Place"]
INSTANCE_COLUMNS = ["Serial", "Cert Name", "Type", "State", "CI CA", "OCSP m st",
                    "not before", "not after", "ALGO", "Hash", "updated"]
RENEW_COLUMNS = ["Subject", "Cert Name", "Type", "authorized", "Alt Name", "TLSA", "Port", "Dist Host", "Jail", "Place"]
PLAN_COLUMNS = ["Cert Name", "Serial", "Action", "Reason"]
PROBLEM_COLUMNS = ["Certificate", "Problem", "Hint"]
WARNING_COLUMNS = ["Certificate", "Warning", "Hint"]
JOB_COLUMNS = ["Id", "Kind", "State", "Certificate", "Instance", "Disthost", "Zone", "Attempts", "Max attempts",
               "Run after", "Locked by", "Locked until", "Reason", "Last error", "Updated"]
# free text the jobs grid shows cut to one short line (the JSON holds all of it)
JOB_SHORTENED = frozenset({"Reason", "Last error"})
SHORT_CELL = 60

# the schemas' names and versions (docs/cli.md); a version changes when a key goes or changes its meaning
CHECK_SCHEMA, PLAN_SCHEMA, RENEW_SCHEMA = "serverpki.check/1", "serverpki.plan/1", "serverpki.renew/1"
JOBS_SCHEMA, DB_STATUS_SCHEMA = "serverpki.jobs/1", "serverpki.db_status/1"


def json_key(header: str) -> str:
    """A grid's header as its JSON key: lower case, each run of other characters one '_' ("Cert Name": cert_name)."""
    return re.sub(r"[^a-z0-9]+", "_", header.lower()).strip("_")


def _utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None)


def cell(value: Any, shorten: bool = False) -> str:
    """A value as the grids show it: timestamps in UTC without zone, None as None, booleans as False/True (the seed's)."""
    if value.__class__ is str and not shorten:   # most cells: as they are (12 of them on each of 12,000 rows)
        return value
    text = str(_utc(value) if isinstance(value, dt.datetime) else value)
    if shorten:
        first = text.strip().split("\n", 1)[0]
        text = first if len(first) <= SHORT_CELL else first[:SHORT_CELL - 1] + "…"
    return text


def column_cells(values: Sequence[Any], shorten: bool = False) -> list[str]:
    """cell() of each value of one column, a column at a time (12 columns of 6,000 rows, each cell one
    Python call, were most of -n -v -a at 5,000 certificates): text as it is, everything else str() in one
    C pass; timestamps that are all in UTC (what a session in UTC loads) lose their '+00:00', which is _utc's
    text; other columns of timestamps go through cell()."""
    if shorten:
        return [cell(v, True) for v in values]
    kinds = set(map(type, values))
    if kinds <= {str}:
        return list(values)
    texts = list(map(str, values))
    if not any(issubclass(k, dt.datetime) for k in kinds):
        return texts
    if kinds == {dt.datetime} and all(map(methodcaller("endswith", "+00:00"), texts)):
        return [text[:-6] for text in texts]
    return [cell(v) for v in values]


def json_value(value: Any) -> Any:
    """A value as the JSON holds it: numbers, booleans, null, text; timestamps ISO 8601 in UTC ('...Z'), dates ISO."""
    if isinstance(value, dt.datetime):
        return _utc(value).isoformat() + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value


@dataclass(frozen=True)
class Report:
    """One fetched result with its grid's headers: rendered as the grid and as JSON rows."""

    columns: list[str]
    rows: list[tuple]
    shortened: frozenset[str] = frozenset()   # columns whose text the grid cuts to one short line

    def grid(self) -> str:
        # a column at a time (column_cells); the rows' tuples transposed by zip, in C
        texts = [column_cells(values, c in self.shortened)
                 for c, values in zip(self.columns, zip(*self.rows) if self.rows else [()] * len(self.columns))]
        if _narrow("".join(self.columns) + "".join(map("".join, texts))):   # every cell: a property of each character
            return _narrow_grid(self.columns, texts)
        from prettytable import PrettyTable   # only when a grid is printed (-n -v, -S -n): -n alone prints none

        table = PrettyTable(self.columns)
        for row in zip(*texts):
            table.add_row(list(row))
        return table.get_string()

    def records(self) -> list[dict[str, Any]]:
        keys = [json_key(c) for c in self.columns]
        return [{k: json_value(v) for k, v in zip(keys, row)} for row in self.rows]


def _narrow(text: str) -> bool:
    """One line of characters one column wide each (printable ASCII, and the ellipsis of a shortened cell)."""
    return text.isprintable() and (text.isascii() or text.replace("…", "").isascii())


def _narrow_grid(columns: list[str], texts: list[list[str]]) -> str:
    """prettytable's default grid, drawn directly: the same text (tests/test_reports.py compares them),
    8 times faster, which is most of -n -v -a at 5,000 certificates. Cells of one line whose width is
    their length only; others go through prettytable (wide characters, line breaks). texts: the cells
    of each column; each is centred a column at a time and each line put together by one format (C loops)."""
    widths = [max(len(name), max(map(len, column), default=0)) for name, column in zip(columns, texts)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    line = ("| " + " | ".join(["{}"] * len(columns)) + " |").format
    centred = [map(str.center, column, repeat(w)) for column, w in zip(texts, widths)]
    header = line(*map(str.center, columns, widths))
    return "\n".join([rule, header, rule, *map(line, *centred), rule])


def fetch(conn: psycopg.Connection, columns: list[str], name: str, params: dict,
          shortened: frozenset[str] = frozenset()) -> Report:
    """The rows of a report query (queries.sql), which selects exactly these columns in this order
    (under the grid's header or its JSON key)."""
    cur = conn.execute(q(name), params)
    selected = [json_key(d.name) for d in cur.description or ()]
    if selected != [json_key(c) for c in columns]:  # the query and the header drifted apart: a bug, not the operator's
        raise AssertionError(f"query {name} selects {selected}, the grid shows {columns}")
    return Report(columns, cur.fetchall(), shortened)


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


# --- operate_serverPKI -n: the check, and the listing the other options ask for -----------------------------

def meta(conn: psycopg.Connection, only: list[str]) -> Report:
    return fetch(conn, META_COLUMNS, "report_meta", {"only": only})


def instances(conn: psycopg.Connection, only: list[str], as_text: bool = False) -> Report:
    """The instances; as_text: for the grid only, its timestamps already the grid's text (pki.grid_time)."""
    return fetch(conn, INSTANCE_COLUMNS, "report_instances_grid" if as_text else "report_instances", {"only": only})


def renew(conn: psycopg.Connection, sel_params: dict, remaining_days: int, distribute: bool = False) -> Report:
    """The local certificates that -C -r N (with distribute: -D -r N) would act on: renewal_candidates,
    the one function request_create and request_distribute decide with."""
    return fetch(conn, RENEW_COLUMNS, "report_renew", {**sel_params, "remaining": remaining_days, "distribute": distribute})


def plan(conn: psycopg.Connection, sel_params: dict) -> Report:
    return fetch(conn, PLAN_COLUMNS, "report_plan", sel_params)


def renew_table(conn: psycopg.Connection, sel_params: dict, remaining_days: int, distribute: bool = False) -> str:
    return renew(conn, sel_params, remaining_days, distribute).grid()


@dataclass
class Check:
    """What -n found for the selection, and the listing its options ask for (-S: the plan; -r N: the renewals;
    -v: the certificates and their instances), fetched once for the text and the JSON alike."""

    schema: str
    problems: Report
    warnings: Report
    listings: dict[str, Report] = field(default_factory=dict)   # JSON key -> grid, in the text's order
    facts: dict[str, Any] = field(default_factory=dict)         # the JSON's other keys (-r N: its N)
    counts: Optional[tuple[int, list[str]]] = None              # -v: certificates, the CAs' names

    @property
    def sound(self) -> bool:
        """No problem (warnings do not count): exit status 0, else 4."""
        return not self.problems.rows

    def text(self) -> str:
        lines = []
        if self.counts is not None:
            lines.append(f"[{self.counts[0]} certificates and CAs {self.counts[1] or []} in DB]")
        # one line each: what, the problem, the fix (names cannot break the line: one_line)
        lines += [one_line(f"{obj}: {problem}; fix: {hint}") for obj, problem, hint in self.problems.rows]
        if self.sound:
            lines.append("No syntax errors found in configuration." if self.counts is None
                         else "[No syntax errors found in configuration.]")
        # warnings do not change the exit status: what will hurt, not what is wrong
        lines += [one_line(f"warning: {obj}: {warning}; fix: {hint}") for obj, warning, hint in self.warnings.rows]
        if self.listings:
            lines.append("\n\n".join(report.grid() for report in self.listings.values()))
        return "\n".join(lines)

    def json(self) -> str:
        return to_json({"schema": self.schema, **self.facts, "problems": self.problems.records(),
                        "warnings": self.warnings.records(),
                        **{key: report.records() for key, report in self.listings.items()}})


def check(conn: psycopg.Connection, sel_params: dict, *, verbose: bool, only: list[str], schedule: bool,
          remaining: Optional[int], distribute: bool, for_json: bool = False) -> Check:
    """-n of the selected certificates (every one without -o/-e): the problems and warnings, then with -S the
    plan, else with -r N the renewals (-D -r N: what -D -r N would distribute), else with -v the two seed grids.
    Without for_json, for text() only: the instance grid's timestamps come as the grid's text."""
    found = Check(CHECK_SCHEMA, fetch(conn, PROBLEM_COLUMNS, "check_config", sel_params),
                  fetch(conn, WARNING_COLUMNS, "check_warnings", sel_params))
    if verbose:
        n, cas = conn.execute(q("certificate_counts")).fetchone()
        found.counts = (n, cas or [])
    if schedule:
        found.schema, found.listings = PLAN_SCHEMA, {"plan": plan(conn, sel_params)}
    elif remaining is not None:
        found.schema, found.listings = RENEW_SCHEMA, {"renew": renew(conn, sel_params, remaining, distribute)}
        found.facts = {"remaining_days": remaining, "distribute": distribute}
    elif verbose:
        found.listings = {"certificates": meta(conn, only), "instances": instances(conn, only, as_text=not for_json)}
    return found


# --- serverpki jobs ------------------------------------------------------------------------------------------

def jobs(conn: psycopg.Connection, states: list[str], kinds: list[str], certificate: Optional[str],
         limit: Optional[int]) -> Report:
    """The queue's jobs (pki.jobs_overview), newest first, of these states and kinds (none: all) and certificate."""
    return fetch(conn, JOB_COLUMNS, "jobs_listing",
                 {"states": states, "kinds": kinds, "certificate": certificate, "limit": limit}, JOB_SHORTENED)


def jobs_json(report: Report) -> str:
    return to_json({"schema": JOBS_SCHEMA, "jobs": report.records()})


# --- serverpki db status -------------------------------------------------------------------------------------

def db_status_text(st) -> str:
    """migrate.Status for eyes: applied, pending, unknown ones, whether keys are encrypted."""
    lines = [f"applied: {', '.join(st.applied) or 'none'}", f"pending: {', '.join(st.pending) or 'none'}"]
    if st.newer:
        lines.append(f"unknown to this release: {', '.join(st.newer)}")
    if st.keys_encrypted is not None:
        lines.append(f"keys encrypted: {'yes' if st.keys_encrypted else 'no'}")
    return "\n".join(lines)


def db_status_json(st) -> str:
    """migrate.Status for scripts; problem is what the agent and operate_serverPKI would refuse (exit status 3)."""
    return to_json({"schema": DB_STATUS_SCHEMA, "applied": st.applied, "pending": st.pending, "unknown": st.newer,
                    "keys_encrypted": st.keys_encrypted, "compatible": st.problem is None,
                    "problem": None if st.problem is None else str(st.problem)})
