"""revoke: carry out a revocation that pki.request_revoke recorded (operate_serverPKI --revoke).

The job's certificates are its rows of pki.revocations (an rsa_plus_ec instance has two). An
ACME (LE) certificate is revoked at the CA with RFC 8555 revokeCert, signed with the stored
account key, with the RFC 5280 reason code; a CA that answers alreadyRevoked has what we want
(an earlier attempt got through and died before its completion). A local certificate goes on a
new CRL of the local CA instance that signed it: every unexpired certificate revoked under that
CA instance, numbered one above its last CRL, valid for the setting crl_days. complete_revoke
stores it and sends it to the CA's targets (NAME_CA_crl.pem, handlers/distribute.py).

What the job does to DNS is another job's: request_revoke enqueued the publish_tlsa job that
withdraws the instance's TLSA records.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from .. import x509util
from ..acmeclient import Acme
from ..errors import GiveUp
from ..faults import crash_point
from . import Completion, Context, Job, handler
from .common import about, every, one, open_account_key, open_stored_key, stored_account

log = logging.getLogger("serverpki.handlers.revoke")


def _reason_code(reason: str) -> int:
    if reason not in x509util.REVOCATION_REASONS:
        raise GiveUp(f"{reason!r} is no revocation reason this release knows")
    return x509util.REVOCATION_REASONS[reason]


def revoke_at_ca(job: Job, ctx: Context, certs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """revokeCert for each certificate at the configured ACME directory, with its stored account."""
    cfg = ctx.config.acme
    done = []
    with about(f"ACME revocation of {certs[0]['certificate']}"):
        account = stored_account(ctx, cfg.directory_url)
        if account is None:
            raise GiveUp(f"no ACME account at {cfg.directory_url}: register one with operate_serverPKI -Z")
        acme = Acme(cfg.directory_url, open_account_key(ctx, account), account_uri=account["uri"], ca_bundle=cfg.ca_bundle)
        for row in certs:
            cert = x509util.load_cert(row["cert"])
            now_revoked = acme.revoke(cert, _reason_code(row["reason"]))
            log.info("%s: %s certificate serial %x %s", job.label, row["algo"], cert.serial_number,
                     "revoked at the CA" if now_revoked else "was revoked at the CA already")
            done.append({"algo": row["algo"], "serial": f"{cert.serial_number:x}", "at": cfg.directory_url,
                         "already_revoked": not now_revoked})
            crash_point("revoke.revoked_at_ca")
            ctx.keep_alive()
    return done


def sign_crl(job: Job, ctx: Context, ca_instance: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new CRL of the local CA instance: the completion's arguments and the report's part."""
    ca = one(ctx, "local_ca_instance", {"ca": ca_instance})
    if ca is None:
        raise GiveUp(f"local CA instance {ca_instance}, which issued the revoked certificate, or its key is gone: "
                     "no CRL can be signed for it")
    with about(None):
        ca_key = open_stored_key(ca["key"], ctx.config.local_ca.passphrase_file, "local_ca.passphrase_file",
                                 f"key of local CA instance {ca_instance}")
    ca_cert = x509util.load_cert(ca["cert"])
    nxt = one(ctx, "next_crl", {"ca": ca_instance})
    this_update = nxt["now"]
    next_update = this_update + dt.timedelta(days=nxt["days"])
    revoked = every(ctx, "crl_entries", {"ca": ca_instance})
    entries = [(x509util.load_cert(e["cert"]).serial_number, e["revoked_at"], e["reason"]) for e in revoked]
    crl = x509util.build_crl(ca_cert, ca_key, entries, nxt["number"], this_update, next_update)
    # listed_through: the revocations read, so the database can tell one that arrived meanwhile (SP028, signed again)
    args = {"ca_instance": ca_instance, "crl": x509util.crl_pem(crl), "crl_number": nxt["number"],
            "this_update": this_update, "next_update": next_update,
            "listed_through": max((e["id"] for e in revoked), default=0)}
    return args, {"crl_number": nxt["number"], "ca_instance": ca_instance, "listed": len(entries),
                  "next_update": next_update.isoformat()}


@handler("revoke")
def revoke(job: Job, ctx: Context) -> Completion:
    certs = every(ctx, "revoke_job_certificates", {"job": job.id})
    if not certs:
        raise GiveUp(f"revoke job {job.id} has no certificates in pki.revocations: nothing to revoke (its rows were "
                     "deleted by hand); to revoke the instance, run operate_serverPKI --revoke again")
    report: dict[str, Any] = {"certificate": certs[0]["certificate"], "instance": job.instance,
                              "reason": certs[0]["reason"]}
    issuers = {row["ca_instance"] for row in certs}
    if issuers == {None}:
        report["revoked_at_ca"] = revoke_at_ca(job, ctx, certs)
        return Completion(report=report)
    if len(issuers) > 1:
        raise GiveUp(f"revoke job {job.id}: its certificates come from different issuers {sorted(map(str, issuers))}; "
                     "one instance's pairs are issued together, so its rows of pki.revocations were changed by hand: "
                     f"mend them (SELECT * FROM revocations WHERE job = {job.id}) and run --revoke again")
    args, report["crl"] = sign_crl(job, ctx, issuers.pop())
    report["crl"]["serials"] = [f"{x509util.load_cert(row['cert']).serial_number:x}" for row in certs]
    return Completion(args=args, report=report)
