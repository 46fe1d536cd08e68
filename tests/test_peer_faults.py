"""Peers failing (issue 8, item 3): BIND stopped, an sshd stopped or cut off, Pebble rejecting
nonces and failing validations, PostgreSQL restarted in the middle of a run — on the real lab
(tests/fleet.py), with the example configuration.

For every fault: break the peer, run operate_serverPKI as cron does and check that it exits
non-zero and says what failed on stderr, that the job is `failed` (not dead) with its next
attempt in the future and a readable error in the jobs views, that no certificate instance
moved on (states, tlsa_published and the events are as before), and that a second run while
the peer is still broken backs off longer. Then mend the peer, move the database clock past
the back-off and check that the fleet converges: Fleet.problems() == [].

What the module tried (faults injected, runs, jobs retried) is printed at its end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import dns.flags
import dns.message
import dns.query
import dns.rcode
import paramiko
import pytest
from psycopg.rows import dict_row

from fleet import Fleet
from serverpki import sshclient
from lab.netns import IsolatedHost, namespaces_left
from lab.sshd import SSHLab
from helpers import need_root

@pytest.fixture(autouse=True)
def _root():
    need_root("the lab's sshd and network namespaces need it")

ZONE = "demo.serverpki.test"
WWW, MAIL, INTRANET, CLIENT = f"www.{ZONE}", f"mail.{ZONE}", f"intranet.{ZONE}", "backup_op"
WEB1, JAILHOST = f"web1.{ZONE}", f"jailhost.{ZONE}"

# what the module tried, for docs/reliability.md
FIGURES: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def figures(request):
    started = time.monotonic()
    yield
    lines = [f"peer faults: {FIGURES['faults']} faults injected, {FIGURES['runs']} runs "
             f"({FIGURES['failed runs']} exited non-zero), {FIGURES['jobs retried']} jobs retried "
             f"({FIGURES['attempts']} attempts of them), {FIGURES['bad nonces answered']} bad nonces answered "
             f"by the client, {FIGURES['fleets']} fleets, {time.monotonic() - started:.0f} s"]
    lines += [f"  {n} x {key[len('fault: '):]}" for key, n in sorted(FIGURES.items()) if key.startswith("fault: ")]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines))


# --------------------------------------------------------------------------- the fleet and its runs

@pytest.fixture
def fleet():
    with Fleet() as fleet:
        yield prepared(fleet)
        count_retries(fleet)


def prepared(fleet: Fleet) -> Fleet:
    """The local certificates issued (-C; -S deploys them), and the database clock fixed from here
    on (PGOPTIONS), so a back-off is exactly run_after - fleet.now."""
    FIGURES["fleets"] += 1
    fleet.later(seconds=0)
    run = cli(fleet, "-C", "-o", INTRANET, "-o", CLIENT)
    assert run.returncode == 0, run.stderr
    return fleet


def count_retries(fleet: Fleet) -> None:
    try:
        retried, attempts = fleet.conn.execute(
            "SELECT count(*), coalesce(sum(attempts), 0) FROM jobs WHERE attempts > 1").fetchone()
    except Exception:  # the database of a failed test may be gone
        return
    FIGURES["jobs retried"] += retried
    FIGURES["attempts"] += attempts


def fault(what: str) -> None:
    FIGURES["faults"] += 1
    FIGURES[f"fault: {what}"] += 1


def cli(fleet: Fleet, *args: str, **kw) -> subprocess.CompletedProcess:
    FIGURES["runs"] += 1
    run = fleet.cli(*args, **kw)
    FIGURES["failed runs"] += run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr
    return run


def failing_run(fleet: Fleet, *args: str, says: list[str]) -> subprocess.CompletedProcess:
    """A run while a peer is broken: non-zero, no traceback, the failure named on stderr."""
    run = cli(fleet, *args)
    assert run.returncode != 0, run.stderr
    for part in says:
        assert part in run.stderr, (part, run.stderr)
    return run


def converge(fleet: Fleet) -> None:
    runs = fleet.settle()
    FIGURES["runs"] += len(runs)
    FIGURES["failed runs"] += sum(r.returncode != 0 for r in runs)
    assert runs[-1].returncode == 0, runs[-1].stderr
    assert fleet.problems() == []
    running = fleet.conn.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()
    assert running == []


# --------------------------------------------------------------------------- what the database says

def job(fleet: Fleet, kind: str, certificate: str | None = None, disthost: str | None = None) -> dict:
    """The newest job of this kind (for this certificate / disthost), from the jobs view."""
    rows = fleet.conn.cursor(row_factory=dict_row).execute(
        """SELECT * FROM jobs_overview WHERE kind = %s AND (%s::text IS NULL OR certificate = %s)
              AND (%s::text IS NULL OR disthost = %s) ORDER BY id DESC""",
        (kind, certificate, certificate, disthost, disthost)).fetchall()
    assert rows, f"no {kind} job for {certificate or disthost}"
    return rows[0]


def backing_off(fleet: Fleet, row: dict, *says: str) -> dt.timedelta:
    """The job failed, will be retried (not dead), later: returns its back-off. Its error is readable
    in jobs_overview and in jobs_summary."""
    assert row["state"] == "failed", row
    assert row["attempts"] < row["max_attempts"], row
    assert row["locked_by"] is None and row["locked_until"] is None, row
    backoff = row["run_after"] - fleet.now
    assert backoff > dt.timedelta(0), row
    error = row["last_error"]
    assert error and "Traceback" not in error and "\n" not in error.strip(), row
    for part in says:
        assert part in error, (part, error)
    summary = dict(fleet.conn.execute(
        "SELECT kind, last_error FROM jobs_summary WHERE state = 'failed' AND kind = %s", (row["kind"],)).fetchall())
    assert summary[row["kind"]], summary
    return backoff


def state(fleet: Fleet, certificate: str) -> dict:
    """The certificate's instances (state, tlsa_published) and its state transitions so far."""
    instances = {i: (s, published) for i, s, published in fleet.conn.execute(
        """SELECT ci.id, ci.state::text, ci.tlsa_published FROM certinstances ci
             JOIN subjects s ON s.certificate = ci.certificate AND NOT s.isaltname
            WHERE s.name = %s ORDER BY ci.id""", (certificate,))}
    transitions = set(fleet.conn.execute(
        """SELECT e.id, e.instance, e.from_state::text, e.to_state::text FROM events e
             JOIN subjects s ON s.certificate = e.certificate AND NOT s.isaltname
            WHERE s.name = %s AND e.to_state IS NOT NULL""", (certificate,)).fetchall())
    return {"instances": instances, "transitions": transitions}


