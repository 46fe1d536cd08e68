"""The original's keys, stored our way.

The original wrote every private key as traditional OpenSSL PEM; with db_encryption_key in use
encrypted ("Proc-Type: 4,ENCRYPTED", DEK-Info) under the WHOLE content of that file. A key is
opened in memory only and stored as PKCS#8: encrypted with our passphrase when ours are encrypted.
Neither a key nor a passphrase appears in a message (keystore's errors name no key material).
"""

from __future__ import annotations

from .. import keystore
from ..errors import ServerPKIError


class KeyDoesNotOpen(ServerPKIError):
    """A legacy key cannot be opened: the import stops, naming the instance."""


def restore_key(pem: bytes | None, legacy_passphrase: bytes | None, our_passphrase: bytes | None,
                what: str) -> str | None:
    """The legacy key as we store it: PKCS#8, encrypted with our_passphrase when given; None for no key
    (the original stored b'' for a CA whose key it does not hold, e.g. Let's Encrypt's intermediate)."""
    if not pem:
        return None
    try:
        key = keystore.load_key(bytes(pem), legacy_passphrase, what)
    except keystore.PassphraseUnavailable:
        raise KeyDoesNotOpen(f"{what} is encrypted: give the original's db_encryption_key file with --passphrase-file") from None
    except keystore.KeystoreError as exc:
        raise KeyDoesNotOpen(f"{exc}; nothing was imported") from None
    return keystore.dump_key(key, our_passphrase)


def account_key(pem: str) -> str:
    """The ACME account key of the original's account file (manuale/automatoes: clear PEM) as PKCS#8."""
    try:
        return keystore.dump_key(keystore.load_key(pem, None, "the account file's key"))
    except keystore.KeystoreError as exc:
        raise KeyDoesNotOpen(str(exc)) from None
