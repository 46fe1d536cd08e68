"""register_acme (operate_serverPKI -Z): an ACME account at the configured directory.

The account key is made here (EC P-256, signing with ES256) and stored with the
job before the CA sees it (pki.save_job_key), unless the database has an
account for the directory already: then its key is used
again, and the CA answers with the existing account, whose contact is brought
up to date. The terms of service are agreed to only when [acme] agree_tos
says so; external account binding uses [acme] eab_kid and eab_hmac_key when
they are set. The outcome — directory, account URL, contact and the key
(encrypted when the stored keys are) — goes to pki.complete_register_acme.
"""

from __future__ import annotations

from acme import messages
from cryptography.hazmat.primitives.asymmetric import ec

from .. import keystore
from ..acmeclient import Acme, AcmeError
from ..errors import GiveUp
from . import Completion, Context, Job, handler
from .common import about, db_passphrase_if_encrypted, job_key, open_account_key, save_job_key, stored_account


def new_account_key(job: Job, ctx: Context, passphrase: bytes | None):
    """A new account key, stored with the job before the CA sees it: an attempt after a crash
    registers the same key, and the CA answers with the account the first attempt made."""
    key = job_key(job, ctx, "ec")
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
        save_job_key(job, ctx, "ec", key, passphrase)
    return key


@handler("register_acme")
def register_acme(job: Job, ctx: Context) -> Completion:
    cfg = ctx.config.acme
    directory_url = job.args.get("directory_url") or cfg.directory_url
    contact = job.args.get("contact") or cfg.contact_email
    what = f"ACME registration at {directory_url}"
    # the CA's verdicts are about this registration; a stored key's, a passphrase's speak for themselves
    with about(what, prefixed=AcmeError):
        account = stored_account(ctx, directory_url)
        passphrase = db_passphrase_if_encrypted(ctx)
        key = open_account_key(ctx, account) if account else new_account_key(job, ctx, passphrase)
        acme = Acme(directory_url, key, ca_bundle=cfg.ca_bundle)
        eab = None
        if cfg.eab_kid:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=acme.jwk.public_key(), kid=cfg.eab_kid, hmac_key=cfg.eab_hmac_key,
                directory=acme.directory)
        elif acme.directory.meta.external_account_required:
            raise GiveUp(f"{what}: the CA requires external account binding: set [acme] eab_kid and eab_hmac_key")
        regr = acme.register(contact, cfg.agree_tos, eab)
        return Completion(
            args={"directory_url": directory_url, "uri": regr.uri, "contact": contact,
                  "key": keystore.dump_key(key, passphrase)},
            report={"terms_of_service": acme.directory.meta.terms_of_service, "agreed": bool(cfg.agree_tos),
                    "external_account_binding": eab is not None, "new": account is None})