def nothing_advanced(before: dict, after: dict) -> None:
    """No instance changed state or TLSA date; new instances are only reserved for an issue job."""
    for inst, was in before["instances"].items():
        assert after["instances"].get(inst) == was, (inst, was, after["instances"].get(inst))
    new = {i: s for i, s in after["instances"].items() if i not in before["instances"]}
    assert all(s == ("reserved", None) for s in new.values()), new
    moved = after["transitions"] - before["transitions"]
    assert all(frm is None and to == "reserved" for _, _, frm, to in moved), moved


def value(fleet: Fleet, sql: str, *params):
    """The first column of the first row."""
    return fleet.conn.execute(sql, params).fetchone()[0]


def deployed_on(fleet: Fleet, instance: int) -> set[str]:
    return {h for (h,) in fleet.conn.execute(
        """SELECT d.fqdn::text FROM deployments dep JOIN targets t ON t.id = dep.target
             JOIN disthosts d ON d.id = t.disthost WHERE dep.instance = %s""", (instance,))}


def challenge_records(fleet: Fleet) -> list[str]:
    return [p for p in fleet.problems() if p.startswith("challenge records left")]


# --------------------------------------------------------------------------- peers

class DnsRelay:
    """A UDP name server that Pebble validates against instead of BIND: it forwards to BIND
    ('forward'), or answers like a server that lacks the records ('stale': NOERROR, no data);
    on_challenge() is called once, at the first question for an _acme-challenge name."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.mode = "forward"
        self.on_challenge = None
        self.questions = Counter()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="dns-relay")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            self.questions[self.mode] += 1
            if self.on_challenge and any(q.name.to_text().startswith("_acme-challenge.") for q in query.question):
                hook, self.on_challenge = self.on_challenge, None
                hook()
            if self.mode == "stale":
                reply = dns.message.make_response(query)
                reply.flags |= dns.flags.AA
            else:
                try:
                    reply = dns.query.udp(query, "127.0.0.1", port=self.upstream_port, timeout=1)
                except Exception:
                    reply = dns.message.make_response(query)
                    reply.set_rcode(dns.rcode.SERVFAIL)
            try:
                self.sock.sendto(reply.to_wire(), peer)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def pebble_resolving_at(fleet: Fleet, port: int, **knobs) -> None:
    """Pebble started again, validating against the name server at port (and with the knobs,
    e.g. nonce_reject); a new Pebble forgets its accounts, so register again (-Z)."""
    pebble = fleet.lab.pebble
    pebble.stop()
    pebble.dns_port = port
    for name, value in knobs.items():
        setattr(pebble, name, value)
    pebble.start()
    run = cli(fleet, "-Z")
    assert run.returncode == 0, run.stderr


def ssh_timeouts(fleet: Fleet, connect: int, command: int) -> None:
    """Short [ssh] timeouts in the agent's configuration (read by every run)."""
    text = fleet.lab.config.read_text()
    assert "connect_timeout_seconds" not in text
    fleet.lab.config.write_text(text.replace(
        "[ssh]\n", f"[ssh]\nconnect_timeout_seconds = {connect}\ncommand_timeout_seconds = {command}\n", 1))


