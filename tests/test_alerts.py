"""Alerts from the database's point of view (db/views/050_alerts.sql, db/jobs/070_notify_alerts.sql):
pki.request_alert_notices makes a notify_alerts job per channel carrying what is new (new, changed,
reappeared), due again (repeat, after alert_repeat) or gone (resolved); the channel counts as told
only when the job is done, so a dead notify job leaves its alerts untold. Everything runs as the
login roles (pki_cron: `conn`; pki_worker, pki_reader), time travels with SET pki.now; the webhook
client is tried against a real HTTP server on loopback.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading

import psycopg
import pytest
from psycopg.rows import dict_row

from helpers import add_small_world, complete, lease_of, owner_conn, remember_leases
from lab import roles
from lab.ports import free_port
from serverpki import webhook
from serverpki.config import parse_config
from serverpki.errors import ConfigError, GiveUp, RetryLater
from serverpki.handlers import Job, alerts as alerts_handler

UTC = dt.timezone.utc
T0 = dt.datetime(2027, 3, 1, tzinfo=UTC)
AGENT = "a1"
CERT = "www.example.org"


# --------------------------------------------------------------------------- helpers

def at(conn, when: dt.datetime) -> None:
    conn.execute("SELECT set_config('pki.now', %s, false)", (when.isoformat(),))


def request(conn, *channels: str) -> list[tuple]:
    return conn.execute("SELECT * FROM request_alert_notices(%s)", (list(channels or ["mail"]),)).fetchall()


def notify_job(conn, job_id: int) -> dict:
    return conn.cursor(row_factory=dict_row).execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()


def told(conn, job_id: int) -> dict[str, str]:
    """alert_key -> status of the digest a notify job carries."""
    return {a["alert_key"]: a["status"] for a in notify_job(conn, job_id)["args"]["alerts"]}


def claim(conn, kind: str = "notify_alerts") -> list[dict]:
    return remember_leases(conn, conn.cursor(row_factory=dict_row).execute(
        "SELECT * FROM claim_jobs(%s, %s, 10) ORDER BY id", (AGENT, [kind])).fetchall())


def deliver(conn, job_id: int) -> None:
    """What the agent does after the handler delivered: claim it and complete it."""
    [row] = claim(conn)
    assert row["id"] == job_id
    complete(conn, job_id, lease_of(conn, job_id, AGENT), {"channel": row["args"]["channel"]})


def new_job(conn, *channels: str) -> int:
    rows = request(conn, *channels)
    assert len(rows) == 1 and rows[0][0] is not None, rows
    return rows[0][0]


def notices(conn) -> dict[tuple[str, str], dict]:
    rows = conn.cursor(row_factory=dict_row).execute("SELECT * FROM alert_notices").fetchall()
    return {(r["channel"], r["alert_key"]): r for r in rows}


def record_schedule_run(conn) -> None:
    conn.execute("SELECT record_run('cron', ARRAY['-S'], pki.now(), true, '{}')")


def dead_issue_job(conn, error: str = "the CA refused the order") -> int:
    """-C of the certificate, its issue job failed for good."""
    [(job_id, *_)] = conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY[%s]))", (CERT,)).fetchall()
    claim(conn, "issue_acme")
    assert conn.execute("SELECT fail_job(%s, %s, %s, false)",
                        (job_id, lease_of(conn, job_id, AGENT), error)).fetchone()[0] == "dead"
    return job_id


@pytest.fixture
def world(conn):
    at(conn, T0)
    add_small_world(conn)   # www.example.org with a target: no configuration problem
    assert conn.execute("SELECT alert_key FROM alerts").fetchall() == [("schedule",)]
    return conn


# --------------------------------------------------------------------------- new, told once, repeat, resolved

def test_a_new_alert_is_told_once_then_again_after_alert_repeat(world):
    conn = world
    job = new_job(conn, "mail")
    assert told(conn, job) == {"schedule": "new"}
    row = notify_job(conn, job)
    assert row["kind"] == "notify_alerts" and row["args"]["channel"] == "mail" and row["state"] == "queued"
    # while it is on its way, asking again gives the same job
    assert [r[0] for r in request(conn, "mail")] == [job]
    assert notices(conn) == {}                     # told at completion, not at enqueue
    deliver(conn, job)
    [notice] = notices(conn).values()
    assert (notice["alert_key"], notice["first_sent"], notice["last_sent"], notice["resolved"]) == ("schedule", T0, T0, None)
    # nothing new: nothing enqueued, the same day and a minute before alert_repeat
    assert request(conn, "mail") == []
    at(conn, T0 + dt.timedelta(hours=23, minutes=59))
    assert request(conn, "mail") == []
    at(conn, T0 + dt.timedelta(days=1))
    again = new_job(conn, "mail")
    assert told(conn, again) == {"schedule": "repeat"}
    deliver(conn, again)
    notice = notices(conn)["mail", "schedule"]
    assert notice["first_sent"] == T0 and notice["last_sent"] == T0 + dt.timedelta(days=1)


def test_each_channel_is_told_on_its_own(world):
    conn = world
    rows = request(conn, "mail", "webhook")
    assert len(rows) == 2 and len({r[0] for r in rows}) == 2
    by_channel = {notify_job(conn, r[0])["args"]["channel"]: r[0] for r in rows}
    assert len(claim(conn)) == 2
    complete(conn, by_channel["webhook"], lease_of(conn, by_channel["webhook"], AGENT), {})
    # the webhook heard it; mail's job is still on its way
    assert [r[0] for r in request(conn, "mail", "webhook")] == [by_channel["mail"]]
    assert set(notices(conn)) == {("webhook", "schedule")}


def test_a_gone_alert_is_told_resolved_once_and_told_again_when_it_reappears(world):
    conn = world
    deliver(conn, new_job(conn))
    record_schedule_run(conn)                      # the scheduler ran: the 'schedule' alert is gone
    assert conn.execute("SELECT count(*) FROM alerts").fetchone()[0] == 0
    resolved = new_job(conn)
    assert told(conn, resolved) == {"schedule": "resolved"}
    [entry] = notify_job(conn, resolved)["args"]["alerts"]
    assert entry["summary"].startswith("operate_serverPKI -S has never run") and entry["severity"] == "warning"
    deliver(conn, resolved)
    assert notices(conn)["mail", "schedule"]["resolved"] == T0
    assert request(conn) == []
    at(conn, T0 + dt.timedelta(days=5))            # not resolved again, not repeated while gone
    record_schedule_run(conn)
    assert request(conn) == []
    # no -S for longer than schedule_stale: back, and critical now
    at(conn, T0 + dt.timedelta(days=5, hours=4))
    back = new_job(conn)
    assert told(conn, back) == {"schedule": "reappeared"}
    assert notify_job(conn, back)["args"]["alerts"][0]["severity"] == "critical"
    deliver(conn, back)
    notice = notices(conn)["mail", "schedule"]
    assert notice["resolved"] is None and notice["first_sent"] == T0 + dt.timedelta(days=5, hours=4)
    assert notice["severity"] == "critical"


def test_a_changed_alert_is_told_again(world):
    conn = world
    record_schedule_run(conn)
    conn.execute("UPDATE settings SET value = '1' WHERE name = 'alert_failing_attempts'")
    [(job_id, *_)] = conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY[%s]))", (CERT,)).fetchall()
    claim(conn, "issue_acme")
    assert conn.execute("SELECT fail_job(%s, %s, 'CA unreachable', true)",
                        (job_id, lease_of(conn, job_id, AGENT))).fetchone()[0] == "failed"
    key = f"job:issue_acme:cert:{conn.execute('SELECT cert_id(%s)', (CERT,)).fetchone()[0]}"
    first = new_job(conn)
    assert told(conn, first) == {key: "new"}
    [entry] = notify_job(conn, first)["args"]["alerts"]
    assert entry["severity"] == "warning" and entry["job"] == job_id and CERT in entry["summary"]
    assert "CA unreachable" in entry["detail"] and f"job {job_id}" in entry["detail"]
    deliver(conn, first)
    # the next attempt fails with another error: the detail changed, the alert did not
    owner_conn(conn).execute("UPDATE jobs SET run_after = pki.now() WHERE id = %s", (job_id,))
    claim(conn, "issue_acme")
    conn.execute("SELECT fail_job(%s, %s, 'CA still unreachable', true)", (job_id, lease_of(conn, job_id, AGENT)))
    assert request(conn) == []
    # it dies: critical, another summary, told again
    owner_conn(conn).execute("UPDATE jobs SET run_after = pki.now() WHERE id = %s", (job_id,))
    claim(conn, "issue_acme")
    conn.execute("SELECT fail_job(%s, %s, 'the CA refused the order', false)", (job_id, lease_of(conn, job_id, AGENT)))
    second = new_job(conn)
    assert told(conn, second) == {key: "changed"}
    [entry] = notify_job(conn, second)["args"]["alerts"]
    assert entry["severity"] == "critical" and "failed for good" in entry["summary"]
    assert "the CA refused the order" in entry["detail"]


def test_the_digest_carries_no_secret(world):
    conn = world
    record_schedule_run(conn)
    dead_issue_job(conn, "renewal failed: -----BEGIN PRIVATE KEY-----\nMIIEv...\n-----END PRIVATE KEY-----")
    job = new_job(conn)
    text = json.dumps(notify_job(conn, job)["args"])
    assert "PRIVATE KEY-----" not in text and "MIIEv" not in text


# --------------------------------------------------------------------------- a dead notify job tells nothing

def test_a_dead_notify_job_leaves_the_alerts_untold(world):
    conn = world
    record_schedule_run(conn)
    issue = dead_issue_job(conn)
    job = new_job(conn)
    [row] = claim(conn)
    assert conn.execute("SELECT fail_job(%s, %s, 'mail relay 127.0.0.1:25 refused the sender', false)",
                        (job, lease_of(conn, job, AGENT))).fetchone()[0] == "dead"
    assert notices(conn) == {}
    # held back for an hour (no retry after every drain of serverpki agent), then told anew
    [(none, _c, _i, reason)] = request(conn)
    assert none is None and "held back" in reason
    at(conn, T0 + dt.timedelta(minutes=59))
    assert request(conn)[0][0] is None
    at(conn, T0 + dt.timedelta(hours=1, minutes=1))
    record_schedule_run(conn)
    retry = new_job(conn)
    digest = told(conn, retry)
    cert = conn.execute("SELECT cert_id(%s)", (CERT,)).fetchone()[0]
    assert digest[f"job:issue_acme:cert:{cert}"] == "new"
    # and its own death is an alert, naming the channel
    assert digest["job:notify_alerts:alerts:mail"] == "new"
    entry = next(a for a in notify_job(conn, retry)["args"]["alerts"] if a["alert_key"] == "job:notify_alerts:alerts:mail")
    assert "(alerts:mail)" in entry["summary"] and "refused the sender" in entry["detail"]
    assert next(a for a in notify_job(conn, retry)["args"]["alerts"]
                if a["alert_key"].startswith("job:issue_acme"))["job"] == issue


# --------------------------------------------------------------------------- two runs at once

def test_two_runs_at_once_enqueue_one_digest(world, dsn):
    conn = world
    first = psycopg.connect(dsn)
    second = psycopg.connect(dsn, autocommit=True)
    try:
        for c in (first, second):
            at(c, T0)
        got: list = []
        job = first.execute("SELECT job FROM request_alert_notices(ARRAY['mail'])").fetchone()[0]
        thread = threading.Thread(target=lambda: got.extend(
            second.execute("SELECT job FROM request_alert_notices(ARRAY['mail'])").fetchall()))
        thread.start()
        thread.join(0.5)
        assert thread.is_alive(), "the second request did not wait for the first"
        first.commit()
        thread.join(10)
        assert got == [(job,)]
    finally:
        first.close()
        second.close()
    assert conn.execute("SELECT count(*) FROM jobs WHERE kind = 'notify_alerts'").fetchone()[0] == 1


# --------------------------------------------------------------------------- roles

def test_the_agent_role_requests_and_the_reader_may_not(world, pg_server, dbname):
    with psycopg.connect(pg_server.dsn(dbname, roles.WORKER), autocommit=True) as worker:
        at(worker, T0)
        job = new_job(worker, "webhook")
        deliver(worker, job)
        assert request(worker, "webhook") == []
    with psycopg.connect(pg_server.dsn(dbname, roles.READER), autocommit=True) as reader:
        assert reader.execute("SELECT count(*) FROM alerts").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT * FROM request_alert_notices(ARRAY['mail'])")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT * FROM alert_notices")


def test_an_unknown_channel_is_refused(world):
    with pytest.raises(psycopg.Error) as info:
        request(world, "mail", "pager")
    assert info.value.diag.sqlstate == "SP011" and "pager" in info.value.diag.message_primary
    assert info.value.diag.message_hint


# --------------------------------------------------------------------------- the message and the document

def _job(alerts: list[dict], channel: str = "mail") -> Job:
    return Job(42, "notify_alerts", None, None, None, None, {"channel": channel, "alerts": alerts}, 1, 5, "t")


ALERTS = [
    {"alert_key": "job:issue_acme:cert:1", "status": "new", "severity": "critical",
     "summary": "issue_acme job failed for good for certificate www.example.org", "job": 7,
     "detail": "job 7, dead after 1 attempt(s): validation failed", "certificate": "www.example.org"},
    {"alert_key": "schedule", "status": "resolved", "severity": "warning",
     "summary": "operate_serverPKI -S has never run: nothing is renewed (add the cron job)"},
]


def test_the_mail_names_severity_certificate_job_and_error():
    job = _job(ALERTS)
    assert alerts_handler.subject(job, ALERTS) == "serverPKI: 1 critical, 0 warning alert(s), 1 resolved"
    text = alerts_handler.body(job, ALERTS)
    assert "[critical] issue_acme job failed for good for certificate www.example.org" in text
    assert "job 7" in text and "validation failed" in text
    assert text.index("Resolved") < text.index("[warning] operate_serverPKI -S has never run")
    doc = alerts_handler.document(job, ALERTS)
    assert doc["schema"] == "serverpki.alerts/1" and doc["job"] == 42
    assert doc["counts"] == {"critical": 1, "warning": 0, "resolved": 1}
    assert doc["open"] == {"critical": 1, "warning": 0}   # a job without args.open: the digest's own
    assert [a["alert_key"] for a in doc["alerts"]] == ["job:issue_acme:cert:1"]
    assert doc["resolved"] == [{"alert_key": "schedule", "severity": "warning", "summary": ALERTS[1]["summary"]}]


def test_a_repeat_digest_counts_every_open_alert_in_its_subject():
    # the request put every open alert's count into the job (args.open): a digest repeating one of
    # three open alerts must not read as if it were the only one
    job = _job([{**ALERTS[0], "status": "repeat"}])
    job.args["open"] = {"critical": 2, "warning": 1}
    assert alerts_handler.subject(job, job.args["alerts"]) == "serverPKI: 2 critical, 1 warning alert(s)"
    assert "Open now: 2 critical, 1 warning; this digest tells 1 of them" in alerts_handler.body(job, job.args["alerts"])
    assert alerts_handler.document(job, job.args["alerts"])["open"] == {"critical": 2, "warning": 1}


def test_a_job_without_alerts_is_given_up():
    with pytest.raises(GiveUp):
        alerts_handler.digest(_job([]))


# --------------------------------------------------------------------------- the webhook client

class Receiver(http.server.ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that keeps what is posted and answers with the status it is told."""

    def __init__(self):
        self.posts: list[dict] = []
        self.answer = (204, {})
        self.echo: str | None = None   # a receiver's own words: as the reason phrase and the body

        class Handle(http.server.BaseHTTPRequestHandler):
            def do_POST(h):
                length = int(h.headers.get("Content-Length", 0))
                self.posts.append({"headers": dict(h.headers), "body": json.loads(h.rfile.read(length))})
                status, headers = self.answer
                h.send_response(status, self.echo)
                for k, v in headers.items():
                    h.send_header(k, v)
                body = (self.echo or "").encode()
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)

            def log_message(h, *args):
                pass

        super().__init__(("127.0.0.1", free_port()), Handle)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/hook"

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


