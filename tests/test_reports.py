"""The grids of operate_serverPKI -n -v, -r N -n and -S -n (agent/serverpki/reports.py): drawn
directly when every cell is one line of one-column characters, through prettytable otherwise; both
ways give prettytable's default grid, the one the seed's operation manual shows."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st
from prettytable import PrettyTable

from serverpki.reports import Report

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
