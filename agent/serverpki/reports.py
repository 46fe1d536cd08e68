"""The seed's report tables (operate_serverPKI -n -v, -r N -n, -S -n) as ASCII grids.

prettytable's default style is exactly the grid operation.txt shows.
"""

from __future__ import annotations

import datetime as dt

import psycopg
from prettytable import PrettyTable

from .queries import q

# the grids' headers; the report queries (queries.sql) select exactly these columns (_report checks)
META_COLUMNS = ["Subject", "Cert Name", "Type", "Algo", "OCSP m st", "authorized",
                "Alt Name", "TLSA", "Port", "Dist Host", "Jail", "Place"]
INSTANCE_COLUMNS = ["Serial", "Cert Name", "Type", "State", "CI CA", "OCSP m st",
                    "not before", "not after", "ALGO", "Hash", "updated"]
RENEW_COLUMNS = ["Subject", "Cert Name", "Type", "authorized", "Alt Name", "TLSA", "Port", "Dist Host", "Jail", "Place"]
PLAN_COLUMNS = ["Cert Name", "Serial", "Action", "Reason"]


def _cell(value) -> str:
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return str(value)  # None prints as None, booleans as False/True, as in the seed


def grid(columns: list[str], rows) -> str:
    table = PrettyTable(columns)
    for row in rows:
        table.add_row([_cell(v) for v in row])
    return table.get_string()


def _report(conn: psycopg.Connection, columns: list[str], name: str, params: dict) -> str:
    """The grid of a report query (queries.sql), which selects exactly these columns in this order."""
    cur = conn.execute(q(name), params)
    selected = [d.name for d in cur.description or ()]
    if selected != columns:  # the query and the seed's header drifted apart: a bug, not the operator's
        raise AssertionError(f"query {name} selects {selected}, the grid shows {columns}")
    return grid(columns, cur.fetchall())


def meta_table(conn: psycopg.Connection, only: list[str]) -> str:
    return _report(conn, META_COLUMNS, "report_meta", {"only": only})


def instance_table(conn: psycopg.Connection, only: list[str]) -> str:
    return _report(conn, INSTANCE_COLUMNS, "report_instances", {"only": only})


def renew_table(conn: psycopg.Connection, sel_params: dict, remaining_days: int, distribute: bool = False) -> str:
    """The local certificates that -C -r N (with distribute: -D -r N) would act on: renewal_candidates,
    the one function request_create and request_distribute decide with."""
    return _report(conn, RENEW_COLUMNS, "report_renew",
                   {**sel_params, "remaining": remaining_days, "distribute": distribute})


def plan_table(conn: psycopg.Connection, sel_params: dict) -> str:
    return _report(conn, PLAN_COLUMNS, "report_plan", sel_params)
