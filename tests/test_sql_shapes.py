"""SQL shapes that have one named definition (issue 14): none is written out again.

Each shape is a regex over db/**/*.sql (the job keys also over the agent's Python and
queries.sql); it may match only in the file that defines the name (its allow-list).
The named functions that exist to be inlined are checked to be inlined by the planner.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import inlined_by_the_planner, owner_conn

DB_SQL = ("db/**/*.sql",)
DB_AND_AGENT = ("db/**/*.sql", "agent/serverpki/**/*.py", "agent/serverpki/queries.sql")


@dataclass(frozen=True)
class Shape:
    name: str          # what to use instead
    pattern: str       # the shape written out
    defined_in: frozenset[str]
    where: tuple[str, ...] = DB_SQL


SHAPES = [
    Shape("pki.dane_safe_after(published, ttl)",
          r"\b2(?:::float8)?\s*(?:\*|OPERATOR\(pg_catalog\.\*\))\s*[\w.]*ttl\b|\b[\w.]*ttl\s*(?:\*|OPERATOR\(pg_catalog\.\*\))\s*2\b",
          frozenset({"db/functions/030_clock_settings.sql"})),
    Shape("pki.dane_ok(has_active, ttl, succ_state, published, at)",
          r"'prepublished'(?:::dd\.cert_state)?\s+AND\s+[\w.()]+\s*(?:>=|OPERATOR\(pg_catalog\.>=\))",
          frozenset({"db/functions/030_clock_settings.sql"})),
    # an action of the scheduler alone: actions are decided together with their reasons, {action, reason}
    Shape("one CASE of {action, reason} pairs (plan_rows, ca_plan_rows)", r"\b(?:THEN|ELSE)\s+'wait'",
          frozenset()),
    # NOT OLD.isaltname / NEW.isaltname test the row of a trigger, not which subject is the main one
    Shape("pki.main_subjects", r"\bNOT\s+(?!(?:OLD|NEW)\.)(?:\w+\.)?isaltname\b",
          frozenset({"db/views/005_main_subjects.sql",
                     "db/schema/0001_core.sql"})),   # the partial unique index the view relies on (frozen DDL)
    Shape("pki.cert_subject_key(cert)", r"""['"]cert:""",
          frozenset({"db/functions/045_job_subject_keys.sql"}), DB_AND_AGENT),
    Shape("pki.tlsa_subject_key(cert)", r"""['"]tlsa:cert:""",
          frozenset({"db/functions/045_job_subject_keys.sql"}), DB_AND_AGENT),
    Shape("pki.distribution_subject_key(instance, disthost)", r"""['"]inst:""",
          frozenset({"db/functions/045_job_subject_keys.sql"}), DB_AND_AGENT),
    Shape("pki.keys_subject_key()", r"""(?:subject_key\s*=\s*|enqueue\(\s*[^,()]+,\s*|SELECT\s+)['"]keys['"]""",
          frozenset({"db/functions/045_job_subject_keys.sql"}), DB_AND_AGENT),
    Shape("pki.acme_account_subject_key(directory_url)", r"""['"]acme-account:""",
          frozenset({"db/functions/045_job_subject_keys.sql"}), DB_AND_AGENT),
    Shape("pki.reminder_subject_key(txid)", r"""['"]reminder:""",
          frozenset({"db/functions/045_job_subject_keys.sql"}), DB_AND_AGENT),
    Shape("pki.refuse_in_use(what, certs, hint)", r"raise_error\(\s*'SP010'",
          frozenset({"db/functions/020_validation.sql"})),
    Shape("pki.current_revision() / pki.keys_encrypted()",
          r"\bFROM\s+(?:pki\.)?revision\b(?:\s+\w+)?\s+ORDER\s+BY|max\(\s*(?:\w+\.)?id\s*\)\s+FROM\s+(?:pki\.)?revision\b",
          frozenset({"db/functions/100_keys_and_ca.sql"})),
]

# the functions named above that exist to be inlined (no SET clause; the comments at their definitions say why)
INLINED = (
    "pki.dane_safe_after(timestamptz, interval)",
    "pki.dane_ok(boolean, interval, dd.cert_state, timestamptz, timestamptz)",
    "pki.cert_subject_key(int)", "pki.tlsa_subject_key(int)", "pki.distribution_subject_key(int, int)",
    "pki.keys_subject_key()", "pki.acme_account_subject_key(text)", "pki.reminder_subject_key(bigint)",
    "pki.plan(dd.selection)",   # its caller reads plan_rows' rows as they are, not a copy (070_scheduler)
)


