"""The grids of operate_serverPKI -n -v, -r N -n and -S -n (agent/serverpki/reports.py): drawn
directly when every cell is one line of one-column characters, through prettytable otherwise; both
ways give prettytable's default grid, the one the seed's operation manual shows."""

from __future__ import annotations

import datetime as dt
import string
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prettytable import PrettyTable

from serverpki.reports import Report, cell, column_cells

NARROW = st.text(alphabet=string.printable.strip("\t\n\r\x0b\x0c") + "…", max_size=14)
WIDE = st.text(alphabet="ab c漢字éü\n…", max_size=6)
QUIET = settings(database=None, derandomize=True, deadline=None, max_examples=300)


def prettytable_grid(columns: list[str], rows: list[list[str]]) -> str:
    table = PrettyTable(columns)
    for row in rows:
        table.add_row(row)
    return table.get_string()


def tables(cells):
    return st.integers(1, 6).flatmap(lambda n: st.tuples(
        st.lists(st.text(alphabet=string.ascii_letters + "-_ ", min_size=1, max_size=9), min_size=n, max_size=n, unique=True),
        st.lists(st.lists(cells, min_size=n, max_size=n), max_size=6)))


@QUIET
@given(tables(NARROW))
def test_the_direct_grid_is_prettytables(table):
    columns, rows = table
    assert Report(columns, [tuple(r) for r in rows]).grid() == prettytable_grid(columns, rows)


@QUIET
@given(tables(WIDE))
def test_wide_characters_and_line_breaks_go_through_prettytable(table):
    columns, rows = table
    assert Report(columns, [tuple(r) for r in rows]).grid() == prettytable_grid(columns, rows)


def test_a_seed_grid():
    grid = Report(["Subj-ID", "Subject"], [(1, "server"), (22, None)]).grid()
    assert grid == ("+---------+---------+\n"
                    "| Subj-ID | Subject |\n"
                    "+---------+---------+\n"
                    "|    1    |  server |\n"
                    "|    22   |   None  |\n"
                    "+---------+---------+")


UTC_ZONES = st.sampled_from([dt.timezone.utc, ZoneInfo("Etc/UTC"), ZoneInfo("Europe/Berlin"),
                             dt.timezone(dt.timedelta(hours=-5)), None])
TIMESTAMPS = st.builds(lambda t, zone: t.replace(tzinfo=zone),
                       st.datetimes(min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2100, 1, 1)), UTC_ZONES)
VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.dates(), TIMESTAMPS)


@QUIET
@given(st.lists(VALUES, max_size=8), st.booleans())
def test_a_column_at_a_time_is_each_cell(values, shorten):
    """column_cells (the grids' way) gives each value's cell(): text, None, numbers, dates, timestamps in
    UTC (the fast way) and in other zones or none (through cell), mixed in one column or not."""
    assert column_cells(values, shorten) == [cell(v, shorten) for v in values]


@QUIET
@given(st.lists(TIMESTAMPS, max_size=8))
def test_a_column_of_timestamps_is_each_cell(values):
    assert column_cells(values) == [cell(v) for v in values]


def test_a_grid_of_typed_cells():
    """The seed's instance grid: timestamps in UTC without their zone, None, booleans."""
    at = dt.datetime(2026, 12, 6, 22, 35, 45, 120000, tzinfo=dt.timezone.utc)
    grid = Report(["Serial", "CI CA", "OCSP m st", "updated"], [(1, None, False, at), (22, 3, True, at.replace(microsecond=0))]).grid()
    assert grid == ("+--------+-------+-----------+----------------------------+\n"
                    "| Serial | CI CA | OCSP m st |          updated           |\n"
                    "+--------+-------+-----------+----------------------------+\n"
                    "|   1    |  None |   False   | 2026-12-06 22:35:45.120000 |\n"
                    "|   22   |   3   |    True   |    2026-12-06 22:35:45     |\n"
                    "+--------+-------+-----------+----------------------------+")


def test_an_empty_grid():
    assert Report(["A", "Bc"], []).grid() == prettytable_grid(["A", "Bc"], [])


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/St_Johns"])
def test_the_servers_grid_time_is_the_cell_of_the_timestamp(conn, zone):
    """pki.grid_time (the instance grid of -n -v, made by the server) prints a timestamp as cell() does,
    whatever the session's time zone: UTC, no zone, microseconds only when it has some."""
    conn.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
    at = dt.datetime(2026, 3, 29, 0, 59, 59, tzinfo=dt.timezone.utc)
    for value in (at, at.replace(microsecond=1), at.replace(microsecond=500000), at.replace(microsecond=999999),
                  at.replace(year=1999, month=12, day=31, hour=23), at.astimezone(ZoneInfo("Asia/Kolkata")), None):
        shown = conn.execute("SELECT pki.grid_time(%s)", (value,)).fetchone()[0]
        assert column_cells([shown]) == [cell(value)], (zone, value)
