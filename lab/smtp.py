"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives: the relay of
the lab and of the reminder tests.

    with SMTPLab() as smtp:                     # 127.0.0.1, a free port
        ... send to smtp.host, smtp.port ...
        smtp.messages[0].message["Subject"]

With tls=True it offers STARTTLS with a self-signed certificate for 127.0.0.1 and
localhost (trust it with smtp.cafile, e.g. SSL_CERT_FILE); with users={name: password}
it requires AUTH (over TLS only, as aiosmtpd insists). refuse() makes it answer RCPT
or DATA with a given reply, to show how a client takes 4xx and 5xx.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import ipaddress
import ssl
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from .ports import free_port
from .process import done, on_exit, remove_dir, starting, temp_dir

GREETING_NAME = "smtp.lab.serverpki.test"


@dataclass(frozen=True)
class Received:
    """One message as the server took it: envelope and parsed content."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    peer: str
    login: str | None  # the AUTH user, when there was one
    tls: bool          # whether the session had STARTTLS


class _Keeper:
    """The aiosmtpd handler: stores each message, or answers with the reply refuse() set."""

    def __init__(self, lab: "SMTPLab"):
        self.lab = lab

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.lab._fault("RCPT", address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        reply = self.lab._fault("DATA")
        if reply:
            return reply
        raw = envelope.original_content or envelope.content
        message = BytesParser(policy=email.policy.default).parsebytes(raw)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        with self.lab._lock:
            self.lab._messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message,
                                               str(session.peer), login, session.ssl is not None))
        return "250 Message accepted for delivery"


class SMTPLab:
    """An SMTP server on 127.0.0.1 in a thread of its own; start()/stop() or a with block."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, tls: bool = False,
                 users: dict[str, str] | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.tls = tls
        self.users = dict(users or {})
        if self.users and not tls:
            raise ValueError("aiosmtpd offers AUTH over TLS only: give tls=True with users")
        self._messages: list[Received] = []
        self._faults: dict[str, str] = {}
        self._lock = threading.Lock()
        self._controller: Controller | None = None
        self._tmp: Path | None = None
        self._tls_context: ssl.SSLContext | None = None

    # -- what arrived

    @property
    def messages(self) -> list[Received]:
        """A copy of the messages received so far, oldest first."""
        with self._lock:
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    # -- faults on demand

    def refuse(self, reply: str, at: str = "DATA", address: str | None = None) -> None:
        """Answer RCPT (of this address only, when given) or DATA with this reply,
        e.g. "451 4.3.0 try again later", until accept()."""
        if at not in ("RCPT", "DATA") or (address and at != "RCPT"):
            raise ValueError("refuse at RCPT (optionally of one address) or at DATA")
        with self._lock:
            self._faults[(at, address)] = reply

    def accept(self) -> None:
        with self._lock:
            self._faults.clear()

    def _fault(self, at: str, address: str | None = None) -> str | None:
        with self._lock:
            return self._faults.get((at, address)) or self._faults.get((at, None))

    # -- TLS

    @property
    def cafile(self) -> Path | None:
        """The server's self-signed certificate (PEM), the trust anchor for clients; None without tls."""
        return self._tmp / "cert.pem" if self._tmp and self.tls else None

    def _make_tls(self) -> ssl.SSLContext:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GREETING_NAME)])
        now = dt.datetime.now(dt.timezone.utc)
        alt = [x509.DNSName("localhost"), x509.DNSName(GREETING_NAME)]
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(self.host)))
        except ValueError:
            alt.append(x509.DNSName(self.host))
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        self._tmp = temp_dir("serverpki-lab-smtp-")
        (self._tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (self._tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._tmp / "cert.pem", self._tmp / "key.pem")
        return context

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword)
              and self.users.get(auth_data.login.decode()) == auth_data.password.decode())
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    # -- life

    def start(self) -> "SMTPLab":
        """Listen (again, on the same port after stop()); returns self."""
        if self._controller is not None:
            return self
        options: dict = {}
        if self.tls:
            if self._tls_context is None:
                self._tls_context = self._make_tls()
            options.update(tls_context=self._tls_context, require_starttls=False)
        if self.users:
            options.update(authenticator=self._authenticate, auth_required=True)
        controller = Controller(_Keeper(self), hostname=self.host, port=self.port,
                                server_hostname=GREETING_NAME, **options)
        with starting():
            controller.start()
            self._controller = controller
            on_exit(self, self.close)
        return self

    def stop(self) -> None:
        """Stop listening: clients now meet a refused connection. The messages stay."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            remove_dir(self._tmp)
            self._tmp = None
            self._tls_context = None
        done(self)

    @property
    def running(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> "SMTPLab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
