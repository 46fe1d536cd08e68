"""Private keys at rest: PKCS#8 PEM, clear or encrypted with a passphrase.

An encrypted key is "-----BEGIN ENCRYPTED PRIVATE KEY-----": PKCS#8 with PBES2,
PBKDF2-HMAC-SHA256 at KDF_ROUNDS iterations and AES-256-CBC, which `openssl pkey`
reads as well. Keys the original serverPKI encrypted (traditional PEM with
"Proc-Type: 4,ENCRYPTED" and DEK-Info) open too; -X rewrites them as PKCS#8.

A passphrase comes from a file (the configuration's db_encryption_key or
local_ca.passphrase_file) that only its owner may read (secretfile), or from the
terminal. The passphrase of a file is its whole content, bytes as they are, a
final newline included: the original serverPKI read it so (its tutorial makes the
file with ssh-keygen), and keys it encrypted open only so.
Neither a key nor a passphrase ever appears in a message of this module.
"""

from __future__ import annotations

import base64
import getpass
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from .errors import ServerPKIError
from .secretfile import SecretFileError, read_secret
from .x509util import PrivateKey

ENCRYPTED_MARK = "-----BEGIN ENCRYPTED PRIVATE KEY-----"
# cryptography accepts 1 to 1023 bytes (it refused longer ones to the original serverPKI too,
# so an ssh-keygen ed25519 file of ~400 bytes worked there and an RSA one of ~2.6 KB never did)
MAX_PASSPHRASE = 1023
# PBKDF2-HMAC-SHA256 iterations: OWASP's 2023 figure, 293 times BestAvailableEncryption's 2,048 that a guessed
# passphrase barely slowed; bench/kdf.py: opening a key 86 ms of CPU instead of 10, -X of 1,000 keys 95 s instead of 10
KDF_ROUNDS = 600_000


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


def dump_key(key: PrivateKey, passphrase: bytes | None = None, rounds: int | None = None) -> str:
    """The key as PKCS#8 PEM, encrypted when a passphrase is given (with rounds PBKDF2 iterations, KDF_ROUNDS)."""
    if passphrase is None:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode("ascii")
    clear = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    der = _pbes2_encrypt(clear, _checked(passphrase), rounds or KDF_ROUNDS)
    body = base64.encodebytes(der).decode("ascii").replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "\n".join([ENCRYPTED_MARK, *lines, "-----END ENCRYPTED PRIVATE KEY-----"]) + "\n"


# cryptography 50 sets no iteration count for PKCS#8 (only 2,048 via BestAvailableEncryption), so we
# write RFC 8018's EncryptedPrivateKeyInfo ourselves; reading it is cryptography's (and openssl's) own.
_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_PBKDF2 = "1.2.840.113549.1.5.12"
_OID_HMAC_SHA256 = "1.2.840.113549.2.9"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"


def _pbes2_encrypt(clear_der: bytes, passphrase: bytes, rounds: int) -> bytes:
    salt, iv = os.urandom(16), os.urandom(16)
    key = PBKDF2HMAC(hashes.SHA256(), 32, salt, rounds).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    data = encryptor.update(padder.update(clear_der) + padder.finalize()) + encryptor.finalize()
    kdf = _seq(_oid(_OID_PBKDF2), _seq(_der(0x04, salt), _int(rounds), _seq(_oid(_OID_HMAC_SHA256), _der(0x05, b""))))
    scheme = _seq(_oid(_OID_AES256_CBC), _der(0x04, iv))
    return _seq(_seq(_oid(_OID_PBES2), _seq(kdf, scheme)), _der(0x04, data))


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def _seq(*parts: bytes) -> bytes:
    return _der(0x30, b"".join(parts))


def _int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))  # +1: a leading 0 keeps it positive


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(x) for x in dotted.split("."))
    out = bytearray([40 * first + second])
    for arc in rest:
        chunk = [arc & 0x7F]
        while arc := arc >> 7:
            chunk.append(0x80 | (arc & 0x7F))
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


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
    """The key encrypted with the passphrase; a PKCS#8 key already encrypted must open with it and stays
    as it is; one the original serverPKI encrypted (traditional PEM, an MD5 KDF) is rewritten as PKCS#8."""
    if is_encrypted(pem):
        key = load_key(pem, passphrase, what)
        return _text(pem) if ENCRYPTED_MARK in _text(pem) else dump_key(key, passphrase)
    return dump_key(load_key(pem, None, what), passphrase)


def decrypt_pem(pem: str | bytes, passphrase: bytes, what: str = "private key") -> str:
    """The key in clear PKCS#8 PEM; WrongPassphrase when the passphrase does not open it. A clear key stays as it is."""
    if not is_encrypted(pem):
        load_key(pem, None, what)
        return _text(pem)
    return dump_key(load_key(pem, passphrase, what))


def traditional_pem(pem: str | bytes, what: str = "private key") -> str:
    """A clear key as traditional OpenSSL PEM (BEGIN RSA/EC PRIVATE KEY): how serverPKI 0.9.x wrote key
    files, so a pair imported from it is written to the hosts byte for byte as the original had it."""
    key = load_key(pem, None, what)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode("ascii")


def _checked(passphrase: bytes | None) -> bytes | None:
    if passphrase is None:
        return None
    if not isinstance(passphrase, bytes) or not 1 <= len(passphrase) <= MAX_PASSPHRASE:
        raise PassphraseUnavailable(f"a passphrase must be 1 to {MAX_PASSPHRASE} bytes")
    return passphrase


def read_passphrase(path: str | os.PathLike | None, prompt: str = "Passphrase: ") -> bytes:
    """The passphrase in the file (its whole content, see above), or asked on the terminal when path is None.

    The file must be private to the user we run as (secretfile): a passphrase that
    others can read or replace protects nothing, so we refuse it rather than use it.
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
        passphrase = read_secret(file, "passphrase file")
    except SecretFileError as exc:
        raise PassphraseUnavailable(str(exc)) from None
    fix = f"put 1 to {MAX_PASSPHRASE} bytes in it, e.g. make it with ssh-keygen -t ed25519 -N '' -f {file}"
    if not passphrase.strip():
        raise PassphraseUnavailable(f"passphrase file {file} is empty (its whole content is the passphrase): {fix}")
    if len(passphrase) > MAX_PASSPHRASE:
        raise PassphraseUnavailable(f"passphrase file {file} has {len(passphrase)} bytes, more than the {MAX_PASSPHRASE} "
                                    f"a key passphrase can have (its whole content is the passphrase): {fix}")
    return passphrase
