"""notify_alerts: tell one channel the digest of alerts its job carries (db/jobs/070_notify_alerts.sql
made it from pki.alerts and pki.alert_notices): 'mail', one message to the [mail] recipients through
the relay (smtpclient), or 'webhook', one JSON POST to [alerts] webhook_url (webhook).

The database decided what is told; this handler only words it and delivers it. Delivered once: the
attempt that delivered records it (Progress "sent"), so an attempt after a lost completion reports
instead of telling again. The job's completion then marks the digest as told.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections import Counter
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any

from .. import smtpclient, webhook
from ..config import Config
from ..errors import GiveUp, RetryLater
from ..secretfile import SecretFileError, read_secret
from . import Completion, Context, Job, Progress, handler
from .mail import _relay

log = logging.getLogger("serverpki.handlers.alerts")

UTC = dt.timezone.utc
SCHEMA = "serverpki.alerts/1"   # the webhook document's schema (docs/alerts.md)
STATUSES = ("new", "reappeared", "changed", "repeat", "resolved")


def digest(job: Job) -> list[dict[str, Any]]:
    """The alerts the job carries (pki.alert_digest rows), checked: each has a key, a status and a summary."""
    items = (job.args or {}).get("alerts")
    if not isinstance(items, list) or not items:
        raise GiveUp(f"notify_alerts job {job.id} carries no alerts (args.alerts); nothing to tell")
    for item in items:
        if not (isinstance(item, dict) and item.get("alert_key") and item.get("status") in STATUSES
                and item.get("summary")):
            raise GiveUp(f"notify_alerts job {job.id}: entry {item!r} lacks an alert_key, a status or a summary")
    return items


def _fingerprint(job: Job) -> str:
    return hashlib.sha256(json.dumps(job.args, sort_keys=True, default=str).encode()).hexdigest()[:16]


def counts(alerts: list[dict]) -> dict[str, int]:
    """Open alerts told by severity, and the resolved ones."""
    told = Counter(a["severity"] for a in alerts if a["status"] != "resolved")
    return {"critical": told["critical"], "warning": told["warning"],
            "resolved": sum(1 for a in alerts if a["status"] == "resolved")}


def open_now(job: Job, alerts: list[dict]) -> dict[str, int]:
    """Every alert open when the digest was made, by severity (args.open): a digest that repeats some
    alerts must not read as if they were all; a job of an older release has none: the digest's own."""
    told = counts(alerts)
    known = (job.args or {}).get("open")
    if not isinstance(known, dict):
        return {"critical": told["critical"], "warning": told["warning"]}
    return {severity: int(known.get(severity) or 0) for severity in ("critical", "warning")}


def subject(job: Job, alerts: list[dict]) -> str:
    n, resolved = open_now(job, alerts), counts(alerts)["resolved"]
    text = f"serverPKI: {n['critical']} critical, {n['warning']} warning alert(s)"
    return text + (f", {resolved} resolved" if resolved else "")


def _entry(a: dict) -> list[str]:
    lines = [f"  [{a['severity']}] {a['summary']}"]
    facts = [f"{k} {a[k]}" for k in ("certificate", "instance", "job", "disthost") if a.get(k) is not None]
    if facts:
        lines.append("      " + ", ".join(facts))
    if a.get("detail"):
        lines.append(f"      {a['detail']}")
    lines.append(f"      ({a['status']}; alert {a['alert_key']})")
    return lines


def body(job: Job, alerts: list[dict]) -> str:
    """The digest as text: the open alerts, critical first, then the resolved ones."""
    open_ = [a for a in alerts if a["status"] != "resolved"]
    resolved = [a for a in alerts if a["status"] == "resolved"]
    n = open_now(job, alerts)
    lines: list[str] = [f"Open now: {n['critical']} critical, {n['warning']} warning; "
                        f"this digest tells {len(open_)} of them (new, changed or due again).", ""]
    if open_:
        lines += ["These need a human:", ""]
        for a in open_:
            lines += _entry(a)
        lines.append("")
    if resolved:
        lines += ["Resolved (no longer in pki.alerts):", ""]
        lines += [f"  [{a['severity']}] {a['summary']}" for a in resolved]
        lines.append("")
    lines += ["All open alerts: SELECT * FROM pki.alerts;  the jobs: SELECT * FROM jobs_overview;",
              "An alert is told again when it changes or after the setting alert_repeat (docs/alerts.md).",
              f"serverPKI notify_alerts job {job.id}", ""]
    return "\n".join(lines)


