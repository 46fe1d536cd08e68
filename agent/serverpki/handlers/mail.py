"""mail_reminder: one message to the configured recipients listing the local
certificates that must be issued (docs/lifecycle.md, rule 5), with the commands to do it.

The scheduler has already marked each certificate as reminded; this handler only
composes the message and sends it through the relay (smtpclient, whose faults are
RetryLater or GiveUp). The [mail] section was checked when the configuration was read
(config.MailConfig); what only mail needs and is missing is GiveUp, naming the key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from .. import smtpclient
from ..config import Config, MailConfig
from ..errors import GiveUp
from ..secretfile import SecretFileError, read_secret
from . import Completion, Context, Job, Progress, handler
from .common import db_now

log = logging.getLogger("serverpki.handlers.mail")

UTC = dt.timezone.utc


def relay_password(mail: MailConfig) -> str:
    """The first line of [mail] password_file (a secret file: private, ours, no symbolic link)."""
    try:
        text = read_secret(mail.password_file, "mail.password_file").decode("utf-8")
    except SecretFileError as exc:
        raise GiveUp(str(exc)) from None
    except UnicodeDecodeError:
        raise GiveUp(f"mail.password_file {mail.password_file} is not UTF-8 text") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise GiveUp(f"mail.password_file {mail.password_file} is empty: its first line must be the password")
    return lines[0]


def _relay(mail: MailConfig) -> smtpclient.Relay:
    return smtpclient.Relay(mail.relay_host, mail.relay_port, mail.starttls, mail.username,
                            lambda: relay_password(mail))


def _certificates(job: Job) -> list[dict]:
    """The job's certificates as {name, instance, not_after: datetime, disabled}, by expiry."""
    items = (job.args or {}).get("certificates")
    if not isinstance(items, list) or not items:
        raise GiveUp(f"mail_reminder job {job.id} lists no certificates (args.certificates); nothing to mail")
    certs = []
    for item in items:
        try:
            not_after = dt.datetime.fromisoformat(str(item["not_after"]))
            certs.append({"name": str(item["name"]), "instance": item.get("instance"),
                          "not_after": not_after if not_after.tzinfo else not_after.replace(tzinfo=UTC),
                          "disabled": item.get("disabled") is True})
        except (KeyError, TypeError, ValueError) as exc:
            raise GiveUp(f"mail_reminder job {job.id}: certificate entry {item!r} lacks a name or a valid not_after") from exc
    return sorted(certs, key=lambda c: (c["not_after"], c["name"]))


def _days(delta: dt.timedelta) -> int:
    return math.ceil(delta / dt.timedelta(days=1))


def compose(job: Job, certs: list[dict], mail: MailConfig, now: dt.datetime) -> EmailMessage:
    """The reminder: every certificate with its expiry and the command that issues its successor."""
    n = len(certs)
    subject = f"serverPKI: {n} local certificate{'s' if n != 1 else ''} must be issued"
    width = max(len(c["name"]) for c in certs)
    lines = [f"{'This local certificate expires' if n == 1 else 'These local certificates expire'} soon.",
             "serverPKI issues local certificates on request only:",
             ""]
    for c in certs:
        left = _days(c["not_after"] - now)
        when = f"in {left} day{'s' if left != 1 else ''}" if left > 0 else "already expired"
        # as the original: a disabled certificate is listed too, marked; -i is what includes it in -C
        mark = "  [DISABLED]" if c["disabled"] else ""
        lines.append(f"  {c['name']:<{width}}  expires {c['not_after'].astimezone(UTC):%Y-%m-%d %H:%M} UTC ({when}){mark}")
        lines.append(f"  {'':<{width}}  issue it: operate_serverPKI -C -o {c['name']}" + (f" -i {c['name']}" if c["disabled"] else ""))
    days = min(max(_days(certs[-1]["not_after"] - now), 0), 3650)
    lines += ["",
              f"Or issue every local certificate that expires within {days} days at once:",
              f"  operate_serverPKI -C -r {days}",
              "",
              "The scheduler (operate_serverPKI -S) then deploys each new instance",
              "before the old one expires.",
              f"This reminder is sent once per certificate (job {job.id}).",
              ""]
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = mail.sender
    msg["To"] = ", ".join(mail.recipients)
    msg["Date"] = format_datetime(dt.datetime.now(UTC))
    # the same job gives the same Message-ID: a copy sent again after a lost completion can be recognised
    digest = hashlib.sha256(json.dumps(job.args, sort_keys=True, default=str).encode()).hexdigest()[:16]
    domain = parseaddr(mail.sender)[1].rpartition("@")[2] or "localhost"
    msg["Message-ID"] = f"<serverpki-reminder-{job.id}-{digest}@{domain}>"
    msg["X-serverPKI-Job"] = str(job.id)
    msg.set_content("\n".join(lines))
    return msg


def deliver(job: Job, config: Config, now: dt.datetime) -> dict:
    """Compose the reminder of this job and hand it to the relay; returns what was sent to whom."""
    mail = config.mail
    problem = mail.unusable()
    if problem:
        raise GiveUp(problem)
    certs = _certificates(job)
    msg = compose(job, certs, mail, now)
    refused = smtpclient.send(_relay(mail), msg, mail.sender, list(mail.recipients))
    result = {"sent_to": [r for r in mail.recipients if r not in refused],
              "certificates": [c["name"] for c in certs],
              "message_id": msg["Message-ID"]}
    if refused:
        # the others have the message: sending again would duplicate it, so report and finish
        log.warning("%s: reminder refused for %s", job.label, ", ".join(f"{a} ({r})" for a, r in refused.items()))
        result["refused"] = refused
    return result


@handler("mail_reminder")
def mail_reminder(job: Job, ctx: Context) -> Completion:
    progress = Progress.load(job, ctx)
    if "sent" in progress.data:
        # an earlier attempt delivered it and died before the job was done: do not mail twice
        log.info("%s: reminder %s was sent by attempt %s", job.label, progress.data["sent"]["message_id"],
                 progress.data["sent"]["attempt"])
        return Completion(report=progress.data["sent"])
    result = deliver(job, ctx.config, db_now(ctx))
    # at least once, at most twice: only a crash between the relay's 250 and this line repeats it
    progress.data["sent"] = {**result, "attempt": job.attempts}
    progress.save("sent")
    return Completion(report=result)