def slow_reloads(fleet: Fleet, fqdn: str, seconds: float) -> Path:
    """The host's reload commands (the lab's service and jexec shims) touch a marker first, then
    sleep; returns the marker's path on this machine."""
    root = fleet.lab.ssh.host(fqdn).root
    for shim in ("service", "jexec"):
        path = root / "usr/sbin" / shim
        text = path.read_text()
        if "reload-started" not in text:
            path.write_text(text.replace("#!/bin/sh\n", "#!/bin/sh\ntouch /var/log/reload-started\n"
                                                         f"sleep {seconds}\n", 1))
    marker = root / "var/log/reload-started"
    marker.unlink(missing_ok=True)
    return marker


def when_exists(path: Path, action, timeout: float = 60) -> threading.Thread:
    """Run action() (in a thread) as soon as path exists."""
    def watch():
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        action()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def drop_test_connection(fleet: Fleet) -> None:
    """The test's own connection does not survive a restart of the cluster; the next use reconnects."""
    if fleet._conn is not None:
        fleet._conn.close()


# =========================================================================== BIND

def test_bind_stopped_during_issuance(fleet):
    # 1. BIND is down before the run: the dns-01 zone lookup is refused
    fault("BIND stopped before issuance")
    fleet.lab.bind.stop()
    before = state(fleet, WWW)
    failing_run(fleet, "-S", "-a", says=[f"issue_acme {WWW}: ACME order for {WWW}: DNS server {fleet.lab.bind.primary} "
                                         "unreachable (Connection refused)", "(failed)"])
    issue = job(fleet, "issue_acme", WWW)
    first = backing_off(fleet, issue, "unreachable (Connection refused)", fleet.lab.bind.primary)
    after = state(fleet, WWW)
    nothing_advanced(before, after)
    assert list(after["instances"].values()) == [("reserved", None)]
    # the local certificates did not need BIND: they are out
    assert set(fleet.deployed()) == {INTRANET, CLIENT}

    # still down after the back-off: tried again, failed again, backs off longer
    fleet.later(seconds=first.total_seconds() + 1)
    failing_run(fleet, "-S", "-a", says=["unreachable (Connection refused)"])
    again = job(fleet, "issue_acme", WWW)
    assert again["id"] == issue["id"] and again["attempts"] == 2
    assert backing_off(fleet, again, "Connection refused") > first
    nothing_advanced(before, state(fleet, WWW))

    # 2. BIND comes back, and stops again while the CA validates: the TXT records are out, the
    #    CA's lookup fails, and they cannot be removed — the next attempt removes them
    fleet.lab.bind.start()
    relay = DnsRelay(fleet.lab.bind.port)
    try:
        pebble_resolving_at(fleet, relay.port)
        fault("BIND stopped while the CA validates dns-01")
        relay.on_challenge = fleet.lab.bind.stop
        fleet.later(hours=1)
        # (the restarted Pebble forgot the orders of the first attempts: they are replaced, not an error)
        failing_run(fleet, "-S", "-a", says=["is gone (HTTP 404", f"issue_acme {WWW}: ACME order for {WWW}: validation of"])
        third = job(fleet, "issue_acme", WWW)
        assert third["id"] == issue["id"] and third["attempts"] == 3
        backing_off(fleet, third, "Error retrieving TXT records", "the CA could not see the TXT records")
        assert not fleet.lab.bind.running
        nothing_advanced(before, state(fleet, WWW))
        fleet.lab.bind.start()
        left = challenge_records(fleet)
        assert left and all(WWW in p or MAIL in p for p in left), left   # in BIND's journal, as the agent left them

        # 3. all well: the next attempt cleans up first, places a new order, and the fleet converges
        fleet.later(hours=1)
        run = cli(fleet, "-S", "-a")
        assert run.returncode == 0, run.stderr
        done = job(fleet, "issue_acme", WWW)
        assert done["id"] == issue["id"] and done["state"] == "done" and done["attempts"] == 4
        converge(fleet)
    finally:
        relay.close()


