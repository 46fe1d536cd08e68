"""Metrics: pki.metrics renders the Prometheus text format, read back here with prometheus_client's own
parser and compared with the database's facts (instances, jobs, runs, heartbeats, alerts); `serverpki
metrics` prints it, writes it atomically for node_exporter (--textfile) and grades the open alerts as a
Nagios plugin (--check), each run as a real process under the monitoring login pki_reader."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from certfactory import make_pair
from helpers import need_root, owner_conn
from lab import roles
from lab.process import remove_dir, temp_dir
from serverpki.monitor import CRITICAL, OK, UNKNOWN, WARNING, check_report

UTC = dt.timezone.utc
NOW = dt.datetime.now(UTC).replace(microsecond=0)   # the database's clock in these tests (pki.now)
DAY = dt.timedelta(days=1)
CA = 'Odd "quoted" | CA'          # CA names may hold double quotes and '|': label escaping, plugin output
COMMAND = [sys.executable, "-m", "serverpki.admin", "metrics"]
FAMILIES = {
    "serverpki_certificate_expiration_timestamp_seconds", "serverpki_certificate_days_left",
    "serverpki_certificate_state", "serverpki_jobs", "serverpki_schedule_last_run_timestamp_seconds",
    "serverpki_schedule_last_run_age_seconds", "serverpki_schedule_last_run_success",
    "serverpki_schedule_last_success_timestamp_seconds", "serverpki_schedule_last_success_age_seconds",
    "serverpki_agent_heartbeat_timestamp_seconds", "serverpki_agent_heartbeat_age_seconds", "serverpki_alerts",
}
STATES = ("valid", "expiring", "renewing", "expired", "missing")
JOB_STATES = ("queued", "running", "done", "failed", "dead")


# --------------------------------------------------------------------------- reading the output

def families(text: str) -> dict:
    """The metric families of an exposition, by name, parsed by prometheus_client (a parse error raises)."""
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    return parsed


def samples(text: str, name: str) -> dict[frozenset, float]:
    """The samples of one family: {frozenset of (label, value): value}."""
    return {frozenset(s.labels.items()): s.value for s in families(text)[name].samples}


def only(text: str, name: str) -> float:
    [value] = samples(text, name).values()
    return value


def metrics(conn) -> str:
    return conn.execute("SELECT pki.metrics()").fetchone()[0]


def travel(conn, when: dt.datetime) -> None:
    conn.execute("SELECT set_config('pki.now', %s, false)", (when.isoformat(),))


# --------------------------------------------------------------------------- making the facts

def add_cert(conn, name: str) -> int:
    conn.execute("SELECT * FROM add_cert(%s, 'server', 'LE', 'ec', false, NULL, NULL, NULL, 'web1.example.org', NULL, 'nginx')",
                 (name,))
    return conn.execute("SELECT cert_id(%s)", (name,)).fetchone()[0]


def add_ca(conn, name: str) -> int:
    """A local CA certificate, as -I leaves one (the owner's to write, as certfactory.local_ca_instance)."""
    with owner_conn(conn).transaction() as tx:
        return tx.connection.execute(
            "WITH c AS (INSERT INTO pki.certificates (type, encryption_algo) VALUES ('local', 'ec') RETURNING id) "
            "INSERT INTO pki.subjects (type, name, isaltname, certificate) SELECT 'CA', %s, false, c.id FROM c "
            "RETURNING certificate", (name,)).fetchone()[0]


def instance(conn, cert: int, name: str, state: str, not_before: dt.datetime | None = None, days: int = 90) -> int:
    """An instance of cert in state (reserved, issued or deployed), with a real key pair from not_before."""
    owner = owner_conn(conn)
    with owner.transaction():
        inst = owner.execute("INSERT INTO certinstances (certificate, state) VALUES (%s, 'reserved') RETURNING id",
                             (cert,)).fetchone()[0]
        if state == "reserved":
            return inst
        pair = make_pair(name, "ec", not_before, days)
        owner.execute("INSERT INTO certkeydata (certinstance, encryption_algo, cert, key) VALUES (%s, 'ec', %s, %s)",
                      (inst, pair["cert"].encode(), pair["key"].encode()))
        for step in ("issued", "deployed")[:("issued", "deployed").index(state) + 1]:
            owner.execute("UPDATE certinstances SET state = %s WHERE id = %s", (step, inst))
    return inst


def dead_job(conn, error: str = "the CA refused the order") -> int:
    """A job that failed for good, now."""
    owner = owner_conn(conn)
    job = owner.execute("SELECT pki.enqueue('register_acme', 'acme:test', 'test')").fetchone()[0]
    owner.execute("UPDATE jobs SET state = 'dead', attempts = 3, last_error = %s WHERE id = %s", (error, job))
    return job


def world(conn) -> None:
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_place('nginx', 'separate', '/etc/ssl/{}')")


@pytest.fixture
def scene(conn):
    """Certificates in every state, the clock at NOW; returns {name: (certificate, active instance, state)}."""
    world(conn)
    travel(conn, NOW)
    facts = {}

    def cert(name: str, state: str, *instances: tuple[str, dt.timedelta | None, int]) -> None:
        cid = add_cert(conn, name)
        made = [instance(conn, cid, name, s, NOW + ago if ago is not None else None, days) for s, ago, days in instances]
        facts[name] = (cid, made[0] if made and instances[0][0] == "deployed" else None, state)

    cert("valid.example.org", "valid", ("deployed", -10 * DAY, 90))
    cert("expiring.example.org", "expiring", ("deployed", -80 * DAY, 90))
    cert("renewing.example.org", "renewing", ("deployed", -80 * DAY, 90), ("issued", -1 * DAY, 90))
    # ordered: its successor reserved, the issue job on its way (-C)
    cert("ordered.example.org", "renewing", ("deployed", -80 * DAY, 90))
    conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY['ordered.example.org']))")
    cert("expired.example.org", "expired", ("deployed", -100 * DAY, 90))
    cert("missing.example.org", "missing")
    cert("disabled.example.org", "valid", ("deployed", -10 * DAY, 90))
    conn.execute("SELECT disable_cert('disabled.example.org')")
    # a CA's active instance is the issued one lasting longest
    ca = add_ca(conn, CA)
    instance(conn, ca, CA, "issued", NOW - 30 * DAY, 365)
    longest = instance(conn, ca, CA, "issued", NOW - 40 * DAY, 730)
    instance(conn, ca, CA, "issued", NOW - 1 * DAY, 600)   # newer, but ends sooner
    facts[CA] = (ca, longest, "valid")
    return facts


