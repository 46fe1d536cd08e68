"""The reminder (docs/lifecycle.md, rule 5) end to end: the scheduler enqueues one mail_reminder
job, the handler mails it through a real SMTP server (aiosmtpd, lab.smtp),
its completion (the queue's complete_job) records it, and the certificate is reminded once. Faults of the relay
become RetryLater (fail_job: failed, retried) or GiveUp (dead), with the error in
jobs_overview.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from certfactory import issue_result
from helpers import complete as complete_job
from helpers import lease_of, remember_leases
from serverpki import smtpclient
from serverpki.config import Config, parse_config
from serverpki.errors import ConfigError, GiveUp, RetryLater
from serverpki.handlers import Context, Job
from serverpki.handlers import mail
from lab.ports import free_port
from lab.smtp import SMTPLab

UTC = dt.timezone.utc
T0 = dt.datetime(2027, 1, 1, tzinfo=UTC)
LIFETIME = 90           # days of the issued instances; local_issue_mail_days is 30
AGENT = "a1"
RECIPIENTS = ["hostmaster@example.org", "pki@example.org"]
CONFIG_FILE = Path("/etc/serverpki/serverpki.toml")   # names the file in messages; never read


# --------------------------------------------------------------------------- helpers

def at(conn: psycopg.Connection, when: dt.datetime) -> None:
    """Travel: pki.now() of this session is `when` from now on."""
    conn.execute("SELECT set_config('pki.now', %s, false)", (when.isoformat(),))


def claim(conn, kinds: list[str] | None = None) -> list[dict]:
    return remember_leases(conn, conn.cursor(row_factory=dict_row).execute(
        "SELECT * FROM claim_jobs(%s, %s, 10) ORDER BY id", (AGENT, kinds)).fetchall())


def complete(conn, job_id: int, result: dict) -> None:
    complete_job(conn, job_id, lease_of(conn, job_id, AGENT), result)


def as_job(row: dict) -> Job:
    return Job(row["id"], row["kind"], row["certificate"], row["instance"], row["disthost"], row["zone"],
               row["args"] or {}, row["attempts"], row["max_attempts"], str(row["lease_token"]))


def mail_config(smtp: SMTPLab | None = None, **overrides) -> Config:
    """The agent's configuration with this [mail] section, checked as load_config checks it (None: key left out)."""
    section = dict(relay_host=smtp.host if smtp else "127.0.0.1", relay_port=smtp.port if smtp else free_port(),
                   sender="serverpki@example.org", recipients=list(RECIPIENTS), starttls=False)
    section.update(overrides)
    return parse_config({"mail": {k: v for k, v in section.items() if v is not None}}, CONFIG_FILE)


def context(conn, config: Config) -> Context:
    return Context(config=config, conn=conn, agent_name=AGENT)


def deployed_local_cert(conn, name: str, issued: dt.datetime = T0, days: int = LIFETIME) -> int:
    """A local certificate with a deployed instance: request_create (-C), issue, schedule, distribute."""
    if not conn.execute("SELECT 1 FROM places WHERE name = 'nginx'").fetchone():
        conn.execute("SELECT add_place('nginx', 'separate', '/etc/ssl/{}')")
        conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT * FROM add_cert(%s, 'server', 'local', 'ec', false, NULL, NULL, NULL, "
                 "'web1.example.org', NULL, 'nginx')", (name,))
    at(conn, issued)
    requested = conn.execute("SELECT * FROM request_create(selection(only_certs => %s), NULL)", ([name],)).fetchall()
    assert len(requested) == 1, requested
    [issue] = claim(conn, ["issue_local"])
    complete(conn, issue["id"], issue_result(conn, "issue_local", issue["certificate"], issued, days))
    # -C issues only; the scheduler distributes the instance (rule 7: no active instance)
    plan = conn.execute("SELECT action FROM schedule(selection(only_certs => %s))", ([name],)).fetchall()
    assert ("distribute",) in plan, plan
    [distribute] = claim(conn, ["distribute"])
    complete(conn, distribute["id"], {})
    state = conn.execute("SELECT ci.state FROM certinstances ci JOIN subjects s ON s.certificate = ci.certificate "
                         "WHERE s.name = %s AND NOT s.isaltname", (name,)).fetchall()
    assert state == [("deployed",)], state
    return conn.execute("SELECT cert_id(%s)", (name,)).fetchone()[0]


def reminder_jobs(conn) -> list[dict]:
    return conn.cursor(row_factory=dict_row).execute(
        "SELECT * FROM jobs_overview WHERE kind = 'mail_reminder' ORDER BY id").fetchall()