@pytest.mark.slow
def test_bind_stopped_during_tlsa_publication(fleet):
    converge(fleet)
    active = fleet.deployed()[WWW]
    owners = [f"_443._tcp.{WWW}", f"_25._tcp.{MAIL}"]
    served = {o: fleet.tlsa_served(o) for o in owners}
    # a successor that outlives the active instance by more than a month (Pebble's clock is the real one)
    fleet.lab.restart_pebble(validity_days=200)
    assert cli(fleet, "-Z").returncode == 0
    assert cli(fleet, "-C", "-o", WWW).returncode == 0
    successor = max(i for i, (s, _) in state(fleet, WWW)["instances"].items() if s == "issued")

    # into the prepublish window, with BIND down: the TLSA job fails, the successor stays issued
    fleet.later(days=61)
    fault("BIND stopped before TLSA publication")
    fleet.lab.bind.stop()
    before = state(fleet, WWW)
    failing_run(fleet, "-S", "-a",
                says=[f"publish_tlsa {WWW}: TLSA records: DNS server {fleet.lab.bind.primary} unreachable"])
    tlsa = job(fleet, "publish_tlsa", WWW)
    first = backing_off(fleet, tlsa, "TLSA records: DNS server", "unreachable")
    nothing_advanced(before, state(fleet, WWW))
    assert before["instances"][successor] == ("issued", None)

    fleet.later(seconds=first.total_seconds() + 1)
    failing_run(fleet, "-S", "-a", says=["publish_tlsa"])
    again = job(fleet, "publish_tlsa", WWW)
    assert again["id"] == tlsa["id"] and again["attempts"] == 2
    assert backing_off(fleet, again) > first
    nothing_advanced(before, state(fleet, WWW))

    # BIND back: DNS still has the active instance's records only, until the retry publishes both
    fleet.lab.bind.start()
    assert {o: fleet.tlsa_served(o) for o in owners} == served
    fleet.later(hours=1)
    run = cli(fleet, "-S", "-a")
    assert run.returncode == 0, run.stderr
    now = state(fleet, WWW)["instances"]
    assert now[successor][0] == "prepublished" and now[successor][1] == fleet.now
    assert now[active][0] == "deployed"
    assert all(fleet.tlsa_served(o) > served[o] for o in owners)     # the successor's records joined the active's
    converge(fleet)
    # and the rollover completes in the DANE-safe order (the problems check the history)
    fleet.later(days=28)
    converge(fleet)
    assert fleet.deployed()[WWW] == successor


# =========================================================================== sshd

def test_sshd_stopped(fleet):
    fault("sshd stopped")
    host = fleet.lab.ssh.host(JAILHOST)
    host.stop()
    before = state(fleet, WWW)
    failing_run(fleet, "-S", "-a", says=[f"distribute {WWW} -> {JAILHOST}: root@{JAILHOST}", "cannot connect", "Connection refused"])
    dist = job(fleet, "distribute", WWW, JAILHOST)
    first = backing_off(fleet, dist, JAILHOST, "cannot connect", "Connection refused")
    # issued, on web1, but not deployed: jailhost did not get it
    (instance, (st, _)), = [(i, s) for i, s in state(fleet, WWW)["instances"].items()]
    assert st == "issued"
    assert job(fleet, "distribute", WWW, WEB1)["state"] == "done"
    assert deployed_on(fleet, instance) == {WEB1}
    assert fleet.deployed().get(WWW) is None
    after = state(fleet, WWW)
    assert {(f, t) for _, _, f, t in after["transitions"] - before["transitions"]} == {
        (None, "reserved"), ("reserved", "issued")}
    assert fleet.tlsa_served(f"_443._tcp.{WWW}") == set()   # TLSA follows the deployment, which did not happen

    fleet.later(seconds=first.total_seconds() + 1)
    failing_run(fleet, "-S", "-a", says=["Connection refused"])
    again = job(fleet, "distribute", WWW, JAILHOST)
    assert again["id"] == dist["id"] and again["attempts"] == 2
    assert backing_off(fleet, again, "Connection refused") > first
    nothing_advanced(after, state(fleet, WWW))

    host.start()
    fleet.later(hours=1)
    run = cli(fleet, "-S", "-a")
    assert run.returncode == 0, run.stderr
    assert fleet.deployed()[WWW] == instance
    converge(fleet)


