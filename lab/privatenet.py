"""A network namespace whose host names and well-known ports lead to the lab: for a program that
insists on port 22, port 53 and names that resolve (serverPKI 0.9.11 connects with paramiko to
FQDN:22 and sends its DNS updates to 127.0.0.1:53, both hard-wired).

    with PrivateNetwork({"www.lab.example": "127.0.1.1"}) as net:
        net.forward(("127.0.1.1", 22), (host.address, host.port))     # the lab's sshd of that host
        net.forward(("127.0.0.1", 53), ("127.0.0.1", bind.port))       # BIND, over TCP
        subprocess.run(net.command(["operate_serverPKI", "-D"]))

The program runs in the namespace (`ip netns exec NS ...`). Its /etc/hosts is
/etc/netns/NS/hosts, which ip-netns(8) binds over /etc/hosts for what it execs, so no file of
this machine changes (/etc/netns/NS, and /etc/netns if it was not there, go on close()). Each forward() is a listening TCP socket made inside the namespace (a
thread of this process enters it with setns(2), binds, and returns: a socket stays in the
namespace it was made in) whose connections this process relays to an address outside. The
namespace has only its loopback: nothing else is reachable from it.

Needs root and iproute2 (`ip`).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

from .netns import IP, _ip
from .process import done, on_exit, starting

CLONE_NEWNET = 0x40000000
NETNS_ETC = Path("/etc/netns")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass


class PrivateNetwork:
    """A namespace with its own loopback, its own /etc/hosts and TCP forwards to the lab outside."""

    def __init__(self, hosts: dict[str, str]):
        self.hosts = dict(hosts)
        self.netns = f"serverpki-{secrets.token_hex(3)}"
        self._listeners: list[socket.socket] = []
        self._made = False
        self._made_etc = not NETNS_ETC.exists()   # /etc/netns is removed again if this made it

    @property
    def etc(self) -> Path:
        return NETNS_ETC / self.netns

    def start(self) -> "PrivateNetwork":
        if self._made:
            return self
        if os.geteuid() != 0:
            raise RuntimeError("a network namespace needs root")
        with starting():   # registered before a SIGTERM can end us
            _ip("netns", "add", self.netns)
            self._made = True
            on_exit(self, self.close)
        try:
            _ip("link", "set", "lo", "up", netns=self.netns)
            self.etc.mkdir(parents=True, exist_ok=True)
            (self.etc / "hosts").write_text("127.0.0.1\tlocalhost\n"
                                            + "".join(f"{a}\t{n}\n" for n, a in self.hosts.items()))
        except BaseException:
            self.close()
            raise
        return self

    def command(self, argv: list[str]) -> list[str]:
        """argv run inside the namespace, seeing its /etc/hosts."""
        return [IP, "netns", "exec", self.netns, *argv]

    def forward(self, listen: tuple[str, int], to: tuple[str, int]) -> None:
        """Connections to `listen` inside the namespace are relayed to `to` outside it."""
        made: list[socket.socket | BaseException] = []

        def bind_inside() -> None:   # setns moves only this thread; it ends right after
            try:
                with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{self.netns}") as inside:
                    _setns(inside.fileno())
                    try:
                        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        sock.bind(listen)
                        sock.listen(64)
                        made.append(sock)
                    finally:
                        _setns(home.fileno())
            except BaseException as e:   # noqa: BLE001 - handed to the caller's thread
                made.append(e)

        binder = threading.Thread(target=bind_inside)
        binder.start()
        binder.join()
        if isinstance(made[0], BaseException):
            raise RuntimeError(f"cannot listen on {listen[0]}:{listen[1]} in namespace {self.netns}: {made[0]}")
        listener = made[0]
        self._listeners.append(listener)
        threading.Thread(target=self._accept, args=(listener, to), daemon=True).start()

    @staticmethod
    def _accept(listener: socket.socket, to: tuple[str, int]) -> None:
        while True:
            try:
                inner, _ = listener.accept()
            except OSError:   # closed
                return
            try:
                outer = socket.create_connection(to, timeout=10)
                outer.settimeout(None)
            except OSError:
                inner.close()   # as a refused connection would look to the program
                continue
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        for listener in self._listeners:
            try:
                listener.shutdown(socket.SHUT_RDWR)   # wakes the thread blocked in accept(); close() alone does not
            except OSError:
                pass
            listener.close()
        self._listeners = []
        if self._made:
            pids = subprocess.run([IP, "netns", "pids", self.netns], capture_output=True, text=True).stdout.split()
            for pid in pids:   # what still runs in it would keep it alive
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run([IP, "netns", "del", self.netns], capture_output=True)
            self._made = False
        shutil.rmtree(self.etc, ignore_errors=True)
        if self._made_etc:
            try:
                NETNS_ETC.rmdir()   # only when empty: another namespace's files stay
            except OSError:
                pass
        done(self)

    def __enter__(self) -> "PrivateNetwork":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
