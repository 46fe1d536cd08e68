"""psql documents our objects: each function and view of schema pki carries, as its COMMENT, the
comment written above its CREATE in db/ (the installer copies it, migrate.descriptions)."""

from __future__ import annotations

from helpers import owner_conn
from serverpki import migrate


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
