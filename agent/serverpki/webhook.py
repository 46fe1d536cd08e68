"""The webhook of the alerts: one JSON document POSTed to [alerts] webhook_url, its answer sorted by
what it means for the job (docs/alerts.md has the document's schema).

The standard library's urllib.request, not a notification library such as apprise: one POST with a
timeout and a verified TLS connection needs none, and apprise answers only "sent or not", where the
job needs the verdict (a 5xx or a Retry-After is a retry, a 4xx is for good).

- 2xx: delivered.
- A refused connection, a timeout, a 5xx or 429 reply are WebhookUnavailable (a RetryLater; its
  Retry-After, in seconds or as an HTTP date, is honoured).
- Any other reply (4xx, a redirect: the URL is not the receiver's) and a certificate that is not
  trusted are WebhookRefused (a GiveUp), naming the [alerts] key to check.
The bearer token goes in the Authorization header only, and messages name the receiver by scheme,
host and port: neither the token nor the URL's path (often a secret itself) shows in a job's error.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import urllib.error
import urllib.request
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .errors import GiveUp, RetryLater, ServerPKIError


class WebhookError(ServerPKIError):
    """Posting to the webhook failed."""


class WebhookUnavailable(WebhookError, RetryLater):
    """The webhook cannot take the document now (unreachable, timed out, 5xx, 429): try again later."""


class WebhookRefused(WebhookError, GiveUp):
    """The webhook refuses the document (4xx), redirects it, or cannot be trusted: no retry mends it."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a new place to post to (urllib would resend a POST as a GET)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _opener() -> urllib.request.OpenerDirector:
    # the system's trust store, host names checked (create_default_context)
    return urllib.request.build_opener(_NoRedirects(), urllib.request.HTTPSHandler(context=ssl.create_default_context()))


def where(url: str) -> str:
    """The receiver as messages and reports name it: scheme, host and port only. A webhook URL's path
    or query is often its secret (Slack, Teams, Mattermost hooks), so no message shows it."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max((when - dt.datetime.now(dt.timezone.utc)).total_seconds(), 0.0)


def _status(code: int) -> str:
    """The answer's status as HTTP names it: never the receiver's own words (its reason phrase or body could
    echo the request, token included, into jobs.last_error, which monitoring logins read)."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def post(url: str, document: dict[str, Any], timeout: float, token: str | None = None,
         idempotency_key: str | None = None) -> int:
    """POST document as JSON to url; returns the HTTP status of a 2xx answer, else raises a WebhookError."""
    headers = {"Content-Type": "application/json", "User-Agent": f"serverPKI/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if idempotency_key:
        # a receiver may drop a copy sent again after a lost answer
        headers["Idempotency-Key"] = idempotency_key
    request = urllib.request.Request(url, data=json.dumps(document).encode(), headers=headers, method="POST")
    url = where(url)   # from here on, what messages name
    try:
        with _opener().open(request, timeout=timeout) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        text = f"webhook {url} answered {_status(exc.code)}"
        if exc.code >= 500 or exc.code == 429:
            raise WebhookUnavailable(text, retry_after=retry_after(exc.headers.get("Retry-After"))) from None
        if 300 <= exc.code < 400:
            location = exc.headers.get("Location")
            raise WebhookRefused(f"{text} to {where(location) if location else 'nowhere'} (set [alerts] webhook_url "
                                 "to where it points, if that is the receiver)") from None
        hint = "webhook_token_file" if exc.code in (401, 403) else "webhook_url"
        raise WebhookRefused(f"{text} (check [alerts] {hint})") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise WebhookRefused(f"webhook {url}: its certificate is not trusted: {reason.verify_message or reason} "
                                 "(check [alerts] webhook_url, or the system's CA certificates)") from None
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise WebhookUnavailable(f"webhook {url}: no answer within {timeout:g} s") from None
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise WebhookUnavailable(f"webhook {url} unreachable: {text}") from None
    except (TimeoutError, socket.timeout):
        raise WebhookUnavailable(f"webhook {url}: no answer within {timeout:g} s") from None
    except OSError as exc:   # the connection broke off while the answer was read
        raise WebhookUnavailable(f"webhook {url}: {exc.strerror or exc}") from None