# --------------------------------------------------------------------------- the function

def test_every_family_parses_with_help_and_type_and_no_series_vanishes(conn):
    """An empty installation: every family is declared; fixed label sets (job kind x state, severity) are all
    there with 0; the scheduler that never ran is +Inf old."""
    text = metrics(conn)
    parsed = families(text)
    assert set(parsed) == FAMILIES
    for family in parsed.values():
        assert family.type == "gauge" and family.documentation, family
        assert f"# HELP {family.name} " in text and f"# TYPE {family.name} gauge\n" in text
    kinds = [k for (k,) in conn.execute("SELECT kind FROM job_kinds ORDER BY kind").fetchall()]
    assert samples(text, "serverpki_jobs") == {frozenset({("kind", k), ("state", s)}): 0 for k in kinds for s in JOB_STATES}
    assert samples(text, "serverpki_alerts") == {frozenset({("severity", "critical")}): 0, frozenset({("severity", "warning")}): 0}
    assert only(text, "serverpki_schedule_last_run_age_seconds") == float("inf")
    assert only(text, "serverpki_schedule_last_success_age_seconds") == float("inf")
    for name in ("serverpki_schedule_last_run_timestamp_seconds", "serverpki_schedule_last_run_success",
                 "serverpki_certificate_state", "serverpki_agent_heartbeat_age_seconds"):
        assert parsed[name].samples == [], name
    assert text.endswith("\n") and "\n\n" not in text


