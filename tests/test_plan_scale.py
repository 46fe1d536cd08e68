"""plan_rows as issue 18 reshaped it (facts once per row, no NOT IN over a CTE): what the old shape got
wrong with SQL's NULL, the plan gets right. bench/schedule.py measures its growth with the fleet's size."""

from __future__ import annotations

import datetime as dt

import psycopg

NOW = dt.datetime(2027, 6, 1, tzinfo=dt.timezone.utc)


def le_certificate_in_the_prepublish_window(owner, name: str) -> int:
    """An LE certificate whose one deployed instance expires in 25 days (within pre_publish_days), no successor."""
    owner.execute("SELECT * FROM pki.add_cert(%s, 'server', 'LE', 'ec', false, NULL, NULL, NULL, 'web1.example.org', NULL, 'p')",
                  (name,)).fetchall()
    cert = owner.execute("SELECT certificate FROM pki.subjects WHERE name = %s", (name,)).fetchone()[0]
    with owner.transaction():
        # the state machine admits new rows only as 'reserved' (reserve -> issue -> deploy): set the end state
        owner.execute("SET LOCAL session_replication_role = replica")
        owner.execute("""INSERT INTO pki.certinstances (certificate, state, not_before, not_after)
                         VALUES (%s, 'deployed', %s::timestamptz - interval '65 days', %s::timestamptz + interval '25 days')""",
                      (cert, NOW, NOW))
    return cert


def test_a_finished_deploy_request_leaves_rule_9_of_the_other_certificates_alone(owner, conn):
    """-D marks its publish_tlsa job 'deploy: <successor>'; the job stays (done) after it ran. The old
    `succ.id IN (SELECT requested ...)` was NULL, not false, for a certificate without successor while
    any such job existed, so `NOT succ_requested` dropped rule 9 (issue a successor) for all of them."""
    owner.execute("SELECT pki.add_disthost('web1.example.org')")
    owner.execute("SELECT pki.add_place('p', 'separate', '/etc/ssl')")
    first = le_certificate_in_the_prepublish_window(owner, "www1.example.org")
    other = le_certificate_in_the_prepublish_window(owner, "www2.example.org")
    conn.execute("SELECT set_config('pki.now', %s, false)", (NOW.isoformat(),))
    plan = "SELECT certificate, action, reason FROM pki.plan(pki.selection()) ORDER BY 1"
    before = conn.execute(plan).fetchall()
    assert [(c, a) for c, a, _ in before] == [("www1.example.org", "issue"), ("www2.example.org", "issue")], before
    assert all(r.startswith("rule 9:") for _, _, r in before), before

    owner.execute("""INSERT INTO pki.jobs (kind, subject_key, reason, args, certificate, state, run_after, finished)
                     VALUES ('publish_tlsa', pki.tlsa_subject_key(%s), 'requested (-D)',
                             jsonb_build_object('deploy', (SELECT max(id) FROM pki.certinstances WHERE certificate = %s)),
                             %s, 'done', %s, %s)""", (other, other, other, NOW, NOW))
    assert conn.execute(plan).fetchall() == before, f"certificate {first} lost its rule 9 to {other}'s old -D"


def test_a_grace_of_a_month_hides_no_rule_of_a_certificate_due_in_march(owner, conn):
    """plan_rows takes only the certificates a rule may act on through the certificate rules (due): each
    rule's own threshold as a time. Compared as intervals, 'greatest(1 mon, 30 days)' is '1 mon' (months
    count 30 days), but 2027-03-20 - 1 mon is 02-20 and - 30 days 02-18: on 02-19 rule 9 is due and the
    certificate was not."""
    owner.execute("SELECT pki.add_disthost('web1.example.org')")
    owner.execute("SELECT pki.add_place('p', 'separate', '/etc/ssl')")
    owner.execute("SELECT * FROM pki.add_cert('www.example.org', 'server', 'LE', 'ec', false, NULL, NULL, NULL, "
                  "'web1.example.org', NULL, 'p')").fetchall()
    cert = owner.execute("SELECT certificate FROM pki.subjects WHERE name = 'www.example.org'").fetchone()[0]
    with owner.transaction():
        owner.execute("SET LOCAL session_replication_role = replica")
        owner.execute("""INSERT INTO pki.certinstances (certificate, state, not_before, not_after)
                         VALUES (%s, 'deployed', '2026-12-20T00:00:00Z', '2027-03-20T00:00:00Z')""", (cert,))
    owner.execute("UPDATE pki.settings SET value = '1 mon' WHERE name = 'expire_grace'")
    conn.execute("SELECT set_config('pki.now', '2027-02-19T12:00:00+00:00', false)")
    rows = conn.execute("SELECT certificate, action, reason FROM pki.plan(pki.selection())").fetchall()
    assert [(c, a) for c, a, _ in rows] == [("www.example.org", "issue")], rows
    assert rows[0][2].startswith("rule 9:"), rows


def test_a_pass_that_prepublishes_many_certificates_holds_a_bounded_number_of_TLSA_locks(owner):
    """lock_tlsa is one of 1,024 buckets: a pass prepublishing 35,000 certificates took one advisory
    lock per certificate and died 'out of shared memory' (max_locks_per_transaction); now 1,024 at most,
    and a second transaction is kept out of the same buckets."""
    with owner.transaction():
        owner.execute("SELECT pki.lock_tlsa_many(ARRAY(SELECT generate_series(1, 20000)))")
        held = owner.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()").fetchone()[0]
        assert held == 1024
        table_size = owner.execute("SELECT current_setting('max_locks_per_transaction')::int * "
                                   "(current_setting('max_connections')::int + current_setting('max_prepared_transactions')::int)").fetchone()[0]
        assert table_size < 20000, "the lock table holds one lock per certificate here: the test proves nothing"
        with psycopg.connect(owner.info.dsn, autocommit=True) as other:
            assert other.execute("SELECT pg_try_advisory_xact_lock(hashtext('pki.tlsa'), 7777 % 1024)").fetchone()[0] is False