@pytest.mark.slow
def test_sshd_cut_off_in_a_network_namespace(fleet):
    connect_timeout, command_timeout = 3, 4
    ssh_timeouts(fleet, connect_timeout, command_timeout)
    with IsolatedHost(fleet.lab.ssh, JAILHOST) as isolated:
        assert isolated.netns in namespaces_left()
        # 1. the link is cut before the run: packets vanish, the connection attempt times out
        fault("sshd host cut off (before connecting)")
        isolated.cut()
        before = state(fleet, WWW)
        started = time.monotonic()
        failing_run(fleet, "-S", "-a", says=[f"root@{JAILHOST} ({isolated.address}:", "cannot connect", "timed out"])
        took = time.monotonic() - started
        assert took < connect_timeout + 10, took    # the ACME order and web1's distribution included
        dist = job(fleet, "distribute", WWW, JAILHOST)
        first = backing_off(fleet, dist, "cannot connect", "timed out")
        (instance, (st, _)), = state(fleet, WWW)["instances"].items()
        assert st == "issued"
        assert job(fleet, "distribute", WWW, WEB1)["state"] == "done"   # the other host got it
        assert deployed_on(fleet, instance) == {WEB1}
        after = state(fleet, WWW)
        assert {(f, t) for _, _, f, t in after["transitions"] - before["transitions"]} == {
            (None, "reserved"), ("reserved", "issued")}

        # 2. the link works when the agent connects, and is cut while the reload command runs:
        #    the command's end never arrives, the job fails after the command timeout, files in place
        isolated.restore()
        marker = slow_reloads(fleet, JAILHOST, 2)   # shorter than the command timeout
        fault("sshd host cut off (in mid-session)")
        watcher = when_exists(marker, isolated.cut)
        fleet.later(seconds=first.total_seconds() + 1)
        started = time.monotonic()
        failing_run(fleet, "-S", "-a", says=[f"distribute {WWW} -> {JAILHOST}: {JAILHOST}: the files are in place, but reload",
                                             f"timed out after {command_timeout} s"])
        took = time.monotonic() - started
        watcher.join(timeout=1)
        assert isolated.is_cut
        assert took < command_timeout + 10, took
        again = job(fleet, "distribute", WWW, JAILHOST)
        assert again["id"] == dist["id"] and again["attempts"] == 2
        assert backing_off(fleet, again, "timed out") > first
        nothing_advanced(after, state(fleet, WWW))
        assert deployed_on(fleet, instance) == {WEB1}

        # 3. the link is back
        isolated.restore()
        fleet.later(hours=1)
        run = cli(fleet, "-S", "-a")
        assert run.returncode == 0, run.stderr
        assert fleet.deployed()[WWW] == instance
        converge(fleet)
    assert isolated.netns not in namespaces_left()


