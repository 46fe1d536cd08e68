"""What several handlers use: named reads, the certificate a job issues, stored keys opened, the keys
an ACME job keeps, the ACME account, and about(), which makes errors of ours the job's outcome."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

from psycopg.rows import dict_row

from .. import keystore
from ..errors import GiveUp, RetryLater, ServerPKIError
from ..queries import q
from . import Context, Job

log = logging.getLogger("serverpki.issue")


@contextlib.contextmanager
def about(what: str | None, prefixed: type[Exception] = ServerPKIError) -> Iterator[None]:
    """The errors of ours that leave the block are the job's outcome. A verdict (RetryLater, GiveUp:
    the peer adapters raise their subclasses) stays what it is; any other error of ours (configuration,
    key store, secret file) gives the job up. `what` goes before the text of the verdicts of the
    `prefixed` type and of the errors given up here."""
    try:
        yield
    except (RetryLater, GiveUp) as exc:
        if what and isinstance(exc, prefixed):
            exc.args = (f"{what}: {exc}",)
        raise
    except ServerPKIError as exc:
        raise GiveUp(f"{what}: {exc}" if what else str(exc)) from exc


def one(ctx: Context, name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The first row of a named query, as a dict."""
    return ctx.conn.cursor(row_factory=dict_row).execute(q(name), params or {}).fetchone()