def test_the_webhook_client_sorts_the_answers():
    with Receiver() as receiver:
        assert webhook.post(receiver.url, {"a": 1}, 5, token="s3cret", idempotency_key="k1") == 204
        [got] = receiver.posts
        assert got["body"] == {"a": 1} and got["headers"]["Authorization"] == "Bearer s3cret"
        assert got["headers"]["Content-Type"] == "application/json" and got["headers"]["Idempotency-Key"] == "k1"
        receiver.answer = (503, {"Retry-After": "120"})
        with pytest.raises(RetryLater) as info:
            webhook.post(receiver.url, {}, 5, token="s3cret")
        assert info.value.retry_after == 120 and "503" in str(info.value) and "s3cret" not in str(info.value)
        receiver.answer = (401, {})
        with pytest.raises(GiveUp, match="webhook_token_file"):
            webhook.post(receiver.url, {}, 5)
        receiver.answer = (302, {"Location": "http://127.0.0.1:1/elsewhere"})
        with pytest.raises(GiveUp, match="to http://127.0.0.1:1 "):
            webhook.post(receiver.url, {}, 5)
        # the URL's path may be its secret (a Slack hook): no message shows it
        receiver.answer = (500, {})
        with pytest.raises(RetryLater) as info:
            webhook.post(receiver.url + "/T000/B000/hook-path-secret?token=abc", {}, 5)
        assert "hook-path-secret" not in str(info.value) and "abc" not in str(info.value)
        assert f"webhook http://127.0.0.1:{receiver.server_address[1]} answered 500" in str(info.value)
        # a receiver that echoes the request (token and all) in its answer: the error, which goes into
        # jobs.last_error and on into digests and monitoring, names the status as HTTP does, nothing of its own
        receiver.answer, receiver.echo = (401, {}), "Bearer s3cret-token"
        with pytest.raises(GiveUp) as info:
            webhook.post(receiver.url, {}, 5, token="s3cret-token")
        assert "answered 401 Unauthorized (check [alerts] webhook_token_file)" in str(info.value)
        assert "s3cret" not in str(info.value)
        receiver.echo = None
        port = receiver.server_address[1]
    with pytest.raises(RetryLater, match="unreachable"):
        webhook.post(f"http://127.0.0.1:{port}/hook", {}, 2)