def compose(job: Job, alerts: list[dict], config: Config) -> EmailMessage:
    mail = config.mail
    msg = EmailMessage()
    msg["Subject"] = subject(job, alerts)
    msg["From"] = mail.sender
    msg["To"] = ", ".join(mail.recipients)
    msg["Date"] = format_datetime(dt.datetime.now(UTC))
    # the same job gives the same Message-ID: a copy sent again after a lost completion can be recognised
    domain = parseaddr(mail.sender)[1].rpartition("@")[2] or "localhost"
    msg["Message-ID"] = f"<serverpki-alerts-{job.id}-{_fingerprint(job)}@{domain}>"
    msg["X-serverPKI-Job"] = str(job.id)
    msg.set_content(body(job, alerts))
    return msg


def send_mail(job: Job, alerts: list[dict], config: Config) -> dict[str, Any]:
    mail = config.mail
    problem = mail.unusable()
    if problem:
        raise GiveUp(problem)
    msg = compose(job, alerts, config)
    refused = smtpclient.send(_relay(mail), msg, mail.sender, list(mail.recipients))
    result: dict[str, Any] = {"sent_to": [r for r in mail.recipients if r not in refused],
                              "message_id": msg["Message-ID"]}
    if refused:
        # the others have the message: sending again would duplicate it, so report and finish
        log.warning("job %s: alert mail refused for %s", job.id, ", ".join(f"{a} ({r})" for a, r in refused.items()))
        result["refused"] = refused
    return result


def document(job: Job, alerts: list[dict]) -> dict[str, Any]:
    """The webhook's JSON document (schema serverpki.alerts/1, docs/alerts.md)."""
    fields = ("alert_key", "status", "severity", "summary", "detail", "certificate", "instance", "job",
              "disthost", "since")
    return {"schema": SCHEMA, "job": job.id, "summary": subject(job, alerts), "counts": counts(alerts),
            "open": open_now(job, alerts),
            "alerts": [{k: a.get(k) for k in fields} for a in alerts if a["status"] != "resolved"],
            "resolved": [{k: a.get(k) for k in ("alert_key", "severity", "summary")}
                         for a in alerts if a["status"] == "resolved"]}


def _token(config: Config) -> str | None:
    path = config.alerts.webhook_token_file
    if path is None:
        return None
    try:
        text = read_secret(path, "alerts.webhook_token_file").decode("utf-8")
    except SecretFileError as exc:
        raise GiveUp(str(exc)) from None
    except UnicodeDecodeError:
        raise GiveUp(f"alerts.webhook_token_file {path} is not UTF-8 text") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise GiveUp(f"alerts.webhook_token_file {path} is empty: its first line must be the token")
    return lines[0].strip()


def post(job: Job, alerts: list[dict], config: Config) -> dict[str, Any]:
    url = config.alerts.webhook_url
    if not url:
        raise GiveUp("alerts.webhook_url is not set: set it in the [alerts] section, or leave the webhook out")
    status = webhook.post(url, document(job, alerts), config.alerts.webhook_timeout_seconds, _token(config),
                          idempotency_key=f"serverpki-alerts-{job.id}-{_fingerprint(job)}")
    return {"posted_to": webhook.where(url), "status": status}


CHANNELS = {"mail": send_mail, "webhook": post}


@handler("notify_alerts")
def notify_alerts(job: Job, ctx: Context) -> Completion:
    progress = Progress.load(job, ctx)
    if "sent" in progress.data:
        # an earlier attempt delivered it and died before the job was done: do not tell twice
        log.info("job %s: alerts were told by attempt %s", job.id, progress.data["sent"]["attempt"])
        return Completion(report=progress.data["sent"])
    channel = (job.args or {}).get("channel")
    if channel not in CHANNELS:
        raise GiveUp(f"notify_alerts job {job.id}: unknown channel {channel!r} (mail or webhook)")
    if channel not in ctx.config.alerts.channels:
        # the cron run and `serverpki agent` may read different files: leave it to the one that tells this channel
        raise RetryLater(f"alerts to {channel} are not configured in {ctx.config.source or 'this configuration'} "
                         "([alerts]); left to a run or agent whose configuration has them: give both the same "
                         "[alerts] and [mail]", retry_after=300)
    alerts = digest(job)
    result = {"channel": channel, **counts(alerts), **CHANNELS[channel](job, alerts, ctx.config)}
    # at least once, at most twice: only a crash between the peer's answer and this line repeats it
    progress.data["sent"] = {**result, "attempt": job.attempts}
    progress.save("sent")
    return Completion(report=result)
