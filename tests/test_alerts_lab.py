"""Alerts end to end in the lab: a Pebble that refuses every order makes `operate_serverPKI -S -q -a`
(the cron run, as pki_cron) send exactly one alert mail through the lab's SMTP relay and one webhook
POST to an HTTP receiver on loopback, naming the certificate, the job and the error; the next run
tells nothing new; the metrics show the alert and `serverpki metrics --check` (as pki_reader) is CRITICAL;
once Pebble is mended the certificate is issued, the resolved notice goes out once, and the check is OK.

How Pebble refuses: its VA asks a small DNS gate on loopback instead of BIND; while the gate is shut
it answers every TXT question with a value no order asked for, so each dns-01 challenge fails
("the CA saw other TXT records": the issue job dies). Opened, the gate forwards to BIND. Pebble keeps
running throughout, with its accounts.
"""

from __future__ import annotations

import json
import socket
import threading

import dns.message
import dns.query
import dns.rdatatype
import dns.rrset
import pytest
from psycopg.rows import dict_row
from typer.testing import CliRunner

from prometheus_client.parser import text_string_to_metric_families

from lab import roles
from lab.bind import BindLab
from lab.pebble import PebbleLab
from lab.smtp import SMTPLab
from serverpki.admin import app as admin_app
from serverpki.operate import app
from test_alerts import Receiver

ZONE = "demo.serverpki.test"
CERT = f"alerted.{ZONE}"
# the certificate's one target is on a disthost the runs skip (-s): no SSH host is needed, and -n finds
# no problem, so once the CA is mended nothing is left to alert on (metrics --check: OK)
SKIPPED_HOST = "web.alerted.test"
CRON_RUN = ("-S", "-q", "-a", "-s", SKIPPED_HOST)
runner = CliRunner()


class DnsGate:
    """UDP DNS on 127.0.0.1 between Pebble and BIND: shut, it answers TXT questions with a wrong value."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.shut = True
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True, name="dns-gate")

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return   # closed
            try:
                query = dns.message.from_wire(data)
                question = query.question[0]
                if self.shut and question.rdtype == dns.rdatatype.TXT:
                    answer = dns.message.make_response(query)
                    answer.answer.append(dns.rrset.from_text(question.name, 60, "IN", "TXT", '"not-what-the-order-asked"'))
                else:
                    answer = dns.query.udp(query, "127.0.0.1", port=self.upstream_port, timeout=5)
                self.sock.sendto(answer.to_wire(), peer)
            except Exception:   # a question it cannot take stays unanswered, as on a real network
                continue

    def __enter__(self) -> "DnsGate":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def bind():
    with BindLab(zones=(ZONE,)) as lab:
        yield lab


@pytest.fixture(scope="module")
def gate(bind):
    with DnsGate(bind.port) as g:
        yield g


@pytest.fixture(scope="module")
def pebble(gate):
    with PebbleLab(dns_port=gate.port) as lab:
        yield lab


@pytest.fixture
def smtp():
    with SMTPLab() as server:
        yield server


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
def env(pg_server, dbname, tmp_path, bind, pebble, smtp, receiver):
    """The cron run's environment: pki_cron, and a configuration that reaches every peer."""
    config = tmp_path / "serverpki.toml"
    config.write_text(f"""
[acme]
directory_url = "{pebble.directory_url}"
contact_email = "pki@example.org"
agree_tos = true
ca_bundle = "{pebble.ca_bundle}"
[dns]
tsig_key_file = "{bind.key_file}"
primary = "{bind.primary}"
propagation_timeout_seconds = 10
[mail]
relay_host = "{smtp.host}"
relay_port = {smtp.port}
sender = "serverpki@example.org"
recipients = ["pki-admins@example.org"]
[alerts]
mail = true
webhook_url = "{receiver.url}"
webhook_timeout_seconds = 5
[logging]
syslog_address = ""
[agent]
name = "cron-lab"
lease_seconds = 60
""")
    return {**pg_server.env(dbname), "SERVERPKI_CONFIG": str(config)}


def run(env, *args):
    return runner.invoke(app, list(args), env=env)


def monitor(reader_env, *args):
    """`serverpki metrics ARGS` as the monitoring login (pki_reader)."""
    return runner.invoke(admin_app, ["metrics", *args], env=reader_env)