def test_the_alerts_section_is_checked(tmp_path):
    source = tmp_path / "serverpki.toml"
    mail = {"sender": "a@example.org", "recipients": ["b@example.org"]}
    assert parse_config({"mail": mail}, source).alerts.channels == []          # told only when asked for
    assert parse_config({"mail": mail, "alerts": {"mail": True}}, source).alerts.channels == ["mail"]
    both = parse_config({"mail": mail, "alerts": {"mail": True, "webhook_url": "https://hooks.example.org/x"}}, source)
    assert both.alerts.channels == ["mail", "webhook"]
    with pytest.raises(ConfigError, match=r"\[alerts\] mail: alerts cannot be mailed: mail.recipients is empty"):
        parse_config({"mail": {"sender": "a@example.org"}, "alerts": {"mail": True}}, source)
    for section, key in (({"webhook_url": "http://hooks.example.org/x"}, "webhook_url"),
                         ({"webhook_token_file": "t.txt"}, "webhook_token_file"),
                         ({"webhook_timeout_seconds": 0}, "webhook_timeout_seconds")):
        with pytest.raises(ConfigError, match=rf"\[alerts\] {key}"):
            parse_config({"alerts": section}, source)
    assert parse_config({"alerts": {"webhook_url": "http://127.0.0.1:8080/x"}}, source).alerts.webhook_url
    # a password in the URL would travel in every error's text: a token file is the way
    with pytest.raises(ConfigError, match=r"\[alerts\] webhook_url: must not hold a user or password"):
        parse_config({"alerts": {"webhook_url": "https://u:secret@hooks.example.org/x"}}, source)