def every(ctx: Context, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """All rows of a named query, as dicts."""
    return ctx.conn.cursor(row_factory=dict_row).execute(q(name), params or {}).fetchall()


def db_now(ctx: Context) -> dt.datetime:
    """The database's clock (pki.now(): the one the scheduler decided with)."""
    return one(ctx, "db_now")["now"]


def issue_request(job: Job, ctx: Context) -> dict[str, Any]:
    """The certificate the job issues an instance of (query issue_requests); gone: GiveUp."""
    req = one(ctx, "issue_requests", {"certificates": [job.certificate]})
    if req is None:
        raise GiveUp(f"certificate {job.certificate} of job {job.id} is gone: it was removed while the job waited; "
                     "nothing to do (add it again to issue it)")
    return req


_UNREAD = object()


def batch_value(ctx: Context, name: str, read):
    """ctx.batch[name], read() when it is not there yet. The agent may empty ctx.batch from another thread at
    any moment (a refused completion): a value is taken once, never looked up again after it was stored."""
    value = ctx.batch.get(name, _UNREAD)
    if value is _UNREAD:
        value = ctx.batch[name] = read()
    return value


def batch_read(ctx: Context, name: str) -> dict[str, Any] | None:
    """The first row of a named query without parameters, read once for the agent's claimed batch (ctx.batch)."""
    return batch_value(ctx, name, lambda: one(ctx, name))


def batch_issue_request(job: Job, ctx: Context) -> dict[str, Any]:
    """issue_request, read in one query for every certificate of the claimed batch (ctx.batch["certificates"],
    the agent's list) when the first of its jobs asks; a job outside that list reads its own."""
    certificates = ctx.batch.get("certificates") or ()
    if job.certificate not in certificates:
        return issue_request(job, ctx)
    requests = batch_value(ctx, "issue_requests", lambda: {
        r["id"]: r for r in every(ctx, "issue_requests", {"certificates": list(certificates)})})
    return requests.get(job.certificate) or issue_request(job, ctx)   # not there: gone, issue_request says so


def algorithms(encryption_algo: str) -> list[str]:
    """The key algorithms of a certificate: one pair each."""
    return ["rsa", "ec"] if encryption_algo == "rsa_plus_ec" else [encryption_algo]


def open_stored_key(pem: str, passphrase_file, setting: str, what: str):
    """A stored private key, opened with the passphrase in passphrase_file when it is encrypted;
    a wrong passphrase gives the job up, naming the configuration key to fix."""
    passphrase = None
    if keystore.is_encrypted(pem):
        passphrase = keystore.read_passphrase(passphrase_file, f"Passphrase for the {what}: ")
    try:
        return keystore.load_key(pem, passphrase, what)
    except keystore.WrongPassphrase:
        raise GiveUp(f"{what}: wrong passphrase (configuration: {setting})") from None


def db_passphrase_if_encrypted(ctx: Context, row: dict[str, Any] | None = None) -> bytes | None:
    """The db_encryption_key passphrase when the stored keys are encrypted (else None), proven on a stored key.
    row: the keys_encrypted row, when it was read already."""
    row = one(ctx, "keys_encrypted") if row is None else row
    if not (row and row["keysencrypted"]):
        return None
    passphrase = keystore.read_passphrase(ctx.config.paths.db_encryption_key, "Passphrase of the stored keys: ")
    # a new key under another passphrase than its neighbours could not be opened later
    sample = one(ctx, "newest_encrypted_key")
    if sample is not None:
        try:
            keystore.load_key(sample["key"], passphrase, f"stored key {sample['id']}")
        except keystore.WrongPassphrase:
            raise GiveUp(f"db_encryption_key: wrong passphrase, it does not open stored key {sample['id']}") from None
    return passphrase


def batch_db_passphrase(ctx: Context) -> bytes | None:
    """db_passphrase_if_encrypted, read and proven once for the agent's claimed batch. A -X/-Y applied
    meanwhile makes the completion refuse the key's form (complete_issue: SP028), the
    agent drops the batch's reads and the job is retried with the new form."""
    return batch_value(ctx, "db_passphrase", lambda: db_passphrase_if_encrypted(ctx, batch_read(ctx, "keys_encrypted")))


def job_key(job: Job, ctx: Context, algo: str):
    """The key an earlier attempt of this job stored for its ACME order or account (pki.job_key), or None."""
    stored = ctx.conn.execute(q("job_key"), {"job": job.id, "token": job.lease, "algo": algo}).fetchone()[0]
    if stored is None:
        return None
    return open_stored_key(stored, ctx.config.paths.db_encryption_key, "paths.db_encryption_key",
                           f"the {algo} key of job {job.id}")


def reused_key(job: Job, ctx: Context, algo: str):
    """The key of this algorithm the database decided the new instance keeps (the job's args name the
    instance, reuse_from; pki.reused_key reads its stored key), opened; None: make a new key (no reuse,
    or that instance is gone). The key travels from the database to here only, never through args."""
    if not job.args.get("reuse_from"):
        return None
    stored = ctx.conn.execute(q("reused_key"), {"job": job.id, "token": job.lease, "algo": algo}).fetchone()[0]
    if stored is None:
        log.warning("%s: instance %s, whose %s key was to be reused, has none any more: a new key is made",
                    job.label, job.args["reuse_from"], algo)
        return None
    return open_stored_key(stored, ctx.config.paths.db_encryption_key, "paths.db_encryption_key",
                           f"the {algo} key of instance {job.args['reuse_from']}")


def save_job_key(job: Job, ctx: Context, algo: str, key, passphrase: bytes | None) -> None:
    """Keep a new key with the job before a CA sees it, so that a crash cannot orphan what the CA makes for it."""
    ctx.conn.execute(q("save_job_key"), {"job": job.id, "token": job.lease, "algo": algo,
                                         "key": keystore.dump_key(key, passphrase)})


def stored_account(ctx: Context, directory_url: str) -> dict[str, Any] | None:
    """The ACME account the database has at the directory, or None."""
    return one(ctx, "acme_account", {"directory_url": directory_url})


def open_account_key(ctx: Context, account: dict[str, Any]):
    """The account's private key, decrypted with the db_encryption_key passphrase when it is encrypted."""
    return open_stored_key(account["key"], ctx.config.paths.db_encryption_key, "paths.db_encryption_key",
                           f"key of the ACME account at {account['directory_url']}")
