"""The seed's report tables (operate_serverPKI -n -v, -r N -n, -S -n) as ASCII grids.

prettytable's default style is exactly the grid operation.txt shows.
"""

from __future__ import annotations

import datetime as dt

import psycopg
from prettytable import PrettyTable

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


def _names_filter(only: list[str]) -> tuple[str, list]:
    return ('WHERE "Cert Name" = ANY(%s::citext[])', [only]) if only else ("", [])


def meta_table(conn: psycopg.Connection, only: list[str]) -> str:
    where, params = _names_filter(only)
    cols = ", ".join(f'"{c}"' for c in META_COLUMNS)
    return grid(META_COLUMNS, conn.execute(f"SELECT {cols} FROM certs {where}", params))


def instance_table(conn: psycopg.Connection, only: list[str]) -> str:
    where, params = _names_filter(only)
    cols = ", ".join(f'"{c}"' for c in INSTANCE_COLUMNS)
    return grid(INSTANCE_COLUMNS, conn.execute(f"SELECT {cols} FROM inst {where}", params))


def renew_table(conn: psycopg.Connection, sel_sql: str, sel_params: dict, remaining_days: int,
                distribute: bool = False) -> str:
    """The local certificates that -C -r N (with distribute: -D -r N) would act on: renewal_candidates,
    the one function request_create and request_distribute decide with."""
    cols = ", ".join(f'm."{c}"' for c in RENEW_COLUMNS)
    rows = conn.execute(
        f"""SELECT {cols} FROM certs m
             WHERE m."Cert Name" IN (SELECT certificate FROM renewal_candidates({sel_sql}, %(remaining)s, %(distribute)s))""",
        {**sel_params, "remaining": remaining_days, "distribute": distribute}).fetchall()
    return grid(RENEW_COLUMNS, rows)


def plan_table(conn: psycopg.Connection, sel_sql: str, sel_params: dict) -> str:
    return grid(PLAN_COLUMNS, conn.execute(f"SELECT certificate, instance, action, reason FROM plan({sel_sql})", sel_params))