# --------------------------------------------------------------------------- the callers

def test_a_run_records_itself_tells_and_a_failed_notice_fails_the_run(conn, pg_server, dbname, tmp_path):
    from typer.testing import CliRunner

    from helpers import small_cli_world
    from serverpki.operate import app

    config = small_cli_world(conn, tmp_path)
    with Receiver() as receiver:
        config.write_text(config.read_text() + f'[alerts]\nwebhook_url = "{receiver.url}"\n')
        env = {**pg_server.env(dbname), "SERVERPKI_CONFIG": str(config)}
        receiver.answer = (400, {})
        refused = CliRunner().invoke(app, ["-K"], env=env)
        assert refused.exit_code == 1, refused.output     # the notification failed: like any failed job
        [(actions, succeeded)] = conn.execute("SELECT actions, succeeded FROM runs").fetchall()
        assert actions == ["-K"] and succeeded is True      # recorded before the alerts were told
        [(state, error)] = conn.execute("SELECT state::text, last_error FROM jobs WHERE kind = 'notify_alerts'").fetchall()
        assert state == "dead" and "400" in error and "[alerts] webhook_url" in error
        assert conn.execute("SELECT count(*) FROM alert_notices").fetchone()[0] == 0
        assert len(receiver.posts) == 1
        # an hour later the channel is tried again with the same alerts, and takes them
        receiver.answer = (204, {})
        later = conn.execute("SELECT now() + interval '61 minutes'").fetchone()[0].isoformat()
        told = CliRunner().invoke(app, ["-K"], env={**env, "PGOPTIONS": f"-c pki.now={later}"})
        assert told.exit_code == 0, told.output
        assert len(receiver.posts) == 2
        keys = {a["alert_key"] for a in receiver.posts[1]["body"]["alerts"]}
        assert "schedule" in keys and "job:notify_alerts:alerts:webhook" in keys
        assert {k for (k,) in conn.execute("SELECT alert_key FROM alert_notices")} == keys


