"""The ACME side of the agent: a client for one account, short polls, and errors sorted.

Built on the `acme` library (certbot's). What it adds:
- badNonce is answered at once: the request is sent again with a fresh nonce,
  up to NONCE_RETRIES times (the library alone retries once);
- a problem document keeps the response's Retry-After (rateLimited);
- polling (authorizations, finalization) sleeps through a Clock, starting at
  50 ms and doubling up to 1 s, so the time spent waiting is counted apart
  from the work;
- every acme / network error leaves it sorted (sort()): AcmeUnavailable (a
  RetryLater, with the CA's Retry-After) or AcmeRefused (a GiveUp), with the
  CA's problem detail; an account key it cannot sign with is AccountKeyUnusable.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import josepy as jose
import requests
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .dnsupdate import Clock
from .errors import GiveUp, RetryLater, ServerPKIError, bounded_delay

USER_AGENT = "serverPKI (acme-python)"
NONCE_RETRIES = 10
# problem types a retry does not mend: the request, the names or the account are wrong
GIVE_UP_CODES = {
    "accountDoesNotExist", "agreementRequired", "alreadyRevoked", "badCSR", "badPublicKey", "badRevocationReason",
    "badSignatureAlgorithm", "caa", "compound", "connection", "dns", "externalAccountRequired",
    "incorrectResponse", "invalidContact", "malformed", "orderNotReady", "rejectedIdentifier",
    "tls", "unauthorized", "unsupportedContact", "unsupportedIdentifier", "userActionRequired",
}
# soon: a passing fault of the CA or the network
RETRY_SOON = 2.0


class AcmeError(ServerPKIError):
    """The CA or the way to it failed. problem: the CA's problem document, if it sent one; detail: the
    CA's answer in words; gone: whether it said the resource is not there (any more)."""

    problem: messages.Error | None = None
    detail: str = ""
    gone: bool = False


class AcmeUnavailable(AcmeError, RetryLater):
    """A passing fault of the CA or the network (rate limit, server error, timeout, unreachable): try later."""


class AcmeRefused(AcmeError, GiveUp):
    """The CA refuses the request, the names or the account, or TLS to it fails: no retry mends it."""


class AccountKeyUnusable(GiveUp):
    """The ACME account key is of a type or on a curve that JWS cannot sign with."""