def due_reminder(conn, *names: str, day: int = 61) -> dict:
    """Travel to `day` after T0, run the scheduler and claim the one reminder job it enqueued."""
    at(conn, T0 + dt.timedelta(days=day))
    plan = conn.execute("SELECT certificate, action FROM schedule()").fetchall()
    assert sorted(c for c, a in plan if a == "remind") == sorted(names), plan
    [row] = claim(conn, ["mail_reminder"])
    return row


@pytest.fixture
def smtp():
    with SMTPLab() as server:
        yield server


# --------------------------------------------------------------------------- end to end

def test_a_due_local_certificate_is_mailed_once(conn, smtp):
    cert = deployed_local_cert(conn, "www.example.org")
    assert conn.execute("SELECT * FROM schedule()").fetchall() == []
    at(conn, T0 + dt.timedelta(days=59))             # 31 days left: not yet
    assert [a for _c, _i, a, _r in conn.execute("SELECT * FROM schedule()").fetchall()] == []
    assert reminder_jobs(conn) == []

    row = due_reminder(conn, "www.example.org")       # 29 days left
    assert row["args"]["certificates"] == [{"name": "www.example.org", "instance": row["args"]["certificates"][0]["instance"],
                                            "not_after": "2027-04-01T00:00:00+00:00", "disabled": False}]
    result = mail.mail_reminder(as_job(row), context(conn, mail_config(smtp))).report
    complete(conn, row["id"], result)

    [got] = smtp.messages
    assert got.mail_from == "serverpki@example.org"
    assert got.rcpt_tos == RECIPIENTS
    assert got.message["Subject"] == "serverPKI: 1 local certificate must be issued"
    assert got.message["To"] == ", ".join(RECIPIENTS)
    body = got.message.get_content()
    assert "www.example.org  expires 2027-04-01 00:00 UTC (in 29 days)" in body
    assert "operate_serverPKI -C -o www.example.org" in body
    assert "operate_serverPKI -C -r 29" in body
    assert result == {"sent_to": RECIPIENTS, "certificates": ["www.example.org"], "message_id": got.message["Message-ID"]}
    [job] = reminder_jobs(conn)
    assert job["state"] == "done"
    assert conn.execute("SELECT result FROM jobs WHERE id = %s", (row["id"],)).fetchone()[0] == result
    assert conn.execute("SELECT authorized_until FROM certificates WHERE id = %s", (cert,)).fetchone()[0] == T0 + dt.timedelta(days=61)

    # reminded once: the same day and the next day the scheduler enqueues no other reminder
    for day in (61, 62):
        at(conn, T0 + dt.timedelta(days=day))
        assert [r for r in conn.execute("SELECT action FROM schedule()").fetchall() if r[0] == "remind"] == []
        assert claim(conn, ["mail_reminder"]) == []
    assert len(reminder_jobs(conn)) == 1
    assert len(smtp.messages) == 1


def test_one_message_lists_every_certificate_due(conn, smtp):
    deployed_local_cert(conn, "www.example.org")
    deployed_local_cert(conn, "mail.example.org", issued=T0 + dt.timedelta(days=5))   # expires 5 days later
    row = due_reminder(conn, "www.example.org", "mail.example.org", day=66)
    result = mail.mail_reminder(as_job(row), context(conn, mail_config(smtp))).report
    complete(conn, row["id"], result)

    [got] = smtp.messages
    assert got.message["Subject"] == "serverPKI: 2 local certificates must be issued"
    body = got.message.get_content()
    # soonest first, each with its own command; -r covers the one that expires last
    assert body.index("www.example.org   expires 2027-04-01") < body.index("mail.example.org  expires 2027-04-06")
    assert "(in 24 days)" in body and "(in 29 days)" in body
    assert "operate_serverPKI -C -o www.example.org" in body and "operate_serverPKI -C -o mail.example.org" in body
    assert "operate_serverPKI -C -r 29" in body
    assert sorted(result["certificates"]) == ["mail.example.org", "www.example.org"]


def test_a_disabled_certificate_is_reminded_marked_disabled(conn, smtp):
    """Issue 13.1, as the original: the scheduler skips a disabled certificate but still reminds, marked [DISABLED]."""
    deployed_local_cert(conn, "www.example.org")
    deployed_local_cert(conn, "mail.example.org")
    conn.execute("SELECT disable_cert('mail.example.org')")
    row = due_reminder(conn, "www.example.org", "mail.example.org")
    assert {c["name"]: c["disabled"] for c in row["args"]["certificates"]} == {"www.example.org": False, "mail.example.org": True}
    complete(conn, row["id"], mail.mail_reminder(as_job(row), context(conn, mail_config(smtp))))
    body = smtp.messages[0].message.get_content()
    line = next(line for line in body.splitlines() if "mail.example.org  expires" in line)
    assert line.endswith("[DISABLED]")
    assert "operate_serverPKI -C -o mail.example.org -i mail.example.org" in body      # -i: -C takes it then
    assert not next(line for line in body.splitlines() if "www.example.org   expires" in line).endswith("[DISABLED]")