def test_the_long_running_agent_tells_once_per_change(conn, pg_server, dbname, tmp_path):
    from serverpki.agent import Agent

    add_small_world(conn)
    with Receiver() as receiver:
        config = parse_config({"alerts": {"webhook_url": receiver.url}, "logging": {"syslog_address": ""}},
                              tmp_path / "serverpki.toml")
        agent = Agent(pg_server.dsn(dbname, roles.WORKER), config, name="worker", lease=30)
        stop = threading.Event()
        thread = threading.Thread(target=agent.forever, kwargs={"poll_seconds": 0.3, "stop": stop}, daemon=True)
        thread.start()
        try:
            _wait(lambda: len(receiver.posts) == 1)
            assert [a["alert_key"] for a in receiver.posts[0]["body"]["alerts"]] == ["schedule"]
            stop.wait(2)                                 # several polls, each asking: nothing new, nothing told
            assert len(receiver.posts) == 1
            record_schedule_run(conn)                    # a change: the alert is gone, and that is told once
            _wait(lambda: len(receiver.posts) == 2)
            assert [r["alert_key"] for r in receiver.posts[1]["body"]["resolved"]] == ["schedule"]
            stop.wait(1.5)
            assert len(receiver.posts) == 2
        finally:
            stop.set()
            thread.join(10)
            agent.close()
    assert conn.execute("SELECT count(*), count(*) FILTER (WHERE state = 'done') FROM jobs "
                        "WHERE kind = 'notify_alerts'").fetchone() == (2, 2)


