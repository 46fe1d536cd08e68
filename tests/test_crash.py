"""Crash anywhere (issue 8, item 1): the agent kills itself (SIGKILL) at every crash point of
every job kind (serverpki.faults), a later cron run takes over after the lease, and the fleet
converges: no certificate or key lost, no second certificate for the same need (Pebble's own
log counts what it issued), no instance deployed twice or before its TLSA records, no challenge
or stale TLSA record in BIND, no temporary file on a host, no job left running.

Everything is real: PostgreSQL, Pebble, BIND 9, two sshd disthosts and SMTP (tests/fleet.py).
One fleet serves the module; every test starts from and leaves it converged.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from cryptography import x509

from serverpki import faults
from serverpki.handlers import load_all
from lab.lab import ZONE

from fleet import Fleet

pytestmark = pytest.mark.slow

WWW = f"www.{ZONE}"             # LE, rsa_plus_ec, TLSA for https and smtp, targets on web1 and in the jail
INTRANET = f"intranet.{ZONE}"   # local, rsa, on web1

# what makes a job of each kind run: the commands of one scenario, the crash armed in all of them.
# "rollover" moves the clock into the prepublish window of WWW's deployed instance (the cron run
# issues a successor and prepublishes its TLSA records), "rollover day" to the day the successor
# is deployed. -X starts from keys in clear, -Y from encrypted ones (made so first, unarmed). "revoke" revokes WWW's newest issued instance (--revoke),
# which the -C before it had Pebble issue: a Pebble restarted by an earlier scenario knows no older one.
# "revoke local" revokes INTRANET's newest instance (a new CRL of the local CA), "crl due" moves the
# clock 21 of crl_days' 30 on: the cron run signs the next CRL (sign_crl).
SCENARIOS = {
    "issue_local": ["-C -o " + INTRANET],
    "issue_acme": ["-C -o " + WWW],
    "publish_tlsa": ["rollover", "-S -a", "-T -o " + WWW],
    "distribute": ["rollover", "-S -a", "rollover day", "-S -a"],
    "issue_local_ca": ["-I"],
    "register_acme": ["-Z"],
    "encrypt_keys": ["-X"],
    "decrypt_keys": ["-Y"],
    "mail_reminder": ["-S -a"],
    "notify_alerts": ["-S -a"],
    "revoke": ["-C -o " + WWW, "revoke"],
    "sign_crl": ["-C -o " + INTRANET, "revoke local", "crl due", "-S -a"],
}
# a crash point whose step is reached more than once in a run may name which time: the second
# file written leaves one host's targets new and the rest old
COUNTS = {"distribute.file_written": 2}
POINTS = [f"{kind}.{step}" for step in faults.AGENT_STEPS for kind in SCENARIOS] + list(faults.STEPS)


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as fleet:
        run = fleet.cli("-C", "-o", INTRANET, "-o", "backup_op")
        assert run.returncode == 0, run.stderr
        fleet.settle()
        assert fleet.problems() == []
        yield fleet


def test_every_crash_point_in_the_code_is_tested_and_every_tested_one_is_in_the_code():
    source = "\n".join(p.read_text() for p in Path(faults.__file__).parent.rglob("*.py"))
    named = set(re.findall(r'crash_point\("([a-z_]+\.[a-z_]+)"\)', source))
    assert named == set(faults.STEPS)
    assert set(SCENARIOS) == set(load_all()), "a job kind without a crash scenario"


@pytest.mark.parametrize("point", POINTS)
def test_a_crash_at_every_step_converges(fleet, point):
    kind = point.split(".")[0]
    if kind == "mail_reminder":  # every local certificate is due for a reminder (again) now
        fleet.conn.execute("UPDATE settings SET value = '1000' WHERE name = 'local_issue_mail_days'")
        fleet.conn.execute("UPDATE certificates SET authorized_until = NULL WHERE type = 'local'")
    env = {}
    if kind == "notify_alerts":
        # something to tell: every deployed certificate expiring "within" a margin this scenario alone
        # uses (so each scenario's alerts are new to the channel), told by mail from a configuration
        # with [alerts] (the fleet's own tells nobody)
        margin = 1000 + POINTS.index(point)
        fleet.conn.execute("UPDATE settings SET value = %s WHERE name = 'alert_expiry_days'", (str(margin),))
        env = {"SERVERPKI_CONFIG": str(alerting_config(fleet))}
    # -X needs keys in clear, -Y encrypted ones: xdist may have run the other scenario on the other worker's fleet
    wanted_clear = {"encrypt_keys": True, "decrypt_keys": False}.get(kind)
    if wanted_clear is not None and fleet.conn.execute(
            "SELECT NOT keysencrypted FROM revision ORDER BY id DESC LIMIT 1").fetchone()[0] != wanted_clear:
        run = fleet.cli("-Y" if wanted_clear else "-X")   # not armed
        assert run.returncode == 0, run.stderr
    before = Snapshot(fleet)
    armed = f"{point}:{COUNTS[point]}" if point in COUNTS else point
    killed, said, commands = None, [], SCENARIOS[kind]
    for command in commands:
        if command == "rollover":
            fleet.into_rollover(WWW)
            continue
        if command == "rollover day":
            fleet.to_rollover_day(WWW)
            continue
        if command == "revoke":
            newest = fleet.conn.execute("SELECT max(id) FROM certinstances WHERE certificate = cert_id(%s) "
                                        "AND state = 'issued'", (WWW,)).fetchone()[0]
            command = f"--revoke {newest} --reason superseded"
        if command == "revoke local":
            newest = fleet.conn.execute("SELECT max(id) FROM certinstances WHERE certificate = cert_id(%s) "
                                        "AND state IN ('issued', 'deployed')", (INTRANET,)).fetchone()[0]
            command = f"--revoke {newest} --reason superseded"
        if command == "crl due":
            fleet.later(days=21)
            continue
        run = fleet.cli(*command.split(), SERVERPKI_CRASH_AT=armed, **env)
        said.append(run.stderr)
        if run.returncode == -signal.SIGKILL:
            killed = command
            break
        assert run.returncode == 0, (command, run.stderr[-2000:])
        fleet.later(hours=1)
    assert killed, f"no command of {commands} reached {point}: " + "\n".join(said)

    fleet.later(seconds=fleet.lease_seconds + 1)   # the dead agent's lease runs out
    runs = fleet.settle(**env)
    assert runs[-1].returncode == 0, runs[-1].stderr[-2000:]
    if kind == "mail_reminder":
        fleet.conn.execute("UPDATE settings SET value = '30' WHERE name = 'local_issue_mail_days'")
    if kind == "notify_alerts":
        fleet.conn.execute("UPDATE settings SET value = '14' WHERE name = 'alert_expiry_days'")
    assert fleet.problems() == []
    before.check_nothing_lost_or_doubled(kind)


def alerting_config(fleet: Fleet) -> Path:
    """The fleet's configuration, with alerts mailed ([alerts] mail = true)."""
    path = fleet.base / "alerting.toml"
    if not path.exists():
        path.write_text(fleet.lab.config.read_text() + "\n[alerts]\nmail = true\n")
    return path