def test_an_unreachable_relay_fails_the_job_for_a_retry(conn, smtp):
    deployed_local_cert(conn, "www.example.org")
    row = due_reminder(conn, "www.example.org")
    smtp.stop()                                       # connections are refused now
    with pytest.raises(RetryLater) as info:
        mail.mail_reminder(as_job(row), context(conn, mail_config(smtp)))
    assert "Connection refused" in str(info.value)
    state = conn.execute("SELECT fail_job(%s, %s, %s, true, %s * interval '1 second')",
                         (row["id"], lease_of(conn, row["id"], AGENT), str(info.value), info.value.retry_after)).fetchone()[0]
    assert state == "failed"
    [job] = reminder_jobs(conn)
    assert job["state"] == "failed" and job["attempts"] == 1
    assert f"mail relay 127.0.0.1:{smtp.port}" in job["last_error"] and "Connection refused" in job["last_error"]
    assert smtp.messages == []

    # the relay is back: after the back-off the same job is claimed again and mails once
    smtp.start()
    at(conn, job["run_after"])
    [again] = claim(conn, ["mail_reminder"])
    assert again["id"] == row["id"] and again["attempts"] == 2
    complete(conn, again["id"], mail.mail_reminder(as_job(again), context(conn, mail_config(smtp))))
    assert [j["state"] for j in reminder_jobs(conn)] == ["done"]
    assert len(smtp.messages) == 1


def test_a_permanent_rejection_gives_up_and_the_job_dies(conn, smtp):
    deployed_local_cert(conn, "www.example.org")
    row = due_reminder(conn, "www.example.org")
    smtp.refuse("550 5.1.1 mailbox unknown", at="RCPT")
    with pytest.raises(GiveUp) as info:
        mail.mail_reminder(as_job(row), context(conn, mail_config(smtp)))
    assert "550 5.1.1 mailbox unknown" in str(info.value) and "mail.recipients" in str(info.value)
    state = conn.execute("SELECT fail_job(%s, %s, %s, false)", (row["id"], lease_of(conn, row["id"], AGENT), str(info.value))).fetchone()[0]
    assert state == "dead"
    [job] = reminder_jobs(conn)
    assert job["state"] == "dead" and "mailbox unknown" in job["last_error"]


# --------------------------------------------------------------------------- the handler against the relay's faults

def reminder_job(job_id: int = 7) -> Job:
    args = {"certificates": [{"name": "www.example.org", "instance": 1, "not_after": "2027-04-01T00:00:00+00:00"}]}
    return Job(job_id, "mail_reminder", None, None, None, None, args, 1, 5)


def run(config) -> dict:
    """The delivery alone: the relay's faults need no database."""
    return mail.deliver(reminder_job(), config, dt.datetime.now(dt.timezone.utc))


@pytest.mark.parametrize("reply, at_step", [("451 4.3.0 try again later", "DATA"), ("421 4.7.0 busy", "RCPT"),
                                            ("452 4.2.2 mailbox full", "RCPT")])
def test_a_temporary_rejection_is_retry_later(smtp, reply, at_step):
    smtp.refuse(reply, at=at_step)
    with pytest.raises(RetryLater) as info:
        run(mail_config(smtp))
    assert reply.split(" ", 1)[1] in str(info.value)
    assert smtp.messages == []


def test_a_permanent_rejection_of_the_message_is_give_up(smtp):
    smtp.refuse("554 5.7.1 message refused", at="DATA")
    with pytest.raises(GiveUp, match="554 5.7.1 message refused"):
        run(mail_config(smtp))


def test_recipients_refused_while_others_accept_are_reported_not_retried(smtp):
    smtp.refuse("550 5.1.1 mailbox unknown", at="RCPT", address="pki@example.org")
    result = run(mail_config(smtp))
    # the others have the message: a retry would send it to them again
    assert result["sent_to"] == ["hostmaster@example.org"]
    assert result["refused"] == {"pki@example.org": "550 5.1.1 mailbox unknown"}
    [got] = smtp.messages
    assert got.rcpt_tos == ["hostmaster@example.org"]
    assert result["message_id"] == got.message["Message-ID"]
    assert result["message_id"].startswith("<serverpki-reminder-7-") and result["message_id"].endswith("@example.org>")


