"""A disthost of the SSH lab behind its own network namespace, for fault tests that cut it off.

    with IsolatedHost(lab.ssh, "jailhost.demo.serverpki.test") as isolated:
        isolated.address                # 10.x.y.2: the host's sshd listens there, in the namespace
        isolated.cut()                  # packets to the host vanish: connections time out
        isolated.restore()              # the link works again

The host's sshd is stopped on loopback and started again inside a new namespace
(`ip netns exec NS sshd ...`), reachable from the host's namespace over a veth pair
(host side 10.x.y.1/30, namespace side 10.x.y.2/30). Its root folder, host key and
port stay as they were; the lab's known_hosts and client config are rewritten to
the new address. Both namespaces share the filesystem, so the host's files are
where they were.

Cutting adds a *blackhole* route in the namespace for the host side's address:
what the agent sends still arrives, but no answer (no SYN-ACK, no ACK, no ICMP
error) ever leaves, so the agent meets silence and must time out — not a refused
connection, not "network unreachable". Restoring deletes that route; connections
that were stalled resume as TCP retransmits (unless the agent gave up on them).
On exit the host's sshd is moved back to loopback and the namespace is deleted
(which removes the veth pair too).

Needs root and iproute2 (`ip`); no netfilter and no tc qdisc (netem) are used.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import time

from .process import done, on_exit, starting
from .sshd import SSHD, SSHHost, SSHLab

IP = os.environ.get("SERVERPKI_IP", "/usr/sbin/ip")
# where the /30 networks of the namespaces are taken from (a block nobody routes on a lab machine)
POOL = ipaddress.ip_network("10.251.0.0/16")


def _ip(*args: str, netns: str | None = None) -> str:
    cmd = [IP, *(["netns", "exec", netns, IP] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = _ip("-o", "-4", "addr", "show")
    return [ipaddress.ip_interface(part.split()[0]).network for part in out.split(" inet ")[1:]]


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    subnets = list(POOL.subnets(new_prefix=30))
    for _ in range(200):
        net = subnets[secrets.randbelow(len(subnets))]
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"no free /30 left in {POOL} for a lab namespace")


class IsolatedHost:
    """One SSHHost of an SSHLab moved into its own network namespace; cut() and restore() its link."""

    def __init__(self, lab: SSHLab, fqdn: str):
        self.lab = lab
        self.host: SSHHost = lab.host(fqdn)
        tag = secrets.token_hex(3)
        self.netns = f"serverpki-{tag}"
        self.outer_if, self.inner_if = f"spkh{tag}", f"spkn{tag}"   # at most 15 characters
        self.subnet: ipaddress.IPv4Network | None = None
        self._old_address = self.host.address
        self._cut = False
        self._made = False

    # -- where

    @property
    def outer_address(self) -> str:
        assert self.subnet is not None
        return str(self.subnet[1])

    @property
    def address(self) -> str:
        """Where the host's sshd listens now, inside the namespace."""
        assert self.subnet is not None
        return str(self.subnet[2])

    @property
    def is_cut(self) -> bool:
        return self._cut

    # -- life

    def start(self, timeout: float = 10) -> "IsolatedHost":
        if os.geteuid() != 0:
            raise RuntimeError("a network namespace needs root")
        self.subnet = _free_subnet()
        with starting():   # the namespace is registered before a SIGTERM can end us
            _ip("netns", "add", self.netns)
            self._made = True
            on_exit(self, self.close)
        try:
            _ip("link", "set", "lo", "up", netns=self.netns)
            _ip("link", "add", self.outer_if, "type", "veth", "peer", "name", self.inner_if)
            _ip("link", "set", self.inner_if, "netns", self.netns)
            _ip("addr", "add", f"{self.outer_address}/30", "dev", self.outer_if)
            _ip("link", "set", self.outer_if, "up")
            _ip("addr", "add", f"{self.address}/30", "dev", self.inner_if, netns=self.netns)
            _ip("link", "set", self.inner_if, "up", netns=self.netns)
            self.host.stop()
            self.host.address = self.address
            self._listen_at(self.address)
            self._start_sshd(timeout)
            self.lab.write_known_hosts()
            self.lab.write_client_config()
        except BaseException:
            self.close()
            raise
        return self

    def _listen_at(self, address: str) -> None:
        lines = self.host.config.read_text().splitlines()
        self.host.config.write_text("\n".join(
            f"ListenAddress {address}:{self.host.port}" if line.startswith("ListenAddress ") else line
            for line in lines) + "\n")

    def _start_sshd(self, timeout: float) -> None:
        """sshd inside the namespace (`ip netns exec` execs it: the process is sshd itself)."""
        log = open(self.host.log, "a")
        try:
            with starting():
                self.host.process = subprocess.Popen([IP, "netns", "exec", self.netns, SSHD, "-D", "-e", "-f",
                                                      str(self.host.config)],
                                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
                on_exit(self.host, self.host.stop)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.host.process.poll() is not None:
                raise RuntimeError(f"sshd of {self.host.fqdn} in namespace {self.netns} exited with "
                                   f"{self.host.process.returncode}: {self.host.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.address, self.host.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd of {self.host.fqdn} does not listen on {self.address}:{self.host.port} "
                                       f"in namespace {self.netns} after {timeout} s")
                time.sleep(0.02)

    def cut(self) -> None:
        """From now on nothing comes back from the host: connections, new and open, meet silence."""
        if not self._cut:
            _ip("route", "add", "blackhole", f"{self.outer_address}/32", netns=self.netns)
            self._cut = True

    def restore(self) -> None:
        if self._cut:
            _ip("route", "del", "blackhole", f"{self.outer_address}/32", netns=self.netns)
            self._cut = False

    def start_sshd(self) -> None:
        """Start the host's sshd again in the namespace (after host.stop())."""
        if not self.host.running:
            self._start_sshd(10)

    def close(self) -> None:
        """The host back on loopback (its sshd restarted there if it ran), the namespace gone."""
        was_running = self.host.running
        self.host.stop()
        if self._made:
            # sshd's session processes outlive the listener and keep the namespace (and the veth) alive
            pids = subprocess.run([IP, "netns", "pids", self.netns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run([IP, "netns", "del", self.netns], capture_output=True)
            # the veth pair goes with the namespace; the outer end too, should it linger
            subprocess.run([IP, "link", "del", self.outer_if], capture_output=True)
            self._made = False
        if self.host.address != self._old_address:
            self.host.address = self._old_address
            self._listen_at(self._old_address)
            if self.lab.hosts:
                self.lab.write_known_hosts()
                self.lab.write_client_config()
        if was_running:
            self.host.start()
        done(self)

    def __enter__(self) -> "IsolatedHost":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def namespaces_left(prefix: str = "serverpki-") -> list[str]:
    """Namespaces of this helper that still exist (a test checks it cleaned up)."""
    out = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]