def test_every_metric_is_documented(conn, repo_root):
    doc = (repo_root / "docs" / "metrics.md").read_text()
    assert [name for name in sorted(FAMILIES) if f"| `{name}` |" not in doc] == []
    assert all(f"| `{state}` |" in doc for state in STATES)


def test_each_certificate_shows_its_active_instance_days_left_and_state(conn, scene):
    text = metrics(conn)
    expiry = samples(text, "serverpki_certificate_expiration_timestamp_seconds")
    days = samples(text, "serverpki_certificate_days_left")
    state = samples(text, "serverpki_certificate_state")
    assert len(state) == len(STATES) * len(scene)
    for name, (cid, active, expected) in scene.items():
        ctype, disabled = conn.execute("SELECT type::text, disabled::text FROM certificates WHERE id = %s", (cid,)).fetchone()
        labels = {("certificate", name), ("type", ctype), ("disabled", disabled)}
        # exactly one state is 1: the expected one; every state is a series
        assert {s: state[frozenset(labels | {("state", s)})] for s in STATES} == {s: float(s == expected) for s in STATES}, name
        mine = {k: v for k, v in expiry.items() if ("certificate", name) in k}
        if active is None:
            assert mine == {}, name
            continue
        not_after = conn.execute("SELECT not_after FROM certinstances WHERE id = %s", (active,)).fetchone()[0]
        key = frozenset(labels | {("serial", str(active))})
        assert mine == {key: not_after.timestamp()}, name
        assert days[key] == round((not_after - NOW) / DAY, 3), name
    assert days[frozenset({("certificate", "expired.example.org"), ("type", "LE"), ("disabled", "false"),
                           ("serial", str(scene["expired.example.org"][1]))})] < 0
    assert ("disabled", "true") in next(k for k in expiry if ("certificate", "disabled.example.org") in k)


def test_the_active_instance_is_the_one_alerts_use(conn, scene):
    """One rule (pki.active_instances) for the alerts and the metrics: the expiry alert names the instance
    the metrics show, and a certificate with a successor on its way raises none."""
    conn.execute("SELECT record_run('cron', ARRAY['-S'], pki.now(), true)")
    expiring = {r[0]: r[1] for r in conn.execute(
        "SELECT certificate, instance FROM alerts WHERE alert_key LIKE 'expiry:%'").fetchall()}
    assert expiring == {"expiring.example.org": scene["expiring.example.org"][1]}
    active = dict(conn.execute("SELECT name::text, instance FROM active_instances").fetchall())
    assert active == {n: a for n, (_c, a, _s) in scene.items() if a is not None}


def test_jobs_by_kind_and_state_are_the_queue(conn):
    owner = owner_conn(conn)
    for i, state in enumerate(("queued", "queued", "queued", "done", "done", "done", "failed", "dead")):
        job = owner.execute("SELECT pki.enqueue(%s, %s, 'test')", ("mail_reminder" if i % 2 else "distribute", f"s{i}")).fetchone()[0]
        owner.execute("UPDATE jobs SET state = %s WHERE id = %s", (state, job))
    assert len(conn.execute("SELECT * FROM claim_jobs('worker', ARRAY['distribute'])").fetchall()) == 1   # running
    counted = dict(((k, s), n) for k, s, n in conn.execute("SELECT kind, state::text, count(*) FROM jobs GROUP BY 1, 2").fetchall())
    assert sum(counted.values()) == 8 and len(counted) > 4
    shown = samples(metrics(conn), "serverpki_jobs")
    for key, value in shown.items():
        labels = dict(key)
        assert value == counted.get((labels["kind"], labels["state"]), 0), labels


