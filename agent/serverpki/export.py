"""operate_serverPKI -E CERT_SERIAL: write an instance's certificates and keys to [paths] work_dir.

As the original (certdist.export_instance): one pair per key algorithm of the
instance, cert-SERIAL-ALGO.pem and key-SERIAL-ALGO.pem (ALGO rsa or ec), the key
in clear (PEM, PKCS#8) with mode 0400. An existing file of that name is replaced,
as the original overwrote it: the export is what the database holds now.

A file is born private: created by mkstemp (O_CREAT|O_EXCL, mode 0600, a name
no one can foresee) in the work directory, written, set to its mode, then
renamed over the name: the key is never readable by others, not even for a
moment, and a reader never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from .errors import UsageError
from .queries import q

CERT_MODE = 0o444
KEY_MODE = 0o400


def write_atomic(path: Path, data: str, mode: int) -> None:
    """path holds data with mode, or what it held before: written to a private temporary file beside
    it (0600, O_EXCL) that is renamed over it; the folder is synced too, so the rename survives a crash."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def export_instance(conn: psycopg.Connection, serial: str, work_dir: Path, db_passphrase_file,
                    ca_passphrase_file=None) -> list[Path]:
    """The files written, cert and key of each algorithm: cert-SERIAL-rsa.pem, key-SERIAL-rsa.pem, ....
    Keys stored encrypted are decrypted: with the db_encryption_key passphrase, a local CA's key with
    the CA's passphrase (local_ca.passphrase_file); without a file, the passphrase is asked on a terminal."""
    if not (serial.isascii() and serial.isdigit()):  # str.isdigit() also passes "²", which int() refuses
        raise UsageError(f"-E {serial}: CERT_SERIAL is the number in the Serial column of operate_serverPKI -n -v")
    # no serial has more than 18 digits (and int() refuses more than 4300)
    rows = (conn.cursor(row_factory=dict_row).execute(q("export_instance"), {"serial": int(serial)}).fetchall()
            if len(serial.lstrip("0")) <= 18 else [])
    if not rows:
        raise UsageError(f"-E {serial}: no instance with that serial (see operate_serverPKI -n -v)")
    number = int(serial)
    from . import keystore   # cryptography for the keys of -E; `serverpki metrics` only writes a file here

    # decrypt every key before writing any file: a wrong passphrase leaves nothing behind
    passphrases: dict[str, bytes] = {}
    pairs = []
    for row in rows:
        key = row["key"]
        if key and keystore.is_encrypted(key):
            ca = row["subject_type"] == "CA"
            source, prompt = ((ca_passphrase_file, "Passphrase of the local CA: ") if ca
                              else (db_passphrase_file, "Passphrase of the stored keys: "))
            which = "ca" if ca else "db"
            if which not in passphrases:
                passphrases[which] = keystore.read_passphrase(source, prompt)
            key = keystore.decrypt_pem(key, passphrases[which], f"{row['algo']} key of instance {number}")
        pairs.append((row["algo"], row["cert"], key))
    work_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for algo, cert, key in pairs:
        cert_file = work_dir / f"cert-{number}-{algo}.pem"
        write_atomic(cert_file, cert, CERT_MODE)
        written.append(cert_file)
        if key:
            key_file = work_dir / f"key-{number}-{algo}.pem"
            write_atomic(key_file, key, KEY_MODE)
            written.append(key_file)
    return written
