"""issue_acme: an instance of an LE certificate, ordered with dns-01 over RFC 2136.

Resumable steps (the job's result holds the progress while it runs, through
pki.save_job_progress; never a key):
1. per key algorithm of the certificate (rsa, ec or both) a new key (or, when the
   job's args name reuse_from, that instance's stored key: pki.reused_key) and a CSR
   for the subject and every alt name, with the TLS Feature (must-staple)
   extension when the certificate asks for it;
2. an order per algorithm, its key stored first (pki.save_job_key) — or the order
   an earlier attempt placed, with that attempt's key, unless it failed or is for
   other names (its URL is in the progress);
3. authorizations that are valid already are skipped; for each pending one a
   dns-01 TXT record, all records of one zone in ONE signed UPDATE; the
   challenges are answered only once every authoritative server of the zone
   shows the records; the records are removed afterwards, also on failure
   (and, should that removal fail, by the next attempt: the progress lists them);
4. finalize each order with its CSR, download the chain; the leaf, its key
   and the chain (the issuer first) go to pki.complete_issue, the issuer becomes
   an instance of the ACME CA's certificate there; authorized_until is the
   earliest expiry of the order's authorizations.
A retry never creates a second order while the first can still be finished, and
an agent that dies after finalizing costs no second certificate: the next attempt
downloads the one the CA issued, for the key stored before the order was placed.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from typing import Any

import dns.name
import dns.rdatatype
from acme import challenges, messages
from cryptography.hazmat.primitives import serialization

from .. import keystore, x509util
from ..acmeclient import Acme, AcmeError, problem_text, records_unseen
from ..dnsupdate import Clock, DnsError, DnsUpdater, txt_rdata
from ..errors import GiveUp, RetryLater
from ..faults import crash_point
from . import Completion, Context, IssuedPair, Job, Progress, handler
from .common import (about, algorithms, db_passphrase_if_encrypted, issue_request, job_key, open_account_key,
                     reused_key, save_job_key, stored_account)

log = logging.getLogger("serverpki.acme")

TXT_TTL = 60
AUTHZ_TIMEOUT = 120.0      # seconds for the CA to validate the challenges
FINALIZE_TIMEOUT = 120.0   # seconds for the CA to issue after finalization


def unique_names(req: dict[str, Any]) -> list[str]:
    seen, names = set(), []
    for name in [req["name"], *(req["altnames"] or [])]:
        if name.lower() not in seen:
            seen.add(name.lower())
            names.append(name.lower())
    return names


def _expiry(authzr: messages.AuthorizationResource) -> dt.datetime | None:
    expires = authzr.body.expires
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.timezone.utc)
    return expires


def _chain_parts(fullchain: str) -> list[str]:
    marker = "-----END CERTIFICATE-----"
    return [part.strip() + "\n" + marker + "\n" for part in fullchain.split(marker) if part.strip()]


class Issuance:
    """One attempt of one issue_acme job."""

    def __init__(self, job: Job, ctx: Context, req: dict[str, Any], acme: Acme, dns_updater: DnsUpdater,
                 progress: Progress, passphrase: bytes | None):
        self.job, self.ctx, self.req, self.passphrase = job, ctx, req, passphrase
        self.acme, self.dns, self.progress = acme, dns_updater, progress
        self.names = unique_names(req)
        self.keys: dict[str, Any] = {}
        self.orders: dict[str, messages.OrderResource] = {}
        self.stats: Counter = Counter()

    # -- 1 + 2: keys, CSRs, orders

    def place_orders(self) -> None:
        for algo in algorithms(self.req["encryption_algo"]):
            key = self._stored_key(algo)
            orderr = self._resume(algo, key) if key is not None else None
            if orderr is None:
                # the predecessor's key when the database decided it stays (key reuse), else a new one
                key = (reused_key(self.job, self.ctx, algo)
                       or x509util.new_key(algo, self.ctx.config.x509.rsa_key_size, self.ctx.config.x509.ec_curve))
                # stored before the order exists: a crash after finalization loses no certificate
                save_job_key(self.job, self.ctx, algo, key, self.passphrase)
                orderr = self.acme.new_order(self._csr(key))
                self.progress.data["orders"][algo] = orderr.uri
                self.progress.save("ordered")
                self.stats["orders"] += 1
                crash_point("issue_acme.ordered")
            self.keys[algo] = key
            self.orders[algo] = orderr

    def _csr(self, key) -> bytes:
        return x509util.build_csr(key, self.names, must_staple=bool(self.req["ocsp_must_staple"])).public_bytes(
            serialization.Encoding.PEM)

    def _stored_key(self, algo: str):
        """The key an earlier attempt ordered with, when it placed an order for this algorithm."""
        return job_key(self.job, self.ctx, algo) if self.progress.data["orders"].get(algo) else None

    def _resume(self, algo: str, key) -> messages.OrderResource | None:
        """The order an earlier attempt placed with this key, unless it failed or is for other names;
        a valid one is downloaded, not ordered again."""
        url = self.progress.data["orders"][algo]
        try:
            body = self.acme.order(url)
        except AcmeError as exc:
            if not exc.gone:
                raise
            # the CA does not know it (any more): a new order
            log.info("%s: order %s is gone (%s); placing a new one", self.job.label, url, exc.detail)
            return None
        identifiers = sorted(i.value.lower() for i in body.identifiers)
        usable = (messages.STATUS_PENDING, messages.STATUS_READY, messages.STATUS_PROCESSING, messages.STATUS_VALID)
        if body.status not in usable or identifiers != sorted(self.names):
            log.info("%s: order %s is %s; placing a new one", self.job.label, url, body.status)
            return None
        self.stats["orders_resumed"] += 1
        authzrs = [self.acme.authorization(u) for u in body.authorizations]
        return messages.OrderResource(body=body, uri=url, authorizations=authzrs, csr_pem=self._csr(key))

    # -- 3: authorizations

    def authorize(self) -> dt.datetime | None:
        authzrs: dict[str, messages.AuthorizationResource] = {}
        for orderr in self.orders.values():
            for authzr in orderr.authorizations:
                authzrs.setdefault(authzr.uri, authzr)
        self.stats["authorizations"] = len(authzrs)
        pending: list[tuple[messages.AuthorizationResource, messages.ChallengeBody]] = []
        for authzr in authzrs.values():
            status = authzr.body.status
            name = authzr.body.identifier.value
            if status == messages.STATUS_VALID:
                self.stats["skipped_valid"] += 1
                continue
            if status == messages.STATUS_INVALID:
                raise GiveUp(f"authorization of {name} is invalid: " + self._problems(authzr)
                             + " (fix what the CA says; the next operate_serverPKI -S orders again)")
            if status != messages.STATUS_PENDING:
                # deactivated, expired or revoked: the order cannot finish; the next attempt places a new one
                self.progress.data["orders"] = {}
                self.progress.save("order lost")
                raise RetryLater(f"authorization of {name} is {status}; a new order follows", retry_after=1)
            challb = next((c for c in authzr.body.challenges if isinstance(c.chall, challenges.DNS01)), None)
            if challb is None:
                raise GiveUp(f"the CA offers no dns-01 challenge for {name}")
            pending.append((authzr, challb))
        if pending:
            self._challenge(pending)
        final = [self.acme.authorization(uri) for uri in authzrs] if pending else list(authzrs.values())
        expiries = [e for e in map(_expiry, final) if e is not None]
        return min(expiries) if expiries else None

    def _challenge(self, pending) -> None:
        records: list[tuple[str, str, str]] = []   # (zone, owner, TXT value)
        for authzr, challb in pending:
            owner = dns.name.from_text(challb.chall.validation_domain_name(authzr.body.identifier.value))
            zone = self.dns.zone_for(owner)
            records.append((zone.to_text(), owner.to_text(), challb.chall.validation(self.acme.jwk)))
        # listed before they are sent: a crash in between still removes them next time
        self.progress.data["txt"] = self.progress.data["txt"] + [list(r) for r in records]
        self.progress.save("challenge records")
        try:
            by_zone: dict[str, list[tuple[str, str]]] = {}
            for zone, owner, value in records:
                by_zone.setdefault(zone, []).append((owner, value))
            for zone, entries in by_zone.items():
                self.dns.add_records(dns.name.from_text(zone),
                                     [(dns.name.from_text(o), TXT_TTL, txt_rdata(v)) for o, v in entries],
                                     dns.rdatatype.TXT)
            for zone, entries in by_zone.items():
                wanted: dict[dns.name.Name, set[str]] = {}
                for owner, value in entries:
                    wanted.setdefault(dns.name.from_text(owner), set()).add(txt_rdata(value))
                self.dns.wait_present(dns.name.from_text(zone), wanted, dns.rdatatype.TXT)
            self.ctx.keep_alive()
            crash_point("issue_acme.challenge_published")
            for authzr, challb in pending:
                if challb.status == messages.STATUS_PENDING:
                    self.acme.answer_challenge(challb)
                    self.stats["challenges"] += 1
            self.progress.save("challenges answered")
            crash_point("issue_acme.challenges_answered")
            for authzr, _ in pending:
                final = self.acme.poll(lambda u=authzr.uri: self.acme.authorization(u),
                                       lambda a: a.body.status not in (messages.STATUS_PENDING, "processing"),
                                       AUTHZ_TIMEOUT, f"validation of {authzr.body.identifier.value}")
                if final.body.status != messages.STATUS_VALID:
                    text = (f"validation of {final.body.identifier.value} failed ({final.body.status}): "
                            + self._problems(final))
                    errors = [c.error for c in final.body.challenges if c.error is not None]
                    if errors and all(records_unseen(e) for e in errors):
                        # the CA's DNS did not reach the records: a passing fault; the order is invalid now,
                        # so the next attempt places a new one
                        raise RetryLater(text + " (the CA could not see the TXT records; a new order follows)")
                    raise GiveUp(text + " (the CA saw other TXT records: make sure no other tool answers "
                                        "challenges for this name; the next operate_serverPKI -S orders again)")
        finally:
            self.remove_challenge_records()

    @staticmethod
    def _problems(authzr: messages.AuthorizationResource) -> str:
        found = [problem_text(c.error) for c in authzr.body.challenges if c.error is not None]
        return "; ".join(found) or "the CA gave no detail"

    def remove_challenge_records(self) -> None:
        """Remove the TXT records this job placed (now or in an earlier attempt); keep what could not be removed."""
        records = self.progress.data.get("txt") or []
        if not records:
            return
        by_zone: dict[str, list[tuple[str, str]]] = {}
        for zone, owner, value in records:
            by_zone.setdefault(zone, []).append((owner, value))
        left = []
        for zone, entries in by_zone.items():
            try:
                self.dns.delete_records(dns.name.from_text(zone),
                                        [(dns.name.from_text(o), txt_rdata(v)) for o, v in entries], dns.rdatatype.TXT)
            except DnsError as exc:
                log.warning("%s: challenge records in zone %s stay until the next attempt: %s", self.job.label, zone, exc)
                left += [[zone, o, v] for o, v in entries]
        self.progress.data["txt"] = left
        try:
            self.progress.save()
        except Exception as exc:  # the lease may be gone; the records are removed, which is what matters
            log.warning("%s: progress not saved after removing challenge records: %s", self.job.label, exc)

    # -- 4: finalize and download

    def finalize(self) -> dict[str, tuple[Any, str, list[str]]]:
        issued = {}
        for algo, orderr in self.orders.items():
            body = self.acme.order(orderr.uri)
            if body.status == messages.STATUS_READY:
                orderr = self.acme.begin_finalization(orderr)
                crash_point("issue_acme.finalized")
            elif body.status != messages.STATUS_VALID and body.status != messages.STATUS_PROCESSING:
                if body.status == messages.STATUS_INVALID and body.error is not None:
                    raise GiveUp(f"order {orderr.uri} is invalid: " + problem_text(body.error))
                raise RetryLater(f"order {orderr.uri} is {body.status}, not ready to finalize", retry_after=1)
            body = self.acme.poll(lambda u=orderr.uri: self.acme.order(u),
                                  lambda b: b.status not in (messages.STATUS_PROCESSING, messages.STATUS_READY),
                                  FINALIZE_TIMEOUT, f"finalization of order {orderr.uri}")
            if body.status != messages.STATUS_VALID or not body.certificate:
                detail = problem_text(body.error) if body.error is not None else "no detail"
                raise GiveUp(f"order {orderr.uri} ended {body.status}: {detail}")
            fullchain = self.acme.fetch(body.certificate).text
            parts = _chain_parts(fullchain)
            if not parts:
                raise RetryLater(f"order {orderr.uri}: the certificate download was empty", retry_after=1)
            leaf = x509util.load_cert(parts[0])
            key = self.keys[algo]
            if x509util.public_pem(leaf.public_key()) != x509util.public_pem(key):
                raise RetryLater(f"order {orderr.uri}: the CA's certificate is not for this attempt's key; "
                                 "a new order follows", retry_after=1)
            issued[algo] = (key, parts[0], parts[1:])
        return issued


@handler("issue_acme")
def issue_acme(job: Job, ctx: Context) -> Completion:
    started = time.monotonic()
    req = issue_request(job, ctx)
    if req["cert_type"] != "LE" or req["subject_type"] != "server":
        raise GiveUp(f"certificate {req['name']} is a {req['cert_type']} {req['subject_type']} certificate, "
                     "not an ACME (LE) server certificate")
    cfg = ctx.config.acme
    what = f"ACME order for {req['name']}"
    clock = Clock()
    with about(what):
        account = stored_account(ctx, cfg.directory_url)
        if account is None:
            raise GiveUp(f"no ACME account at {cfg.directory_url}: register one with operate_serverPKI -Z")
        updater = DnsUpdater.from_config(ctx.config, clock, needed_for="dns-01 challenges", label=job.label)
        acme = Acme(cfg.directory_url, open_account_key(ctx, account), account_uri=account["uri"],
                    ca_bundle=cfg.ca_bundle, clock=clock)
        progress = Progress.load(job, ctx)
        progress.data.setdefault("orders", {})
        progress.data.setdefault("txt", [])
        passphrase = db_passphrase_if_encrypted(ctx)
        issuance = Issuance(job, ctx, req, acme, updater, progress, passphrase)
        issuance.remove_challenge_records()   # what a crashed attempt left behind
        issuance.place_orders()
        authorized_until = issuance.authorize()
        issued = issuance.finalize()

    first = issued[algorithms(req["encryption_algo"])[0]]
    chains = {algo: [x509util.load_cert(p).subject.rfc4514_string() for p in chain[:1]] for algo, (_, _, chain) in issued.items()}
    if len({tuple(c) for c in chains.values()}) > 1:
        log.warning("%s: the key algorithms have different issuers %s; the instance records the first", job.label, chains)
    total = time.monotonic() - started
    return Completion(args={
        # each pair's own chain: the database verifies every leaf against its issuer (ECDSA and RSA
        # leaves of Let's Encrypt come from different intermediates); "chain" is the stored one
        "pairs": [IssuedPair(algo, cert, keystore.dump_key(key, passphrase), chain)
                  for algo, (key, cert, chain) in issued.items()],
        "chain": first[2],
        "authorized_until": authorized_until,
    }, report={
        "orders": dict(issuance.progress.data["orders"]),
        "names": len(issuance.names),
        "authorizations": issuance.stats["authorizations"],
        "skipped_valid": issuance.stats["skipped_valid"],
        "challenges": issuance.stats["challenges"],
        "orders_placed": issuance.stats["orders"],
        "orders_resumed": issuance.stats["orders_resumed"],
        "dns_updates": dict(updater.updates),
        "acme_requests": acme.stats["requests"],
        "bad_nonces": acme.stats["bad_nonces"],
        "timing": {"total": round(total, 4), "waiting": round(clock.waited, 4),
                   "work": round(total - clock.waited, 4)},
    })