def test_heartbeat_and_schedule_ages_follow_the_database_clock(conn):
    travel(conn, NOW)
    conn.execute("SELECT * FROM claim_jobs('worker-1')").fetchall()
    conn.execute("SELECT record_run('cron', ARRAY['-S'], pki.now(), true)")
    travel(conn, NOW + dt.timedelta(minutes=30))
    conn.execute("SELECT record_run('cron', ARRAY['-S', '-T'], pki.now(), false)")
    conn.execute("SELECT record_run('cron', ARRAY['-C'], pki.now(), true)")   # not a scheduler run
    travel(conn, NOW + dt.timedelta(hours=2))
    text = metrics(conn)
    worker = frozenset({("agent", "worker-1")})
    assert samples(text, "serverpki_agent_heartbeat_timestamp_seconds") == {worker: NOW.timestamp()}
    assert samples(text, "serverpki_agent_heartbeat_age_seconds") == {worker: 7200}
    assert only(text, "serverpki_schedule_last_run_timestamp_seconds") == (NOW + dt.timedelta(minutes=30)).timestamp()
    assert only(text, "serverpki_schedule_last_run_age_seconds") == 5400
    assert only(text, "serverpki_schedule_last_run_success") == 0
    assert only(text, "serverpki_schedule_last_success_timestamp_seconds") == NOW.timestamp()
    assert only(text, "serverpki_schedule_last_success_age_seconds") == 7200
    # the next claim moves the heartbeat
    conn.execute("SELECT * FROM claim_jobs('worker-1')").fetchall()
    assert samples(metrics(conn), "serverpki_agent_heartbeat_age_seconds") == {worker: 0}


def test_alerts_are_counted_by_severity(conn, scene):
    dead_job(conn)
    text = metrics(conn)
    counted = dict(conn.execute("SELECT severity, count(*) FROM alerts GROUP BY 1").fetchall())
    # expired.example.org deployed past not_after and the dead job are critical; the expiring one and the
    # scheduler that never ran are warnings
    assert counted["critical"] >= 2 and counted["warning"] >= 2, counted
    assert samples(text, "serverpki_alerts") == {frozenset({("severity", s)}): counted[s] for s in ("critical", "warning")}


def test_the_monitoring_login_reads_the_metrics_but_not_the_tables(conn, scene, pg_server, dbname):
    with psycopg.connect(pg_server.dsn(dbname, roles.READER), autocommit=True) as reader:
        travel(reader, NOW)
        assert metrics(reader) == metrics(conn)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT not_after FROM certinstances")


def test_label_values_are_escaped(conn, scene):
    """Backslash, double quote and newline inside a label value, read back by the parser as they were."""
    conn.execute("SELECT * FROM claim_jobs(%s)", ('back\\slash "agent"',)).fetchall()
    text = metrics(conn)
    assert 'certificate="Odd \\"quoted\\" | CA"' in text
    assert {dict(k)["certificate"] for k in samples(text, "serverpki_certificate_state")} == set(scene)
    assert [dict(k)["agent"] for k in samples(text, "serverpki_agent_heartbeat_age_seconds")] == ['back\\slash "agent"']
    # names cannot hold a newline (validation refuses control characters): the escaping itself
    hostile = 'a\\b"c\nd\\n'
    escaped = owner_conn(conn).execute("SELECT pki.prom_escape(%s)", (hostile,)).fetchone()[0]
    assert escaped == 'a\\\\b\\"c\\nd\\\\n'
    line = f'# TYPE x gauge\nx{{v="{escaped}"}} 1\n'
    assert [s.labels["v"] for s in families(line)["x"].samples] == [hostile]


def test_the_plans_have_no_subquery_per_row(conn, scene):
    """Linear in the number of certificates: the planner joins; no SubPlan runs once per row (InitPlans,
    which run once, are fine). bench/metrics.py measures the growth."""
    owner = owner_conn(conn)
    body = owner.execute("SELECT prosrc FROM pg_proc WHERE oid = 'pki.metrics()'::regprocedure").fetchone()[0]
    with owner.transaction():
        owner.execute("SET LOCAL search_path = pki, dd, pg_temp")
        for sql in (body, "SELECT * FROM pki.active_instances"):
            plan = "\n".join(r[0] for r in owner.execute("EXPLAIN (COSTS OFF) " + sql).fetchall())
            assert "SubPlan" not in plan, plan


# --------------------------------------------------------------------------- the command

