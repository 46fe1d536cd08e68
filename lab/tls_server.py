"""A TLS server for the lab: `openssl s_server` on loopback, serving a certificate and key from files — the
files our distribution deployed under a lab disthost's root — as a web or mail server does: it reads them when
it starts and again when it is reloaded, never merely because they changed on disk.

    with TlsServer(ssl_dir / "NAME_server_ec_cert_cacert.pem", ssl_dir / "NAME_server_ec_key.pem",
                   reload_log=host.root / "var/log/reloads", reload_line="service nginx reload") as server:
        server.port             # 127.0.0.1:port speaks TLS with the files as they were at the last (re)start
        server.follow()         # the place's reload command ran since (a line in the host's reload log): reload
        server.served()         # the certificate it sends, as a client sees it

The lab's disthosts are chroots whose `service` shim only logs what it was asked (lab.lab.SHIMS); follow()
turns such a line into the reload it stands for, so a distribution that forgot its reload leaves the old
certificate in service here as it would on a real host.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

from cryptography import x509

from .ports import free_port
from .process import LabService, await_ready, on_exit, starting, temp_dir, terminate

OPENSSL = "openssl"


class TlsServer(LabService):
    """openssl s_server -www on 127.0.0.1:port with cert (its first certificate is the leaf) and key."""

    def __init__(self, cert: Path, key: Path, chain: Path | None = None, port: int | None = None,
                 reload_log: Path | None = None, reload_line: str | None = None):
        self.cert, self.key, self.chain = Path(cert), Path(key), chain
        self.port = port or free_port()
        self.reload_log, self.reload_line = reload_log, reload_line
        self.reloads = 0                    # how many times it read the files again
        self._reloads_seen = 0              # reload lines of the log already acted on
        self._own_base = True
        self.base = temp_dir("serverpki-lab-tls-")
        self._proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.base / "s_server.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> "TlsServer":
        if self.running:
            return self
        args = [OPENSSL, "s_server", "-accept", f"127.0.0.1:{self.port}", "-cert", str(self.cert),
                "-key", str(self.key), "-www", "-quiet"]
        if self.chain:
            args += ["-cert_chain", str(self.chain)]
        self._reloads_seen = self._reload_lines()
        with starting():
            with self.log.open("ab") as log:   # its complaints too: a pipe nobody reads would fill and stall it
                self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            on_exit(self, self.close)
        try:
            await_ready(self._proc, self._accepts, timeout, "openssl s_server", f"did not listen on port {self.port}",
                        self.log)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}: {self.log.read_text(errors='replace').strip()}") from None
        return self

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        terminate(proc, timeout)

    def reload(self) -> None:
        """Read the files again (s_server cannot: a restart on the same port)."""
        self.stop()
        self.start()
        self.reloads += 1

    def _reload_lines(self) -> int:
        if self.reload_log is None or not self.reload_log.exists():
            return 0
        return sum(line.strip() == self.reload_line for line in self.reload_log.read_text().splitlines())

    def follow(self) -> bool:
        """Reload when the reload command ran since the last (re)start; whether it did."""
        if self._reload_lines() > self._reloads_seen:
            self.reload()
            return True
        return False

    def served(self) -> x509.Certificate:
        """The leaf certificate the server sends (no verification: which one it is, not whether to trust it)."""
        return x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", self.port)).encode())
