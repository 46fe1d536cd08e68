"""encrypt_keys and decrypt_keys (operate_serverPKI -X / -Y): the stored private keys
(de|en)crypted with the db_encryption_key passphrase.

The job covers the keys of pki.keys_under_db_passphrase(): every stored key but
those of CA certificates; and the ACME account keys and the keys of ACME orders
in flight (pki.job_keys). The local CA's key stays encrypted with its own
passphrase (local_ca.passphrase_file), whatever -X/-Y do.

The handler changes nothing: it returns every key in its new form and
pki.complete_reencrypt_keys stores them, with revision.keysencrypted, in one
statement. A passphrase that does not open a key gives up the job, so either
all keys change or none.
"""

from __future__ import annotations

from psycopg.rows import dict_row

from .. import keystore
from ..errors import GiveUp, ServerPKIError
from ..queries import q
from . import Completion, Context, Job, StoredKey, handler


def reencrypt(job: Job, ctx: Context, encrypt: bool) -> Completion:
    try:
        passphrase = keystore.read_passphrase(ctx.config.paths.db_encryption_key, "Passphrase of the stored keys: ")
    except ServerPKIError as exc:
        raise GiveUp(f"db_encryption_key: {exc}") from exc
    change = keystore.encrypt_pem if encrypt else keystore.decrypt_pem
    args: dict[str, list[StoredKey]] = {}
    for field, query, label in (("keys", "keys_under_db_passphrase", "stored key"),
                                ("accounts", "acme_keys_under_db_passphrase", "ACME account key"),
                                ("job_keys", "job_keys_under_db_passphrase", "key of an ACME order in flight")):
        rows = ctx.conn.cursor(row_factory=dict_row).execute(q(query)).fetchall()
        changed = []
        for n, row in enumerate(rows, 1):
            what = f"{label} {row['id']}"
            try:
                changed.append(StoredKey(row["id"], change(row["key"], passphrase, what)))
            except keystore.WrongPassphrase:
                raise GiveUp(f"{what}: wrong passphrase (configuration: db_encryption_key); no key was changed") from None
            except keystore.KeystoreError as exc:
                raise GiveUp(f"{exc}; no key was changed") from None
            if n % 50 == 0:
                ctx.keep_alive()
        args[field] = changed
    return Completion(args=args)


@handler("encrypt_keys")
def encrypt_keys(job: Job, ctx: Context) -> Completion:
    """Every stored key (but the CA's) encrypted with the db_encryption_key passphrase."""
    return reencrypt(job, ctx, True)


@handler("decrypt_keys")
def decrypt_keys(job: Job, ctx: Context) -> Completion:
    """Every stored key (but the CA's) in clear."""
    return reencrypt(job, ctx, False)