def run(env: dict, *args: str, cwd: Path | None = None, under: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*under, *COMMAND, *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.fixture
def reader_env(pg_server, dbname) -> dict:
    """`serverpki metrics` as the monitoring login, on the real clock."""
    return pg_server.env(dbname, roles.READER)


def test_the_command_prints_the_metrics_as_the_monitoring_login(conn, scene, reader_env):
    done = run({**reader_env, "PGOPTIONS": f"-c pki.now={NOW.isoformat()}"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == metrics(conn)
    assert set(families(done.stdout)) == FAMILIES


def check(env: dict, *args: str) -> tuple[int, list[str]]:
    done = run(env, "--check", *args)
    assert done.stderr == "", done.stderr
    assert done.stdout.endswith("\n")
    return done.returncode, done.stdout.splitlines()


def test_check_is_ok_without_alerts(conn, reader_env):
    assert check(reader_env) == (OK, ["SERVERPKI OK - no open alerts | critical=0 warning=0"])


def test_check_grades_an_expiring_certificate_by_the_settings(conn, reader_env):
    world(conn)
    now = dt.datetime.now(UTC)
    cid = add_cert(conn, "www.example.org")
    instance(conn, cid, "www.example.org", "deployed", now - 80 * DAY, 90)
    conn.execute("SELECT record_run('cron', ARRAY['-S'], now(), true)")
    status, lines = check(reader_env)
    summary = "certificate www.example.org expires within 14 days with no successor on its way"
    assert status == WARNING, lines
    assert lines[0] == f"SERVERPKI WARNING - 0 critical, 1 warning: {summary} | critical=0 warning=1"
    assert lines[1].startswith(f"WARNING: {summary} (instance ") and len(lines) == 2
    # ten days left are critical once the operator says so
    conn.execute("UPDATE settings SET value = '12' WHERE name = 'alert_expiry_critical_days'")
    status, lines = check(reader_env)
    assert status == CRITICAL and lines[0].startswith("SERVERPKI CRITICAL - 1 critical, 0 warning: certificate www.example.org"), lines
    # a successor on its way: nothing to do for a human
    instance(conn, cid, "www.example.org", "issued", now, 90)
    assert check(reader_env) == (OK, ["SERVERPKI OK - no open alerts | critical=0 warning=0"])


def test_check_is_critical_for_a_dead_job(conn, reader_env):
    job = dead_job(conn, "the CA refused the order\nwith a second line")
    status, lines = check(reader_env)
    assert status == CRITICAL, lines
    [(summary, detail)] = conn.execute("SELECT summary, detail FROM alerts").fetchall()
    assert "register_acme job failed for good" in summary and f"job {job}" in detail
    assert lines[0] == f"SERVERPKI CRITICAL - 1 critical, 0 warning: {summary} | critical=1 warning=0"
    # the long output: the detail on the same line, its newline a space
    assert "\n" in detail and lines[1:] == [f"CRITICAL: {summary} ({detail.replace(chr(10), ' ')})"]
    assert lines[1].endswith("the CA refused the order with a second line)")


def test_check_counts_every_alert_and_keeps_one_performance_data_separator():
    alerts = [("critical", "instance 3 of certificate a|b CA is deployed past its not_after", None)] + \
             [("warning", f"certificate c{i} expires within 14 days\nwith no successor", f"instance {i}") for i in range(4)]
    status, output = check_report(alerts)
    lines = output.splitlines()
    assert status == CRITICAL
    assert lines[0].count("|") == 1 and lines[0].endswith("| critical=1 warning=4")
    assert lines[0].startswith("SERVERPKI CRITICAL - 1 critical, 4 warning: instance 3 of certificate a/b CA")
    assert "(+2 more)" in lines[0]
    assert len(lines) == 1 + len(alerts) and all("|" not in line for line in lines[1:])
    assert lines[2] == "WARNING: certificate c0 expires within 14 days with no successor (instance 0)"
    assert check_report([("warning", "w", None)])[0] == WARNING
    assert check_report([])[0] == OK


def test_an_unreachable_database_is_unknown(reader_env, tmp_path):
    env = {**reader_env, "PGHOST": "127.0.0.1", "PGPORT": "1"}   # nothing listens on port 1
    status, lines = check(env)
    assert status == UNKNOWN and len(lines) == 1, lines
    assert lines[0].startswith("SERVERPKI UNKNOWN - cannot connect to the database "), lines
    # without --check: exit status 3, one line on stderr, nothing written
    done = run(env, "--textfile", str(tmp_path / "serverpki.prom"))
    assert done.returncode == 3 and done.stdout == "", done
    assert done.stderr.startswith("serverpki: cannot connect to the database ") and done.stderr.count("\n") == 1, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_schema_of_another_release_is_unknown(conn, reader_env):
    owner_conn(conn).execute("INSERT INTO schema_migrations (version) VALUES ('9999_from_a_later_release')")
    status, lines = check(reader_env)
    assert status == UNKNOWN and len(lines) == 1, lines
    assert lines[0].startswith("SERVERPKI UNKNOWN - ") and "9999_from_a_later_release" in lines[0], lines
    done = run(reader_env)
    assert done.returncode == 3 and done.stdout == "" and "9999_from_a_later_release" in done.stderr, done


# --------------------------------------------------------------------------- --textfile

def test_textfile_is_replaced_at_once_readable_by_node_exporter(conn, scene, reader_env, tmp_path):
    target = tmp_path / "serverpki.prom"
    target.write_text("stale\n")
    before = target.stat().st_ino
    done = run({**reader_env, "PGOPTIONS": f"-c pki.now={NOW.isoformat()}"}, "--textfile", str(target))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert target.read_text() == metrics(conn)
    assert set(families(target.read_text())) == FAMILIES
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert target.stat().st_ino != before            # renamed over, never written in place
    assert [p.name for p in tmp_path.iterdir()] == ["serverpki.prom"]


def test_textfile_with_check_writes_the_metrics_and_grades(conn, reader_env, tmp_path):
    dead_job(conn)
    target = tmp_path / "serverpki.prom"
    status, lines = check(reader_env, "--textfile", str(target))
    assert status == CRITICAL and lines[0].startswith("SERVERPKI CRITICAL - 1 critical"), lines
    assert only_labelled(target.read_text(), "serverpki_alerts", severity="critical") == 1


def only_labelled(text: str, name: str, **labels: str) -> float:
    [value] = [v for k, v in samples(text, name).items() if set(labels.items()) <= set(k)]
    return value


def test_a_textfile_that_cannot_be_written_leaves_nothing_behind(conn, reader_env, tmp_path):
    # no such directory; a directory where the file should be (the rename fails after the write)
    (tmp_path / "taken.prom").mkdir()
    for target in (tmp_path / "missing" / "serverpki.prom", tmp_path / "taken.prom"):
        done = run(reader_env, "--textfile", str(target))
        assert done.returncode == 1 and done.stdout == "", done
        assert done.stderr.startswith(f"serverpki: cannot write --textfile {target}: ") and done.stderr.count("\n") == 1, done.stderr
        status, lines = check(reader_env, "--textfile", str(target))
        assert status == UNKNOWN and lines == [lines[0]] and lines[0].startswith(
            f"SERVERPKI UNKNOWN - cannot write --textfile {target}: "), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.prom"]
    assert list((tmp_path / "taken.prom").iterdir()) == []


def test_a_directory_the_monitoring_user_may_not_write_is_a_clear_error(conn, reader_env):
    need_root("the command runs as nobody to meet a directory it may not write")
    base = temp_dir("serverpki-textfile-", 0o755)
    try:
        (base / "collector").mkdir(mode=0o755)   # root's
        target = base / "collector" / "serverpki.prom"
        nobody = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
        done = run(reader_env, "--textfile", str(target), cwd=base, under=nobody)
        assert done.returncode == 1 and done.stdout == "", done
        assert done.stderr == f"serverpki: cannot write --textfile {target}: Permission denied\n"
        done = run(reader_env, "--check", "--textfile", str(target), cwd=base, under=nobody)
        assert (done.returncode, done.stdout) == (
            UNKNOWN, f"SERVERPKI UNKNOWN - cannot write --textfile {target}: Permission denied\n"), done
        assert list((base / "collector").iterdir()) == []
    finally:
        remove_dir(base)
