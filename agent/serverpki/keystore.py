"""Private keys at rest: PKCS#8 PEM, clear or encrypted with a passphrase.

An encrypted key is "-----BEGIN ENCRYPTED PRIVATE KEY-----" (PKCS#8 with
PBES2, the best cryptography offers: PBKDF2 and AES-256-CBC), so
`openssl pkey -in key.pem -passin file:PASSFILE` reads it as well.

A passphrase comes from a file (the configuration's db_encryption_key or
local_ca.passphrase_file) that only its owner may read, or from the terminal.
Neither a key nor a passphrase ever appears in a message of this module.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from .errors import ServerPKIError
from .x509util import PrivateKey

ENCRYPTED_MARK = "-----BEGIN ENCRYPTED PRIVATE KEY-----"
# PKCS#8 passphrases: cryptography accepts 1 to 1023 bytes
MAX_PASSPHRASE = 1023


class KeystoreError(ServerPKIError):
    """A private key cannot be read or written."""


class WrongPassphrase(KeystoreError):
    """wrong passphrase: the private key cannot be decrypted with it."""


class PassphraseUnavailable(KeystoreError):
    """No usable passphrase: configure a passphrase file readable by its owner only, or run on a terminal."""


def _text(pem: str | bytes) -> str:
    return pem.decode("ascii") if isinstance(pem, bytes) else pem


def is_encrypted(pem: str | bytes) -> bool:
    """Is this PEM an encrypted PKCS#8 key (or a legacy PEM with a DEK-Info header)?"""
    text = _text(pem)
    return ENCRYPTED_MARK in text or "Proc-Type: 4,ENCRYPTED" in text


def dump_key(key: PrivateKey, passphrase: bytes | None = None) -> str:
    """The key as PKCS#8 PEM, encrypted when a passphrase is given."""
    encryption = (serialization.BestAvailableEncryption(_checked(passphrase)) if passphrase is not None
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode("ascii")


def load_key(pem: str | bytes, passphrase: bytes | None = None, what: str = "private key") -> PrivateKey:
    """The key of a PEM, decrypting it with the passphrase when it is encrypted."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    encrypted = is_encrypted(data)
    if encrypted and passphrase is None:
        raise PassphraseUnavailable(f"{what} is encrypted and no passphrase was given")
    try:
        return serialization.load_pem_private_key(data, password=_checked(passphrase) if encrypted else None)
    except (ValueError, TypeError):
        # cryptography says the same ("Bad decrypt. Incorrect password?") for a wrong passphrase
        # and for a mangled key; neither message holds key material, but we keep ours plain
        if encrypted:
            raise WrongPassphrase(f"{what}: wrong passphrase (or a damaged key)") from None
        raise KeystoreError(f"{what} is not a parsable PEM private key") from None


def encrypt_pem(pem: str | bytes, passphrase: bytes, what: str = "private key") -> str:
    """The key encrypted with the passphrase; a key already encrypted must open with it and stays as it is."""
    if is_encrypted(pem):
        load_key(pem, passphrase, what)
        return _text(pem)
    return dump_key(load_key(pem, None, what), passphrase)


def decrypt_pem(pem: str | bytes, passphrase: bytes, what: str = "private key") -> str:
    """The key in clear PKCS#8 PEM; WrongPassphrase when the passphrase does not open it. A clear key stays as it is."""
    if not is_encrypted(pem):
        load_key(pem, None, what)
        return _text(pem)
    return dump_key(load_key(pem, passphrase, what))


def _checked(passphrase: bytes | None) -> bytes | None:
    if passphrase is None:
        return None
    if not isinstance(passphrase, bytes) or not 1 <= len(passphrase) <= MAX_PASSPHRASE:
        raise PassphraseUnavailable(f"a passphrase must be 1 to {MAX_PASSPHRASE} bytes")
    return passphrase


def read_passphrase(path: str | os.PathLike | None, prompt: str = "Passphrase: ") -> bytes:
    """The passphrase in the file (its first line, without the line end), or asked on the terminal when path is None.

    The file must be readable by its owner only: a passphrase that group or others
    can read protects nothing, so we refuse it rather than use it.
    """
    if path is None or str(path) == "":
        if not sys.stdin.isatty():
            raise PassphraseUnavailable("no passphrase file is configured and there is no terminal to ask for the passphrase")
        try:
            passphrase = getpass.getpass(prompt).encode("utf-8")
        except (EOFError, KeyboardInterrupt):
            raise PassphraseUnavailable("no passphrase was entered") from None
        if not passphrase:
            raise PassphraseUnavailable("the passphrase entered is empty")
        return _checked(passphrase)
    file = Path(path).expanduser()
    try:
        st = file.stat()
    except OSError as exc:
        raise PassphraseUnavailable(f"passphrase file {file}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PassphraseUnavailable(f"passphrase file {file} is not a regular file")
    if st.st_mode & 0o077:
        raise PassphraseUnavailable(
            f"passphrase file {file} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"make it private with chmod 600 {file}")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise PassphraseUnavailable(f"passphrase file {file}: {exc.strerror}") from None
    passphrase = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not passphrase:
        raise PassphraseUnavailable(f"passphrase file {file} is empty (the passphrase is its first line)")
    if len(passphrase) > MAX_PASSPHRASE:
        raise PassphraseUnavailable(f"the passphrase in {file} is longer than {MAX_PASSPHRASE} bytes")
    return passphrase
