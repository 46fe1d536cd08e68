"""psql documents our objects: each function and view of schema pki carries, as its COMMENT, the
comment written above its CREATE in db/ (the installer copies it, migrate.descriptions); each table
and column of pki and dd the comment of the migrations or its line in db/descriptions.md
(schema_comments), kept in step by the tests below."""

from __future__ import annotations

import pytest

from helpers import owner_conn
from serverpki import migrate, schema_comments


def test_every_function_and_view_has_the_description_written_above_it(conn):
    owner = owner_conn(conn)
    undescribed = owner.execute("""
        SELECT p.oid::regprocedure::text FROM pg_proc p
         WHERE p.pronamespace = 'pki'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL
        UNION ALL
        SELECT c.oid::regclass::text FROM pg_class c
         WHERE c.relnamespace = 'pki'::regnamespace AND c.relkind = 'v' AND obj_description(c.oid, 'pg_class') IS NULL
         ORDER BY 1""").fetchall()
    assert undescribed == [], "write a comment right above their CREATE in db/: " + ", ".join(r[0] for r in undescribed)
    # the text is the file's, the leading "name:" taken off
    written = {(kind, name): text for f in migrate.repeatable_files() for kind, name, text in migrate.descriptions(f.read_text())}
    stored = owner.execute("SELECT obj_description('pki.add_cert'::regproc, 'pg_proc')").fetchone()[0]
    assert stored == written["FUNCTION", "add_cert"]
    assert stored.startswith("a certificate with its subject, optional alt name, TLSA service and target")


def test_psql_df_plus_shows_the_description(psql):
    """What an operator types: \\df+ add_cert and \\dv+ expiring, as pki_operator."""
    done = psql("\\df+ add_cert\n\\dv+ expiring\n")
    assert done.returncode == 0, done.stderr
    assert "a certificate with its subject, optional alt name, TLSA service and target" in done.stdout
    assert "expiring" in done.stdout and "Description" in done.stdout


def test_descriptions_take_off_the_leading_name():
    sql = ("-- a / current_revision / b: the newest row\nCREATE OR REPLACE FUNCTION pki.current_revision()\n"
           "-- certs: one row per certificate\nCREATE VIEW pki.certs AS SELECT 1;\n"
           "\n-- not right above\n\nCREATE VIEW pki.lonely AS SELECT 1;\n")
    assert migrate.descriptions(sql) == [("FUNCTION", "current_revision", "the newest row"),
                                         ("VIEW", "certs", "one row per certificate")]


# --- tables and columns: the comments of the migrations, and db/descriptions.md -------------------------

def test_every_table_and_column_has_a_description(conn):
    """After an install, \\dt+ and \\d+ describe every table and column of pki and dd."""
    owner = owner_conn(conn)
    undescribed = owner.execute("""
        SELECT c.oid::regclass::text || coalesce('.' || a.attname, '') FROM pg_class c
          LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relnamespace IN ('pki'::regnamespace, 'dd'::regnamespace) AND c.relkind IN ('r', 'p')
           AND coalesce(col_description(c.oid, a.attnum), obj_description(c.oid, 'pg_class'), '') = ''
        UNION ALL
        SELECT c.oid::regclass::text FROM pg_class c
         WHERE c.relnamespace IN ('pki'::regnamespace, 'dd'::regnamespace) AND c.relkind IN ('r', 'p')
           AND coalesce(obj_description(c.oid, 'pg_class'), '') = ''
         ORDER BY 1""").fetchall()
    assert undescribed == [], "describe them (db/descriptions.md): " + ", ".join(r[0] for r in undescribed)
    assert schema_comments.undescribed(schema_comments.schema_descriptions(
        [f.read_text() for f in migrate.versioned_files()],
        (migrate.sql_root() / schema_comments.DESCRIPTIONS_FILE).read_text())) is None


def test_the_description_comes_from_where_it_is_written(conn):
    """A column's trailing comment, a block above an ADD COLUMN, the standard line of db/descriptions.md,
    a table's block above its CREATE TABLE, an enum's labels."""
    owner = owner_conn(conn)
    col = "SELECT col_description(%s::regclass, (SELECT attnum FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s))"
    assert owner.execute(col, ("pki.certkeydata",) * 2 + ("hash",)).fetchone()[0] == \
        "SHA-256 of the DER certificate, upper-case hex (TLSA 3 0 1)"
    assert owner.execute(col, ("pki.certinstances",) * 2 + ("tlsa_published",)).fetchone()[0].startswith(
        "when the TLSA records of an instance were first seen in DNS")
    assert owner.execute(col, ("pki.runs",) * 2 + ("created",)).fetchone()[0].startswith("when the row was inserted")
    assert owner.execute("SELECT obj_description('pki.runs'::regclass, 'pg_class')").fetchone()[0] == \
        "every operate_serverPKI run that acted (not -n), with how it ended"
    assert "prepublished: TLSA records of this (successor) instance are in DNS" in \
        owner.execute("SELECT obj_description('dd.cert_state'::regtype, 'pg_type')").fetchone()[0]


