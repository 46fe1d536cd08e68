"""A private BIND 9 on loopback: primary for test zones that accept TSIG-signed
dynamic updates (RFC 2136), for the demo, the tests and the benchmark.

    with BindLab(zones=("demo.serverpki.test",)) as bind:   # 127.0.0.1, a free port
        bind.primary          # "127.0.0.1:PORT", for [dns] primary
        bind.key_file         # the tsig-keygen file, for [dns] tsig_key_file
        bind.stop(); bind.start()   # an outage, same port and data
        bind.reset()          # zones back to their files, journals gone

Its own named.conf in a private folder owned by bind (named writes its .jnl
journals there): listen on 127.0.0.1 only, recursion no, notify no, no
control channel; each zone a primary with `update-policy { grant KEY zonesub
ANY; }` and the key from `tsig-keygen -a hmac-sha256`. Each zone's NS is
ns1.ZONE with the address 127.0.0.1, so the "every authoritative server" of a
zone is this server (at the port of [dns] primary).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from .process import LabService, on_exit, starting, temp_dir, terminate
from .ports import free_port

NAMED = os.environ.get("SERVERPKI_NAMED", "/usr/sbin/named")
TSIG_KEYGEN = os.environ.get("SERVERPKI_TSIG_KEYGEN", "/usr/sbin/tsig-keygen")
DEFAULT_ZONE = "demo.serverpki.test"
KEY_NAME = "serverpki-lab"


def _zone_text(zone: str) -> str:
    return (f"$TTL 60\n"
            f"@\tIN SOA ns1.{zone}. hostmaster.{zone}. ( 1 3600 600 86400 60 )\n"
            f"@\tIN NS ns1.{zone}.\n"
            f"ns1\tIN A 127.0.0.1\n")


class BindLab(LabService):
    """named -f -u bind on 127.0.0.1:port with the given primary zones; start()/stop() or a with block."""

    def __init__(self, zones: tuple[str, ...] | list[str] = (DEFAULT_ZONE,), port: int | None = None,
                 key_name: str = KEY_NAME, base: Path | None = None):
        self.zones = tuple(z.rstrip(".").lower() for z in zones)
        self.port = port or free_port()
        self.key_name = key_name
        self._own_base = base is None
        self.base = Path(base) if base else temp_dir("serverpki-lab-bind-")
        self._proc: subprocess.Popen | None = None
        self._prepared = False
        self._agent_files: set[Path] = set()

    # -- where things are

    @property
    def primary(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def key_file(self) -> Path:
        """The agent's copy of the key: 0600 and ours, as serverPKI demands of a secret file."""
        return self.base / "key.conf"

    @property
    def named_key_file(self) -> Path:
        """named's copy, readable by the bind user."""
        return self.base / "named-key.conf"

    @property
    def conf(self) -> Path:
        return self.base / "named.conf"

    @property
    def log(self) -> Path:
        return self.base / "named.log"

    def zone_file(self, zone: str) -> Path:
        return self.base / f"{zone}.zone"

    def other_key_file(self, name: str | None = None) -> Path:
        """A fresh key file that this server does not know (same name by default: BADSIG)."""
        path = self.base / f"wrong-{name or self.key_name}.conf"
        path.write_text(self._keygen(name or self.key_name))
        path.chmod(0o600)
        self._agent_files.add(path)
        return path

    # -- setting up

    def _keygen(self, name: str) -> str:
        done = subprocess.run([TSIG_KEYGEN, "-a", "hmac-sha256", name], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"tsig-keygen failed: {done.stderr.strip()}")
        return done.stdout

    def _write_zones(self) -> None:
        for zone in self.zones:
            self.zone_file(zone).write_text(_zone_text(zone))
            for journal in self.base.glob(f"{zone}.zone.jnl*"):
                journal.unlink()

    def _prepare(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        key = self._keygen(self.key_name)
        self.named_key_file.write_text(key)
        self.named_key_file.chmod(0o640)
        self.key_file.write_text(key)
        self.key_file.chmod(0o600)
        self._agent_files.add(self.key_file)
        self._write_zones()
        zones = "".join(
            f'zone "{z}" {{\n    type primary;\n    file "{self.zone_file(z)}";\n'
            f'    update-policy {{ grant {self.key_name} zonesub ANY; }};\n}};\n' for z in self.zones)
        self.conf.write_text(f"""options {{
    directory "{self.base}";
    pid-file "{self.base}/named.pid";
    session-keyfile "{self.base}/session.key";
    managed-keys-directory "{self.base}";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    notify no;
    allow-transfer {{ none; }};
    dnssec-validation no;
}};
controls {{ }};
logging {{
    channel lab {{ file "{self.log}"; severity info; print-time yes; }};
    category default {{ lab; }};
    category update {{ lab; }};
    category update-security {{ lab; }};
}};
include "{self.named_key_file}";
{zones}""")
        self._chown()
        self._prepared = True

    def _chown(self) -> None:
        if os.geteuid() != 0:
            return
        bind = pwd.getpwnam("bind")
        for path in [self.base, *self.base.rglob("*")]:
            if path not in self._agent_files:  # the agent's key files stay the agent's
                os.chown(path, bind.pw_uid, bind.pw_gid)

    # -- life

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> "BindLab":
        """Start named (again, on the same port and data after stop()); returns when it answers."""
        if self.running:
            return self
        if not self._prepared:
            self._prepare()
        self._chown()
        args = [NAMED, "-f", "-c", str(self.conf)]
        if os.geteuid() == 0:
            args += ["-u", "bind"]
        with starting():   # named is registered before a SIGTERM can end us
            self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.base)
            on_exit(self, self.close)
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
                self._proc = None
                raise RuntimeError(f"named exited at start: {err or 'see ' + str(self.log)}")
            if self._answers():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"named did not answer on {self.primary} within {timeout} s (see {self.log})")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _answers(self) -> bool:
        try:
            for zone in self.zones:
                reply = dns.query.udp(dns.message.make_query(zone, "SOA"), "127.0.0.1", timeout=0.5, port=self.port)
                if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
                    return False
            return True
        except (OSError, dns.exception.DNSException):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop named: clients now meet a refused connection. Zones and journals stay."""
        proc, self._proc = self._proc, None
        terminate(proc, timeout)

    def reset(self) -> None:
        """Every zone as its file says: stop, drop the journals, restore the files, start."""
        was_running = self.running
        self.stop()
        self._write_zones()
        self._chown()
        if was_running:
            self.start()
