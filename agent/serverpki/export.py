"""operate_serverPKI -E CERT_SERIAL: write an instance's certificate and key to the work directory.

The key file is born private: created with mode 0600 under a temporary name,
written, set to 0400, then renamed, so it is never readable by others.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from . import keystore
from .errors import UsageError
from .queries import q


def _write_atomic(path: Path, data: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_instance(conn: psycopg.Connection, serial: str, work_dir: Path, db_passphrase_file) -> list[Path]:
    """The files written: NAME_TYPE_[ec_]cert.pem, NAME_TYPE_[ec_]key.pem (0400), and the CA certificate."""
    if not (serial.isascii() and serial.isdigit()):  # str.isdigit() also passes "²", which int() refuses
        raise UsageError(f"-E {serial}: CERT_SERIAL is the number in the Serial column of operate_serverPKI -n -v")
    # no serial has more than 18 digits (and int() refuses more than 4300)
    rows = (conn.cursor(row_factory=dict_row).execute(q("export_instance"), {"serial": int(serial)}).fetchall()
            if len(serial.lstrip("0")) <= 18 else [])
    if not rows:
        raise UsageError(f"-E {serial}: no instance with that serial (see operate_serverPKI -n -v)")
    work_dir.mkdir(parents=True, exist_ok=True)
    written = []
    passphrase = None
    for row in rows:
        stem = f"{row['name']}_{row['subject_type']}_{'ec_' if row['algo'] == 'ec' else ''}"
        cert_file = work_dir / f"{stem}cert.pem"
        _write_atomic(cert_file, row["cert"], 0o444)
        written.append(cert_file)
        if row["key"]:
            key = row["key"]
            if keystore.is_encrypted(key) and row["subject_type"] != "CA":
                passphrase = passphrase or keystore.read_passphrase(db_passphrase_file, "Passphrase of the stored keys: ")
                key = keystore.decrypt_pem(key, passphrase, f"key of instance {serial}")
            key_file = work_dir / f"{stem}key.pem"
            _write_atomic(key_file, key, 0o400)
            written.append(key_file)
        if row["cacert"]:
            ca_file = work_dir / f"{row['name']}_{row['subject_type']}_cacert.pem"
            _write_atomic(ca_file, row["cacert"], 0o444)
            if ca_file not in written:
                written.append(ca_file)
    return written