def test_psql_d_plus_shows_column_descriptions(psql):
    """What an operator types: \\d+ pki.certificates and \\dt+ as pki_operator."""
    done = psql("\\d+ pki.certificates\n\\dt+ pki.targets\n")
    assert done.returncode == 0, done.stderr
    assert "Description" in done.stdout
    assert "who issues it: LE (an ACME CA) or local (the local CA)" in done.stdout
    assert "LE: when the ACME authorizations expire; local: when the reminder was mailed" in done.stdout
    assert "where a certificate is deployed" in done.stdout


MIGRATIONS = [
    """-- 0001_x: the first migration
-- things: what we keep
CREATE TABLE pki.things (
    id          serial PRIMARY KEY,
    name        text NOT NULL,      -- the thing's name; '--' in a literal: 'a--b'
    -- how many, never negative
    amount      int4 NOT NULL DEFAULT 0
                    CHECK (amount >= 0),   -- a continuation line is no column
    gone        boolean,
    created     dd.created,
    CONSTRAINT things_name_unique UNIQUE (name)
);

CREATE TABLE pki.bare (
    id          serial PRIMARY KEY
);
""",
    """-- 0002_y: later changes

-- when it was counted
ALTER TABLE pki.things ADD COLUMN counted timestamptz;
ALTER TABLE pki.things
    -- the colour it has
    ADD COLUMN colour text,
    ADD COLUMN size int4,           -- in metres
    ADD CONSTRAINT things_size CHECK (size > 0),
    DROP COLUMN gone;
ALTER TABLE pki.things RENAME COLUMN amount TO how_many;

-- what state a thing is in
CREATE TYPE dd.thing_state AS ENUM (
    'new',      -- just made
    'old'
);
"""]


def test_migrations_are_read_in_order_and_later_ones_win():
    found = schema_comments.schema_descriptions(MIGRATIONS)
    assert found["TABLE", "pki.things"] == "what we keep"
    assert found["COLUMN", "pki.things.name"] == "the thing's name; '--' in a literal: 'a--b'"
    assert found["COLUMN", "pki.things.how_many"] == "how many, never negative"
    assert ("COLUMN", "pki.things.amount") not in found and ("COLUMN", "pki.things.gone") not in found
    assert found["COLUMN", "pki.things.counted"] == "when it was counted"
    assert found["COLUMN", "pki.things.colour"] == "the colour it has"
    assert found["COLUMN", "pki.things.size"] == "in metres"
    assert found["COLUMN", "pki.things.id"] is None and found["COLUMN", "pki.things.created"] is None
    assert ("COLUMN", "pki.things.things_size") not in found and ("COLUMN", "pki.things.CONSTRAINT") not in found
    assert found["TYPE", "dd.thing_state"] == "what state a thing is in\nnew: just made\nold"


def test_a_table_without_a_comment_fails_the_check_naming_it():
    message = schema_comments.undescribed(schema_comments.schema_descriptions(MIGRATIONS))
    assert message is not None
    assert "pki.bare (table)" in message and "pki.bare.id (column)" in message and "pki.things.id (column)" in message
    assert "pki.things (table)" not in message and "pki.things.name" not in message
    assert "db/descriptions.md" in message


def test_descriptions_file_fills_the_gaps_and_wins():
    extra = """# prose
- `*.id`: the row's number
- `*.created`: when
- `pki.bare`: a table
  that says little
- `pki.things.size`: its size in metres
"""
    found = schema_comments.schema_descriptions(MIGRATIONS, extra)
    assert schema_comments.undescribed(found) is None
    assert found["TABLE", "pki.bare"] == "a table that says little"
    assert found["COLUMN", "pki.bare.id"] == found["COLUMN", "pki.things.id"] == "the row's number"
    assert found["COLUMN", "pki.things.size"] == "its size in metres"
    with pytest.raises(ValueError, match="pki.nothing"):
        schema_comments.schema_descriptions(MIGRATIONS, "- `pki.nothing`: a typo\n")