def _wait(condition, seconds: float = 15) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_a_job_alert_lasts_alert_job_days_by_the_database_clock(world):
    conn = world
    record_schedule_run(conn)
    dead_issue_job(conn)
    keys = lambda: [k for (k,) in conn.execute("SELECT alert_key FROM alerts WHERE alert_key LIKE 'job:%'")]
    [(since,)] = conn.execute("SELECT since FROM alerts WHERE alert_key LIKE 'job:%'").fetchall()
    assert since == T0                               # the time of its death on the travelled clock
    at(conn, T0 + dt.timedelta(days=6, hours=23))
    assert len(keys()) == 1
    at(conn, T0 + dt.timedelta(days=7, hours=1))
    assert keys() == []


def test_a_delivered_digest_is_not_told_twice_when_the_completion_was_lost(world, tmp_path):
    from serverpki.handlers import Context

    conn = world
    job_id = new_job(conn, "webhook")
    with Receiver() as receiver:
        config = parse_config({"alerts": {"webhook_url": receiver.url}}, tmp_path / "serverpki.toml")
        for attempt in (1, 2):
            [row] = claim(conn)
            job = Job(row["id"], row["kind"], None, None, None, None, row["args"], row["attempts"],
                      row["max_attempts"], str(row["lease_token"]))
            completion = alerts_handler.notify_alerts(job, Context(config=config, conn=conn, agent_name=AGENT))
            assert completion.report["status"] == 204 and row["attempts"] == attempt
            if attempt == 1:   # the agent died before the completion: the lease runs out, the job comes back
                conn.execute("SELECT fail_job(%s, %s, 'lease expired', true, interval '1 second')",
                             (job_id, lease_of(conn, job_id, AGENT)))
                owner_conn(conn).execute("UPDATE jobs SET run_after = pki.now() WHERE id = %s", (job_id,))
        complete(conn, job_id, lease_of(conn, job_id, AGENT), completion)
        assert len(receiver.posts) == 1
    assert notify_job(conn, job_id)["state"] == "done" and set(notices(conn)) == {("webhook", "schedule")}


# --------------------------------------------------------------------------- one alert each, told steadily

def alert_rows(conn) -> dict[str, dict]:
    rows = conn.cursor(row_factory=dict_row).execute("SELECT * FROM alerts").fetchall()
    keys = [r["alert_key"] for r in rows]
    assert len(keys) == len(set(keys)), keys      # an alert_key names one alert
    return {r["alert_key"]: r for r in rows}