def samples(text: str) -> dict[tuple, float]:
    """The exposition parsed by prometheus_client: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def issue_jobs(conn) -> list[dict]:
    return conn.cursor(row_factory=dict_row).execute(
        "SELECT id, state::text, last_error FROM jobs WHERE kind = 'issue_acme' ORDER BY id").fetchall()


def test_a_refusing_ca_is_told_once_and_its_end_once(conn, env, gate, smtp, receiver, pg_server, dbname):
    reader = {**env, **pg_server.env(dbname, roles.READER)}
    assert run(env, "-Z").exit_code == 0             # the ACME account; no certificate yet: nothing to tell
    conn.execute("SELECT * FROM add_cert(%s, 'server', 'LE', 'ec', false, NULL, NULL, NULL, NULL, NULL, NULL)", (CERT,))
    conn.execute("SELECT add_disthost(%s)", (SKIPPED_HOST,))
    conn.execute("SELECT add_place('alerted', 'combine key', '/etc/ssl/alerted')")
    conn.execute("SELECT add_target(%s, %s, NULL, 'alerted')", (CERT, SKIPPED_HOST))
    assert smtp.messages == [] and receiver.posts == []

    gate.shut = True
    first = run(env, *CRON_RUN)
    assert first.exit_code == 1, first.output        # the issue job died: a job failed
    [dead] = issue_jobs(conn)
    assert dead["state"] == "dead" and dead["last_error"], dead
    error = dead["last_error"].splitlines()[0][:80]

    [mail] = smtp.messages
    assert mail.rcpt_tos == ["pki-admins@example.org"]
    assert mail.message["Subject"].startswith("serverPKI: 1 critical, ")
    body = mail.message.get_content()
    assert f"issue_acme job failed for good for certificate {CERT}" in body
    assert f"job {dead['id']}" in body and error in body
    [post] = receiver.posts
    doc = post["body"]
    assert doc["schema"] == "serverpki.alerts/1" and doc["counts"]["critical"] == 1
    [alert] = [a for a in doc["alerts"] if a["alert_key"].startswith("job:issue_acme:")]
    assert alert["certificate"] == CERT and alert["job"] == dead["id"] and error in alert["detail"]
    assert alert["status"] == "new" and alert["severity"] == "critical"
    assert "Authorization" not in post["headers"]     # no token configured, none sent

    # the metrics show it, and the Nagios check is CRITICAL naming it
    shown = monitor(reader)
    assert shown.exit_code == 0, shown.output
    metrics = samples(shown.stdout)
    assert metrics[("serverpki_alerts", (("severity", "critical"),))] == 1
    assert metrics[("serverpki_jobs", (("kind", "issue_acme"), ("state", "dead")))] == 1
    check = monitor(reader, "--check")
    assert check.exit_code == 2, check.output
    assert check.stdout.startswith("SERVERPKI CRITICAL") and CERT in check.stdout

    # the next run meets the same refusal: the alert is the same, nobody is told again
    run(env, *CRON_RUN)
    assert len(smtp.messages) == 1 and len(receiver.posts) == 1

    # Pebble mended: the certificate is issued, and the end of the alert is told once
    gate.shut = False
    mended = run(env, *CRON_RUN)
    assert mended.exit_code == 0, mended.output
    assert issue_jobs(conn)[-1]["state"] == "done"
    assert conn.execute("SELECT count(*) FROM certinstances i JOIN subjects s ON s.certificate = i.certificate "
                        "WHERE s.name = %s AND i.state = 'issued'", (CERT,)).fetchone()[0] == 1
    assert len(smtp.messages) == 2 and len(receiver.posts) == 2
    resolved = smtp.messages[1].message
    assert "1 resolved" in resolved["Subject"]
    assert f"issue_acme job failed for good for certificate {CERT}" in resolved.get_content()
    assert [r["alert_key"] for r in receiver.posts[1]["body"]["resolved"]] == [alert["alert_key"]]
    assert run(env, *CRON_RUN).exit_code == 0
    assert len(smtp.messages) == 2 and len(receiver.posts) == 2
    # mended, nothing is left to alert on: OK, and the metrics show no open alert
    check = monitor(reader, "--check")
    assert check.exit_code == 0 and check.stdout.startswith("SERVERPKI OK"), check.output
    metrics = samples(monitor(reader).stdout)
    assert metrics[("serverpki_alerts", (("severity", "critical"),))] == 0
    assert metrics[("serverpki_alerts", (("severity", "warning"),))] == 0
    assert json.dumps(receiver.posts[1]["body"])   # the document is plain JSON