def test_a_relay_that_never_answers_times_out_as_retry_later(monkeypatch):
    monkeypatch.setattr(smtpclient, "SMTP_TIMEOUT", 0.5)
    with socket.socket() as silent:                   # accepts connections (backlog) but never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        config = mail_config(relay_port=silent.getsockname()[1])
        with pytest.raises(RetryLater, match="no answer within 0.5 s"):
            run(config)


@pytest.mark.parametrize("override, key", [
    ({"sender": None}, "mail.sender"),
    ({"recipients": []}, "mail.recipients"),
    ({"relay_host": "relay.example.org", "username": "pki", "password_file": "/nonexistent"}, "mail.starttls"),
])
def test_a_configuration_that_cannot_work_gives_up_naming_the_key(smtp, override, key):
    with pytest.raises(GiveUp, match=key.replace(".", r"\.")):
        run(mail_config(smtp, **override))
    assert smtp.messages == []


@pytest.mark.parametrize("override, key", [
    ({"sender": "not an address"}, "[mail] sender"),
    ({"sender": "a,b@example.org"}, "[mail] sender"),
    ({"username": "pki"}, "[mail] password_file"),
    ({"password_file": "/nonexistent"}, "[mail] username"),
])
def test_a_configuration_that_cannot_work_is_refused_when_read_naming_the_key(smtp, override, key):
    """What [mail] itself shows to be wrong never reaches the handler: the configuration is refused."""
    with pytest.raises(ConfigError, match=re.escape(f"{CONFIG_FILE}: {key}: ")):
        mail_config(smtp, **override)


def test_args_without_certificates_give_up():
    job = Job(8, "mail_reminder", None, None, None, None, {}, 1, 5)
    with pytest.raises(GiveUp, match="no certificates"):
        mail.deliver(job, mail_config(), dt.datetime.now(dt.timezone.utc))


# --------------------------------------------------------------------------- STARTTLS and AUTH

@pytest.fixture
def tls_smtp(monkeypatch, tmp_path):
    with SMTPLab(tls=True, users={"pki": "s3cret"}) as server:
        # the client trusts the lab's self-signed certificate through OpenSSL's default verify paths
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cafile))
        (tmp_path / "password").write_text("s3cret\n")
        (tmp_path / "password").chmod(0o600)  # a secret file must be private (secretfile)
        yield server, tmp_path / "password"


@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")
def test_starttls_and_login(tls_smtp):
    server, password = tls_smtp
    result = run(mail_config(server, starttls=True, username="pki", password_file=str(password)))
    [got] = server.messages
    assert got.tls and got.login == "pki"
    assert result["sent_to"] == RECIPIENTS


@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")
def test_a_wrong_password_gives_up_naming_the_password_file(tls_smtp, tmp_path):
    server, _ = tls_smtp
    (tmp_path / "wrong").write_text("guess\n")
    (tmp_path / "wrong").chmod(0o600)
    with pytest.raises(GiveUp, match=r"refused the login of pki: 535 .*mail\.password_file"):
        run(mail_config(server, starttls=True, username="pki", password_file=str(tmp_path / "wrong")))
    assert server.messages == []


def test_without_login_a_relay_that_wants_one_gives_up(tls_smtp):
    server, _ = tls_smtp
    with pytest.raises(GiveUp, match=r"530 .*Authentication required.*mail\.username"):
        run(mail_config(server, starttls=True))


def test_an_untrusted_relay_certificate_gives_up(tls_smtp, monkeypatch):
    server, _ = tls_smtp
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(GiveUp, match="not trusted"):
        run(mail_config(server, starttls=True))


def test_starttls_asked_of_a_relay_without_it_gives_up(smtp):
    with pytest.raises(GiveUp, match=r"mail\.starttls"):
        run(mail_config(smtp, starttls=True))


def test_the_real_configuration_drives_the_handler(smtp, tmp_path):
    from serverpki.config import parse_config

    config = parse_config({"mail": {"relay_host": smtp.host, "relay_port": smtp.port, "sender": "pki@example.org",
                                    "recipients": ["hostmaster@example.org"]}}, tmp_path / "serverpki.toml")
    result = run(config)
    assert result["sent_to"] == ["hostmaster@example.org"]
    [got] = smtp.messages
    assert got.mail_from == "pki@example.org" and got.rcpt_tos == ["hostmaster@example.org"]