def test_a_problem_shared_by_many_targets_is_one_alert_and_its_digest_completes(world):
    # check_config says "cert only with a key_path" once per target: a place shared by two disthosts
    conn = world
    record_schedule_run(conn)
    conn.execute("SELECT add_place('certonly', 'cert only', '/etc/ssl/certs', '/etc/ssl/private')")
    for host in ("a.example.org", "b.example.org"):
        conn.execute("SELECT add_disthost(%s)", (host,))
        conn.execute("SELECT add_target(%s, %s, NULL, 'certonly')", (CERT, host))
    [config] = [key for key in alert_rows(conn) if key.startswith("config:")]
    job = new_job(conn, "mail")
    assert told(conn, job) == {config: "new"}
    deliver(conn, job)                              # one notice per alert: the completion goes through
    assert notify_job(conn, job)["state"] == "done" and set(notices(conn)) == {("mail", config)}
    assert request(conn, "mail") == []


def test_a_renewal_that_fails_again_stays_one_critical_alert(world):
    # the scheduler enqueues a new issue job after a dead one: while that one is only failing, the
    # alert stays critical with the same fingerprint (not warning, then critical again, each told)
    conn = world
    record_schedule_run(conn)
    first = dead_issue_job(conn)
    [(key, alert)] = [(k, a) for k, a in alert_rows(conn).items() if k.startswith("job:issue_acme:")]
    assert alert["severity"] == "critical" and alert["job"] == first
    [(again, *_)] = conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY[%s]))", (CERT,)).fetchall()
    for attempt in range(3):
        at(conn, T0 + dt.timedelta(hours=attempt + 1))   # past the back-off
        [row] = claim(conn, "issue_acme")
        assert conn.execute("SELECT fail_job(%s, %s, 'refused again', true)",
                            (again, lease_of(conn, again, AGENT))).fetchone()[0] == "failed"
        now = alert_rows(conn)[key]
        assert (now["severity"], now["fingerprint"]) == ("critical", alert["fingerprint"])
    # failing alert_failing_attempts times, the new job is the one the alert shows
    assert now["job"] == again and "refused again" in now["detail"]


def test_a_successor_whose_issue_keeps_failing_is_not_on_its_way(world):
    # the expiry alert must not hide behind a reserved instance whose job keeps failing
    from test_metrics import instance

    conn = world
    record_schedule_run(conn)
    name = "exp.example.org"
    conn.execute("SELECT * FROM add_cert(%s, 'server', 'LE', 'ec', false, NULL, NULL, NULL, 'web1.example.org', NULL, 'nginx')",
                 (name,))
    cert = conn.execute("SELECT cert_id(%s)", (name,)).fetchone()[0]
    instance(conn, cert, name, "deployed", T0 - dt.timedelta(days=80), 90)   # 10 days left
    assert f"expiry:{name}" in alert_rows(conn)
    [(job, *_)] = conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY[%s]))", (name,)).fetchall()
    assert f"expiry:{name}" not in alert_rows(conn)          # its renewal is on its way
    for attempt in range(3):
        at(conn, T0 + dt.timedelta(hours=attempt + 1))
        claim(conn, "issue_acme")
        conn.execute("SELECT fail_job(%s, %s, 'refused', true)", (job, lease_of(conn, job, AGENT)))
    assert conn.execute("SELECT state::text FROM certinstances WHERE certificate = %s AND state = 'reserved'",
                        (cert,)).fetchall() == [("reserved",)]
    alerts = alert_rows(conn)
    assert f"expiry:{name}" in alerts and f"job:issue_acme:cert:{cert}" in alerts, sorted(alerts)


def test_a_disabled_certificate_deployed_past_not_after_is_no_alert(world):
    from test_metrics import instance

    conn = world
    record_schedule_run(conn)
    cert = conn.execute("SELECT cert_id(%s)", (CERT,)).fetchone()[0]
    inst = instance(conn, cert, CERT, "deployed", T0 - dt.timedelta(days=100), 90)
    assert f"overdue:{inst}" in alert_rows(conn)
    conn.execute("SELECT disable_cert(%s)", (CERT,))
    assert f"overdue:{inst}" not in alert_rows(conn)      # the operator switched it off: not a page a day
