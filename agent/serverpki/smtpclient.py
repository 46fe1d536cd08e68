"""The mail relay of the agent: one message sent over SMTP (smtplib), with STARTTLS and a login
when configured, and the relay's faults sorted by what they mean for the job.

- A refused or closed connection, a timeout and a 4xx reply are RelayUnavailable (a RetryLater):
  the relay may take the message later.
- A 5xx reply, a relay certificate that is not trusted, STARTTLS or a login the relay does not
  offer are RelayRefused (a GiveUp), naming the [mail] key to check.
- Recipients refused while others accepted the message are returned, not raised.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage

from .errors import GiveUp, RetryLater, ServerPKIError

# seconds for connecting and for each reply of the relay
SMTP_TIMEOUT = 30.0


class MailError(ServerPKIError):
    """Sending mail through the relay failed."""


class RelayUnavailable(MailError, RetryLater):
    """The relay cannot take the message now (unreachable, timed out, a 4xx reply): try again later."""


class RelayRefused(MailError, GiveUp):
    """The relay refuses the message, the sender, the recipients or the login (a 5xx reply), or cannot
    be trusted or asked as configured: no retry mends it."""


@dataclass(frozen=True)
class Relay:
    """Where the mail goes and how: password() is called only when the relay is logged in to."""

    host: str
    port: int
    starttls: bool = False
    username: str | None = None
    password: Callable[[], str] | None = None


def _verdict(code: int, text: str, key: str) -> MailError:
    """4xx (and replies that are no SMTP code): try later; 5xx: no retry will mend it."""
    if 500 <= code < 600:
        return RelayRefused(f"{text} (check {key})")
    return RelayUnavailable(text)


def _reply(code: int, message: bytes | str) -> str:
    message = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
    return f"{code} {message}".strip()


def send(relay: Relay, msg: EmailMessage, sender: str, recipients: list[str]) -> dict[str, str]:
    """Deliver msg from sender to the recipients through the relay; returns the recipients refused
    while others were accepted (sending again would give the others a second copy)."""
    where = f"{relay.host}:{relay.port}"
    step = "connecting to"
    try:
        with smtplib.SMTP(relay.host, relay.port, timeout=SMTP_TIMEOUT) as smtp:
            if relay.starttls:
                step = "STARTTLS with"
                smtp.starttls(context=ssl.create_default_context())
            if relay.username:
                step = "logging in to"
                smtp.login(relay.username, relay.password())
            step = "sending to"
            refused = smtp.send_message(msg, from_addr=sender, to_addrs=recipients)
    except smtplib.SMTPRecipientsRefused as exc:
        replies = "; ".join(f"{addr}: {_reply(*reply)}" for addr, reply in exc.recipients.items())
        if any(400 <= reply[0] < 500 for reply in exc.recipients.values()):
            raise RelayUnavailable(f"mail relay {where} refused the recipients for now: {replies}") from exc
        raise RelayRefused(f"mail relay {where} refused every recipient: {replies} (check mail.recipients)") from exc
    except smtplib.SMTPSenderRefused as exc:
        raise _verdict(exc.smtp_code, f"mail relay {where} refused the sender {exc.sender}: "
                       f"{_reply(exc.smtp_code, exc.smtp_error)}",
                       "mail.sender, and mail.username if the relay wants a login") from exc
    except smtplib.SMTPAuthenticationError as exc:
        raise _verdict(exc.smtp_code, f"mail relay {where} refused the login of {relay.username}: "
                       f"{_reply(exc.smtp_code, exc.smtp_error)}", "mail.username and mail.password_file") from exc
    except smtplib.SMTPNotSupportedError as exc:
        key = "mail.starttls" if step.startswith("STARTTLS") else "mail.username"
        raise RelayRefused(f"{step} mail relay {where}: {exc} (check {key})") from exc
    except smtplib.SMTPResponseException as exc:
        raise _verdict(exc.smtp_code, f"{step} mail relay {where}: {_reply(exc.smtp_code, exc.smtp_error)}",
                       "mail.relay_host and the relay's rules for mail.sender and mail.recipients") from exc
    except smtplib.SMTPServerDisconnected as exc:
        if isinstance(exc.__context__, TimeoutError):  # smtplib wraps a reply's timeout so
            raise RelayUnavailable(f"{step} mail relay {where}: no answer within {SMTP_TIMEOUT:g} s") from exc
        raise RelayUnavailable(f"{step} mail relay {where}: the connection closed ({exc})") from exc
    except ssl.SSLCertVerificationError as exc:
        raise RelayRefused(f"STARTTLS with mail relay {where}: its certificate is not trusted for {relay.host}: "
                           f"{exc.verify_message or exc} (check mail.relay_host, or the system's CA certificates)") from exc
    except smtplib.SMTPException as exc:
        if step.startswith("logging in"):  # no common AUTH mechanism
            raise RelayRefused(f"{step} mail relay {where}: {exc} (check mail.username)") from exc
        raise RelayUnavailable(f"{step} mail relay {where}: {exc}") from exc
    except TimeoutError as exc:
        raise RelayUnavailable(f"{step} mail relay {where}: no answer within {SMTP_TIMEOUT:g} s") from exc
    except OSError as exc:  # refused, unreachable, name not resolved, TLS broken off
        raise RelayUnavailable(f"{step} mail relay {where} failed: {exc.strerror or exc} "
                               "(mail.relay_host, mail.relay_port)") from exc
    return {addr: _reply(*reply) for addr, reply in refused.items()}