def test_ssh_session_to_a_host_cut_off_ends_within_the_timeouts():
    """SFTP requests, commands and connections to a host that went silent end within the [ssh]
    timeouts (paramiko alone waits for SFTP answers forever)."""
    fqdn = "cut.lab.serverpki.test"
    with SSHLab([fqdn]) as lab, IsolatedHost(lab, fqdn) as isolated:
        ssh = SimpleNamespace(known_hosts=lab.known_hosts, config_file=lab.client_config, user="root",
                              identity_file=lab.identity, connect_timeout_seconds=2, command_timeout_seconds=3)
        conn = sshclient.connect(fqdn, ssh)
        try:
            conn.makedirs("/srv/tls")
            conn.put_atomic(sshclient.RemoteFile("/srv/tls/a.pem", b"a\n", 0o644))
            fault("sshd host cut off (SFTP session open)")
            isolated.cut()
            started = time.monotonic()
            with pytest.raises((OSError, paramiko.SSHException, EOFError)):
                conn.put_atomic(sshclient.RemoteFile("/srv/tls/b.pem", b"b\n", 0o644))
            # the write waits one command timeout, removing its temporary file another
            assert time.monotonic() - started < 2 * 3 + 3
            started = time.monotonic()
            try:
                result = conn.run("true")
                assert result.exit is None
            except (sshclient.SSHError, paramiko.SSHException, EOFError, OSError):
                pass
            assert time.monotonic() - started < 3 + 3
        finally:
            started = time.monotonic()
            conn.close()
            assert time.monotonic() - started < 3
        started = time.monotonic()
        with pytest.raises(sshclient.HostUnreachable, match="timed out"):
            sshclient.connect(fqdn, ssh)
        assert time.monotonic() - started < 2 + 3
        isolated.restore()
        with sshclient.connect(fqdn, ssh) as again:
            assert again.read("/srv/tls/a.pem") == b"a\n"
            assert again.lstat("/srv/tls/b.pem") is None    # never renamed into place


# =========================================================================== Pebble

def test_pebble_rejecting_30_percent_of_nonces(fleet):
    fault("Pebble rejects 30% of nonces")
    pebble_resolving_at(fleet, fleet.lab.bind.port, nonce_reject=30)
    run = cli(fleet, "-S", "-a")
    assert run.returncode == 0, run.stderr
    assert cli(fleet, "-C", "-o", WWW).returncode == 0      # a second order, for more nonces
    rows = fleet.conn.execute(
        "SELECT kind, attempts, result FROM jobs WHERE kind IN ('issue_acme', 'register_acme')").fetchall()
    # the client retries a rejected nonce itself: no job needed a second attempt
    assert rows and all(attempts == 1 for _, attempts, _ in rows), rows
    issues = [result for kind, _, result in rows if kind == "issue_acme"]
    assert len(issues) == 2 and sum(r["bad_nonces"] for r in issues) > 0, issues
    FIGURES["bad nonces answered"] += sum(r["bad_nonces"] for r in issues)
    converge(fleet)


def test_pebble_failing_validations(fleet):
    relay = DnsRelay(fleet.lab.bind.port)
    try:
        # the CA validates at a name server that lacks the challenge records
        fault("Pebble validating at a name server without the records")
        relay.mode = "stale"
        pebble_resolving_at(fleet, relay.port)
        before = state(fleet, WWW)
        failing_run(fleet, "-S", "-a", says=[f"issue_acme {WWW}: ACME order for {WWW}: validation of",
                                             "No TXT records found", "(failed)"])
        issue = job(fleet, "issue_acme", WWW)
        first = backing_off(fleet, issue, "urn:ietf:params:acme:error:unauthorized", "No TXT records found",
                            "a new order follows")
        nothing_advanced(before, state(fleet, WWW))
        assert challenge_records(fleet) == []      # removed after the failed validation
        orders = [value(fleet, "SELECT result -> 'orders' FROM jobs WHERE id = %s", issue["id"])]
        assert set(orders[0]) == {"rsa", "ec"}

        fleet.later(seconds=first.total_seconds() + 1)
        failing_run(fleet, "-S", "-a", says=["No TXT records found"])
        again = job(fleet, "issue_acme", WWW)
        assert again["id"] == issue["id"] and again["attempts"] == 2
        assert backing_off(fleet, again, "No TXT records found") > first
        nothing_advanced(before, state(fleet, WWW))
        orders.append(value(fleet, "SELECT result -> 'orders' FROM jobs WHERE id = %s", issue["id"]))
        # the first order is invalid: the second attempt placed new ones
        assert not set(orders[0].values()) & set(orders[1].values())

        # the CA sees the records again: the next attempt places a NEW order and succeeds
        relay.mode = "forward"
        fleet.later(hours=1)
        run = cli(fleet, "-S", "-a")
        assert run.returncode == 0, run.stderr
        done = fleet.conn.execute("SELECT state::text, attempts, result FROM jobs WHERE id = %s",
                                  (issue["id"],)).fetchone()
        assert done[0] == "done" and done[1] == 3
        assert done[2]["orders_placed"] == 2 and done[2]["orders_resumed"] == 0
        assert not set(done[2]["orders"].values()) & (set(orders[0].values()) | set(orders[1].values()))
        assert relay.questions["stale"] > 0 and relay.questions["forward"] > 0
        converge(fleet)
    finally:
        relay.close()