def alert_mails(fleet: Fleet) -> list:
    return [m for m in fleet.lab.smtp.messages if "alert(s)" in (m.message["Subject"] or "")]


class Snapshot:
    """What the fleet had before a scenario, to compare with after it converged."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.last_event = fleet.conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        self.pebble_serials = len(fleet.pebble_issued())
        self.mails = len(fleet.lab.smtp.messages)
        self.alert_mails = len(alert_mails(fleet))
        self.keys_encrypted = self._encrypted()
        self.last_crl = fleet.conn.execute("SELECT coalesce(max(id), 0) FROM crls").fetchone()[0]
        self.last_job = fleet.conn.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0]

    def _encrypted(self) -> bool:
        return self.fleet.conn.execute("SELECT keysencrypted FROM revision").fetchone()[0]

    def new_instances(self) -> dict[str, int]:
        """Certificate name -> instances made during the scenario (from the events: each new row);
        not counting the ACME CA's intermediates, which arrive with the chains"""
        return dict(self.fleet.conn.execute("""
            SELECT s.name::text, count(*) FROM events e
              JOIN subjects s ON s.certificate = e.certificate AND NOT s.isaltname
              JOIN certificates c ON c.id = e.certificate
             WHERE e.id > %s AND e.from_state IS NULL AND e.to_state = 'reserved'
               AND NOT (s.type = 'CA' AND c.type = 'LE') GROUP BY 1""",
            (self.last_event,)).fetchall())

    def check_nothing_lost_or_doubled(self, kind: str) -> None:
        conn = self.fleet.conn
        made = self.new_instances()
        if kind in ("issue_local", "issue_acme"):
            assert made == {INTRANET if kind == "issue_local" else WWW: 1}, "one new instance for the one need"
        if kind == "revoke":   # at Pebble, once; the one new instance is the -C one, now revoked
            assert made == {WWW: 1}, made
            certs = conn.execute("SELECT cert FROM revocations WHERE job = (SELECT max(job) FROM revocations)").fetchall()
            assert len(certs) == 2   # rsa_plus_ec
            for (cert,) in certs:
                serial = x509.load_pem_x509_certificate(bytes(cert)).serial_number
                assert self.fleet.lab.pebble.cert_status(serial)["Status"] == "Revoked"
            assert conn.execute("SELECT count(*) FROM revocations WHERE done_at IS NULL").fetchone()[0] == 0
        if kind == "sign_crl":   # the revocation's CRL and the next one (another CA instance -I left may get one too)
            [ca] = conn.execute("SELECT ca_instance FROM revocations WHERE id = (SELECT max(id) FROM revocations)").fetchone()
            numbers = [n for (n,) in conn.execute("SELECT number FROM crls WHERE id > %s AND ca_instance = %s ORDER BY id",
                                                  (self.last_crl, ca))]
            assert len(numbers) == 2 and numbers[1] > numbers[0], numbers
            signed = dict(conn.execute("SELECT instance, count(*) FROM jobs WHERE kind = 'sign_crl' AND state = 'done' "
                                       "AND id > %s GROUP BY instance", (self.last_job,)).fetchall())
            assert signed.get(ca) == 1 and set(signed.values()) == {1}, signed
            assert conn.execute("SELECT count(*) FROM crls_due()").fetchone()[0] == 0
        if kind in ("publish_tlsa", "distribute"):   # a successor, unless one is prepublished already
            assert made.get(WWW, 0) <= 1 and set(made) <= {WWW}, made
        if kind == "issue_local_ca":
            assert list(made.values()) == [1], made
        # Pebble's log: a certificate for each new LE pair, none for a crashed attempt
        issued = self.fleet.pebble_issued()[self.pebble_serials:]
        stored = {format(x509.load_pem_x509_certificate(bytes(cert)).serial_number, "x") for (cert,) in conn.execute("""
            SELECT k.cert FROM certkeydata k JOIN certinstances ci ON ci.id = k.certinstance
             WHERE ci.certificate = cert_id(%s)""", (WWW,))}
        assert len(issued) == 2 * made.get(WWW, 0), issued
        assert set(s.lstrip("0") for s in issued) <= stored, "every certificate Pebble issued is stored"
        if kind in ("encrypt_keys", "decrypt_keys"):
            assert self._encrypted() == (kind == "encrypt_keys")
            # every stored key but the local CA's, which has a passphrase of its own
            keys = [bytes(k) for (k,) in conn.execute("""
                SELECT k.key FROM certkeydata k JOIN certinstances ci ON ci.id = k.certinstance
                  JOIN subjects s ON s.certificate = ci.certificate AND NOT s.isaltname
                 WHERE k.key IS NOT NULL AND s.type <> 'CA'""")]
            keys += [k.encode() for (k,) in conn.execute("SELECT key FROM acme_accounts")]
            marker = b"ENCRYPTED PRIVATE KEY" if kind == "encrypt_keys" else b"-----BEGIN PRIVATE KEY"
            unlike = sum(marker not in k for k in keys)
            assert keys and not unlike, f"{unlike} of {len(keys)} keys are not {marker.decode()}"
        if kind == "mail_reminder":
            mails = len(self.fleet.lab.smtp.messages) - self.mails
            assert mails == 1, f"{mails} reminders mailed"
        if kind == "notify_alerts":   # told once, whether the crash came before or after the relay took it
            mails = len(alert_mails(self.fleet)) - self.alert_mails
            assert mails == 1, f"{mails} alert digests mailed"
        assert conn.execute("SELECT count(*) FROM job_keys").fetchone()[0] == 0, "order keys outlive their jobs"