def files(repo_root: Path, globs: tuple[str, ...]) -> list[Path]:
    return sorted({f for g in globs for f in repo_root.glob(g) if f.is_file()})


def written_out(repo_root: Path, shape: Shape) -> dict[str, list[int]]:
    """file (relative) -> the line numbers where the shape is written out."""
    pattern = re.compile(shape.pattern, re.IGNORECASE)
    found: dict[str, list[int]] = {}
    for f in files(repo_root, shape.where):
        text = f.read_text()
        lines = [text.count("\n", 0, m.start()) + 1 for m in pattern.finditer(text)]
        if lines:
            found[f.relative_to(repo_root).as_posix()] = lines
    return found


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_the_shape_is_written_out_only_where_it_is_named(repo_root, shape):
    found = written_out(repo_root, shape)
    extra = {f: lines for f, lines in found.items() if f not in shape.defined_in}
    assert not extra, f"use {shape.name} instead of writing it out: " + \
        "; ".join(f"{f} line(s) {', '.join(map(str, lines))}" for f, lines in sorted(extra.items()))
    # the definition itself is found (the regex is not stale)
    assert all(f in found for f in shape.defined_in), (shape.name, sorted(found))


@pytest.mark.parametrize("signature", INLINED)
def test_the_named_functions_are_inlined(conn, signature):
    """No SET clause, not SECURITY DEFINER, plain SQL: the planner puts the body into the calling query,
    so a per-row call costs nothing and subject_key = cert_subject_key(...) stays an index condition."""
    assert inlined_by_the_planner(owner_conn(conn), signature)


def test_a_function_with_a_set_clause_is_not_inlined(conn):
    """The probe above can tell: the same body with SET search_path is a call of its own."""
    owner = owner_conn(conn)
    owner.execute("CREATE FUNCTION pki.pinned_probe(cert int) RETURNS text LANGUAGE sql IMMUTABLE "
                  "SET search_path = pki, dd, pg_temp AS $$ SELECT 'probe:' || cert::text $$")
    try:
        assert not inlined_by_the_planner(owner, "pki.pinned_probe(int)")
    finally:
        owner.execute("DROP FUNCTION pki.pinned_probe(int)")


def test_the_job_keys_keep_their_formats(conn):
    """The names, not the formats, changed: jobs enqueued before an upgrade are found by their keys."""
    owner = owner_conn(conn)
    assert owner.execute(
        "SELECT pki.cert_subject_key(7), pki.tlsa_subject_key(7), pki.distribution_subject_key(3, 5), pki.keys_subject_key(), "
        "pki.acme_account_subject_key(NULL), pki.acme_account_subject_key('https://ca.example/dir'), "
        "pki.reminder_subject_key(42)").fetchone() == (
        "cert:7", "tlsa:cert:7", "inst:3/host:5", "keys",
        "acme-account:(configured)", "acme-account:https://ca.example/dir", "reminder:42")


def test_the_dane_safe_wait_is_twice_the_ttl(conn):
    owner = owner_conn(conn)
    assert owner.execute("SELECT pki.dane_safe_after('2027-01-01 00:00+00', interval '1 hour') = '2027-01-01 02:00+00'").fetchone()[0]
    ok = lambda *args: owner.execute("SELECT pki.dane_ok(%s, %s::interval, %s::dd.cert_state, %s::timestamptz, %s::timestamptz)",
                                     args).fetchone()[0]
    at = "2027-01-01 02:00+00"
    assert ok(False, "1 hour", "issued", None, at)                        # nothing to roll over from
    assert ok(True, None, "issued", None, at)                             # no TLSA service
    assert ok(True, "1 hour", "prepublished", "2027-01-01 00:00+00", at)  # published 2 x TTL ago
    assert not ok(True, "1 hour", "prepublished", "2027-01-01 00:01+00", at)
    assert not ok(True, "1 hour", "issued", "2027-01-01 00:00+00", at)   # not prepublished