class Network(acme_client.ClientNetwork):
    """ClientNetwork that retries badNonce more than once and keeps Retry-After on problems."""

    def __init__(self, *args: Any, stats: Counter | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stats = stats if stats is not None else Counter()

    @classmethod
    def _check_response(cls, response: requests.Response, content_type: str | None = None) -> requests.Response:
        try:
            return super()._check_response(response, content_type=content_type)
        except messages.Error as problem:
            problem.retry_after = _retry_after(response.headers.get("Retry-After"))
            problem.status_code = response.status_code
            raise

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for attempt in range(1, NONCE_RETRIES + 1):
            self.stats["requests"] += 1
            try:
                return self._post_once(*args, **dict(kwargs))
            except messages.Error as problem:
                if problem_code(problem) != "badNonce" or attempt == NONCE_RETRIES:
                    raise
                self.stats["bad_nonces"] += 1
        raise AssertionError("unreachable")


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, bounded (bounded_delay): delay-seconds (digits only, RFC 9110) or an
    HTTP date; None for anything else (nan, inf, 1e15 are no delay-seconds)."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]{1,30}", value):
        return bounded_delay(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    try:
        return bounded_delay(max((when - dt.datetime.now(dt.timezone.utc)).total_seconds(), 0.0))
    except OverflowError:
        return None


def jwk_for(key) -> tuple[jose.JWK, jose.JWASignature]:
    """The JWK of an account key and the signature algorithm that goes with it."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = {256: jose.ES256, 384: jose.ES384, 521: jose.ES512}.get(key.curve.key_size)
        if alg is None:
            raise AccountKeyUnusable(f"ACME account key on curve {key.curve.name} is not usable for JWS (P-256, P-384, P-521)")
        return jose.JWKEC(key=key), alg
    if isinstance(key, rsa.RSAPrivateKey):
        return jose.JWKRSA(key=key), jose.RS256
    raise AccountKeyUnusable(f"ACME account key of type {type(key).__name__} is not supported")


def verify_setting(ca_bundle: Path | str | None) -> bool | str:
    """requests' verify: the configured CA bundle, else the system's trust store."""
    return str(ca_bundle) if ca_bundle else True


@contextlib.contextmanager
def _sorted() -> Iterator[None]:
    """The acme library's and the network's errors leave the block sorted (AcmeError); others as they are."""
    try:
        yield
    except Exception as exc:
        verdict = sort(exc)
        if verdict is None:
            raise
        raise verdict from exc


class Acme:
    """One ACME account at one directory: the acme ClientV2 plus short polls; what it raises is sorted."""

    def __init__(self, directory_url: str, key, account_uri: str | None = None, ca_bundle: Path | str | None = None,
                 clock: Clock | None = None, timeout: int = 30):
        self.directory_url = directory_url
        self.jwk, alg = jwk_for(key)
        self.stats: Counter = Counter()
        self.clock = clock or Clock()
        account = messages.RegistrationResource(body=messages.Registration(), uri=account_uri) if account_uri else None
        self.net = Network(key=self.jwk, account=account, alg=alg, verify_ssl=verify_setting(ca_bundle),
                           user_agent=USER_AGENT, timeout=timeout, stats=self.stats)
        with _sorted():
            self.directory = acme_client.ClientV2.get_directory(directory_url, self.net)
        self.client = acme_client.ClientV2(self.directory, self.net)

    # POST-as-GET of a resource
    def fetch(self, url: str) -> requests.Response:
        with _sorted():
            return self.client._post_as_get(url)

    def order(self, url: str) -> messages.Order:
        return messages.Order.from_json(self.fetch(url).json())

    def authorization(self, url: str) -> messages.AuthorizationResource:
        return messages.AuthorizationResource(body=messages.Authorization.from_json(self.fetch(url).json()), uri=url)

    def poll(self, fetch, done, timeout: float, what: str):
        """fetch() until done(result); sleeps 50 ms, doubling to 1 s; AcmeUnavailable after timeout seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        with _sorted():
            while True:
                result = fetch()
                if done(result):
                    return result
                if time.monotonic() + delay > deadline:
                    raise acme_errors.TimeoutError(f"{what}: no outcome within {timeout:.0f} s")
                self.clock.sleep(delay)
                delay = min(delay * 2, 1.0)

    def new_order(self, csr_pem: bytes) -> messages.OrderResource:
        with _sorted():
            return self.client.new_order(csr_pem)

    def answer_challenge(self, challb: messages.ChallengeBody) -> None:
        with _sorted():
            self.client.answer_challenge(challb, challb.response(self.jwk))

    def begin_finalization(self, orderr: messages.OrderResource) -> messages.OrderResource:
        with _sorted():
            return self.client.begin_finalization(orderr)

    def revoke(self, cert, reason_code: int) -> bool:
        """RFC 8555 revokeCert of a certificate (cryptography's), signed with the account key; False when the
        CA says it is revoked already (an earlier attempt did it: that is the outcome wanted)."""
        try:
            with _sorted():
                self.client.revoke(cert, reason_code)
        except AcmeError as exc:
            if exc.problem is not None and problem_code(exc.problem) == "alreadyRevoked":
                return False
            raise
        return True

    def register(self, contact: str | None, agree_tos: bool,
                 eab: messages.ExternalAccountBinding | None) -> messages.RegistrationResource:
        """A new account for the key, agreeing to the terms of service only when agree_tos says so; or the
        account the key has already, its contact brought up to date. A CA that wants the terms agreed to
        is AcmeRefused, naming them."""
        registration = messages.NewRegistration.from_data(
            email=contact, terms_of_service_agreed=True if agree_tos else None, external_account_binding=eab)
        try:
            with _sorted():
                try:
                    return self.client.new_account(registration)
                except acme_errors.ConflictError as exc:
                    # this key has an account already: use it, and bring its contact up to date
                    self.net.account = messages.RegistrationResource(body=messages.Registration(), uri=exc.location)
                    regr = self.client.query_registration(self.net.account)
                    wanted = tuple(f"mailto:{mail}" for mail in contact.split(",")) if contact else ()
                    if tuple(regr.body.contact or ()) != wanted:
                        regr = self.client.update_registration(regr, messages.Registration.from_data(email=contact))
                    return regr
        except AcmeError as exc:
            problem = exc.problem
            if (problem is not None and not agree_tos
                    and (problem_code(problem) == "agreementRequired" or "terms" in (problem.detail or "").lower())):
                raise AcmeRefused(f"{exc}; read the terms of service ({self.directory.meta.terms_of_service}) "
                                  "and set [acme] agree_tos = true") from problem
            raise


def problem_text(problem: messages.Error) -> str:
    """The CA's problem document in one line: type, detail, and the subproblems' identifiers and details."""
    parts = [f"{problem.typ}: {problem.detail or problem.title or problem.description or 'no detail'}"]
    if problem.identifier is not None:
        parts[0] = f"{problem.identifier.value}: {parts[0]}"
    for sub in problem.subproblems or ():
        who = f"{sub.identifier.value}: " if sub.identifier is not None else ""
        parts.append(f"{who}{sub.typ}: {sub.detail or ''}")
    return "; ".join(parts)


# how CAs say that their DNS lookup of a dns-01 record failed or found nothing (Boulder: type dns,
# "No TXT record found"; Pebble: "Error retrieving TXT records", "No TXT records found"), as
# opposed to finding a record with another value ("Incorrect TXT record", "Correct value not found")
_RECORDS_UNSEEN = re.compile(
    r"error retrieving txt|no txt record|unsuccessful response|nxdomain|servfail|timed? ?out|refused", re.I)


def records_unseen(problem: messages.Error) -> bool:
    """Whether a failed dns-01 validation says the CA could not see the record at all: a DNS outage
    between the CA and the zone's servers, which a later order may well get past."""
    return problem_code(problem) == "dns" or bool(_RECORDS_UNSEEN.search(problem.detail or ""))


def _response(exc: BaseException) -> requests.Response | None:
    arg = exc.args[0] if exc.args else None
    if isinstance(arg, tuple) and arg and isinstance(arg[0], requests.Response):
        arg = arg[0]
    return arg if isinstance(arg, requests.Response) else None


def gone(exc: BaseException) -> bool:
    """Whether the CA answered that the resource is not there (any more): HTTP 404 or 410, with a
    problem document or without (Pebble forgets its orders when it restarts)."""
    if isinstance(exc, messages.Error):
        return getattr(exc, "status_code", None) in (404, 410)
    if isinstance(exc, acme_errors.ClientError):
        response = _response(exc)
        return response is not None and response.status_code in (404, 410)
    return False


def client_error_text(exc: acme_errors.ClientError) -> str:
    """An acme ClientError in words: a non-JSON answer carries the bare requests.Response."""
    response = _response(exc)
    if response is not None:
        method = response.request.method if response.request is not None else "a request to"
        return f"HTTP {response.status_code} {response.reason or ''} for {method} {response.url}".replace("  ", " ")
    return str(exc) or type(exc).__name__


def problem_code(problem: messages.Error) -> str:
    """The ACME error code of a problem (the last part of its type URN), known to the acme library or not."""
    return str(problem.typ).rsplit(":", 1)[-1]


def sort(exc: BaseException) -> AcmeError | None:
    """The verdict on an acme or network error, as the error to raise in its place; None for anything else."""
    if isinstance(exc, messages.Error):
        detail = problem_text(exc)
        text = f"the CA answered {detail}"
        code = problem_code(exc)
        if code == "rateLimited":
            verdict: AcmeError = AcmeUnavailable(text, retry_after=getattr(exc, "retry_after", None) or 3600.0)
        elif code in ("badNonce", "serverInternal"):
            verdict = AcmeUnavailable(text, retry_after=RETRY_SOON)
        elif code in GIVE_UP_CODES:
            verdict = AcmeRefused(text)
        else:
            verdict = AcmeUnavailable(text)
        verdict.problem = exc
    elif isinstance(exc, acme_errors.ValidationError):
        details = []
        for authzr in exc.failed_authzrs:
            for chall in authzr.body.challenges:
                if chall.error is not None:
                    details.append(f"{authzr.body.identifier.value}: {problem_text(chall.error)}")
        detail = "; ".join(details)
        verdict = AcmeRefused("validation failed: " + detail)
    elif isinstance(exc, acme_errors.IssuanceError):
        detail = problem_text(exc.error)
        verdict = AcmeRefused(f"the order failed: {detail}")
    elif isinstance(exc, acme_errors.TimeoutError):
        detail = str(exc) or "timed out"
        verdict = AcmeUnavailable(f"{detail}; the order is resumed", retry_after=RETRY_SOON)
    elif isinstance(exc, acme_errors.ConflictError):
        return None
    elif isinstance(exc, requests.exceptions.SSLError):
        detail = str(exc)
        verdict = AcmeRefused(f"TLS to the ACME server failed ({exc}); check [acme] ca_bundle")
    elif isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        detail = type(exc).__name__
        verdict = AcmeUnavailable(f"ACME server unreachable ({detail})", retry_after=RETRY_SOON)
    elif isinstance(exc, acme_errors.ClientError):
        detail = client_error_text(exc)
        verdict = AcmeUnavailable(f"the CA answered {detail}", retry_after=RETRY_SOON)
    else:
        return None
    verdict.detail, verdict.gone = detail, gone(exc)
    return verdict