# =========================================================================== PostgreSQL

def _background(fleet: Fleet, *args: str) -> subprocess.Popen:
    FIGURES["runs"] += 1
    return subprocess.Popen([sys.executable, "-m", *args], env=fleet.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_postgres_restarted_while_operate_runs(fleet):
    marker = slow_reloads(fleet, WEB1, 2)
    run = _background(fleet, "serverpki.operate", "-S", "-a")
    try:
        wait_for(marker)       # a distribution is in its reload: its outcome is reported after the restart
        fault("PostgreSQL restarted during a cron run")
        drop_test_connection(fleet)
        fleet.lab.cluster.restart()
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert "Traceback" not in err, err
    # the agent reconnected: the outcomes in flight were reported, the rest of the queue was worked
    assert run.returncode == 0, err
    assert "the database connection was lost" in err and "outcome reported after reconnecting" in err, err
    assert value(fleet, "SELECT count(*) FROM jobs WHERE state <> 'done'") == 0
    assert fleet.problems() == []
    converge(fleet)


def test_postgres_restarted_while_the_agent_works_the_queue(fleet):
    marker = slow_reloads(fleet, WEB1, 1)
    fleet.now = None      # the long-running agent lives on the real clock
    agent = _background(fleet, "serverpki.admin", "agent", "-v")
    try:
        time.sleep(1)
        fleet.conn.execute("SELECT * FROM schedule(selection(true))")   # jobs of all three certificates
        wait_for(marker)
        fault("PostgreSQL restarted while the agent works")
        drop_test_connection(fleet)
        fleet.lab.cluster.restart()
        deadline = time.monotonic() + 60
        while True:
            try:
                pending = fleet.conn.execute("SELECT count(*) FROM jobs WHERE state <> 'done'").fetchone()[0]
                deployed = len(fleet.deployed())
            except Exception:
                drop_test_connection(fleet)
                pending, deployed = -1, 0
            if pending == 0 and deployed == 3:
                break
            assert time.monotonic() < deadline, "the agent did not finish the queue after the restart"
            time.sleep(0.2)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=90)
    assert agent.returncode == 0, err
    assert "Traceback" not in err, err
    assert "the database connection was lost" in err or "database unreachable" in err, err
    fleet.later(seconds=0)
    assert fleet.problems() == []
    converge(fleet)


def test_postgres_down_longer_than_the_agent_waits():
    lease = 6         # the agent waits half of it for the database to come back
    with Fleet(lease_seconds=lease) as fleet:
        prepared(fleet)
        marker = slow_reloads(fleet, WEB1, 2)
        run = _background(fleet, "serverpki.operate", "-S", "-a")
        try:
            wait_for(marker)
            fault("PostgreSQL stopped during a cron run")
            drop_test_connection(fleet)
            fleet.lab.cluster.stop()
            started = time.monotonic()
            out, err = run.communicate(timeout=120)
            took = time.monotonic() - started
        finally:
            if run.poll() is None:
                run.kill()
        FIGURES["failed runs"] += run.returncode != 0
        assert run.returncode == 1, err
        assert "Traceback" not in err, err
        assert ("operate_serverPKI: the database connection was lost after" in err
                and f"go back to the queue when their lease of {lease} s runs out" in err), err
        assert took < 2 + lease + 10, took
        fleet.lab.cluster.start()

        # the outcomes of the distributions in flight are unknown: their jobs are still leased
        held = fleet.conn.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()
        assert held, "no job was in flight"
        # after the lease the next run takes them back (an attempt that failed, with back-off), none stays running
        fleet.later(seconds=lease + 1)
        cli(fleet, "-S", "-a")
        for (jid,) in held:
            row = fleet.conn.cursor(row_factory=dict_row).execute(
                "SELECT * FROM jobs_overview WHERE id = %s", (jid,)).fetchone()
            assert row["state"] in ("failed", "done"), row
            if row["state"] == "failed":
                assert row["last_error"].startswith("lease of agent ") and "expired" in row["last_error"], row
        assert value(fleet, "SELECT count(*) FROM jobs WHERE state = 'running' AND locked_until < pki.now()") == 0
        converge(fleet)
        count_retries(fleet)
